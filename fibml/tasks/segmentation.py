"""Semantic segmentation of FIB-SEM patches (LightningModule; no file access)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from fibml.metrics.confusion import MeanDiceScore, MisplacedPixels, MisplacedSolidPixels
from fibml.protocols import SEGMENTATION
from fibml.tasks.optim import optimizer_config

__all__ = ["SegmentationTask"]


class SegmentationTask(pl.LightningModule):
    """Train a segmentation net (2D, 2.5D or 3D) on (image, label) patches.

    net: any nn.Module mapping (B, C, *spatial) to logits (B, n_classes, *spatial).
    loss: called as loss(logits, target[:, None]) (e.g. monai.losses.DiceLoss with softmax and
        to_onehot_y). optimizer / scheduler: partials completed here (Hydra `_partial_: true`).
    Logs loss and MP / MGP / MDS (fibml.metrics.confusion) per epoch for train and val.
    """

    task: ClassVar[str] = SEGMENTATION  # fibml.protocols: what a pipeline may use the model for

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_monitor: str = "val/loss",
        n_classes: int = 2,
        solid_class: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "loss"])
        self.net, self.loss = net, loss
        metrics = MetricCollection(
            {
                "mp": MisplacedPixels(n_classes),
                "mgp": MisplacedSolidPixels(n_classes, solid_class=solid_class),
                "mds": MeanDiceScore(n_classes),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities (B, n_classes, *spatial): what inference stitches together."""
        return torch.softmax(self.net(x), dim=1)

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, self.val_metrics, "val")

    def _step(self, batch, metrics: MetricCollection, stage: str) -> Tensor:
        x, y = batch
        logits, loss, objective = self.forward_loss(x, y, stage)
        metrics.update(*self.scored_pixels(x, logits.detach().argmax(1), y))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return objective

    def forward_loss(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, the loss logged as <stage>/loss, the objective to minimise); subclasses with
        auxiliary losses (late fusion's branches) return a different objective."""
        logits = self.net(x)
        loss = self.loss(logits, y.unsqueeze(1))
        return logits, loss, loss

    def scored_pixels(self, x: Tensor, prediction: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The (prediction, target) pixels the metrics count: all here; inpainting only the masked rows."""
        return prediction, y

    def parameter_groups(self):
        """What the optimizer updates: all parameters here; subclasses may return param groups."""
        return self.parameters()

    def configure_optimizers(self):
        hp = self.hparams
        return optimizer_config(hp.optimizer, hp.scheduler, hp.scheduler_monitor, self.parameter_groups())
