"""Multi-voltage fusion networks (multi-voltage-multimodal-fusion.txt, section 2.2 and appendix 1).

The input is the patch the datamodule serves: voltage-major channels, (B, n_voltages * c, *spatial)
with c = 1 in 2D and 3D and c = n_adjacent slices in 2.5D. Every network here is built from the
one dimension-generic :class:`~fibml.nets.unet.ResidualUNet`, so each works in 2D, 2.5D and 3D.

- early fusion: all voltages as input channels of one U-Net (:func:`early_fusion`);
- intermediate fusion: one U-Net branch per voltage producing feature maps, concatenated and
  classified by a head of two convolutions (to 64 channels, then a 1x1 classifier)
  (:class:`IntermediateFusion`);
- late fusion: one full segmentation U-Net per voltage; their class probabilities are
  concatenated and an ensemble layer (a 1x1 convolution, or a convex voting over voltages)
  gives the final logits (:class:`LateFusion`). Training in two stages is the job of
  :class:`fibml.tasks.fusion.LateFusionTask`.

The number of voltages (branches) is whatever the data has: 2 detectors or 4 voltages work too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fibml.nets.unet import ResidualUNet

__all__ = ["IntermediateFusion", "LateFusion", "early_fusion", "split_voltages"]

ENSEMBLES = ("conv", "voting")


def split_voltages(x: Tensor, n_voltages: int) -> tuple[Tensor, ...]:
    """The per-voltage inputs of a voltage-major batch (B, n_voltages * c, ...)."""
    if x.shape[1] % n_voltages:
        raise ValueError(f"input has {x.shape[1]} channels, not a multiple of {n_voltages} voltages")
    return x.chunk(n_voltages, dim=1)


def early_fusion(n_voltages: int, channels_per_voltage: int = 1, **unet) -> ResidualUNet:
    """Early fusion: one residual U-Net whose input channels are every voltage's slices."""
    return ResidualUNet(in_channels=n_voltages * channels_per_voltage, **unet)


class IntermediateFusion(nn.Module):
    """One U-Net branch per voltage, its full-resolution features concatenated and classified.

    Args:
        branch: builds one branch (e.g. ``functools.partial(ResidualUNet, in_channels=7,
            spatial_dims=2, features=[16, 32])``) given ``out_channels``; called n_voltages times,
            so the branches have equal architectures and separate weights.
        n_voltages: number of branches.
        n_classes: classes of the output logits.
        branch_channels: feature maps each branch hands to the head.
        head_channels: width of the head's first convolution (the paper: 64).
        spatial_dims: 2 or 3 (2.5D is 2).
    """

    def __init__(
        self,
        branch: Callable[..., nn.Module],
        n_voltages: int,
        n_classes: int = 2,
        branch_channels: int = 16,
        head_channels: int = 64,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        _check_branches(n_voltages)
        conv = _conv(spatial_dims)
        norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        self.n_voltages = n_voltages
        self.branches = nn.ModuleList(branch(out_channels=branch_channels) for _ in range(n_voltages))
        self.head = nn.Sequential(
            conv(n_voltages * branch_channels, head_channels, kernel_size=3, padding=1, bias=False),
            norm(head_channels),
            nn.ReLU(inplace=True),
            conv(head_channels, n_classes, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        parts = split_voltages(x, self.n_voltages)
        return self.head(torch.cat([b(p) for b, p in zip(self.branches, parts)], dim=1))


class LateFusion(nn.Module):
    """One segmentation net per voltage; an ensemble layer combines their class probabilities.

    Args:
        branch: builds one single-voltage segmentation net mapping (B, c, *spatial) to
            (B, n_classes, *spatial) logits; called ``n_voltages`` times.
        n_voltages: number of branches, in the order of the input's voltage channels.
        n_classes: classes of every branch and of the output.
        spatial_dims: 2 or 3 (2.5D is 2).
        ensemble: "conv", a 1x1 convolution over the concatenated probabilities (appendix 1 of
            the paper), or "voting", a convex combination p = sum_v w_v p_v with w = softmax(a)
            (the voting layer from which the paper reads 0.5 / 0.3 / 0.2 for 1 / 2 / 4 kV).

    ``forward`` returns logits: for "voting" log(p), so softmax gives the vote p back.
    """

    def __init__(
        self,
        branch: Callable[[], nn.Module],
        n_voltages: int,
        n_classes: int = 2,
        spatial_dims: int = 2,
        ensemble: str = "conv",
    ) -> None:
        super().__init__()
        _check_branches(n_voltages)
        if ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
        self.n_voltages, self.n_classes, self.ensemble_kind = n_voltages, n_classes, ensemble
        self.branches = nn.ModuleList(branch() for _ in range(n_voltages))
        if ensemble == "conv":
            self.ensemble = _conv(spatial_dims)(n_voltages * n_classes, n_classes, kernel_size=1)
            # Start as the average of the branch votes (identity blocks, scaled so that unanimous
            # branches give a confident 0.98): training refines a sensible ensemble, not a random one.
            with torch.no_grad():
                eye = torch.eye(n_classes).repeat(1, n_voltages) * (4.0 / n_voltages)
                self.ensemble.weight.copy_(eye.reshape(self.ensemble.weight.shape))
                self.ensemble.bias.zero_()
        else:
            self.ensemble = _Voting(n_voltages)

    def branch_logits(self, x: Tensor) -> list[Tensor]:
        """Each branch's logits on its own voltage's channels."""
        return [b(p) for b, p in zip(self.branches, split_voltages(x, self.n_voltages))]

    def combine(self, probabilities: Sequence[Tensor]) -> Tensor:
        """Ensemble logits from the branches' class probabilities."""
        if self.ensemble_kind == "voting":
            return self.ensemble(probabilities)
        return self.ensemble(torch.cat(list(probabilities), dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.combine([torch.softmax(z, dim=1) for z in self.branch_logits(x)])

    @torch.no_grad()
    def voltage_weights(self) -> list[float]:
        """The learned weight of each voltage (branch), normalised to sum to 1.

        voting: the softmax weights themselves. conv: how much a branch's vote for class c raises
        the logit of c above the other classes' logits, averaged over c,
        a_v = mean_c (W[c, v, c] - mean_{c' != c} W[c', v, c]), then a / sum(a). For two classes
        this is the branch's coefficient on the solid-vs-pore logit difference, so it reads
        exactly like a voting weight.
        """
        if self.ensemble_kind == "voting":
            return self.ensemble.weights().tolist()
        n, c = self.n_voltages, self.n_classes
        w = self.ensemble.weight.detach().reshape(c, n, c).double()  # (out class, voltage, in class)
        own = torch.stack([w[k, :, k] for k in range(c)])  # (c, n)
        others = torch.stack([(w[:, :, k].sum(0) - w[k, :, k]) / max(c - 1, 1) for k in range(c)])
        a = (own - others).mean(0)
        total = a.sum()
        if total.abs() < 1e-12:
            return [float("nan")] * n
        return (a / total).tolist()


class _Voting(nn.Module):
    def __init__(self, n_voltages: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_voltages))

    def weights(self) -> Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, probabilities: Sequence[Tensor]) -> Tensor:
        vote = sum(w * p for w, p in zip(self.weights(), probabilities))
        return torch.log(vote.clamp_min(1e-7))


def _check_branches(n_voltages: int) -> None:
    if n_voltages < 1:
        raise ValueError(f"a fusion net needs at least one voltage (branch), got {n_voltages}")


def _conv(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]

