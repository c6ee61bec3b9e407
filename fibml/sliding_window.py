"""Sliding-window inference with Gaussian blending, vectorised over the windows.

MONAI's sliding_window_inference places the windows and weighs them with a Gaussian, so
blended predictions have no seams; but it cuts every window out and adds it back with its own
Python statements, about ten tensor operations per window. A 3072 x 2048 slice at patch 64 and
overlap 0.5 has 5985 windows: on one CPU thread MONAI's bookkeeping took 0.35 s per slice with
a trivial net (benchmarks/inference_overhead.py), and on a GPU, where the net itself is fast,
those per-window launches are what the prediction waits for.

`sliding_window` computes the same thing with a few operations per *batch* of windows:

- the same windows: MONAI's own placement (monai.data.utils.dense_patch_slices with the stride
  of its _get_scan_interval: multiples of int(p * (1 - overlap)), the last moved back flush with
  the end), padded like MONAI when an axis is shorter than the patch;
- the same weights: MONAI's compute_importance_map (Gaussian, sigma 0.125 patch, clamped away
  from zero), and the same normalisation by the summed weights;
- the windows are sorted into groups of windows that do not overlap one another (along each
  axis, interleaved progressions of the window grid, plus MONAI's last window when it lies off
  the grid). A group's windows are a strided view of the image (Tensor.unfold with a step of at
  least the patch), so a batch of them (a rectangular block of the group's window grid) is cut
  out with one copy and its weighted probabilities are added back into a view of the output
  with one in-place addition. No voxel is written twice in one addition, so there are no atomic
  operations and a rerun gives the same bits, on a GPU too.

It agrees with MONAI's to float32 rounding (the contributions to a voxel are added in group
order, MONAI adds them in window order); tests/test_sliding_window.py compares the two. Works for
any number of spatial dimensions; fibml uses it for 2D and 2.5D slices, where windows are many
and cheap (3D windows are few and expensive, and predict_to_disk's 3D blocks rely on MONAI's
exact summation order to equal the whole-volume result, see fibml.inference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import Tensor

__all__ = ["batch_blocks", "scan_interval", "sliding_window", "window_groups", "window_starts"]

SIGMA_SCALE = 0.125  # MONAI's default Gaussian width, as a fraction of the patch


def scan_interval(size: int, patch: int, overlap: float) -> int:
    """MONAI's window stride along an axis (sliding_window_inference's _get_scan_interval): an
    axis no longer than the patch (padded to it) gets one window."""
    if size <= patch:
        return patch
    return max(1, int(patch * (1 - overlap)))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Where MONAI starts its windows along an axis of `size` (its own dense_patch_slices)."""
    padded = max(size, patch)
    slices = dense_patch_slices((padded,), (patch,), (scan_interval(size, patch, overlap),))
    return [s[0].start for s in slices]


