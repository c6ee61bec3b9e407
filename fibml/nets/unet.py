"""Dimension-generic residual U-Net for FIB-SEM segmentation (2D, 2.5D and 3D).

Tensors are (B, C, y, x) in 2D and (B, C, z, y, x) in 3D; z is the milling (slice) axis.
2.5D is the 2D net fed k adjacent slices as input channels; with several detector
voltages the channels are voltages x slices (e.g. 3 voltages x 7 slices = 21 channels).
``encode``/``decode`` are public so fusion networks can run one encoder per voltage and
concatenate the feature maps before decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResidualUNet"]

_NORMS = ("batch", "instance", "group")


class ResidualUNet(nn.Module):
    """Residual U-Net; ``forward`` returns logits (B, out_channels, *spatial) of the input's spatial size.

    Args:
        in_channels: input channels (slices x voltages for 2.5D).
        out_channels: number of classes (logits, no activation).
        spatial_dims: 2 or 3.
        features: channels of each stage, shallow to deep.
        strides: down-sampling factor between consecutive stages, ``len(features) - 1`` entries,
            each an int or a per-axis tuple in (z, y, x) order, e.g. (1, 2, 2) for anisotropic voxels.
            Default 2 everywhere.
        kernel_size: odd int or per-axis tuple of odd ints.
        n_blocks: residual blocks per encoder stage and per decoder level.
        norm: "batch", "instance" (affine) or "group" (up to 8 groups).
        dropout: channel-dropout probability inside each residual block (0 disables it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        features: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_size: int | Sequence[int] = 3,
        n_blocks: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers = _Layers(spatial_dims, norm, dropout)
        features = [int(f) for f in features]
        if not features:
            raise ValueError("features must name at least one stage")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        if strides is None:
            strides = [2] * (len(features) - 1)
        if len(strides) != len(features) - 1:
            raise ValueError(
                f"need len(strides) == len(features) - 1 = {len(features) - 1}, got {len(strides)} strides"
            )
        kernel = _per_axis(kernel_size, spatial_dims, "kernel_size")
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel}")
        self.spatial_dims = spatial_dims
        self.features = tuple(features)
        self.strides = tuple(_per_axis(s, spatial_dims, "stride") for s in strides)

        self.encoder = nn.ModuleList()
        for i, ch in enumerate(features):
            in_ch = in_channels if i == 0 else features[i - 1]
            stride = (1,) * spatial_dims if i == 0 else self.strides[i - 1]
            self.encoder.append(_stage(in_ch, ch, n_blocks, kernel, stride, layers))

        # Decoder level i (deep to shallow) brings stage i+1 up to stage i and refines the concatenation.
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(features) - 1)):
            s = self.strides[i]
            self.upsamplers.append(layers.up(features[i + 1], features[i], kernel_size=s, stride=s))
            self.decoder.append(_stage(2 * features[i], features[i], n_blocks, kernel, (1,) * spatial_dims, layers))
        self.head = layers.conv(features[0], out_channels, kernel_size=1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Feature maps of every stage, shallow (full resolution) to deep."""
        maps = []
        for stage in self.encoder:
            x = stage(x)
            maps.append(x)
        return maps

    def decode(self, features: list[Tensor]) -> Tensor:
        """Logits (B, out_channels, *spatial) at the resolution of ``features[0]``."""
        x = features[-1]
        for up, stage, skip in zip(self.upsamplers, self.decoder, reversed(features[:-1])):
            x = up(x)
            # Odd sizes: stride-2 conv rounds up, so the up-sampled map can be one voxel larger than the skip.
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = stage(torch.cat([x, skip], dim=1))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


class _ResidualBlock(nn.Module):
    """conv-norm-ReLU-[dropout]-conv-norm + shortcut, then ReLU; the first conv carries the stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        layers: _Layers,
    ) -> None:
        super().__init__()
        padding = tuple(k // 2 for k in kernel_size)
        self.conv1 = layers.conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm1 = layers.norm(out_channels)
        self.drop = layers.dropout() if layers.dropout_p > 0 else nn.Identity()
        self.conv2 = layers.conv(out_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm2 = layers.norm(out_channels)
        if in_channels != out_channels or any(s != 1 for s in stride):
            # 1x1 projection with the same stride gives exactly the main path's output size (ceil(n / s)).
            self.shortcut = nn.Sequential(
                layers.conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                layers.norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(F.relu(self.norm1(self.conv1(x))))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class _Layers:
    """Conv/transposed-conv/norm/dropout constructors for one spatial dimensionality, chosen once."""

    def __init__(self, spatial_dims: int, norm: str, dropout: float) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {_NORMS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        self.dropout_p = dropout
        drop_cls = {2: nn.Dropout2d, 3: nn.Dropout3d}[spatial_dims]
        self.dropout = lambda: drop_cls(dropout)
        self.norm: Callable[[int], nn.Module] = {
            "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims],
            "instance": lambda ch: {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](ch, affine=True),
            "group": lambda ch: nn.GroupNorm(_n_groups(ch), ch),
        }[norm]


def _stage(in_ch: int, out_ch: int, n_blocks: int, kernel, stride, layers: _Layers) -> nn.Sequential:
    ones = (1,) * len(stride)
    return nn.Sequential(
        *(
            _ResidualBlock(in_ch if b == 0 else out_ch, out_ch, kernel, stride if b == 0 else ones, layers)
            for b in range(n_blocks)
        )
    )


def _per_axis(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    value = (int(value),) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name} {value} has {len(value)} entries, expected {spatial_dims} (one per axis)")
    if any(v < 1 for v in value):
        raise ValueError(f"{name} entries must be >= 1, got {value}")
    return value


def _n_groups(channels: int) -> int:
    # min(8, ch) when that divides ch, else the largest divisor <= 8, so any channel count is valid.
    return max(g for g in range(1, 9) if channels % g == 0)
