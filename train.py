"""Train a model: python train.py [experiment=<name>] [key=value ...] (see README.md)."""

import hydra
from omegaconf import DictConfig

from fibml.config import register_resolvers
from fibml.workflows import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None  # what a hyperparameter sweep optimises


if __name__ == "__main__":
    main()
