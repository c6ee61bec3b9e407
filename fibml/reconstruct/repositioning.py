"""Slice repositioning (slice-thickness-repositioning-inpainting.txt, section 2.2.2).

Every slice is placed at its cumulative measured depth, rounded to a grid (2.5 nm: the in-plane
voxel size, so the result is isotropic); where rounding puts two slices on one position, the
later one moves to the nearest free position after it, so no slice is lost and their order is kept.

Three ways to place a stack of n segmented slices (n, y, x) in z, as in Table 1 of the paper:

- ``reposition``: accurate repositioning on the fine grid (2.5 nm), for RNN / RCS / RML;
- ``reposition_standard``: depths rounded to the target-thickness grid (10 nm), for SRCS; there
  a row that several slices round onto keeps the nearest one (see its docstring for why);
- ``direct``: no thickness used, slice i at i x target (10 nm), for DNN.

Each returns a ``Repositioned``: the slices and their grid rows, with the grid rows in between
unknown. ``to_grid`` re-expresses a coarse (10 nm) placement on the fine grid, so every case is
interpolated onto the same isotropic 2.5 nm output (fibml.baselines.interpolation for nearest
neighbour and cubic spline, fibml.reconstruct.inpainting for the ML method; the whole pipelines
are fibml.reconstruct.classical.reconstruct).
"""

from __future__ import annotations

import numpy as np

from fibml.geometry import Repositioned, check_slices, check_thickness_count, slice_positions

__all__ = ["direct", "reposition", "reposition_standard", "to_grid"]


def reposition(slices, thicknesses_nm, grid_nm: float = 2.5) -> Repositioned:
    """Accurate repositioning: slice i at its cumulative measured depth sum_{j<i} t_j (nm) rounded
    to grid_nm (collisions resolved by ``slice_positions``). slices: (n, y, x) labels;
    thicknesses_nm: (n,) measured thickness of every slice, nm."""
    slices = check_slices(slices)
    t = check_thickness_count(thicknesses_nm, len(slices))
    positions, n_grid = slice_positions(t, grid_nm)
    return Repositioned(slices, positions, n_grid, grid_nm, "accurate")


def reposition_standard(
    slices, thicknesses_nm, target_nm: float = 10.0, collisions: str = "keep_nearest"
) -> Repositioned:
    """Standard repositioning (the SRCS case): slice i at its cumulative measured depth rounded
    to the grid of the target slice thickness (10 nm). Interpolate after ``to_grid(result, 2.5)``.

    collisions: what happens when several slices round onto one 10 nm row.
    "keep_nearest" (default): the row keeps the slice whose depth is nearest to it (ties: the
    earlier one), the others are dropped (``source`` says which slices were kept), as when a
    stack is resampled onto a regular grid. "shift": the accurate rule of ``slice_positions``
    (later slices move forward), which keeps every slice but, on a grid as coarse as the mean
    thickness, lets the shift pile up with depth like a random walk: n slices need n rows while
    their depths span n x 10 nm +- sqrt(n) x 5 nm (on 240 nm deep synthetic stacks SRCS then
    scores about as badly as DNN, against the paper's Table 3).
    """
    slices = check_slices(slices)
    t = check_thickness_count(thicknesses_nm, len(slices))
    if collisions == "shift":
        positions, n_grid = slice_positions(t, target_nm)
        return Repositioned(slices, positions, n_grid, target_nm, "standard")
    if collisions != "keep_nearest":
        raise ValueError(f"collisions must be 'keep_nearest' or 'shift', got {collisions!r}")
    if not np.isfinite(target_nm) or target_nm <= 0:
        raise ValueError(f"target_nm must be a positive number, got {target_nm}")
    depth = np.concatenate([[0.0], np.cumsum(t)[:-1]]) / target_nm
    rows = np.floor(depth + 0.5 + 1e-9).astype(np.int64)  # halves up, as slice_positions
    order = np.lexsort((np.arange(len(t)), np.abs(depth - rows), rows))  # by row, then distance, then index
    first = np.concatenate([[True], rows[order][1:] != rows[order][:-1]])
    kept = np.sort(order[first])
    n_grid = max(int(np.floor(t.sum() / target_nm + 0.5 + 1e-9)), int(rows[-1]) + 1)
    return Repositioned(slices[kept], rows[kept], n_grid, target_nm, "standard", source=kept)


def direct(slices, target_nm: float = 10.0) -> Repositioned:
    """No repositioning (the DNN case): slice i at row i of a grid of the target thickness, as if
    every slice were exactly target_nm (10 nm) thick. Interpolate after ``to_grid(result, 2.5)``."""
    slices = check_slices(slices)
    n = len(slices)
    return Repositioned(slices, np.arange(n, dtype=np.int64), n, target_nm, "direct")


def to_grid(repositioned: Repositioned, grid_nm: float) -> Repositioned:
    """The same placement on a finer grid: rows x (coarse / fine), n_grid x (coarse / fine).

    The grid spacing of ``repositioned`` must be an integer multiple of grid_nm (10 nm -> 2.5 nm:
    x 4); ValueError otherwise. The new rows between the slices are unknown.
    """
    if not np.isfinite(grid_nm) or grid_nm <= 0:
        raise ValueError(f"grid_nm must be a positive number, got {grid_nm}")
    ratio = repositioned.grid_nm / grid_nm
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-9 * max(1.0, ratio):
        raise ValueError(
            f"cannot move a {repositioned.grid_nm} nm grid onto a {grid_nm} nm grid: the ratio "
            f"{ratio:g} is not a whole number >= 1"
        )
    return Repositioned(
        repositioned.slices,
        repositioned.positions * factor,
        repositioned.n_grid * factor,
        grid_nm,
        repositioned.method,
        repositioned.source,
    )
