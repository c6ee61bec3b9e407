"""Segment a stack: python predict.py ckpt_path=<ckpt or run folder> input=<folder or tif> output=<folder>."""

import hydra
from omegaconf import DictConfig

from fibml.config import register_resolvers
from fibml.pipelines.predict import predict

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
