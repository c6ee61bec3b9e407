"""Lightning callbacks of fibml."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl

from fibml.checkpoints import CONFIG_KEY, DATA_KEY, LOGGERS_KEY
from fibml.data.datamodules import FIBSEMDataModule

__all__ = ["EmbedRunConfig"]


class EmbedRunConfig(pl.Callback):
    """Store the run's resolved config in every checkpoint, so evaluate.py and predict.py
    rebuild exactly the trained model (and its data settings) wherever the file goes; and the
    loggers' run ids, so that `ckpt_path=...` continues the same wandb run (a CSV log gets a new
    version per launch: see fibml.checkpoints.prepare_resume). A segmentation's checkpoint also
    keeps the voxel size of its training data (DATA_KEY), which predict.py compares with the
    pixel size of the stacks it is given."""

    def __init__(self, config: Mapping):
        self.config = dict(config)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[LOGGERS_KEY] = {type(logger).__name__: logger.version for logger in trainer.loggers}
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, FIBSEMDataModule) and datamodule.dataset is not None:
            checkpoint[DATA_KEY] = {"voxel_size_nm": [float(v) for v in datamodule.dataset.voxel_size_nm],
                                    "dataset": str(datamodule.dataset_path)}
