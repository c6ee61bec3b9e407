"""ML inpainting in z (slice-thickness-repositioning-inpainting.txt, 2.2.3; LightningModule, no file access).

A 2D net sees an xz or yz plane of a repositioned stack: channel 0 the segmented plane with the
missing rows set to 0.5, channel 1 the known-row mask (fibml.data.inpainting). It learns only
the missing rows: the known rows are copied from the input, so the loss and the MP / MGP / MDS
metrics count the masked rows alone, and ``probabilities`` returns the known labels there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from fibml.protocols import INPAINTING
from fibml.tasks.segmentation import SegmentationTask

__all__ = ["IMAGE_CHANNEL", "KNOWN_CHANNEL", "InpaintingTask", "MaskedDiceCELoss", "known_rows"]

IMAGE_CHANNEL, KNOWN_CHANNEL = 0, 1  # the input layout of fibml.data.inpainting.inpainting_input


class InpaintingTask(SegmentationTask):
    """Train a 2D net (2 input channels, 2 classes) to fill the masked rows of label planes.

    loss: called as loss(logits, target, unknown) with unknown a bool (B, h, w) mask of the
        pixels to learn (e.g. MaskedDiceCELoss). Other arguments as SegmentationTask's.
    """

    task: ClassVar[str] = INPAINTING  # not a segmentation of images: predict.py and evaluate.py refuse it

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
        if n_classes != 2:
            raise ValueError(f"inpainting fills binary planes (0 = pore, 1 = solid): n_classes must be 2, got {n_classes}")
        super().__init__(net, loss, optimizer, scheduler, scheduler_monitor, n_classes, solid_class)

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> Tensor:
        """Softmax probabilities (B, 2, h, w) of the net, with the known rows set to the one-hot of
        their known label: inference never changes an imaged row."""
        probabilities = torch.softmax(self.net(x), dim=1)
        known = known_rows(x)[:, None]
        labels = (x[:, IMAGE_CHANNEL] > 0.5).long()
        one_hot = F.one_hot(labels, probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
        return torch.where(known, one_hot, probabilities)

    def forward_loss(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.net(x)
        loss = self.loss(logits, y, ~known_rows(x))
        return logits, loss, loss

    def scored_pixels(self, x: Tensor, prediction: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The metrics count the masked pixels only: the known rows are copied, not predicted."""
        unknown = ~known_rows(x)
        return prediction[unknown], y[unknown]


class MaskedDiceCELoss(nn.Module):
    """dice_weight x soft Dice + ce_weight x cross-entropy, over the pixels of `mask` only.

    Dice (both phases, pooled over the batch, as the segmentation models) is insensitive to the
    low solid fraction of nanoporous gold (~12 %); cross-entropy gives every masked pixel its own
    gradient, which keeps early training stable (the nnU-Net default pairs them the same way).
    Pixels outside the mask contribute nothing, whatever the net predicts there.
    forward(logits (B, C, *spatial), target (B, *spatial) int, mask (B, *spatial) bool) -> scalar.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 with a positive sum, got dice {dice_weight}, ce {ce_weight}")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        # masked probabilities and one-hot targets go in, so Dice sums over the masked pixels only
        self.dice = DiceLoss(batch=True, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        if target.shape != logits.shape[:1] + logits.shape[2:] or mask.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
                "must be (B, C, *spatial), (B, *spatial), (B, *spatial)"
            )
        n_classes = logits.shape[1]
        target = torch.where(mask, target, torch.zeros_like(target))  # outside the mask: any valid class
        weight = mask[:, None].to(logits.dtype)
        one_hot = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(logits.dtype)
        dice = self.dice(torch.softmax(logits, dim=1) * weight, one_hot * weight)
        pixels = F.cross_entropy(logits, target.long(), reduction="none")
        ce = (pixels * mask).sum() / mask.sum().clamp(min=1)
        return self.dice_weight * dice + self.ce_weight * ce


def known_rows(x: Tensor) -> Tensor:
    """bool (B, h, w): the pixels of the input's known rows (channel 1 of the inpainting input)."""
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"inpainting input must be (B, 2, h, w) (plane, known mask), got {tuple(x.shape)}")
    return x[:, KNOWN_CHANNEL] > 0.5
