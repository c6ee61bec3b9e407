"""The backscatter ANN (cyclegan-simulation-domain-adaptation.txt, 2.3): (Z, E, depth) -> eta.

A LightningModule (no file access) that regresses the backscatter coefficient eta of a material of
atomic number Z under an epoxy layer of a given depth (nm) at beam energy E (keV) with an MSE
loss, and applies the trained net to physical inputs (predict_eta), for the depth-weighted
preprocessing of fibml.synth.preprocess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, R2Score

from fibml.data.backscatter import FEATURE_SCALE, scale_features
from fibml.protocols import BACKSCATTER
from fibml.tasks.optim import optimizer_config

__all__ = ["BackscatterTask"]


class BackscatterTask(pl.LightningModule):
    """Train a net on (features (B, 3), eta (B, 1)) batches with the mean squared error.

    net: any nn.Module (B, 3) -> (B, 1), e.g. fibml.nets.mlp.MLP (the paper's 16-32-32-32 ANN).
    optimizer / scheduler: partials completed here (Hydra `_partial_: true`); the scheduler
        (ReduceLROnPlateau) watches `scheduler_monitor`.
    feature_scale: divisors of (Z, E keV, depth nm) that made the training features
        (fibml.data.backscatter.scale_features); must equal the datamodule's.
    Logs train/loss, val/loss, val/r2, val/rmse (and test/... in trainer.test) per epoch.
    """

    task: ClassVar[str] = BACKSCATTER  # fibml.protocols: the ML simulation's eta model

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_monitor: str = "val/loss",
        feature_scale: Sequence[float] = FEATURE_SCALE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.feature_scale = tuple(float(s) for s in feature_scale)
        self.loss = nn.MSELoss()
        self.r2 = nn.ModuleDict({stage: R2Score() for stage in ("val", "test")})
        self.rmse = nn.ModuleDict({stage: MeanSquaredError(squared=False) for stage in ("val", "test")})

    def setup(self, stage: str | None = None) -> None:
        # the features are made by the datamodule and read by predict_eta: one scaling for both
        datamodule = getattr(self._trainer, "datamodule", None)
        theirs = getattr(datamodule, "feature_scale", None)
        if theirs is not None and tuple(float(s) for s in theirs) != self.feature_scale:
            raise ValueError(
                f"model.feature_scale {list(self.feature_scale)} differs from data.feature_scale {list(theirs)}: "
                f"the ANN would be applied to inputs scaled otherwise than those it learned from"
            )

    def forward(self, x: Tensor) -> Tensor:
        """eta (B, 1) of scaled features (B, 3)."""
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        prediction = self.net(x)
        loss = self.loss(prediction, y)
        self.r2[stage].update(prediction[:, 0], y[:, 0])
        self.rmse[stage].update(prediction[:, 0], y[:, 0])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log(f"{stage}/r2", self.r2[stage], on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/rmse", self.rmse[stage], on_step=False, on_epoch=True)

    @torch.no_grad()
    def predict_eta(self, Z, E_keV, depth_nm) -> np.ndarray:
        """eta of atomic number Z under depth_nm of epoxy at beam energy E_keV: numpy arrays or
        scalars in physical units, broadcast against each other; float64 of the broadcast shape."""
        shape = np.broadcast_shapes(np.shape(Z), np.shape(E_keV), np.shape(depth_nm))
        x = torch.from_numpy(scale_features(Z, E_keV, depth_nm, self.feature_scale))
        parameter = next(self.net.parameters(), None)
        if parameter is not None:
            x = x.to(device=parameter.device, dtype=parameter.dtype)
        was_training = self.net.training
        self.net.eval()
        try:
            eta = self.net(x)[:, 0].double().cpu().numpy()
        finally:
            self.net.train(was_training)
        return eta.reshape(shape)

    def configure_optimizers(self):
        hp = self.hparams
        return optimizer_config(hp.optimizer, hp.scheduler, hp.scheduler_monitor, self.parameters())
