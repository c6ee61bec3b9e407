"""Lightning callbacks of fibml."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl

__all__ = ["CONFIG_KEY", "EmbedRunConfig"]

CONFIG_KEY = "fibml_config"


class EmbedRunConfig(pl.Callback):
    """Store the run's resolved config in every checkpoint, so evaluate.py and predict.py
    rebuild exactly the trained model (and its data settings) wherever the file goes."""

    def __init__(self, config: Mapping):
        self.config = dict(config)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CONFIG_KEY] = self.config
