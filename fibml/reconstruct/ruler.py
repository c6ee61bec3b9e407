"""Slice thickness from ruler marks (slice-thickness-repositioning-inpainting.txt, section 2.1.1, Fig. 2).

The ruler is milled into the sample's top surface before the tomography: two trenches parallel
to the milling direction z and two trenches inclined at +-angle to them, all filled with a bright
Pt/C deposit. Every cross-section image (the milled face: x across, y = depth below the top
surface) shows them as four bright marks in a band at the top of the image, in the order
parallel, inclined, inclined, parallel. The parallel marks stay at the same x in every slice;
the distance between the inclined marks changes by 2 dz tan(angle) between faces dz apart, so
the depth of every face follows from that distance and thickness_i = z_{i+1} - z_i.

Sign convention: angle_deg > 0 when the inclined marks move apart as milling proceeds, < 0
when they move together. Mark positions are in pixels with column k's centre at x = k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import brentq
from scipy.signal import find_peaks

__all__ = ["RulerMeasurement", "add_ruler", "max_ruler_angle", "measure_thickness", "render_ruler"]

N_MARKS = 4  # parallel, inclined, inclined, parallel (left to right)
PARALLEL_FRACTION = 0.9  # default parallel-mark separation: this fraction of the band width
SMOOTH_PX = 1.5  # Gaussian smoothing (px) of the column profile before the marks are located


@dataclass
class RulerMeasurement:
    """Slice thicknesses read from the ruler marks of a stack of n cross-sections.

    thickness_nm: (n,) thickness of every slice (nm): measured_nm with the dropped ones replaced
        by the mean of the kept ones; the last slice's thickness cannot be read from the ruler
        (no face after it), it is that mean too.
    depth_nm: (n,) depth of every milled face relative to slice 0, as read from the marks (nm,
        not corrected for outliers).
    mark_x_px: (n, 4) subpixel x-centres of the marks (parallel, inclined, inclined, parallel),
        column k's centre at x = k.
    measured_nm: (n - 1,) raw thicknesses depth_nm[i + 1] - depth_nm[i].
    dropped: slice indices whose measured thickness was an outlier (|z-score| > outlier_z).
    kept: slice indices (< n - 1) whose measured thickness was kept.
    pixel_nm: the pixel size used (corrected from the parallel marks when their separation is known).
    angle_deg: the inclined trenches' angle used.
    """

    thickness_nm: np.ndarray
    depth_nm: np.ndarray
    mark_x_px: np.ndarray
    measured_nm: np.ndarray
    dropped: np.ndarray
    kept: np.ndarray
    pixel_nm: float
    angle_deg: float


def measure_thickness(
    band: np.ndarray,
    pixel_nm: float,
    angle_deg: float,
    parallel_separation_nm: float | None = None,
    outlier_z: float | None = 1.5,
) -> RulerMeasurement:
    """Slice thicknesses (nm) from the ruler band of a stack of cross-sections.

    band: (n, rows, x) the ruler band of every slice (e.g. stack[:, band_rows] from add_ruler).
    pixel_nm: pixel size along x (nm). angle_deg: the inclined trenches' angle to z (degrees,
        > 0 when the inclined marks move apart with depth).
    parallel_separation_nm: the parallel trenches' known distance (nm); when given, the pixel
        size is corrected to parallel_separation_nm / median measured distance (px).
    outlier_z: measured thicknesses whose z-score (mean and population std of the n - 1 measured
        thicknesses, one pass) exceeds this in magnitude are dropped and replaced by the mean of
        the kept ones (the paper removes |z| > 1.5); None keeps all.

    Per slice: the column profile (mean over the band's rows that cross the trenches: those whose
    variation along x, averaged over the stack, is at least half the largest) minus its median;
    the four marks are the peaks of that profile smoothed by a 1.5 px Gaussian
    (scipy.signal.find_peaks: prominence at least half the highest peak and well above the
    noise); each centre is the midpoint of the mark's two half-maximum crossings, linearly
    interpolated (subpixel). Depth z_i = (D_i - D_0) / (2 tan(angle)), D the inclined marks'
    distance in nm. ValueError naming the slice when it does not show exactly four marks.
    """
    band = np.asarray(band, dtype=np.float64)
    if band.ndim != 3:
        raise ValueError(f"expected a ruler band of shape (slices, rows, x), got shape {band.shape}")
    n = band.shape[0]
    if n < 2:
        raise ValueError(f"the ruler measures thicknesses between faces: need at least 2 slices, got {n}")
    if not np.isfinite(pixel_nm) or pixel_nm <= 0:
        raise ValueError(f"pixel_nm must be a positive number, got {pixel_nm}")
    tan = _check_angle(angle_deg)
    if outlier_z is not None and not outlier_z > 0:
        raise ValueError(f"outlier_z must be positive or None, got {outlier_z}")

    row_contrast = band.mean(axis=0).std(axis=1)  # rows crossing the trenches vary along x
    rows = row_contrast >= 0.5 * row_contrast.max()
    marks = np.array([_find_marks(profile, i) for i, profile in enumerate(band[:, rows].mean(axis=1))])
    scale = float(pixel_nm)
    if parallel_separation_nm is not None:
        scale = float(parallel_separation_nm) / float(np.median(marks[:, 3] - marks[:, 0]))
    distance_nm = (marks[:, 2] - marks[:, 1]) * scale
    depth = (distance_nm - distance_nm[0]) / (2.0 * tan)
    measured = np.diff(depth)

    keep = np.ones(len(measured), dtype=bool)
    spread = measured.std()
    if outlier_z is not None and spread > 0:
        keep = np.abs(measured - measured.mean()) / spread <= outlier_z
        if not keep.any():
            raise ValueError(f"outlier_z={outlier_z} drops every measured thickness: use a larger one (1.5 in the paper)")
    mean_kept = float(measured[keep].mean())
    thickness = np.append(np.where(keep, measured, mean_kept), mean_kept)
    return RulerMeasurement(
        thickness_nm=thickness,
        depth_nm=depth,
        mark_x_px=marks,
        measured_nm=measured,
        dropped=np.flatnonzero(~keep),
        kept=np.flatnonzero(keep),
        pixel_nm=scale,
        angle_deg=float(angle_deg),
    )


def render_ruler(
    z_nm,
    width_px: int,
    pixel_nm: float,
    band_rows: int = 24,
    angle_deg: float = 45.0,
    parallel_separation_nm: float | None = None,
    trench_width_nm: float = 40.0,
    background: float = 0.1,
    contrast: float = 0.5,
    blur_sigma_px: float = 1.0,
    noise_sigma: float = 0.05,
    drift_sigma_nm: float = 0.0,
    seed: int | None = 0,
) -> np.ndarray:
    """The ruler band of the cross-sections milled at depths z_nm (n,) (nm): float32 (n, band_rows, width_px).

    Geometry (x across the face, nm): the parallel marks are parallel_separation_nm apart
    (default 0.9 of the band width), centred in the band; the inclined marks lie between them,
    symmetric about the centre, closest (one mark width plus a gap apart) at the stack's first
    depth when angle_deg > 0 and furthest (a gap from the parallel marks) when angle_deg < 0;
    their distance changes by 2 dz tan(angle_deg). A trench trench_width_nm wide shows as a mark
    of that width (parallel) or trench_width_nm / cos(angle) (inclined), covering the middle
    two thirds of the band's rows. The default 45 deg gives the largest sensitivity that keeps
    the inclined marks' cross-sections narrow (x 1.4); ValueError when the inclined marks would
    leave the space between the parallel marks over the stack's depth (max_ruler_angle gives the
    largest angle that fits).

    Marks are anti-aliased (each pixel takes the fraction of its width a mark covers, so subpixel
    positions are encoded), then blurred (Gaussian probe, blur_sigma_px) and Gaussian noise
    (noise_sigma) is added: pixel = background + contrast * coverage. drift_sigma_nm shifts all
    marks of a slice by a random x-offset (stage drift; the distances are unchanged).

    The defaults suit 10 nm slices at 2.5-8 nm pixels: 40 nm trenches are 5-16 px wide marks;
    noise 0.05 on a contrast of 0.5 and 1 px blur give thicknesses within 0.3 nm (rms) at 8 nm
    pixels and 0.1 nm at 2.5 nm (measure_thickness, 45 deg). At 45 deg the marks' distance
    grows by twice the stack's depth: 200 slices of 10 nm need about 610 px at 8 nm pixels,
    1910 px at 2.5 nm (the error message says how many; or choose a smaller angle).
    """
    z = _check_depths(z_nm)
    if int(width_px) < 1 or int(band_rows) < 4:
        raise ValueError(f"the ruler band needs width_px >= 1 and band_rows >= 4, got {width_px} and {band_rows}")
    if not np.isfinite(pixel_nm) or pixel_nm <= 0:
        raise ValueError(f"pixel_nm must be a positive number, got {pixel_nm}")
    if not np.isfinite(trench_width_nm) or trench_width_nm <= 0:
        raise ValueError(f"trench_width_nm must be a positive number, got {trench_width_nm}")
    rng = np.random.default_rng(seed)
    centres_nm, widths_nm = _mark_layout(
        z, int(width_px), pixel_nm, angle_deg, parallel_separation_nm, trench_width_nm, blur_sigma_px, drift_sigma_nm
    )
    if drift_sigma_nm > 0:
        centres_nm = centres_nm + rng.normal(0.0, drift_sigma_nm, size=(len(z), 1))

    left = (centres_nm - widths_nm / 2) / pixel_nm  # (n, 4) mark edges in pixel units
    right = (centres_nm + widths_nm / 2) / pixel_nm
    k = np.arange(int(width_px), dtype=np.float64)
    coverage = np.clip(np.minimum(k + 1, right[..., None]) - np.maximum(k, left[..., None]), 0.0, 1.0).sum(axis=1)

    rows = np.zeros(int(band_rows))
    rows[band_rows // 6 : band_rows - band_rows // 6] = 1.0  # trenches below a dark margin, above the image
    band = background + contrast * coverage[:, None, :] * rows[None, :, None]
    if blur_sigma_px > 0:
        band = ndi.gaussian_filter(band, sigma=(0.0, blur_sigma_px, blur_sigma_px), mode="nearest")
    if noise_sigma > 0:
        band = band + rng.normal(0.0, noise_sigma, size=band.shape)
    return band.astype(np.float32)


def add_ruler(images: np.ndarray, z_nm, pixel_nm: float, **kwargs) -> tuple[np.ndarray, slice]:
    """images (n, y, x) with the ruler band (render_ruler(z_nm, x, pixel_nm, **kwargs)) placed
    above their first row: ((n, band_rows + y, x), slice of the band's rows). The image rows are
    copied unchanged; the dtype is that of images promoted to at least float32."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected a (z, y, x) stack of cross-sections, got shape {images.shape}")
    z = _check_depths(z_nm)
    if len(z) != images.shape[0]:
        raise ValueError(f"z_nm lists {len(z)} depths, the stack has {images.shape[0]} slices")
    band = render_ruler(z, images.shape[2], pixel_nm, **kwargs)
    dtype = np.result_type(images.dtype, np.float32)
    stack = np.concatenate([band.astype(dtype), images.astype(dtype, copy=False)], axis=1)
    return stack, slice(0, band.shape[1])