def window_groups(size: int, patch: int, overlap: float) -> list[tuple[int, int, int]]:
    """MONAI's windows along an axis (window_starts) as groups (first start, step, count) of
    windows that do not overlap one another: the grid windows (multiples of the stride s) in
    ceil(patch / s) interleaved progressions of step ceil(patch / s) * s, and the last window,
    when MONAI moved it back off the grid, in a group of its own."""
    starts = window_starts(size, patch, overlap)
    stride = scan_interval(size, patch, overlap)
    grid = [w for w in starts if w % stride == 0]
    off_grid = [w for w in starts if w % stride != 0]
    n_groups = -(-patch // stride)
    groups = [(grid[i], n_groups * stride, len(grid[i::n_groups])) for i in range(min(n_groups, len(grid)))]
    return groups + [(w, patch, 1) for w in off_grid]


def batch_blocks(counts: Sequence[int], sw_batch_size: int) -> list[tuple[slice, ...]]:
    """Rectangular blocks of a window grid of `counts` windows per axis, each of at most
    sw_batch_size windows (at least one): whole trailing axes, as many rows of the next as fit."""
    n_dims = len(counts)
    block = [1] * n_dims
    inner = 1
    for axis in reversed(range(n_dims)):
        block[axis] = max(1, min(counts[axis], sw_batch_size // inner))
        if block[axis] < counts[axis]:
            break
        inner *= counts[axis]
    return [
        tuple(slice(a, min(a + b, n)) for a, b, n in zip(corner, block, counts))
        for corner in product(*(range(0, n, b) for n, b in zip(counts, block)))
    ]


def _windows_view(tensor: Tensor, group: Sequence[tuple[int, int, int]], patch: Sequence[int]) -> Tensor:
    """The group's windows of tensor (..., *spatial) as a view (..., *counts, *patch); they do
    not overlap, so adding into the view in place is safe."""
    n_lead = tensor.ndim - len(patch)
    crop = tuple(slice(first, first + (count - 1) * step + p) for (first, step, count), p in zip(group, patch))
    view = tensor[(slice(None),) * n_lead + crop]
    for axis, ((_, step, _), p) in enumerate(zip(group, patch)):
        view = view.unfold(n_lead + axis, p, step)  # window-count axis in place, patch axis at the end
    return view


def sliding_window(
    inputs: Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[Tensor], Tensor],
    sw_batch_size: int,
    overlap: float = 0.5,
    padding_mode: str = "reflect",
) -> Tensor:
    """Gaussian-blended sliding-window prediction of `inputs` (B, C, *spatial), on its device.

    predictor maps windows (n, C, *roi_size) to (n, K, *roi_size); the result is (B, K,
    *spatial), float32 (or wider when the predictor returns wider). Like MONAI's
    sliding_window_inference(inputs, roi_size, sw_batch_size, predictor, overlap,
    mode="gaussian", padding_mode=padding_mode), see the module docstring.
    """
    n_dims = inputs.ndim - 2
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != n_dims:
        raise ValueError(f"roi_size {roi} does not match inputs of shape {tuple(inputs.shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    size = tuple(inputs.shape[2:])
    pad = []  # F.pad order: last axis first; MONAI's split (half before, the rest after)
    for axis in reversed(range(n_dims)):
        diff = max(roi[axis] - size[axis], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        inputs = F.pad(inputs, pad, mode=padding_mode)
    padded = tuple(inputs.shape[2:])
    n_images, n_channels = inputs.shape[:2]
    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=SIGMA_SCALE, device=inputs.device,
                                    dtype=torch.float32)
    total = torch.zeros(padded, dtype=torch.float32, device=inputs.device)
    out = None
    for group in product(*(window_groups(n, p, overlap) for n, p in zip(padded, roi))):
        _windows_view(total, group, roi).add_(weight)
        counts = [count for _, _, count in group]
        for image, block in product(range(n_images), batch_blocks(counts, sw_batch_size)):
            windows = _windows_view(inputs[image], group, roi)[(slice(None), *block)]  # (C, *n, *roi)
            n = windows.shape[1 : 1 + n_dims]
            batch = windows.movedim(0, n_dims).reshape(-1, n_channels, *roi)  # (prod(n), C, *roi), a copy
            probabilities = predictor(batch)
            if probabilities.shape[0] != batch.shape[0] or tuple(probabilities.shape[2:]) != roi:
                raise ValueError(f"the predictor returned {tuple(probabilities.shape)} for windows of "
                                 f"{tuple(batch.shape)}; expected (n, classes, *roi) for n windows")
            if out is None:
                dtype = torch.promote_types(probabilities.dtype, torch.float32)
                out = torch.zeros((n_images, probabilities.shape[1], *padded), dtype=dtype, device=inputs.device)
            contribution = (probabilities.to(out.dtype) * weight).reshape(*n, -1, *roi).movedim(n_dims, 0)
            _windows_view(out[image], group, roi)[(slice(None), *block)].add_(contribution)
    out /= total
    if any(pad):
        crop = [slice(pad[2 * (n_dims - 1 - a)], pad[2 * (n_dims - 1 - a)] + size[a]) for a in range(n_dims)]
        out = out[(slice(None), slice(None), *crop)]
    return out
