"""ML inpainting of the missing z rows of a repositioned stack
(slice-thickness-repositioning-inpainting.txt, 2.2.3; the RML pipeline's interpolation).

Every xz plane and every yz plane of the stack is filled by a trained 2D net
(fibml.tasks.inpainting.InpaintingTask), stitched over planes larger than its patch with
Gaussian blending (fibml.sliding_window: MONAI's windows and weights); the xz and yz
probabilities are averaged and arg-maxed. The known rows (the repositioned slices) come back exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fibml.data.inpainting import FILL_VALUE, PLANES, plane_patch
from fibml.sliding_window import sliding_window

__all__ = ["inpaint_volume"]


def inpaint_volume(
    volume: np.ndarray,
    known: np.ndarray,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    planes: Sequence[str] = PLANES,
    patch_size: int | Sequence[int] = 64,
    overlap: float = 0.5,
    batch_size: int = 16,
    sw_batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Fill the unknown z rows of a binary volume; uint8 (z, y, x), 0 = pore, 1 = solid.

    volume: (z, y, x) on the repositioning grid (isotropic voxels); the rows where ``known`` is
        True hold labels 0 / 1, the others anything (e.g. 255).
    known: bool (z,): the grid rows that hold a repositioned slice.
    predictor: maps a (B, 2, h, w) float tensor (plane with unknown rows at 0.5, known-row mask)
        to probabilities (B, 2, h, w), e.g. InpaintingTask.probabilities (on ``device``).
    planes: "xz" (one per y) and / or "yz" (one per x); their probabilities are averaged.
    patch_size: int or (z, w): the net's window, clipped to the plane; overlap: of the window.
    batch_size: planes per call of fibml.sliding_window (memory is bounded by it and by one
        float32 volume); sw_batch_size: windows per predictor call.
    """
    volume = np.asarray(volume)
    known = _check(volume, known, planes)
    if batch_size < 1 or sw_batch_size < 1:
        raise ValueError(f"batch_size and sw_batch_size must be >= 1, got {batch_size} and {sw_batch_size}")
    n_z, n_y, n_x = volume.shape
    device = torch.device(device)
    pz, pw = plane_patch(patch_size)

    # solid minus pore probability, summed over the plane orientations: its sign is the arg-max of the mean
    margin = np.zeros(volume.shape, dtype=np.float32)
    bar = tqdm(total=sum(n_y if p == "xz" else n_x for p in planes), desc="inpaint", unit="plane",
               disable=not progress, leave=False)
    for plane in planes:
        n_planes, width = (n_y, n_x) if plane == "xz" else (n_x, n_y)
        roi = (min(pz, n_z), min(pw, width))  # never larger than the plane, so no padding is needed
        for start in range(0, n_planes, batch_size):
            index = slice(start, min(start + batch_size, n_planes))
            batch = _planes(volume, known, plane, index)  # (B, 2, z, w)
            with torch.no_grad():
                probabilities = sliding_window(torch.from_numpy(batch).to(device), roi, predictor, sw_batch_size,
                                               overlap).cpu()
            if probabilities.shape[1] != 2:
                raise ValueError(f"the predictor returned {probabilities.shape[1]} classes; inpainting needs 2 (pore, solid)")
            solid = (probabilities[:, 1] - probabilities[:, 0]).float().numpy()  # (B, z, w)
            if plane == "xz":
                margin[:, index, :] += solid.transpose(1, 0, 2)
            else:
                margin[:, :, index] += solid.transpose(1, 2, 0)
            bar.update(batch.shape[0])
    bar.close()
    margin /= len(planes)
    filled = (margin > 0).astype(np.uint8)
    filled[known] = volume[known]
    return filled


def _planes(volume: np.ndarray, known: np.ndarray, plane: str, index: slice) -> np.ndarray:
    """(B, 2, z, w) float32 inputs of the xz planes at y = index or the yz planes at x = index:
    the plane with the unknown rows at FILL_VALUE, and the known-row mask."""
    labels = volume[:, index, :].transpose(1, 0, 2) if plane == "xz" else volume[:, :, index].transpose(2, 0, 1)
    rows = known[None, :, None]
    batch = np.empty((labels.shape[0], 2, *labels.shape[1:]), dtype=np.float32)
    batch[:, 0] = np.where(rows, labels, FILL_VALUE)
    batch[:, 1] = rows
    return batch


def _check(volume: np.ndarray, known, planes: Sequence[str]) -> np.ndarray:
    if volume.ndim != 3:
        raise ValueError(f"volume must be (z, y, x), got shape {volume.shape}")
    known = np.asarray(known)
    if known.ndim != 1 or len(known) != volume.shape[0]:
        raise ValueError(f"known must be one flag per z row: {volume.shape[0]} rows, got shape {known.shape}")
    if known.dtype != bool:
        if not np.isin(known, (0, 1)).all():
            raise ValueError(f"known must be bool (or 0 / 1) per z row, got values {np.unique(known)[:10]}")
        known = known.astype(bool)
    if not known.any():
        raise ValueError("no known row: inpainting needs at least one repositioned slice")
    values = np.unique(volume[known])
    if not np.isin(values, (0, 1)).all():
        rows = np.flatnonzero(known)
        bad = rows[[not np.isin(volume[z], (0, 1)).all() for z in rows]]
        raise ValueError(
            f"the known rows must hold binary labels (0 = pore, 1 = solid); found the values "
            f"{values[:10].tolist()} (first bad row z={bad[0]})"
        )
    wrong = [p for p in planes if p not in PLANES]
    if wrong or not len(planes):
        raise ValueError(f"planes must name some of {PLANES}, got {list(planes)}")
    return known