def max_ruler_angle(
    z_nm,
    width_px: int,
    pixel_nm: float,
    parallel_separation_nm: float | None = None,
    trench_width_nm: float = 40.0,
    blur_sigma_px: float = 1.0,
) -> float:
    """The largest inclination (degrees, up to 89) for which render_ruler keeps the inclined
    marks between the parallel ones over the depths z_nm (nm); 0.0 when no angle fits."""
    z = _check_depths(z_nm)
    span = float(z.max() - z.min())
    p_sep = PARALLEL_FRACTION * width_px * pixel_nm if parallel_separation_nm is None else parallel_separation_nm
    gap = _gap_nm(trench_width_nm, blur_sigma_px, pixel_nm)

    # the excess grows with the angle: a bracketing root finder (brentq) finds where it vanishes
    def excess(angle: float) -> float:
        return _needed_separation_nm(span, angle, trench_width_nm, gap) - p_sep

    if excess(0.0) > 0:
        return 0.0
    if excess(89.0) <= 0:
        return 89.0
    return float(brentq(excess, 0.0, 89.0, xtol=1e-6))


def _mark_layout(
    z, width_px, pixel_nm, angle_deg, parallel_separation_nm, trench_width_nm, blur_sigma_px, drift_sigma_nm
):
    """Mark centres (n, 4) and widths (4,) in nm for faces at depths z; ValueError when they do not fit."""
    tan = _check_angle(angle_deg)
    width_nm = width_px * pixel_nm
    p_sep = PARALLEL_FRACTION * width_nm if parallel_separation_nm is None else float(parallel_separation_nm)
    w_par = trench_width_nm
    w_inc = trench_width_nm / np.cos(np.radians(angle_deg))  # an inclined trench cut across is wider
    gap = _gap_nm(trench_width_nm, blur_sigma_px, pixel_nm)
    edge_margin = (3 * blur_sigma_px + 1) * pixel_nm + 4 * drift_sigma_nm
    if p_sep + w_par + 2 * edge_margin > width_nm:
        raise ValueError(
            f"the parallel ruler marks ({p_sep:g} nm apart, {w_par:g} nm wide) do not fit in a band "
            f"{width_px} px x {pixel_nm:g} nm = {width_nm:g} nm wide: use a smaller parallel_separation_nm "
            f"(at most {width_nm - w_par - 2 * edge_margin:g} nm)"
        )
    span = float(z.max() - z.min())
    closest = w_inc + gap  # centre distance of the inclined marks where they come closest
    furthest = p_sep - w_par - w_inc - 2 * gap  # ... and where they come closest to the parallel ones
    travel = 2 * span * abs(tan)
    if closest + travel > furthest:
        needed = _needed_separation_nm(span, angle_deg, trench_width_nm, gap)
        wider = (
            f"a band at least {int(np.ceil(needed / (PARALLEL_FRACTION * pixel_nm)))} px wide"
            if parallel_separation_nm is None
            else f"parallel marks at least {needed:g} nm apart"
        )
        limit = max_ruler_angle(z, width_px, pixel_nm, parallel_separation_nm, trench_width_nm, blur_sigma_px)
        raise ValueError(
            f"the inclined ruler marks would leave the space between the parallel marks: the stack spans "
            f"{span:g} nm of depth, at {angle_deg:g} deg their distance changes by {travel:g} nm, but only "
            f"{max(furthest - closest, 0.0):g} nm are free between the parallel marks ({p_sep:g} nm apart); "
            f"use |angle_deg| <= {np.floor(limit * 10) / 10:g} (max_ruler_angle) or {wider}"
        )
    start = closest if tan > 0 else furthest
    distance = start + 2 * (z - z.min()) * tan
    centre = width_nm / 2
    parallel = np.full_like(z, p_sep / 2)
    centres = np.stack([centre - parallel, centre - distance / 2, centre + distance / 2, centre + parallel], axis=1)
    return centres, np.array([w_par, w_inc, w_inc, w_par])


