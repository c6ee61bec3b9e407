"""The slice spacing of a FIB-SEM stack from its own structure, when no file states it.

A nanoporous material is statistically isotropic: its two-point correlation S2(r) and lineal
path L(r) are the same along z as along x and y once distances are measured in nm. The
in-plane pixel size is known; the slice spacing s is not. Along z the curves are measured per
slice (lag k slices = k s nm), so the spacing at which the z curves, stretched by s, best match
the in-plane curves is the estimate: the minimum over s of the anisotropy errors e_TPCF + e_LPF
(eq. 4 of slice-thickness-repositioning-inpainting.txt, computed on a common grid of distances
in nm). The curves are measured once; a scan over candidate spacings only re-interpolates the
z curves, and the minimum of the scan is refined by a bounded 1-D search. The uncertainty is
the spread of the estimates of the four quadrants of the stack (in y and x).

It assumes the material is isotropic, the slices evenly spaced and the segmentation fair in
every direction; the diameter error e_D is not used because the 2-D local thickness in xz and
yz planes would need resampling for every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from fibml.metrics.anisotropy import check_label_volume, curve_along

__all__ = ["SpacingEstimate", "estimate_slice_spacing"]


@dataclass(frozen=True)
class SpacingEstimate:
    """spacing_nm (the estimate), uncertainty_nm (standard error from the quadrants), the scan
    (candidates_nm, errors: e_TPCF + e_LPF at each), the quadrants' estimates and the
    distance range compared (max_distance_nm)."""

    spacing_nm: float
    uncertainty_nm: float
    candidates_nm: np.ndarray
    errors: np.ndarray
    quadrant_estimates_nm: list[float] = field(default_factory=list)
    max_distance_nm: float = 0.0
    error_at_estimate: float = 0.0

    def as_dict(self) -> dict:
        return {
            "spacing_nm": self.spacing_nm, "uncertainty_nm": self.uncertainty_nm,
            "quadrant_estimates_nm": list(self.quadrant_estimates_nm), "max_distance_nm": self.max_distance_nm,
            "error_at_estimate": self.error_at_estimate,
            "scan": {"candidates_nm": self.candidates_nm.tolist(), "errors": self.errors.tolist()},
        }


def estimate_slice_spacing(
    labels,
    pixel_nm: float | tuple[float, float],
    *,
    phase: int = 1,
    bounds: tuple[float, float] = (0.25, 4.0),
    n_candidates: int = 57,
    quadrants: bool = True,
) -> SpacingEstimate:
    """The slice spacing (nm) at which a segmented (z, y, x) stack is most isotropic.

    labels: integer labels, `phase` the one measured (1 = solid); pixel_nm: the in-plane pixel
    size (one, or (y, x)); bounds: the candidate spacings, in units of the x pixel size; the
    scan takes n_candidates log-spaced values, then refines the best. Needs at least 8 slices
    and 16 x 16 pixels."""
    volume = check_label_volume(labels)
    if volume.shape[0] < 8 or min(volume.shape[1:]) < 16:
        raise ValueError(f"estimating the slice spacing needs at least 8 slices of 16 x 16 pixels, got {volume.shape}")
    y_nm, x_nm = (float(v) for v in np.broadcast_to(np.asarray(pixel_nm, dtype=float), (2,)))
    if not (y_nm > 0 and x_nm > 0):
        raise ValueError(f"pixel_nm must be positive, got {pixel_nm}")
    lo, hi = (float(b) * x_nm for b in bounds)
    if not 0 < lo < hi:
        raise ValueError(f"bounds must be two increasing positive factors of the pixel size, got {bounds}")
    spacing, scan = _estimate(volume, y_nm, x_nm, phase, lo, hi, n_candidates)
    estimates = []
    if quadrants:
        ny, nx = volume.shape[1] // 2, volume.shape[2] // 2
        for ys in (slice(0, ny), slice(ny, 2 * ny)):
            for xs in (slice(0, nx), slice(nx, 2 * nx)):
                block = volume[:, ys, xs]
                if np.any(block == phase) and np.any(block != phase):
                    estimates.append(_estimate(block, y_nm, x_nm, phase, lo, hi, n_candidates)[0])
    uncertainty = float(np.std(estimates, ddof=1) / np.sqrt(len(estimates))) if len(estimates) > 1 else float("nan")
    candidates, errors, rmax_nm, objective = scan
    return SpacingEstimate(float(spacing), uncertainty, candidates, errors, [float(e) for e in estimates], rmax_nm,
                           float(objective(spacing)))


def _estimate(volume: np.ndarray, y_nm: float, x_nm: float, phase: int, lo: float, hi: float, n: int):
    """(estimate, (candidates, errors, max distance nm, objective)) for one (sub)volume."""
    in_plane = {axis: {kind: curve_along(volume, axis, kind, phase) for kind in ("tpcf", "lpf")} for axis in "yx"}
    along_z = {kind: curve_along(volume, "z", kind, phase, max_distance=volume.shape[0] - 1) for kind in ("tpcf", "lpf")}
    # the distances compared: as far as the in-plane curves reach and the z curves reach at the
    # smallest candidate, so that every candidate is judged on the same range
    rmax_nm = min((len(in_plane["x"]["tpcf"]) - 1) * x_nm, (len(in_plane["y"]["tpcf"]) - 1) * y_nm,
                  (volume.shape[0] - 1) * lo)
    step = min(x_nm, y_nm)
    r = np.arange(0.0, rmax_nm + 1e-9, step / 2) if rmax_nm > 0 else np.zeros(1)
    reference = {
        kind: {axis: np.interp(r, np.arange(len(c[kind])) * size, c[kind])
               for (axis, c), size in zip(in_plane.items(), (y_nm, x_nm))}
        for kind in ("tpcf", "lpf")
    }

    def objective(spacing: float) -> float:
        total = 0.0
        for kind in ("tpcf", "lpf"):
            fz = np.interp(r, np.arange(len(along_z[kind])) * spacing, along_z[kind])
            total += 0.5 * (_relative_l2(reference[kind]["x"], fz) + _relative_l2(reference[kind]["y"], fz))
        return total

    candidates = np.geomspace(lo, hi, n)
    errors = np.array([objective(s) for s in candidates])
    best = int(np.argmin(errors))
    a, b = candidates[max(0, best - 1)], candidates[min(n - 1, best + 1)]
    refined = minimize_scalar(objective, bounds=(a, b), method="bounded", options={"xatol": 1e-4 * candidates[best]})
    spacing = float(refined.x) if refined.fun <= errors[best] else float(candidates[best])
    return spacing, (candidates, errors, float(rmax_nm), objective)


def _relative_l2(f: np.ndarray, g: np.ndarray) -> float:
    norms = np.linalg.norm(f) + np.linalg.norm(g)
    return 0.0 if norms == 0 else float(2.0 * np.linalg.norm(f - g) / norms)
