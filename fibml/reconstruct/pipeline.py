"""Segmented stack + slice thicknesses -> isotropic volume (slice-thickness-repositioning-inpainting.txt).

The slices are placed in z (accurate repositioning on a fine grid, standard repositioning on the
target grid, or none) and the grid rows between them are interpolated (nearest neighbour, cubic
spline, or the ML inpainting net). The paper's cases are combinations of the two choices:

==========  =============  =========
case        repositioning  method
==========  =============  =========
RNN         accurate       nn
RCS         accurate       spline
RML         accurate       ml
DNN         none           nn
SRCS        standard       spline
==========  =============  =========

Thicknesses come from a CSV (thickness.csv of a dataset folder, or any path) or from ruler marks
in the images (fibml.reconstruct.ruler).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fibml.reconstruct.classical import place, slab_nearest

__all__ = ["CASES", "reconstruct_stack", "thicknesses_from"]

# the paper's named cases: (repositioning, method)
CASES = {"RNN": ("accurate", "nn"), "RCS": ("accurate", "spline"), "RML": ("accurate", "ml"),
         "DNN": ("none", "nn"), "SRCS": ("standard", "spline")}
_PLACEMENT = {"accurate": "accurate", "standard": "standard", "none": "direct"}
METHODS = ("nn", "spline", "ml")


def reconstruct_stack(
    segmentation: np.ndarray,
    thicknesses_nm=None,
    method: str = "spline",
    repositioning: str = "accurate",
    grid_nm: float = 2.5,
    target_nm: float = 10.0,
    inpainter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 (n_grid, y, x) isotropic volume with grid_nm spacing in z.

    segmentation: (n, y, x) labels of the milled slices (binary for spline and ml).
    thicknesses_nm: (n,) measured thicknesses (not needed for repositioning="none").
    method: "nn" (each slice fills its slab down to the next), "spline" (cubic spline in z,
        binarised, holes fixed) or "ml" (the inpainting net: ``inpainter(volume, known)`` fills
        the unknown rows, e.g. a partial of fibml.reconstruct.inpainting.inpaint_volume).
    repositioning: "accurate" (every slice at its measured depth on the grid_nm grid), "standard"
        (on the target_nm grid) or "none" (slice i at i x target_nm).
    """
    if method not in METHODS:
        raise ValueError(f"reconstruct method must be one of {METHODS}, got {method!r}")
    if repositioning not in _PLACEMENT:
        raise ValueError(f"repositioning must be one of {tuple(_PLACEMENT)}, got {repositioning!r}")
    placed = place(segmentation, thicknesses_nm, _PLACEMENT[repositioning], grid_nm, target_nm)
    if method == "nn":
        return slab_nearest(placed)
    if method == "spline":
        from fibml.baselines.interpolation import interpolate_spline

        return interpolate_spline(placed)
    if inpainter is None:
        raise ValueError("method=ml needs the inpainting net: give reconstruct.inpainting_ckpt=<run of experiment=inpainting>")
    from fibml.geometry import check_binary

    check_binary(placed, "ML inpainting")
    return np.asarray(inpainter(placed.volume(), placed.known()), dtype=np.uint8)


def thicknesses_from(source, n_slices: int, folder: str | Path | None = None, band: np.ndarray | None = None,
                     pixel_nm: float | None = None, ruler: Mapping | None = None) -> tuple[np.ndarray, dict]:
    """The slice thicknesses (nm) and what was measured: ``source`` = "csv" (thickness.csv of the
    dataset ``folder``), a CSV path, or "ruler" (measured from the ruler ``band`` of the images,
    (n, rows, x), with ``ruler`` = keyword arguments of fibml.reconstruct.ruler.measure_thickness).
    Returns (thicknesses, info) with info listing the slices the ruler dropped as outliers."""
    from fibml.io import THICKNESS, read_thickness_csv

    if source == "ruler":
        from fibml.reconstruct.ruler import measure_thickness

        if band is None or pixel_nm is None:
            raise ValueError("thickness=ruler needs the images' ruler band and their pixel size")
        measured = measure_thickness(band, pixel_nm, **dict(ruler or {}))
        return measured.thickness_nm, {"thickness_source": "ruler", "ruler_dropped_slices": list(map(int, measured.dropped))}
    path = Path(folder) / THICKNESS if source == "csv" else Path(source)
    if source == "csv" and folder is None:
        raise ValueError("thickness=csv reads thickness.csv of a dataset folder: give a folder as input, or a CSV path")
    return read_thickness_csv(path, n_slices=n_slices), {"thickness_source": str(path)}
