"""Accuracy without ground truth: how far a segmented volume is from isotropy.

Eq. (4) and (5) of slice-thickness-repositioning-inpainting.txt (section 2.4.2): a real
nanoporous structure is isotropic, so differences between directions measure reconstruction
error. Three directional descriptors of one phase of a volume of isotropic voxels:

- two-point correlation S2(r) along x, y and z (FFT, zero-padded: no periodic wrap-around);
- lineal path L(r) along x, y and z (from run lengths);
- mean ligament diameter D in the xy, xz and yz planes (2-D local thickness, averaged).

and the errors e_L2^TPCF, e_L2^LPF (eq. 4 on the S2 and L curves) and e_L2^D (eq. 5).

Volumes are (z, y, x) arrays of integer (or bool) labels; ``phase`` picks the label measured
(default 1 = solid). Distances r are in voxels and run over 0..max_distance, the same for the
three axes. All functions are numpy/scipy only and work on all lines / planes at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

__all__ = [
    "anisotropy_report",
    "curve_along",
    "two_point_correlation",
    "lineal_path",
    "ligament_diameters",
    "local_thickness_2d",
    "l2_anisotropy_error",
    "diameter_anisotropy_error",
    "resample_nearest",
]

AXES = {"x": 2, "y": 1, "z": 0}  # curve name -> array axis of a (z, y, x) volume
PLANES = {"xy": 0, "xz": 1, "yz": 2}  # plane family -> array axis perpendicular to the planes
MAX_DISTANCE_CAP = 100  # default longest lag, voxels
ISOTROPY_TOLERANCE = 1e-3  # relative voxel-size difference still called isotropic
_FFT_CHUNK = 1 << 22  # voxels per FFT block: bounds the memory of the spectra
_PAINT_CHUNK = 1 << 24  # padded pixels per group of planes painted at once (int32: 64 MB)


def anisotropy_report(
    volume,
    voxel_size_nm: float | Sequence[float] = (1.0, 1.0, 1.0),
    phase: int = 1,
    max_distance: int | None = None,
    resample: bool = False,
    step: int = 1,
) -> dict:
    """The anisotropy errors of eq. (4) and (5), the phase fraction, the diameters and the curves.

    ``volume``: (z, y, x) integer/bool labels; ``voxel_size_nm``: one size or (z, y, x) sizes.
    Voxels must be isotropic (sizes within 0.1 %): otherwise a ValueError, unless
    ``resample=True``, which first resamples every coarser axis to the smallest voxel size by
    nearest neighbour. ``max_distance`` (voxels, after resampling) bounds the curves;
    ``step`` uses every step-th plane for the diameters.

    Returns {"e_tpcf", "e_lpf", "e_d", "solid_fraction" (fraction of ``phase``), "d_xy_nm",
    "d_xz_nm", "d_yz_nm", "voxel_size_nm" (isotropic size used), "curves": {"distance_nm",
    "tpcf": {"x", "y", "z"}, "lpf": {"x", "y", "z"}}}.
    """
    volume = check_label_volume(volume)
    voxel = _voxel_sizes(voxel_size_nm)
    _check_step(step)
    if voxel.max() / voxel.min() - 1.0 > ISOTROPY_TOLERANCE:
        if not resample:
            raise ValueError(
                f"voxel size {tuple(float(v) for v in voxel)} nm (z, y, x) is anisotropic: the anisotropy "
                f"errors compare directions and need isotropic voxels; pass resample=True to resample "
                f"to {voxel.min():g} nm by nearest neighbour"
            )
        volume = resample_nearest(volume, voxel / voxel.min())
    size_nm = float(voxel.min()) if resample else float(voxel.mean())
    mask = _phase_mask(volume, phase)
    rmax = _max_distance(mask.shape, max_distance)

    tpcf = {name: _s2_along(mask, axis, rmax) for name, axis in AXES.items()}
    lpf = {name: _lineal_path_along(mask, axis, rmax) for name, axis in AXES.items()}
    diameters = _diameters(mask, step)
    return {
        "e_tpcf": l2_anisotropy_error(tpcf["x"], tpcf["y"], tpcf["z"]),
        "e_lpf": l2_anisotropy_error(lpf["x"], lpf["y"], lpf["z"]),
        "e_d": diameter_anisotropy_error(diameters["xy"], diameters["xz"], diameters["yz"]),
        "solid_fraction": float(np.count_nonzero(mask) / mask.size),
        "d_xy_nm": diameters["xy"] * size_nm,
        "d_xz_nm": diameters["xz"] * size_nm,
        "d_yz_nm": diameters["yz"] * size_nm,
        "voxel_size_nm": size_nm,
        "curves": {"distance_nm": np.arange(rmax + 1) * size_nm, "tpcf": tpcf, "lpf": lpf},
    }


def two_point_correlation(volume, phase: int = 1, max_distance: int | None = None) -> dict[str, np.ndarray]:
    """Directional two-point correlation {"x", "y", "z"}: S2(r), r = 0..max_distance voxels.

    S2(r) = P(the voxels at p and p + r e_axis both belong to ``phase``), over all pairs that lie
    inside the volume (N - r pairs per line of N voxels): no periodic continuation, so
    S2(0) = phase fraction and S2(r) -> fraction^2 at long range for an uncorrelated structure.
    Default max_distance: min(100, shortest axis // 2). Pair counts come from a float32 FFT,
    rounded to integers: exact (checked on a 256^3 volume, where the FFT error is ~0.04 pairs).
    """
    mask = _phase_mask(check_label_volume(volume), phase)
    rmax = _max_distance(mask.shape, max_distance)
    return {name: _s2_along(mask, axis, rmax) for name, axis in AXES.items()}


def lineal_path(volume, phase: int = 1, max_distance: int | None = None) -> dict[str, np.ndarray]:
    """Directional lineal path {"x", "y", "z"}: L(r), r = 0..max_distance voxels.

    L(r) = P(a segment of r + 1 consecutive voxels along the axis lies wholly in ``phase``),
    over the N - r segment positions of every line: L(0) = phase fraction, L non-increasing.
    Exact (integer counts from run lengths).
    """
    mask = _phase_mask(check_label_volume(volume), phase)
    rmax = _max_distance(mask.shape, max_distance)
    return {name: _lineal_path_along(mask, axis, rmax) for name, axis in AXES.items()}


def ligament_diameters(volume, phase: int = 1, step: int = 1) -> dict[str, float]:
    """Mean ligament diameter {"xy", "xz", "yz"} in voxels: the 2-D local thickness of ``phase``
    in every step-th plane of each family (xy: planes perpendicular to z, xz: to y, yz: to x),
    averaged over the phase's pixels of those planes. See ``local_thickness_2d``."""
    return _diameters(_phase_mask(check_label_volume(volume), phase), step)


def local_thickness_2d(planes) -> np.ndarray:
    """2-D local thickness (diameter, pixels) of the True pixels of each plane; 0 elsewhere.

    ``planes``: a (H, W) or (P, H, W) bool array, each (H, W) plane treated on its own.
    Thickness at p = 2 * max{dt(c) : |p - c| < dt(c)}, the diameter of the largest disc that
    contains p and fits in the phase (Hildebrand & Ruegsegger 1997, the definition of ImageJ /
    BoneJ "Local Thickness"), where dt is the Euclidean distance from a pixel centre to the
    nearest background pixel centre of its plane. Outside the plane is not background (a
    ligament cut by the edge is taken to go on); a plane with no background pixel gets its
    shorter side. dt counts centre to centre, so 2 dt overestimates the width by up to one
    pixel for walls parallel to the grid (a slab T pixels thick: T if T is even, T + 1 if odd)
    and by less for curved ones (the digital disc |p|^2 <= R^2: 2 sqrt(R^2 + 1) < 2R + 1/R).

    Exact (no radius quantisation); cost grows with the phase's pixels times their mean
    diameter, so it is fast for ligaments and slow for a wide phase such as large pores.
    """
    planes = np.asarray(planes)
    if planes.ndim not in (2, 3) or planes.size == 0:
        raise ValueError(f"planes must be a non-empty (H, W) or (P, H, W) array, got shape {planes.shape}")
    stack = np.ascontiguousarray(planes.reshape((-1,) + planes.shape[-2:]) != 0)
    flat, diameter = _plane_thickness(stack)
    out = np.zeros(stack.size)
    out[flat] = diameter
    return out.reshape(planes.shape)


def curve_along(volume, axis: str, kind: str = "tpcf", phase: int = 1, max_distance: int | None = None) -> np.ndarray:
    """One directional curve, S2 ("tpcf") or L ("lpf"), along one axis ("x", "y" or "z") for
    r = 0..max_distance voxels of that axis; max_distance is bounded by that axis only (default
    min(100, its length // 2)), so a short z stack does not shorten the x and y curves."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    if kind not in ("tpcf", "lpf"):
        raise ValueError(f"kind must be 'tpcf' (two-point correlation) or 'lpf' (lineal path), got {kind!r}")
    mask = _phase_mask(check_label_volume(volume), phase)
    rmax = _max_distance((mask.shape[AXES[axis]],), max_distance)
    return (_s2_along if kind == "tpcf" else _lineal_path_along)(mask, AXES[axis], rmax)


def l2_anisotropy_error(fx, fy, fz) -> float:
    """Eq. (4): 1/2 (2||fx - fz|| / (||fx|| + ||fz||) + 2||fy - fz|| / (||fy|| + ||fz||)).

    ||.|| is the Euclidean norm over the discretised points; fx, fy, fz are 1-D curves of one
    length (S2 or L along x, y, z). A term whose two curves are both zero counts 0.

    Range: 0 for identical curves. The paper says the normalisation keeps the error in [0, 1];
    that is not so. By the triangle inequality each term is <= 2, so e in [0, 2], and 2 is
    reached even for non-negative curves (fx = fy = 0, fz != 0); real anisotropic structures
    exceed 1 (the lineal path of rods along z: L_z stays at the phase fraction while L_x,
    L_y vanish). What does hold: if every point of fx and fy is within a factor 3 of the
    corresponding point of fz (f/3 <= fz <= 3f, f >= 0), then |f - fz| <= (f + fz)/2 pointwise,
    so ||f - fz|| <= (||f|| + ||fz||)/2 and e <= 1.
    """
    curves = [np.asarray(f, dtype=np.float64) for f in (fx, fy, fz)]
    for name, f in zip("xyz", curves):
        if f.ndim != 1 or f.size == 0:
            raise ValueError(f"f{name} must be a non-empty 1-D curve, got shape {f.shape}")
        if not np.all(np.isfinite(f)):
            raise ValueError(f"f{name} contains NaN or infinite values")
    if not curves[0].shape == curves[1].shape == curves[2].shape:
        raise ValueError(f"curves differ in length: fx {curves[0].size}, fy {curves[1].size}, fz {curves[2].size}")
    fx, fy, fz = curves
    return 0.5 * (_relative_l2(fx, fz) + _relative_l2(fy, fz))


def diameter_anisotropy_error(d_xy: float, d_xz: float, d_yz: float) -> float:
    """Eq. (5): 1/2 (|D_xz - D_xy| / D_xy + |D_yz - D_xy| / D_xy); 0 for equal diameters.

    The paper calls this [0, 1]; it is <= 1 only while D_xz and D_yz are <= 2 D_xy, and grows
    without bound beyond (D_xz = D_yz = 3 D_xy gives 2). Any length unit, the same for all three.
    """
    d = np.array([d_xy, d_xz, d_yz], dtype=np.float64)
    if not np.all(np.isfinite(d)) or d[0] <= 0 or np.any(d < 0):
        raise ValueError(f"diameters must be finite, D_xy > 0 and D_xz, D_yz >= 0; got {tuple(d.tolist())}")
    return float(0.5 * (abs(d[1] - d[0]) / d[0] + abs(d[2] - d[0]) / d[0]))


# --- validation -------------------------------------------------------------------------


def check_label_volume(volume, integer: bool = True) -> np.ndarray:
    """The volume as a non-empty 3-D (z, y, x) array (of integer or bool labels if ``integer``),
    else a ValueError saying what is wrong; shared by fibml.metrics.morphology."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be a 3-D (z, y, x) array, got {volume.ndim}-D shape {volume.shape}")
    if volume.size == 0:
        raise ValueError(f"volume is empty, shape {volume.shape}")
    if integer and not (volume.dtype == bool or np.issubdtype(volume.dtype, np.integer)):
        raise ValueError(f"volume must hold integer labels, got dtype {volume.dtype} (threshold or argmax first)")
    return volume


