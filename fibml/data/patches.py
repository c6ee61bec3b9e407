"""Patch datasets over aligned (channel, z, y, x) stacks: 2D, 2.5D and 3D, sliding window.

2D: one slice of every channel. 2.5D: k adjacent slices (k odd) of every channel stacked as
input channels (voltage-major), the label of the centre slice. 3D: a (pz, py, px) block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DIMS",
    "PatchDataset",
    "context_indices",
    "patch_shape",
    "patch_starts",
    "split_z_blocks",
]

DIMS = ("2d", "2.5d", "3d")


class PatchDataset(Dataset):
    """Sliding-window patches of `images` (C, Z, Y, X) with the matching `labels` (Z, Y, X).

    z_range: the slices this dataset may take targets from (a split's block). Context slices
    of 2.5D inputs may come from outside it (they are images, not labels).
    transform: callable (image (C', *spatial), mask (*spatial)) -> (image, mask), numpy.
    Items: (float32 tensor (C', *spatial), int64 tensor (*spatial)).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        z_range: range,
        dims: str = "2d",
        patch_size: int | Sequence[int] = 64,
        stride: int | Sequence[int] = 32,
        n_adjacent: int = 7,
        transform: Callable | None = None,
    ):
        if images.ndim != 4:
            raise ValueError(f"images must be (channel, z, y, x), got shape {images.shape}")
        if labels is not None and labels.shape != images.shape[1:]:
            raise ValueError(f"labels shape {labels.shape} differs from the images' {images.shape[1:]}")
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {DIMS}, got {dims!r}")
        if dims == "2.5d" and (n_adjacent < 1 or n_adjacent % 2 == 0):
            raise ValueError(f"n_adjacent must be a positive odd number, got {n_adjacent}")
        self.images, self.labels, self.dims = images, labels, dims
        self.n_adjacent = n_adjacent if dims == "2.5d" else 1
        self.transform = transform
        self.patch = patch_shape(patch_size, dims)
        strides = patch_shape(stride, dims)
        _, _, n_y, n_x = images.shape
        y0 = patch_starts(n_y, self.patch[-2], strides[-2], "rows")
        x0 = patch_starts(n_x, self.patch[-1], strides[-1], "columns")
        if dims == "3d":
            z0 = [z_range.start + s for s in patch_starts(len(z_range), self.patch[0], strides[0], "slices of the split")]
        else:
            z0 = list(z_range)
        grid = np.meshgrid(z0, y0, x0, indexing="ij")
        self.index = np.stack([g.ravel() for g in grid], axis=1)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        z, y, x = (int(v) for v in self.index[i])
        py, px = self.patch[-2:]
        if self.dims == "3d":
            zs = slice(z, z + self.patch[0])
            image = self.images[:, zs, y : y + py, x : x + px]
            mask = self.labels[zs, y : y + py, x : x + px] if self.labels is not None else None
        else:
            ctx = context_indices(z, self.n_adjacent, self.images.shape[1])
            image = self.images[:, ctx, y : y + py, x : x + px].reshape(-1, py, px)
            mask = self.labels[z, y : y + py, x : x + px] if self.labels is not None else None
        if mask is None:
            mask = np.zeros(image.shape[-len(self.patch):], dtype=np.uint8)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
        )


def patch_shape(patch_size: int | Sequence[int], dims: str) -> tuple[int, ...]:
    """(py, px) for 2D/2.5D, (pz, py, px) for 3D, from an int or a sequence."""
    n = 3 if dims == "3d" else 2
    if isinstance(patch_size, (int, np.integer)):
        return (int(patch_size),) * n
    size = tuple(int(s) for s in patch_size)
    if len(size) == 3 and n == 2:
        size = size[1:]  # a (z, y, x) patch given to a 2D net: use its in-plane size
    if len(size) != n:
        raise ValueError(f"patch size {size} does not fit {dims} patches (expected {n} sizes)")
    return size


def patch_starts(size: int, patch: int, stride: int, what: str = "pixels") -> list[int]:
    """Window starts along one axis: every `stride`, plus one flush with the end, covering it all."""
    if patch > size:
        raise ValueError(f"patch of {patch} does not fit in {size} {what}: use a smaller patch size")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def context_indices(z: int, n_adjacent: int, n_slices: int) -> np.ndarray:
    """Indices of the k slices centred on z, mirrored at the ends of the stack."""
    offsets = np.arange(n_adjacent) - n_adjacent // 2
    index = np.abs(z + offsets)  # mirror below 0
    return np.where(index > n_slices - 1, 2 * (n_slices - 1) - index, index).clip(0, n_slices - 1)


def split_z_blocks(
    n_slices: int,
    train: float = 0.7,
    val: float = 0.15,
    test: float = 0.15,
    gap: int = 8,
    periodic: bool = False,
) -> dict[str, range]:
    """Split slices into train / val / test blocks of consecutive z, `gap` slices between them.

    Neighbouring slices are strongly correlated, so a gap keeps them from leaking across
    splits; for a periodic volume the last slice neighbours the first, so a gap closes it too.
    """
    fractions = np.array([train, val, test], dtype=float)
    if np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions.tolist()}")
    usable = n_slices - gap * (2 + int(periodic))
    if usable < 3:
        raise ValueError(f"{n_slices} slices are too few for three splits with gaps of {gap}")
    sizes = np.floor(fractions / fractions.sum() * usable).astype(int)
    sizes[0] += usable - sizes.sum()
    if np.any((sizes < 1) & (fractions > 0)):  # floors can leave a requested split empty
        raise ValueError(
            f"{n_slices} slices are too few for three splits with gaps of {gap}: "
            f"train / val / test would get {sizes.tolist()} slices"
        )
    blocks, start = {}, 0
    for name, size in zip(("train", "val", "test"), sizes):
        blocks[name] = range(start, start + int(size))
        start += int(size) + gap
    return blocks
