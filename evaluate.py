"""Score a trained model on synthetic ground truth: python evaluate.py ckpt_path=<ckpt or run folder>."""

import hydra
from omegaconf import DictConfig

from fibml.config import register_resolvers
from fibml.pipelines.evaluate import evaluate

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
