"""Late-fusion training in two stages, in one LightningModule (no file access).

multi-voltage-multimodal-fusion.txt, section 2.2.3: the per-voltage branches are "initially
trained and optimized"; then their output probabilities train the ensemble layer. Here:

- stage 1 (epochs < ``branch_epochs``): every branch learns from its own Dice loss on its own
  voltage, exactly as a single-voltage model would (the branches share no weights, and Adam is
  per-parameter, so summing their losses trains each independently). The ensemble learns at
  the same time from the branches' *detached* probabilities, so no ensemble gradient reaches a
  branch;
- stage 2 (epochs >= ``branch_epochs``): the branches are frozen (learning rate 0, batch norm in
  eval mode) and only the ensemble layer trains, on the final branches' outputs.

With branches loaded from single-voltage checkpoints (``model.branch_ckpts``), ``branch_epochs``
is 0: only the ensemble trains, which is the paper's procedure. Frozen branches then run forward
only, without an autograd graph (their parameters stop requiring gradients before DDP wraps the
model), so a step costs the branches' inference and not their backward pass. Under DDP, branches
that trained in stage 1 keep the graph in stage 2 with a loss of weight 0, because DDP expects a
gradient in every step for every parameter it registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from fibml.channels import channel_label
from fibml.nets.fusion import LateFusion
from fibml.tasks.segmentation import SegmentationTask

__all__ = ["LateFusionTask"]


class LateFusionTask(SegmentationTask):
    """Segmentation with a :class:`~fibml.nets.fusion.LateFusion` net, trained in two stages.

    Args (besides SegmentationTask's):
        branch_epochs: epochs in which the branches train; from then on they are frozen.
        ensemble_lr: learning rate of the ensemble layer (it has a handful of weights, which
            move too slowly at the branches' 1e-4); None = the optimizer's own.
        voltages: kV of the branches, in the input's channel order, for the logged names.
    """

    def __init__(
        self,
        net: LateFusion,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_monitor: str = "val/loss",
        n_classes: int = 2,
        solid_class: int = 1,
        branch_epochs: int = 70,
        ensemble_lr: float | None = None,
        voltages: Sequence[float] | None = None,
    ):
        if not isinstance(net, LateFusion):
            raise TypeError(f"LateFusionTask needs a fibml.nets.fusion.LateFusion net, got {type(net).__name__}")
        if branch_epochs < 0:
            raise ValueError(f"branch_epochs must be >= 0, got {branch_epochs}")
        if voltages is not None and len(voltages) != net.n_voltages:
            raise ValueError(f"{len(voltages)} voltages {list(voltages)} for {net.n_voltages} branches")
        super().__init__(net, loss, optimizer, scheduler, scheduler_monitor, n_classes, solid_class)
        self.branch_epochs = int(branch_epochs)
        if self.branch_epochs == 0:  # frozen from the start: no gradients, so no backward through them
            self.net.branches.requires_grad_(False)
        self.names = [channel_label(v) for v in voltages] if voltages is not None else [
            f"branch{i}" for i in range(net.n_voltages)
        ]

    @property
    def branches_frozen(self) -> bool:
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        return epoch >= self.branch_epochs

    def forward_loss(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        target = y.unsqueeze(1)
        with nullcontext() if self._branch_graph_needed() else torch.no_grad():
            branch_logits = self.net.branch_logits(x)
        logits = self.net.combine([torch.softmax(z, dim=1).detach() for z in branch_logits])
        loss = self.loss(logits, target)
        branch_losses = [self.loss(z, target) for z in branch_logits]
        for name, value in zip(self.names, branch_losses):
            self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        weight = 0.0 if self.branches_frozen else 1.0
        return logits, loss, loss + weight * torch.stack(branch_losses).sum()

    def _branch_graph_needed(self) -> bool:
        """Whether the branches' forward pass must build an autograd graph: while they learn, and
        under DDP for branches that were trainable when DDP registered them."""
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self.net.branches.parameters()):
            return False
        if not self.branches_frozen:
            return True
        return self._trainer is not None and self.trainer.world_size > 1

    def on_train_epoch_start(self) -> None:
        if self.branches_frozen:
            for group in self.trainer.optimizers[0].param_groups:
                if group.get("name") == "branches":
                    group["lr"] = 0.0
            self.net.branches.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self._trainer is not None and self.branches_frozen:
            self.net.branches.eval()  # frozen batch-norm statistics stay as the branches learned them
        return self

    def on_validation_epoch_end(self) -> None:
        for name, w in zip(self.names, self.net.voltage_weights()):
            self.log(f"ensemble/weight_{name}", w, sync_dist=False)

    def parameter_groups(self) -> list[dict]:
        ensemble = {"params": list(self.net.ensemble.parameters()), "name": "ensemble"}
        if self.hparams.ensemble_lr is not None:
            ensemble["lr"] = float(self.hparams.ensemble_lr)
        return [{"params": list(self.net.branches.parameters()), "name": "branches"}, ensemble]
