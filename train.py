"""Train a model: python train.py [experiment=<name>] [key=value ...] (see README.md)."""

import hydra
from omegaconf import DictConfig

from fibml.config import register_resolvers
from fibml.pipelines.train import train_objective

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_objective(cfg)  # the value of cfg.optimized_metric: what a sweep optimises


if __name__ == "__main__":
    main()
