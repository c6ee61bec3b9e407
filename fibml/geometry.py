"""Slices along z: where milled slices of measured thickness lie on a grid, and the checks of
slice stacks and thickness lists that synthesis, repositioning and the file readers share.

The layer's leaf: it imports nothing of fibml, so fibml.io, fibml.synth and fibml.reconstruct
can all use it (docs/architecture.md). Axis order (z, y, x); thicknesses and grids in nm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_PHASES",
    "UNKNOWN",
    "Repositioned",
    "check_binary",
    "check_slices",
    "check_thickness_count",
    "check_thicknesses",
    "slice_positions",
]

# label of grid rows that hold no slice (0 is the pore phase, so it cannot mark "unknown")
UNKNOWN = 255
MAX_PHASES = 16  # more distinct labels than this are grey values, not phases


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


def check_thickness_count(thicknesses_nm, n_slices: int) -> np.ndarray:
    """check_thicknesses, and ValueError unless a list of thicknesses has one per slice of the stack."""
    t = np.asarray(thicknesses_nm, dtype=np.float64)
    if t.ndim == 1 and len(t) != n_slices:
        raise ValueError(f"{len(t)} thicknesses for a stack of {n_slices} slices")
    return check_thicknesses(t)


def check_thicknesses(thicknesses_nm, n_slices: int | None = None, where: str = "thicknesses") -> np.ndarray:
    """float64 (n,) thicknesses; ValueError naming ``where`` for a wrong length, non-finite,
    zero or negative values."""
    t = np.asarray(thicknesses_nm, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"{where}: expected a list of slice thicknesses in nm, got shape {t.shape}")
    if n_slices is not None and len(t) != n_slices:
        raise ValueError(f"{where} lists {len(t)} thicknesses, the stack has {n_slices} slices")
    bad = np.flatnonzero(~np.isfinite(t) | (t <= 0))
    if len(bad):
        raise ValueError(
            f"{where}: slice thicknesses must be positive, slice {bad[0]} has {t[bad[0]]} nm "
            f"({len(bad)} bad value(s))"
        )
    return t