def _needed_separation_nm(span: float, angle_deg: float, trench_width_nm: float, gap: float) -> float:
    """Parallel-mark separation (nm) that holds the inclined marks over a depth span (nm)."""
    w_inc = trench_width_nm / np.cos(np.radians(angle_deg))
    return float(2 * w_inc + trench_width_nm + 3 * gap + 2 * span * abs(np.tan(np.radians(angle_deg))))


def _gap_nm(trench_width_nm: float, blur_sigma_px: float, pixel_nm: float) -> float:
    """Smallest edge-to-edge gap (nm) between two marks that keeps them apart for the peak finder."""
    return trench_width_nm + (4 * blur_sigma_px + 2) * pixel_nm


def _find_marks(profile: np.ndarray, slice_index: int) -> np.ndarray:
    """Subpixel x-centres (px) of the four marks in one slice's column profile: the midpoints of
    the half-maximum crossings of the smoothed profile (a symmetric smoothing moves no
    midpoint, and only the edges carry a mark's position)."""
    p = profile - np.median(profile)
    noise = 1.4826 * np.median(np.abs(np.diff(p))) / np.sqrt(2)  # robust: the marks are few columns
    smooth = ndi.gaussian_filter1d(p, SMOOTH_PX, mode="nearest")
    peaks, _ = find_peaks(smooth, prominence=max(0.5 * smooth.max(), 5 * noise))
    if len(peaks) != N_MARKS:
        where = f" at x = {peaks.tolist()} px" if 0 < len(peaks) <= 12 else ""
        raise ValueError(
            f"slice {slice_index}: expected {N_MARKS} ruler marks (parallel, inclined, inclined, parallel), "
            f"found {len(peaks)}{where}"
        )
    bounds = np.concatenate([[0], (peaks[:-1] + peaks[1:]) // 2, [len(p) - 1]])
    centres = np.empty(N_MARKS)
    for m, peak in enumerate(peaks):
        level = 0.5 * smooth[peak]
        left, right = peak, peak
        while left > bounds[m] and smooth[left - 1] >= level:
            left -= 1
        while right < bounds[m + 1] and smooth[right + 1] >= level:
            right += 1
        if left == bounds[m] or right == bounds[m + 1]:
            raise ValueError(
                f"slice {slice_index}: ruler mark {m} (at x = {peak} px) does not fall to half its height "
                f"before the {'image edge' if m in (0, N_MARKS - 1) else 'next mark'}: marks too close?"
            )
        # linear interpolation between the samples that straddle the half maximum
        x_left = left - (smooth[left] - level) / (smooth[left] - smooth[left - 1])
        x_right = right + (smooth[right] - level) / (smooth[right] - smooth[right + 1])
        centres[m] = 0.5 * (x_left + x_right)
    return centres


def _check_angle(angle_deg: float) -> float:
    """tan(angle) of a valid inclination (0 < |angle| < 90 degrees)."""
    if not np.isfinite(angle_deg) or not 0 < abs(angle_deg) < 90:
        raise ValueError(f"angle_deg must lie strictly between 0 and 90 degrees in magnitude, got {angle_deg}")
    return float(np.tan(np.radians(angle_deg)))


def _check_depths(z_nm) -> np.ndarray:
    z = np.asarray(z_nm, dtype=np.float64)
    if z.ndim != 1 or len(z) == 0 or not np.isfinite(z).all():
        raise ValueError(f"z_nm: expected the finite depths (nm) of the milled faces, got shape {z.shape}")
    return z
