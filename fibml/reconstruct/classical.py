"""Isotropic volumes from a segmented stack of slices of varying thickness: the classical cases of
Table 1 of slice-thickness-repositioning-inpainting.txt (RNN, RCS, DNN, SRCS).

A case is a placement of the slices in z (fibml.reconstruct.repositioning) followed by an
interpolation onto the isotropic output grid:

=====  ============================================  ==============================
case   placement                                     interpolation
=====  ============================================  ==============================
RNN    accurate repositioning on the 2.5 nm grid     nearest neighbour (slab)
RCS    accurate repositioning on the 2.5 nm grid     cubic spline (holes fixed)
DNN    none: slice i at i x 10 nm                    nearest neighbour (slab)
SRCS   standard repositioning on the 10 nm grid      cubic spline (holes fixed)
=====  ============================================  ==============================

It lives apart from repositioning.py because it needs the interpolators of
fibml.baselines.interpolation (placement and interpolation only share fibml.geometry.Repositioned).
The ML case (RML) is added by registering its interpolator, any ``f(Repositioned) -> uint8 (n_grid, y, x)``, e.g.
``PIPELINES["RML"] = ("accurate", lambda rep: inpaint_volume(rep.volume(), rep.known(), ...))``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from fibml.baselines.interpolation import interpolate_nearest, interpolate_spline
from fibml.geometry import Repositioned
from fibml.reconstruct.repositioning import (
    direct,
    reposition,
    reposition_standard,
    to_grid,
)

__all__ = ["PIPELINES", "place", "reconstruct", "slab_nearest"]

# case -> (placement: "accurate" | "standard" | "direct", interpolator)
# Nearest neighbour in the paper's sense: each slice image stands for the slab it was milled
# from, down to the next slice (rule "previous"). That reproduces its ratio RCS / RNN (3.12 / 4.89
# MP; here 5.3 / 8.4); the midpoint rule ("nearest") ties with the spline (5.2 MP), since a
# column-wise spline through 0/1 values crosses 0.5 near the midpoint too.
slab_nearest = partial(interpolate_nearest, rule="previous")
PIPELINES: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "RNN": ("accurate", slab_nearest),
    "RCS": ("accurate", interpolate_spline),
    "DNN": ("direct", slab_nearest),
    "SRCS": ("standard", interpolate_spline),
}


def reconstruct(
    slices,
    thicknesses_nm=None,
    method: str = "RCS",
    grid_nm: float = 2.5,
    target_nm: float = 10.0,
    **interpolation_options,
) -> np.ndarray:
    """uint8 (n_grid, y, x) isotropic volume on a grid_nm (2.5 nm) grid in z.

    slices: (n, y, x) segmented labels (0 = pore, 1 = solid; the spline cases need binary
    slices); thicknesses_nm: (n,) measured slice thicknesses in nm (unused, may be None, for
    DNN); method: a key of PIPELINES; target_nm: the nominal slice thickness (10 nm) that DNN
    assumes and SRCS repositions on. interpolation_options go to the interpolator (e.g.
    fix_holes=False for the spline cases).
    """
    if method not in PIPELINES:
        raise ValueError(f"method must be one of {sorted(PIPELINES)}, got {method!r}")
    placement, interpolator = PIPELINES[method]
    return interpolator(place(slices, thicknesses_nm, placement, grid_nm, target_nm), **interpolation_options)


def place(slices, thicknesses_nm, placement: str, grid_nm: float = 2.5, target_nm: float = 10.0) -> Repositioned:
    """The slices placed on the grid_nm output grid: "accurate" (reposition on grid_nm),
    "standard" (reposition on target_nm, then to_grid) or "direct" (i x target_nm, then to_grid)."""
    if placement == "direct":
        return to_grid(direct(slices, target_nm), grid_nm)
    if thicknesses_nm is None:
        raise ValueError(f"{placement} repositioning needs the measured slice thicknesses, got None")
    if placement == "accurate":
        return reposition(slices, thicknesses_nm, grid_nm)
    if placement == "standard":
        return to_grid(reposition_standard(slices, thicknesses_nm, target_nm), grid_nm)
    raise ValueError(f"placement must be 'accurate', 'standard' or 'direct', got {placement!r}")
