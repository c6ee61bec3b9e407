"""Sliding-window prediction over whole slices and volumes, with Gaussian blending.

MONAI's sliding_window_inference stitches overlapping patches with Gaussian weights, so there
are no seams at patch borders; fibml only arranges the (channel, z, y, x) stack into the
inputs each kind of net expects (2D slices, 2.5D slices with k neighbours, 3D blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from fibml.data.patches import context_indices, patch_shape

__all__ = ["predict_volume", "resolve_device"]


def predict_volume(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    dims: str = "2d",
    patch_size: int | Sequence[int] = 64,
    n_adjacent: int = 7,
    overlap: float = 0.5,
    z_range: range | None = None,
    slices_per_batch: int = 8,
    sw_batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Class probabilities (n_classes, z, y, x) float32 for the slices `z_range` of `images`.

    predictor: maps a (B, C', *patch) tensor to probabilities (B, n_classes, *patch), e.g.
        SegmentationTask.probabilities. images: normalised (channel, z, y, x) stack.
    2.5D inputs take their k neighbours from the whole stack (mirrored at its ends), so the
    slices just outside z_range still serve as context.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (channel, z, y, x), got shape {images.shape}")
    z_range = range(images.shape[1]) if z_range is None else z_range
    device = resolve_device(device)
    roi = patch_shape(patch_size, dims)
    run = lambda batch: sliding_window_inference(  # noqa: E731
        batch.to(device), roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
        padding_mode="reflect", sw_device=device, device="cpu", progress=False,
    )
    if dims == "3d":
        block = torch.from_numpy(np.ascontiguousarray(images[:, z_range.start : z_range.stop]))[None]
        return run(block)[0].numpy().astype(np.float32, copy=False)

    k = n_adjacent if dims == "2.5d" else 1
    out = None
    zs = list(z_range)
    bar = tqdm(total=len(zs), desc="predict", unit="slice", disable=not progress, leave=False)
    for start in range(0, len(zs), slices_per_batch):
        chunk = zs[start : start + slices_per_batch]
        batch = np.stack(
            [images[:, context_indices(z, k, images.shape[1])].reshape(-1, *images.shape[2:]) for z in chunk]
        )
        probs = run(torch.from_numpy(batch)).numpy()
        if out is None:
            out = np.empty((probs.shape[1], len(zs), *images.shape[2:]), dtype=np.float32)
        out[:, start : start + len(chunk)] = probs.transpose(1, 0, 2, 3)
        bar.update(len(chunk))
    bar.close()
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
