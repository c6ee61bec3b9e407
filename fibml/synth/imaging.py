"""Fast physics forward model of BSE imaging at the milled face, with shine-through.

For every milled slice z the beam enters the face and the signal of a pixel is a
depth-weighted sum over the column of voxels beneath it (an emission-absorption model):

    S = sum_k eta(m_k) a(m_k) prod_{j<k} (1 - a(m_j)),   a(m) = 1 - exp(-dz / Lambda(m)),

where eta(m) is the bulk backscatter coefficient of material m (Hunger & Kuchler) and
Lambda(m) = information_depth_fraction * R_KO(m, E) the depth from which BSE still escape,
a fraction of the Kanaya-Okayama range. A bulk material gives its own eta; an epoxy layer of
thickness d over gold gives eta_ep (1 - exp(-d/Lambda_ep)) + eta_Au exp(-d/Lambda_ep), so solid
lying behind a pore shines through, more at higher voltage (larger range). The sum obeys
S_z = eta_z a_z + (1 - a_z) S_{z+1}, so the whole stack costs one sweep from the bottom up;
on each step of the sweep the signal from below is blurred laterally (electrons spread as they
travel: sigma grows like sqrt(depth)). Then the probe blur, shot noise of the BSE counts and
detector read noise. Output: float32 (z, y, x) in units of BSE yield per incident electron.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from fibml.synth.physics import Material, get_material

__all__ = ["render_bse", "shine_through_profile"]


def render_bse(
    labels: np.ndarray,
    voltage_kV: float,
    voxel_size_nm: float | Sequence[float] = 2.5,
    materials: Sequence[str | Material] = ("epoxy", "Au"),
    information_depth_fraction: float = 0.2,
    lateral_spread: float = 0.3,
    probe_sigma_nm: float = 1.5,
    electrons_per_pixel: float | None = 200.0,
    read_noise: float = 0.01,
    boundary: str = "periodic",
    seed: int | None = 0,
    progress: bool = False,
) -> np.ndarray:
    """Simulated BSE image of every milled face of `labels` (z, y, x), float32.

    labels: integer phase map (z, y, x); value i is made of materials[i] (0 = pore filled with
        epoxy, 1 = solid gold by default). Slice z is the face exposed when slice z is imaged;
        the beam looks into slices z, z+1, ... (z grows with milling depth).
    voltage_kV: beam energy (keV). voxel_size_nm: scalar or (z, y, x).
    information_depth_fraction: Lambda = this fraction of the Kanaya-Okayama range.
    lateral_spread: lateral sigma of the shine-through at depth d is
        lateral_spread * sqrt(d * Lambda_matrix) (Lambda of the most transparent material).
    probe_sigma_nm: Gaussian beam/detector blur. electrons_per_pixel: dose for Poisson shot
        noise (None = noiseless). read_noise: Gaussian detector noise (yield units).
    boundary: what lies below the last slice and beyond the xy border: "periodic" (for
        periodic structures such as leveled waves) or "reflect".
    """
    labels = np.asarray(labels)
    materials = [get_material(m) for m in materials]
    _check_labels(labels, len(materials))
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)  # bool arrays would index eta[...] as masks, not phases
    if voltage_kV <= 0:
        raise ValueError(f"voltage_kV must be > 0, got {voltage_kV}")
    if boundary not in ("periodic", "reflect"):
        raise ValueError(f"boundary must be 'periodic' or 'reflect', got {boundary!r}")
    dz, dy, dx = np.broadcast_to(np.asarray(voxel_size_nm, dtype=np.float64), (3,))

    eta = np.array([m.backscatter_coefficient(voltage_kV) for m in materials], dtype=np.float32)
    depth = np.array([information_depth_fraction * m.range_nm(voltage_kV) for m in materials])
    absorb = (1.0 - np.exp(-dz / depth)).astype(np.float32)
    emit = eta * absorb

    sigma_step_nm = lateral_spread * np.sqrt(depth.max() * dz)
    sigma_step = (sigma_step_nm / dy, sigma_step_nm / dx)
    blur_mode = "wrap" if boundary == "periodic" else "reflect"
    # slices below the volume until the most transparent material lets < 0.1 % through
    n_below = int(np.ceil(np.log(1e3) * depth.max() / dz))
    image = _emission_absorption_sweep(
        labels,
        emit,
        1.0 - absorb,
        sigma_step,
        boundary,
        n_below,
        initial=float((eta[labels]).mean()),
        progress=progress,
        desc=f"BSE {voltage_kV:g} kV",
    )

    return _detector_response(image, probe_sigma_nm, (dy, dx), blur_mode, electrons_per_pixel, read_noise, seed)


def _detector_response(image, probe_sigma_nm, pixel_nm, blur_mode, electrons_per_pixel, read_noise, seed) -> np.ndarray:
    """What every detector adds to the noiseless signal: the Gaussian probe blur (in-plane),
    Poisson shot noise of electrons_per_pixel (None = none) and Gaussian read noise; float32."""
    dy, dx = pixel_nm
    if probe_sigma_nm > 0:
        image = ndi.gaussian_filter(image, (0, probe_sigma_nm / dy, probe_sigma_nm / dx), mode=blur_mode)
    rng = np.random.default_rng(seed)
    if electrons_per_pixel is not None:
        image = rng.poisson(np.clip(image, 0, None) * electrons_per_pixel) / electrons_per_pixel
    if read_noise > 0:
        image = image + rng.normal(0.0, read_noise, size=image.shape)
    return image.astype(np.float32, copy=False)


def shine_through_profile(
    voltage_kV: float,
    thickness_nm: Sequence[float],
    matrix: str | Material = "epoxy",
    substrate: str | Material = "Au",
    information_depth_fraction: float = 0.2,
) -> np.ndarray:
    """Noiseless signal of a matrix layer of the given thicknesses (nm) over a bulk substrate.

    The forward model's answer to the backscatter-vs-depth question of the papers
    (thickness 0 = bare substrate); used to check the model against Monte Carlo tables.
    """
    matrix, substrate = get_material(matrix), get_material(substrate)
    t = np.asarray(thickness_nm, dtype=np.float64)
    transmitted = np.exp(-t / (information_depth_fraction * matrix.range_nm(voltage_kV)))
    return matrix.backscatter_coefficient(voltage_kV) * (1 - transmitted) + (
        substrate.backscatter_coefficient(voltage_kV) * transmitted
    )


def _emission_absorption_sweep(
    labels: np.ndarray,
    emit: np.ndarray,
    transmit: np.ndarray,
    sigma_step: tuple[float, float],
    boundary: str,
    n_below: int,
    initial: float,
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Signal at every milled face of `labels` (z, y, x) by one sweep from the bottom up, float32.

    S_z = emit[phase_z] + transmit[phase_z] * blur(S_{z+1}): each slice adds its own emission and
    passes on a fraction of the (laterally blurred, sigma_step in pixels (y, x)) signal from below.
    The sweep starts n_below slices under the volume (periodic or mirrored copies, as `boundary`
    says) from a uniform signal `initial`. Shared by the BSE and the secondary-electron detectors.
    """
    blur_mode = "wrap" if boundary == "periodic" else "reflect"
    n_z = labels.shape[0]
    below = np.arange(n_z, n_z + n_below)
    source = np.mod(below, n_z) if boundary == "periodic" else _reflect_index(below, n_z)

    image = np.empty(labels.shape, dtype=np.float32)
    signal = np.full(labels.shape[1:], initial, dtype=np.float32)
    steps = list(zip(source[::-1], [None] * n_below)) + [(z, z) for z in range(n_z - 1, -1, -1)]
    for src, out in tqdm(steps, desc=desc, disable=not progress, leave=False):
        phase = labels[src]
        if max(sigma_step) > 0.05:
            signal = ndi.gaussian_filter(signal, sigma_step, mode=blur_mode)
        signal = emit[phase] + transmit[phase] * signal
        if out is not None:
            image[out] = signal
    return image


def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices beyond [0, n) back into it (..., n-1, n-2, ..., 0, 0, 1, ...)."""
    period = np.mod(index, 2 * n)
    return np.where(period < n, period, 2 * n - 1 - period)


def _check_labels(labels: np.ndarray, n_materials: int) -> None:
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3-D (z, y, x) array, got shape {labels.shape}")
    if labels.dtype == bool:
        return
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer phase indices, got dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_materials:
        raise ValueError(
            f"labels hold values {low}..{high} but {n_materials} materials were given: "
            f"label i is made of materials[i]"
        )