def _phase_mask(volume: np.ndarray, phase: int) -> np.ndarray:
    mask = volume == phase
    if not mask.any():
        labels = np.unique(volume)
        shown = ", ".join(str(v) for v in labels[:10]) + (", ..." if labels.size > 10 else "")
        raise ValueError(f"phase {phase} does not occur in the volume (labels present: {shown})")
    return mask


def _max_distance(shape: tuple[int, ...], max_distance: int | None) -> int:
    shortest = min(shape)
    if max_distance is None:
        return min(MAX_DISTANCE_CAP, shortest // 2)
    if int(max_distance) != max_distance or not 0 <= max_distance < shortest:
        raise ValueError(
            f"max_distance must be an integer in [0, {shortest - 1}] (shortest axis of shape {shape}), "
            f"got {max_distance}"
        )
    return int(max_distance)


def _check_step(step: int) -> None:
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step}")


def _voxel_sizes(voxel_size_nm) -> np.ndarray:
    voxel = np.asarray(voxel_size_nm, dtype=np.float64)
    if voxel.ndim > 1 or voxel.size not in (1, 3):
        raise ValueError(f"voxel_size_nm must be one size or three (z, y, x) sizes, got {voxel_size_nm!r}")
    voxel = np.broadcast_to(voxel.ravel(), (3,))
    if not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
        raise ValueError(f"voxel sizes must be positive and finite, got {tuple(voxel.tolist())} nm")
    return voxel


