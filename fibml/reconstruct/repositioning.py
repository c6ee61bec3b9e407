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

from dataclasses import dataclass

import numpy as np

from fibml.synth.thickness import check_thicknesses

__all__ = [
    "UNKNOWN",
    "Repositioned",
    "check_binary",
    "check_slices",
    "direct",
    "reposition",
    "reposition_standard",
    "slice_positions",
    "to_grid",
]

# label of grid rows that hold no slice (0 is the pore phase, so it cannot mark "unknown")
UNKNOWN = 255


@dataclass(frozen=True, eq=False)  # eq=False: == on the arrays has no single truth value
class Repositioned:
    """Segmented slices placed on a regular grid in z.

    slices: uint8 (n, y, x) phase labels, as given (0 = pore, 1 = solid, more phases allowed);
    positions: int64 (n,) grid row of every slice, strictly increasing, in [0, n_grid);
    n_grid: rows of the grid (z extent of the output = n_grid x grid_nm);
    grid_nm: grid spacing in z, nm;
    method: how the positions were found ("accurate", "standard", "direct");
    source: int64 (n,) index of every slice in the input stack (default 0..n-1; standard
    repositioning can drop slices that collide).
    """

    slices: np.ndarray
    positions: np.ndarray
    n_grid: int
    grid_nm: float
    method: str
    source: np.ndarray | None = None

    def __post_init__(self) -> None:
        slices = check_slices(self.slices)
        positions = np.asarray(self.positions)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be a 1-D integer array of grid rows, got {positions.dtype} {positions.shape}")
        if len(positions) != len(slices):
            raise ValueError(f"{len(positions)} positions for a stack of {len(slices)} slices")
        n_grid = int(self.n_grid)
        if len(positions) and (positions[0] < 0 or positions[-1] >= n_grid):
            raise ValueError(f"positions must lie in [0, {n_grid}) (n_grid), got {positions[0]}..{positions[-1]}")
        if np.any(np.diff(positions) <= 0):
            i = int(np.flatnonzero(np.diff(positions) <= 0)[0])
            raise ValueError(
                f"positions must be strictly increasing, slice {i + 1} is at row {positions[i + 1]}, "
                f"slice {i} at row {positions[i]}"
            )
        if not np.isfinite(self.grid_nm) or self.grid_nm <= 0:
            raise ValueError(f"grid_nm must be a positive number, got {self.grid_nm}")
        # frozen dataclass: normalised fields are set once here, through object.__setattr__
        object.__setattr__(self, "slices", slices)
        object.__setattr__(self, "positions", positions.astype(np.int64, copy=False))
        object.__setattr__(self, "n_grid", n_grid)
        object.__setattr__(self, "grid_nm", float(self.grid_nm))
        source = np.arange(len(slices)) if self.source is None else np.asarray(self.source)
        if source.shape != positions.shape or not np.issubdtype(source.dtype, np.integer):
            raise ValueError(
                f"source must hold the integer input index of every slice, shape {positions.shape}, "
                f"got {source.dtype} {source.shape}"
            )
        object.__setattr__(self, "source", source.astype(np.int64, copy=False))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_grid, y, x) of the isotropic output."""
        return (self.n_grid, *self.slices.shape[1:])

    def known(self) -> np.ndarray:
        """bool (n_grid,): True on the grid rows that hold a slice."""
        mask = np.zeros(self.n_grid, dtype=bool)
        mask[self.positions] = True
        return mask

    def volume(self, fill: int = UNKNOWN) -> np.ndarray:
        """uint8 (n_grid, y, x): every slice on its row, ``fill`` (255 = unknown) on the rows between."""
        out = np.full(self.shape, fill, dtype=np.uint8)
        out[self.positions] = self.slices
        return out


def reposition(slices, thicknesses_nm, grid_nm: float = 2.5) -> Repositioned:
    """Accurate repositioning: slice i at its cumulative measured depth sum_{j<i} t_j (nm) rounded
    to grid_nm (collisions resolved by ``slice_positions``). slices: (n, y, x) labels;
    thicknesses_nm: (n,) measured thickness of every slice, nm."""
    slices = check_slices(slices)
    t = _check_thickness_count(thicknesses_nm, len(slices))
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
    t = _check_thickness_count(thicknesses_nm, len(slices))
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


def slice_positions(thicknesses_nm, grid_nm: float = 2.5) -> tuple[np.ndarray, int]:
    """Grid positions of the slices and the grid length.

    Slice i starts at depth sum_{j<i} t_j (slice 0 at 0), rounded to the nearest multiple of
    grid_nm (halves round up). A slice that lands on or before the previous slice's position
    moves to the first position after it (the nearest free one that keeps the order). The grid
    holds round(sum t / grid_nm) positions, enough for the last slice's own thickness (and at
    least one past the last position).

    Returns (positions: int64 (n,) strictly increasing, n_grid: int).
    """
    t = check_thicknesses(thicknesses_nm)
    if not np.isfinite(grid_nm) or grid_nm <= 0:
        raise ValueError(f"grid_nm must be a positive number, got {grid_nm}")
    starts = np.concatenate([[0.0], np.cumsum(t)[:-1]]) / grid_nm
    target = np.floor(starts + 0.5 + 1e-9).astype(np.int64)  # halves up, robust to float sums
    positions = target.copy()
    for i in range(1, len(positions)):
        positions[i] = max(positions[i], positions[i - 1] + 1)
    n_grid = max(int(np.floor(t.sum() / grid_nm + 0.5 + 1e-9)), int(positions[-1]) + 1)
    return positions, n_grid


MAX_PHASES = 16  # more distinct labels than this are grey values, not phases


def check_slices(slices) -> np.ndarray:
    """uint8 (n, y, x) view or copy of a stack of segmented slices; ValueError unless it is a
    non-empty 3-D array of integer (or bool) phase labels below MAX_PHASES (255 marks unknown rows)."""
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"slices must be a (z, y, x) stack of label images, got {slices.ndim} dimensions (shape {slices.shape})")
    if slices.size == 0:
        raise ValueError(f"slices are empty (shape {slices.shape})")
    if not (np.issubdtype(slices.dtype, np.integer) or slices.dtype == bool):
        raise ValueError(f"slices must hold integer phase labels, got dtype {slices.dtype} (segment/threshold first)")
    lo, hi = int(slices.min()), int(slices.max())
    if lo < 0 or hi >= UNKNOWN:
        raise ValueError(f"slice labels must be in [0, {UNKNOWN - 1}] ({UNKNOWN} marks unknown rows), got {lo}..{hi}")
    if hi > MAX_PHASES - 1:  # a grey-value image passed where a segmentation belongs
        raise ValueError(
            f"slices hold labels up to {hi}: expected a segmented stack (0 = pore, 1 = solid, at most "
            f"{MAX_PHASES} phases), not grey values; segment the images first (predict.py)"
        )
    return slices.astype(np.uint8, copy=False)


def check_binary(repositioned: Repositioned, what: str = "this interpolation") -> None:
    """ValueError unless every slice label is 0 (pore) or 1 (solid), naming the labels found."""
    if repositioned.slices.max() > 1:  # max first: np.unique sorts the whole stack
        found = np.unique(repositioned.slices).tolist()
        raise ValueError(f"{what} needs binary slices (0 = pore, 1 = solid), found labels {found}")


def _check_thickness_count(thicknesses_nm, n_slices: int) -> np.ndarray:
    t = np.asarray(thicknesses_nm, dtype=np.float64)
    if t.ndim == 1 and len(t) != n_slices:
        raise ValueError(f"{len(t)} thicknesses for a stack of {n_slices} slices")
    return check_thicknesses(t)
