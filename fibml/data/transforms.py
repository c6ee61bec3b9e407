"""Intensity normalisation and albumentations augmentation for (channel, *spatial) patches."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Augmentation", "normalize_channels", "normalize_stack"]


def normalize_stack(stack: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale a (z, y, x) stack to [0, 1] between its low and high percentiles (clipped).

    Per stack, because detector gain and brightness differ between voltages, sessions and
    microscopes; synthetic and real data then share one intensity scale.
    """
    stack = np.asarray(stack, dtype=np.float32)
    step = max(1, stack.shape[0] // 64)  # percentiles of a sub-sample: large stacks stay fast
    lo, hi = np.percentile(stack[::step], [low, high])
    if hi <= lo:
        raise ValueError(f"stack has no contrast between its {low} and {high} percentiles ({lo} .. {hi})")
    return np.clip((stack - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


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