def resample_nearest(volume: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling by ``factors`` (>= 1) per axis, voxel edges aligned: output
    voxel i takes input voxel floor((i + 1/2) / factor), so an integer factor k repeats every
    slice k times, as np.repeat (and scipy.ndimage.zoom(order=0, grid_mode=True) up to ties;
    zoom's default grid_mode=False aligns the corner voxel centres and repeats slices unevenly,
    2, 4, 3, 4, 2 times for 5 slices and a factor 3)."""
    for axis, factor in enumerate(factors):
        if factor - 1.0 <= ISOTROPY_TOLERANCE:
            continue
        n = volume.shape[axis]
        out = int(round(n * factor))
        source = np.minimum(((np.arange(out) + 0.5) / factor).astype(np.intp), n - 1)
        volume = np.take(volume, source, axis=axis)
    return volume


def _relative_l2(f: np.ndarray, g: np.ndarray) -> float:
    norms = np.linalg.norm(f) + np.linalg.norm(g)
    return 0.0 if norms == 0 else float(2.0 * np.linalg.norm(f - g) / norms)


# --- two-point correlation --------------------------------------------------------------


def _s2_along(mask: np.ndarray, axis: int, rmax: int) -> np.ndarray:
    """S2(0..rmax) along ``axis``: the autocorrelation of every line, summed over lines.

    The lines are zero-padded to nfft >= N + rmax, so a lag r <= rmax never wraps around; the
    power spectra of all lines are summed before one inverse transform (Wiener-Khinchin)."""
    n = mask.shape[axis]
    nfft = scipy.fft.next_fast_len(n + rmax, real=True)
    others = tuple(a for a in range(3) if a != axis)
    block_axis = others[0]
    per_index = mask.size // mask.shape[block_axis]
    block = max(1, _FFT_CHUNK // per_index)
    power = np.zeros(nfft // 2 + 1)
    for start in range(0, mask.shape[block_axis], block):
        index = [slice(None)] * 3
        index[block_axis] = slice(start, start + block)
        spectrum = scipy.fft.rfft(mask[tuple(index)].astype(np.float32), n=nfft, axis=axis, workers=-1)
        spectrum = spectrum.real**2 + spectrum.imag**2
        power += spectrum.sum(axis=others, dtype=np.float64)
    # integer pair counts: the float32 FFT is off by ~0.04 pairs at 256^3, so rounding makes them exact
    pairs_in_phase = np.rint(scipy.fft.irfft(power, n=nfft)[: rmax + 1])
    pairs = (mask.size // n) * (n - np.arange(rmax + 1))
    s2 = pairs_in_phase / pairs
    s2[0] = np.count_nonzero(mask) / mask.size  # exact whatever the rounding
    return s2


# --- lineal path ------------------------------------------------------------------------


def _lineal_path_along(mask: np.ndarray, axis: int, rmax: int) -> np.ndarray:
    """L(0..rmax) along ``axis`` from the run lengths of the phase: a run of n voxels holds
    max(n - r, 0) segments of r + 1 voxels, so #segments(r) = sum_{n > r} (n - r) count(n),
    from two suffix sums of the run-length histogram."""
    n = mask.shape[axis]
    lines = np.ascontiguousarray(np.moveaxis(mask, axis, -1)).reshape(-1, n)
    starts, ends = _runs(lines)
    counts = np.bincount(ends - starts, minlength=n + 1).astype(np.int64)  # counts[m] = runs of length m
    lengths = np.arange(n + 1)
    runs_longer = np.append(np.cumsum(counts[::-1])[::-1], 0)  # [k] = runs of length >= k
    voxels_in_longer = np.append(np.cumsum((lengths * counts)[::-1])[::-1], 0)  # [k] = sum over them of length
    r = np.arange(rmax + 1)
    segments = voxels_in_longer[r + 1] - r * runs_longer[r + 1]
    return segments / (lines.shape[0] * (n - r))


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of True in each row of a (R, W) bool array, as flat indices into the (R, W + 1)
    grid of transitions: a run [s, e) of row i starts at i (W + 1) + s and ends at i (W + 1) + e,
    so end - start is its length and starts, ends come in the same (row-major) order."""
    padded = np.zeros((rows.shape[0], rows.shape[1] + 2), dtype=bool)
    padded[:, 1:-1] = rows
    before, after = padded[:, :-1], padded[:, 1:]
    return np.flatnonzero(after & ~before), np.flatnonzero(before & ~after)


# --- ligament diameters -----------------------------------------------------------------


def _diameters(mask: np.ndarray, step: int) -> dict[str, float]:
    _check_step(step)
    out = {}
    for name, axis in PLANES.items():
        # planes first, in-plane axes in array order: xz -> (y, z, x), yz -> (x, z, y)
        stack = np.ascontiguousarray(np.moveaxis(mask, axis, 0)[:: int(step)])
        _, diameter = _plane_thickness(stack)
        if diameter.size == 0:
            raise ValueError(f"no phase pixel in the {name} planes taken with step {step}; use a smaller step")
        out[name] = float(diameter.mean())
    return out


# Local thickness. Chosen: exact disc painting from the distance ridge (Dougherty &
# Kunzelmann's approach, vectorised), not porespy.filters.local_thickness and not integer-
# radius sphere sweeping. Measured on the 256^3 hierarchical volume of benchmarks/metrics_speed.py
# (solid 12 %, ligaments ~13 px across in 2-D), 2 cores shared with another job, 3 x 256 planes:
# porespy local_thickness plane by plane 20.5 s (method "dt", its fastest here; "bf" ~60 s);
# scipy distance_transform_edt plane by plane alone 4 s; sweeping needs a dilation (or an EDT)
# of the whole stack per integer radius (17 here), several seconds per family. The sparse path
# below touches only the phase's pixels (cost ~ pixels x mean diameter): 4.8 s for the three
# families. It is slow for a wide phase: the pores of that volume (88 %, ~70 px) take ~0.2 s
# per plane, about as slow as porespy; use ``step`` there.


def _plane_thickness(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local thickness (diameter, pixels) of every True pixel of a C-contiguous (P, H, W) bool
    stack; returns (flat indices of those pixels, diameters). Planes are painted in groups so
    that the padded work arrays stay near _PAINT_CHUNK pixels."""
    n_planes, height, width = stack.shape
    flat, row, col, d2, cap = _plane_squared_edt(stack)
    diameter = np.full(flat.size, float(min(height, width)))  # kept by planes without background
    normal = np.flatnonzero(d2 < cap)
    if normal.size == 0:
        return flat, diameter
    plane = flat[normal] // (height * width)
    pad = int(np.sqrt(d2[normal].max())) + 1
    group = max(1, _PAINT_CHUNK // ((height + 2 * pad) * (width + 2 * pad)))
    bounds = np.searchsorted(plane, np.arange(0, n_planes + group, group))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo < hi:
            chosen = normal[lo:hi]
            thickness2 = _paint_discs(plane[lo:hi] - plane[lo], row[chosen], col[chosen], d2[chosen], height, width)
            diameter[chosen] = 2.0 * np.sqrt(thickness2)
    return flat, diameter


def _plane_squared_edt(stack: np.ndarray):
    """Squared in-plane Euclidean distance to the nearest background pixel, for the True pixels.

    Pass 1 (along W) from the runs of each row; pass 2 (along H) by brute force over growing
    row offsets dy, only for the pixels whose current distance can still shrink (dy^2 < d2):
    the work is ~ sum of the distances, small for ligaments. Returns flat index, row, column,
    d2 (int32) of the True pixels and ``cap``: d2 >= cap marks a plane without background.
    """
    n_planes, height, width = stack.shape
    starts, ends = _runs(stack.reshape(-1, width))
    lengths = ends - starts
    total = int(lengths.sum())
    run_row = starts // (width + 1)  # row index over all planes
    run_col = starts - run_row * (width + 1)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(run_row * width + run_col, lengths) + within
    col = np.repeat(run_col, lengths) + within
    row = np.repeat(run_row % height, lengths)
    # distance along the row to the background on each side; none inside the plane: far
    far = height + width
    left = np.where(np.repeat(run_col == 0, lengths), far, within + 1)
    right = np.where(np.repeat(run_col + lengths == width, lengths), far, np.repeat(lengths, lengths) - within)
    d2 = np.minimum(left, right).astype(np.int32) ** 2
    row_g2 = np.zeros(stack.size, dtype=np.int32)  # 0 on background: the distance to itself
    row_g2[flat] = d2

    active = np.flatnonzero(d2 > 1)
    a_column = flat[active] - row[active] * width  # flat index of the pixel's column at row 0
    a_row, a_d2 = row[active], d2[active]
    dy = 1
    while active.size and dy < height:
        # a row beyond the plane's edge is clipped to the edge row: its candidate then only
        # overestimates one already taken, so no bounds mask is needed
        for target in (np.maximum(a_row - dy, 0), np.minimum(a_row + dy, height - 1)):
            np.minimum(a_d2, row_g2[a_column + target * width] + dy * dy, out=a_d2)
        dy += 1
        done = a_d2 <= dy * dy  # no row further away can come closer
        d2[active[done]] = a_d2[done]
        keep = ~done
        active, a_column, a_row, a_d2 = active[keep], a_column[keep], a_row[keep], a_d2[keep]
    d2[active] = a_d2
    return flat, row, col, d2, far * far


def _paint_discs(plane, row, col, d2, height: int, width: int) -> np.ndarray:
    """max{d2(c) : |p - c|^2 < d2(c)} for every pixel p listed, over the listed centres c.

    Only ridge centres paint: c is dropped when its digital disc lies inside the disc of one of
    its 8 neighbours (exact test from a table over the squared radius), which keeps every
    pixel's maximum. Painting loops over disc offsets o (by |o|^2), each applied to all centres
    with d2 > |o|^2 at once, on a stack padded by the largest radius so no bounds checks are
    needed; the targets of one offset are distinct, so a plain gather-max-scatter is exact.
    """
    n_planes = int(plane.max()) + 1
    amax = int(d2.max())
    offset_y, offset_x, offset_n2 = _disc_offsets(amax)
    pad = int(np.abs(offset_y).max(initial=0)) + 1
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    flat = (plane * padded_h + row + pad) * padded_w + col + pad
    radius2 = np.zeros(n_planes * padded_h * padded_w, dtype=np.int32)
    radius2[flat] = d2

    # ridge: compare with the 4 edge and the 4 corner neighbours
    count_inside = np.searchsorted(offset_n2, np.arange(amax + 1), side="left")  # #{o : |o|^2 < a}
    redundant = np.zeros(flat.size, dtype=bool)
    for shifts in ([(0, 1), (0, -1), (1, 0), (-1, 0)], [(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        sy, sx = shifts[0]
        # a neighbour at s holds the disc D(a) around c iff its d2 > max_{|o|^2 < a} |o - s|^2
        farthest = np.maximum.accumulate((offset_y - sy) ** 2 + (offset_x - sx) ** 2)
        needed = np.concatenate([[0], farthest])[count_inside] + 1  # indexed by a >= 1
        neighbour = np.zeros(flat.size, dtype=np.int32)
        for dy, dx in shifts:
            np.maximum(neighbour, radius2[flat + dy * padded_w + dx], out=neighbour)
        redundant |= neighbour >= needed[d2]
    centre = np.flatnonzero(~redundant)
    order = np.argsort(-d2[centre], kind="stable")
    centre_flat = flat[centre][order]
    centre_a = d2[centre][order].astype(np.int32)

    painted = np.zeros_like(radius2)
    n_centres = np.searchsorted(-centre_a, -offset_n2, side="left")  # centres with a > |o|^2
    jumps = offset_y * padded_w + offset_x
    for n, jump in zip(n_centres, jumps):
        if n == 0:
            break
        target = centre_flat[:n] + jump
        value = painted[target]
        np.maximum(value, centre_a[:n], out=value)
        painted[target] = value
    return painted[flat]


def _disc_offsets(amax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All integer offsets o with |o|^2 < amax, sorted by |o|^2: (oy, ox, |o|^2)."""
    reach = int(np.ceil(np.sqrt(max(amax, 1))))
    oy, ox = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    n2 = oy**2 + ox**2
    inside = n2 < amax
    order = np.argsort(n2[inside], kind="stable")
    return oy[inside][order], ox[inside][order], n2[inside][order]
