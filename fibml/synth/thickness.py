"""Varying slice thickness of FIB milling: gamma-distributed thicknesses on a fine grid.

slice-thickness-repositioning-inpainting.txt (section 2.1.2) draws each slice thickness from a
gamma distribution discretised into bins of 2.5 nm (the voxel size of the isotropic ground
truth), for a target thickness of 10 nm, with shape and scale fitted to thicknesses measured
by the ruler-based and the ASV methods. The paper does not print the fitted values; the
default here, shape 4 (a coefficient of variation of 0.5), gives a histogram like its Fig. 3A.

The *mimicking* dataset (same section): slice i of a stack milled with thicknesses t takes the
geometry of the slice of the isotropic *original* volume at the depth where milled slice i
starts, sum_{j<i} t_j. Such a stack looks evenly spaced (every slice "is" target_nm thick) but
is not: the repositioning (fibml.reconstruct.repositioning) puts its slices back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fibml.geometry import check_thicknesses, slice_positions

__all__ = [
    "fit_gamma",
    "mimic_stack",
    "sample_thicknesses",
    "slices_that_fit",
    "thickness_table",
]


def sample_thicknesses(
    n_slices: int,
    target_nm: float = 10.0,
    shape: float = 4.0,
    bin_nm: float = 2.5,
    seed: int | None = 0,
) -> np.ndarray:
    """Thicknesses (nm) of n_slices milled slices: gamma(shape, scale = target_nm / shape)
    draws (mean target_nm), rounded to the nearest multiple of bin_nm and at least one bin
    (a slice is never thinner than the grid: the paper's N_s x 2.5 nm, N_s >= 1). float64 (n,)."""
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    for value, name in ((target_nm, "target_nm"), (shape, "shape"), (bin_nm, "bin_nm")):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value}")
    rng = np.random.default_rng(seed)
    draws = rng.gamma(shape, target_nm / shape, size=int(n_slices))
    return np.maximum(np.round(draws / bin_nm), 1.0) * bin_nm


def fit_gamma(thicknesses_nm: Sequence[float]) -> tuple[float, float]:
    """(shape, scale in nm) of the gamma distribution fitted to measured thicknesses by maximum
    likelihood, location fixed at 0 (scipy.stats.gamma.fit: a tested MLE)."""
    from scipy import stats

    t = check_thicknesses(thicknesses_nm)
    if len(t) < 2 or np.all(t == t[0]):
        raise ValueError(f"fitting a gamma distribution needs at least two different thicknesses, got {t.tolist()}")
    shape, _, scale = stats.gamma.fit(t, floc=0.0)
    return float(shape), float(scale)


def mimic_stack(volume: np.ndarray, thicknesses_nm, fine_nm: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """The *mimicking* stack: what FIB tomography with slice thicknesses thicknesses_nm records
    of an isotropic volume.

    volume: (Z, y, x) labels or images with voxel size fine_nm (nm) along z.
    thicknesses_nm: (n,) milled slice thicknesses (nm).
    Slice i of the output is volume[z_index[i]], the original slice at the depth where milled
    slice i starts: z_index[i] = round(sum_{j<i} t_j / fine_nm), with the rounding and the
    collision rule of fibml.geometry.slice_positions (thicknesses that are
    multiples of fine_nm never collide).

    Returns (stack: (n, y, x), volume's dtype; z_index: int64 (n,)). ValueError when the milled
    slices run past the volume's depth (saying how many fit, see slices_that_fit) or for bad
    thicknesses.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"mimic_stack: expected a (z, y, x) volume, got shape {volume.shape}")
    t = check_thicknesses(thicknesses_nm)
    z_index, n_grid = slice_positions(t, fine_nm)
    depth = volume.shape[0]
    if n_grid > depth:
        fit = slices_that_fit(t, depth, fine_nm)
        raise ValueError(
            f"the {len(t)} slice thicknesses span {t.sum():g} nm ({n_grid} slices of {fine_nm:g} nm), "
            f"the volume is {depth} slices deep ({depth * fine_nm:g} nm): only the first {fit} slices fit"
        )
    return volume[z_index], z_index


def slices_that_fit(thicknesses_nm, depth: int, fine_nm: float = 2.5) -> int:
    """How many leading slices of thicknesses_nm (nm) a volume of depth fine slices (its
    shape[0], voxel size fine_nm along z) holds: the largest k whose milled extent, the
    repositioning grid of the first k slices (slice_positions(t[:k], fine_nm)[1]), is at most
    depth. 0 when not even the first slice fits."""
    t = check_thicknesses(thicknesses_nm)
    positions, _ = slice_positions(t, fine_nm)
    # grid length of every prefix, as slice_positions computes it for t[:k]
    ends = np.floor(np.cumsum(t) / fine_nm + 0.5 + 1e-9).astype(np.int64)
    n_grid = np.maximum(ends, positions + 1)
    return int(np.count_nonzero(n_grid <= int(depth)))


def thickness_table(thicknesses_nm, z_index=None, fine_nm: float = 2.5) -> list[dict]:
    """One row per slice for thickness.csv: {"slice": i, "thickness_nm": t_i, "z_nm": start depth}.

    z_nm is the depth (nm) where slice i starts: sum_{j<i} t_j, or z_index[i] * fine_nm when the
    grid indices of mimic_stack are given (the depth the slice's geometry was taken from).
    """
    t = check_thicknesses(thicknesses_nm)
    if z_index is None:
        z_nm = np.concatenate([[0.0], np.cumsum(t)[:-1]])
    else:
        z_index = np.asarray(z_index)
        if z_index.shape != t.shape:
            raise ValueError(f"z_index has {z_index.size} entries, thicknesses_nm lists {len(t)} slices")
        z_nm = z_index * float(fine_nm)
    return [
        {"slice": i, "thickness_nm": float(ti), "z_nm": float(zi)} for i, (ti, zi) in enumerate(zip(t, z_nm))
    ]
