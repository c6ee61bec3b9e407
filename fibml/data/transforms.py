"""Intensity normalisation and albumentations augmentation for (channel, *spatial) patches."""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "Augmentation",
    "normalize_channels",
    "normalize_stack",
    "percentile_range",
    "percentile_step",
    "scale_to_unit",
    "stack_percentiles",
]


def normalize_stack(stack: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale a (z, y, x) stack to [0, 1] between its low and high percentiles (clipped).

    Per stack, because detector gain and brightness differ between voltages, sessions and
    microscopes; synthetic and real data then share one intensity scale. Stacks too large for
    memory get the same scaling slice by slice from stack_percentiles and
    fibml.inference.NormalizedStack, which share these helpers.
    """
    stack = np.asarray(stack, dtype=np.float32)
    lo, hi = percentile_range(stack[:: percentile_step(stack.shape[0])], low, high)
    return scale_to_unit(stack, lo, hi)


def stack_percentiles(stack, low: float = 0.5, high: float = 99.5, max_values: int = 2**24) -> tuple:
    """The (low, high) percentiles normalize_stack scales a stack by, read lazily.

    stack: anything with .shape (z, y, x) whose [z] gives a slice (a LazyStack, an array).
    The same slices as normalize_stack are sampled (every max(1, z // 64)-th); when they hold
    more than max_values pixels, rows and columns are strided too (every r-th, the smallest r
    that fits), so memory stays near 4 * max_values bytes. Without striding the result equals
    normalize_stack's exactly (one shared helper computes both). ValueError, naming the stack,
    when the sample has NaN / inf pixels or no contrast.
    """
    n_z, n_y, n_x = stack.shape
    zs = range(0, n_z, percentile_step(n_z))
    stride = 1
    while len(zs) * (-(-n_y // stride)) * (-(-n_x // stride)) > max_values:
        stride += 1
    sample = np.empty((len(zs), -(-n_y // stride), -(-n_x // stride)), dtype=np.float32)
    for i, z in enumerate(zs):
        sample[i] = stack[z][::stride, ::stride]
    what = str(getattr(stack, "path", "stack"))
    if not np.isfinite(sample).all():
        raise ValueError(f"{what}: stack contains {np.count_nonzero(~np.isfinite(sample))} NaN or inf pixels")
    return percentile_range(sample, low, high, what=what)


def percentile_step(n_slices: int) -> int:
    """Every how many slices the percentiles are sampled: large stacks stay fast."""
    return max(1, n_slices // 64)


def percentile_range(sample, low: float = 0.5, high: float = 99.5, what: str = "stack") -> tuple:
    """The (low, high) percentiles of a sample of a stack's pixels (taken as float32).

    ValueError when they coincide (no contrast).
    """
    lo, hi = np.percentile(np.asarray(sample, dtype=np.float32), [low, high])
    if hi <= lo:
        raise ValueError(f"{what} has no contrast between its {low} and {high} percentiles ({lo} .. {hi})")
    return lo, hi


def scale_to_unit(array, lo, hi) -> np.ndarray:
    """Map lo..hi to 0..1, clipped, as float32 (any part of a stack: one slice, a crop).

    In float32 arithmetic, in place on one new array: a 3072 x 2048 slice takes 15 ms, against
    90 ms when NumPy promotes to float64 for lo and hi. The same function scales whole stacks
    (normalize_stack) and single slices (predict's NormalizedStack), so both agree exactly.
    """
    lo, span = np.float32(lo), np.float32(hi) - np.float32(lo)
    out = np.subtract(array, lo, dtype=np.float32)
    out /= span
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_channels(stacks, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Network input from one (z, y, x) stack per voltage: (channel, z, y, x), each normalised."""
    return np.stack([normalize_stack(stack, low, high) for stack in stacks])


class Augmentation:
    """Apply an albumentations transform identically to every channel and to the mask.

    2D/2.5D patches (C, H, W) become one H x W x C image; 3D patches (C, D, H, W) become
    H x W x (C*D) with a H x W x D mask, so every slice and voltage sees the same flip,
    rotation and crop.

    albumentations draws from its own generators; they are re-seeded from torch's seed of the
    current process, which Lightning's seed_everything(workers=True) sets per DataLoader
    worker, so a seeded run augments the same way every time and each worker differently.
    """

    def __init__(self, transform):
        self.transform = transform
        self._seed: int | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seed = torch.initial_seed() % 2**32
        if seed != self._seed:  # first call in this process or worker
            self.transform.set_random_seed(seed)
            self._seed = seed
        spatial = image.shape[1:]
        channels = image.reshape(-1, *spatial[-2:])  # (C or C*D, H, W)
        layers = mask.reshape(-1, *spatial[-2:])  # (1 or D, H, W)
        out = self.transform(
            image=np.ascontiguousarray(channels.transpose(1, 2, 0)),
            mask=np.ascontiguousarray(layers.transpose(1, 2, 0)),
        )
        h, w = out["image"].shape[:2]
        new_image = out["image"].reshape(h, w, -1).transpose(2, 0, 1).reshape(*image.shape[:-2], h, w)
        new_mask = out["mask"].reshape(h, w, -1).transpose(2, 0, 1).reshape(*mask.shape[:-2], h, w)
        return new_image, new_mask
