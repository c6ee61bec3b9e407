"""CycleGAN for unpaired image translation (cyclegan-simulation-domain-adaptation.txt, 2.2-2.4; no file access).

Domain a is the source (preprocessed synthetic images for ML simulation, synthetic images for
domain adaptation), domain b the target (Monte Carlo or real images). Batches are dicts
{"a": (B, C, y, x), "b": (B, C, y, x)} of unpaired images scaled to [-1, 1]
(fibml.data.unpaired.UnpairedDataModule). Losses as Zhu et al.'s CycleGAN: LSGAN (MSE against
1 / 0), cycle L1 weighted by lambda_cycle, identity L1 weighted by lambda_identity * lambda_cycle,
discriminators fed generated images through 50-image pools, their loss halved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from fibml.nets.gan import ImagePool
from fibml.protocols import TRANSLATION

__all__ = ["DIRECTIONS", "CycleGANTask", "linear_decay"]

DIRECTIONS = ("ab", "ba")
POOLS_KEY = "cyclegan_image_pools"  # where the checkpoint keeps the discriminators' image pools


class CycleGANTask(pl.LightningModule):
    """Train two generators (a -> b, b -> a) and two PatchGAN discriminators with manual optimization.

    generator_ab / generator_ba: nn.Modules (B, C, y, x) -> (B, C, y, x) in [-1, 1] (e.g.
        fibml.nets.gan.UNetGenerator). discriminator_a / discriminator_b: (B, C, y, x) -> logit map
        (fibml.nets.gan.PatchDiscriminator); discriminator_a judges domain a.
    optimizer: a partial (Hydra `_partial_: true`) completed twice: one optimizer for both
        generators, one for both discriminators (CycleGAN: Adam, lr 2e-4, betas (0.5, 0.999)).
    scheduler: an optional partial completed with each optimizer, stepped once per epoch:
        `linear_decay` (CycleGAN) or ReduceLROnPlateau (the paper, Table 1), which reads
        `scheduler_monitor` (val/loss by default).
    scheduler_epoch_steps: the length of the scheduler's epoch in training iterations (batches),
        when it should not be the data's epoch: the scheduler is then stepped only at the end of a
        data epoch in which the iteration count crossed a multiple of it (so at most once per data
        epoch). The paper's patience of 10 epochs means 10 x 25,088 iterations (its appendix C); on
        a dataset of a few hundred patches, stepping every data epoch would cut the learning rate
        after about 1 % of that. None: every data epoch.
    lambda_cycle: weight of the cycle L1 loss; lambda_identity: identity L1 weight relative to it.
    pool_size: images in each discriminator's history pool (0 disables the pools); seed seeds them.

    Logs train/loss_g (= loss_gan + loss_cycle + loss_identity, the weighted terms), train/loss_d,
    and val/cycle (mean L1 error of a -> b -> a and b -> a -> b, in [-1, 1] units) as val/loss.
    """

    task: ClassVar[str] = TRANSLATION  # fibml.protocols: predict.py task=translate runs it

    def __init__(
        self,
        generator_ab: nn.Module,
        generator_ba: nn.Module,
        discriminator_a: nn.Module,
        discriminator_b: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_epoch_steps: int | None = None,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        seed: int = 0,
    ):
        super().__init__()
        if scheduler_epoch_steps is not None and scheduler_epoch_steps < 1:
            raise ValueError(f"scheduler_epoch_steps must be a positive number of iterations or None, got "
                             f"{scheduler_epoch_steps}")
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError(
                f"loss weights must be >= 0, got lambda_cycle {lambda_cycle}, lambda_identity {lambda_identity}"
            )
        self.save_hyperparameters(
            logger=False, ignore=["generator_ab", "generator_ba", "discriminator_a", "discriminator_b"]
        )
        self.automatic_optimization = False
        self.generator_ab, self.generator_ba = generator_ab, generator_ba
        self.discriminator_a, self.discriminator_b = discriminator_a, discriminator_b
        # pool_a holds generated a images (from generator_ba) for discriminator_a, pool_b the b images
        self.pool_a = ImagePool(pool_size, seed=seed)
        self.pool_b = ImagePool(pool_size, seed=seed + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.generator_ab(x)

    @torch.no_grad()
    def translate(self, x: Tensor, direction: str = "ab") -> Tensor:
        """The generator's output for images x (B, C, y, x) in [-1, 1]: "ab" maps a to b, "ba" b to a.

        The modules keep their mode: call .eval() first when the generators use dropout or batch norm.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        generator = self.generator_ab if direction == "ab" else self.generator_ba
        return generator(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        real_a, real_b = _domains(batch)
        optimizer_g, optimizer_d = self.optimizers()
        n = len(real_a)

        # generators: fool both discriminators, close both cycles; discriminators stay frozen here
        self.toggle_optimizer(optimizer_g)
        fake_b, fake_a = self.generator_ab(real_a), self.generator_ba(real_b)
        loss_gan = _lsgan(self.discriminator_b(fake_b), True) + _lsgan(self.discriminator_a(fake_a), True)
        cycle = F.l1_loss(self.generator_ba(fake_b), real_a) + F.l1_loss(self.generator_ab(fake_a), real_b)
        loss_cycle = self.hparams.lambda_cycle * cycle
        loss_identity = torch.zeros((), device=real_a.device)
        if self.hparams.lambda_identity > 0:
            if real_a.shape[1] != real_b.shape[1]:
                raise ValueError(
                    f"the identity loss needs as many channels in a as in b, got {real_a.shape[1]} and "
                    f"{real_b.shape[1]}: set model.lambda_identity=0"
                )
            identity = F.l1_loss(self.generator_ab(real_b), real_b) + F.l1_loss(self.generator_ba(real_a), real_a)
            loss_identity = self.hparams.lambda_identity * self.hparams.lambda_cycle * identity
        loss_g = loss_gan + loss_cycle + loss_identity
        optimizer_g.zero_grad()
        self.manual_backward(loss_g)
        optimizer_g.step()
        self.untoggle_optimizer(optimizer_g)

        # discriminators: real -> 1, generated (from the history pools) -> 0, halved to slow D against G
        self.toggle_optimizer(optimizer_d)
        pooled_a, pooled_b = self.pool_a.query(fake_a.detach()), self.pool_b.query(fake_b.detach())
        loss_d_a = 0.5 * (_lsgan(self.discriminator_a(real_a), True) + _lsgan(self.discriminator_a(pooled_a), False))
        loss_d_b = 0.5 * (_lsgan(self.discriminator_b(real_b), True) + _lsgan(self.discriminator_b(pooled_b), False))
        loss_d = loss_d_a + loss_d_b
        optimizer_d.zero_grad()
        self.manual_backward(loss_d)
        optimizer_d.step()
        self.untoggle_optimizer(optimizer_d)

        self.log(
            "train/loss_g", loss_g.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True
        )
        losses = {"loss_d": loss_d, "loss_gan": loss_gan, "loss_cycle": loss_cycle, "loss_identity": loss_identity}
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=True, batch_size=n,
            sync_dist=True,
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        real_a, real_b = _domains(batch)
        cycle_a = F.l1_loss(self.generator_ba(self.generator_ab(real_a)), real_a)
        cycle_b = F.l1_loss(self.generator_ab(self.generator_ba(real_b)), real_b)
        cycle = 0.5 * (cycle_a + cycle_b)
        for name in ("val/cycle", "val/loss"):
            self.log(name, cycle, on_step=False, on_epoch=True, prog_bar=name == "val/loss", batch_size=len(real_a),
                     sync_dist=True)
        return cycle

    def configure_optimizers(self):
        generators = [*self.generator_ab.parameters(), *self.generator_ba.parameters()]
        discriminators = [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()]
        optimizers = [self.hparams.optimizer(params=generators), self.hparams.optimizer(params=discriminators)]
        if self.hparams.scheduler is None:
            return optimizers
        # plain schedulers: with manual optimization Lightning does not step them (on_train_epoch_end does)
        return optimizers, [self.hparams.scheduler(optimizer=o) for o in optimizers]

    def on_train_epoch_end(self) -> None:
        # this epoch's validation has run by now, so a plateau scheduler sees its val/loss
        schedulers = self.lr_schedulers()
        if schedulers is None or not self._scheduler_epoch_ended():
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(self._monitored())
            else:
                scheduler.step()

    def _scheduler_epoch_ended(self) -> bool:
        """Whether this data epoch ends a scheduler epoch (see scheduler_epoch_steps)."""
        steps = self.hparams.scheduler_epoch_steps
        if steps is None:
            return True
        progress = self.trainer.fit_loop.epoch_loop.batch_progress  # restored with the loops on a resume
        done, this_epoch = progress.total.completed, progress.current.completed
        return done // steps > (done - this_epoch) // steps

    def _monitored(self) -> Tensor:
        monitor = self.hparams.scheduler_monitor
        metrics = self.trainer.callback_metrics
        if monitor not in metrics:
            raise ValueError(
                f"the LR scheduler monitors {monitor!r}, which was not logged "
                f"(found: {', '.join(sorted(metrics)) or 'none'}): run validation every epoch or set "
                "model.scheduler_monitor"
            )
        return metrics[monitor]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[POOLS_KEY] = {"a": self.pool_a.state_dict(), "b": self.pool_b.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pools = checkpoint.get(POOLS_KEY)
        if pools is not None:  # checkpoints written before the pools were saved start with empty pools
            self.pool_a.load_state_dict(pools["a"])
            self.pool_b.load_state_dict(pools["b"])


def linear_decay(optimizer: torch.optim.Optimizer, n_constant: int = 100, n_decay: int = 100) -> LambdaLR:
    """CycleGAN's "linear" policy, stepped per epoch: the initial LR for n_constant epochs, then
    linearly down to LR / (n_decay + 1) over the next n_decay epochs, 0 after them (a Hydra partial)."""
    if n_constant < 0 or n_decay < 0:
        raise ValueError(f"n_constant and n_decay must be >= 0, got {n_constant} and {n_decay}")
    return LambdaLR(optimizer, _LinearDecay(n_constant, n_decay))


class _LinearDecay:
    """The LR factor of linear_decay; a class, not a lambda, so the scheduler's state_dict keeps it."""

    def __init__(self, n_constant: int, n_decay: int) -> None:
        self.n_constant, self.n_decay = int(n_constant), int(n_decay)

    def __call__(self, epoch: int) -> float:
        # past the schedule the factor would turn negative: hold it at 0
        return max(0.0, 1.0 - max(0, epoch + 1 - self.n_constant) / float(self.n_decay + 1))


def _lsgan(logits: Tensor, real: bool) -> Tensor:
    """LSGAN loss: mean squared distance of the discriminator's outputs from 1 (real) or 0 (generated)."""
    return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))


def _domains(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, dict) or "a" not in batch or "b" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"CycleGAN batches are dicts {{'a': images, 'b': images}}, got {found}")
    return batch["a"], batch["b"]
