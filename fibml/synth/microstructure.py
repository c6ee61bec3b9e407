"""Leveled-wave microstructures (Cahn; Soyarslan et al. 2018) of nanoporous metals.

f(x) = sqrt(2/N) sum_i cos(q_i . x + phi_i), |q_i| = 2 pi / wavelength, directions uniform on
the sphere, phi_i uniform in [0, 2 pi). Solid = {f <= xi}. Volumes are periodic: the q_i lie on
the reciprocal lattice 2 pi n / L of the box, so the field is summed with one inverse FFT
instead of N cosines per voxel. Arrays are (z, y, x); lengths in nm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

__all__ = [
    "hierarchical_leveled_wave",
    "leveled_wave",
    "leveled_wave_field",
    "level_cut",
]


def leveled_wave(
    shape: Sequence[int],
    wavelength_nm: float,
    solid_fraction: float,
    voxel_size_nm: float | Sequence[float] = 2.5,
    n_waves: int = 1000,
    seed: int | None = 0,
) -> np.ndarray:
    """Binary leveled-wave structure, True = solid, shape (z, y, x), periodic in every axis.

    The level cut xi is the solid_fraction-quantile of the field, so the solid fraction is hit
    to within one voxel (the Gaussian-field formula xi = sqrt(2) erfinv(2 phi - 1) is exact only
    for N -> infinity).
    """
    _check_fraction(solid_fraction, "solid_fraction")
    rng = np.random.default_rng(seed)
    field = leveled_wave_field(shape, wavelength_nm, voxel_size_nm, n_waves, rng)
    return field <= level_cut(field, solid_fraction)


def hierarchical_leveled_wave(
    shape: Sequence[int],
    voxel_size_nm: float | Sequence[float] = 2.5,
    coarse_wavelength_nm: float = 435.0,
    fine_wavelength_nm: float = 60.0,
    coarse_solid_fraction: float = 0.35,
    solid_fraction: float = 0.12,
    n_waves: int = 1000,
    seed: int | None = 0,
) -> np.ndarray:
    """Hierarchical nanoporous gold: a coarse network whose solid is itself a fine network.

    The defaults give ligaments of about 110 nm (coarse) and 15 nm (fine) at a total solid
    fraction of 0.12, as in the HNPG of the papers: at a solid fraction of ~0.35 the mean local
    thickness of the solid (porespy.filters.local_thickness) is 0.254 wavelengths. The box must
    hold the coarse wavelength about twice to be isotropic (384^3 voxels of 2.5 nm). The fine
    level cut is taken inside the coarse solid so that the total solid fraction is hit exactly.
    """
    _check_fraction(coarse_solid_fraction, "coarse_solid_fraction")
    _check_fraction(solid_fraction, "solid_fraction")
    if solid_fraction >= coarse_solid_fraction:
        raise ValueError(
            f"solid_fraction ({solid_fraction}) must be below coarse_solid_fraction "
            f"({coarse_solid_fraction}): the fine network only removes solid"
        )
    rng = np.random.default_rng(seed)
    coarse = leveled_wave_field(shape, coarse_wavelength_nm, voxel_size_nm, n_waves, rng)
    solid = coarse <= level_cut(coarse, coarse_solid_fraction)
    del coarse
    fine = leveled_wave_field(shape, fine_wavelength_nm, voxel_size_nm, n_waves, rng)
    inner = fine[solid]
    xi = level_cut(inner, solid_fraction / (solid.sum() / solid.size))
    solid &= fine <= xi
    return solid


def leveled_wave_field(
    shape: Sequence[int],
    wavelength_nm: float,
    voxel_size_nm: float | Sequence[float] = 2.5,
    n_waves: int = 1000,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """The leveled-wave field f, float32 (z, y, x), zero mean and unit variance.

    Wave vectors are drawn with uniform directions and snapped to the reciprocal-lattice point
    of the box with |q| closest to 2 pi / wavelength in that direction (so the field is periodic).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be three sizes >= 2 (z, y, x), got {shape}")
    if wavelength_nm <= 0:
        raise ValueError(f"wavelength_nm must be > 0, got {wavelength_nm}")
    if n_waves < 1:
        raise ValueError(f"n_waves must be >= 1, got {n_waves}")
    voxel = np.broadcast_to(np.asarray(voxel_size_nm, dtype=np.float64), (3,))
    rng = np.random.default_rng(rng)

    lattice = _lattice_shell(shape, voxel, wavelength_nm)  # (M, 3) integer indices
    freqs = lattice / (np.array(shape) * voxel)  # cycles per nm
    unit = freqs / np.linalg.norm(freqs, axis=1, keepdims=True)
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # nearest lattice direction for every wave: argmax of cosine, in blocks to bound memory
    chosen = np.concatenate(
        [np.argmax(block @ unit.T, axis=1) for block in np.array_split(directions, max(1, n_waves // 256))]
    )
    phases = rng.uniform(0.0, 2.0 * np.pi, size=n_waves)

    spectrum = np.zeros(shape, dtype=np.complex64)
    idx = tuple(np.mod(lattice[chosen], shape).T)
    np.add.at(spectrum, idx, np.exp(1j * phases).astype(np.complex64))
    field = scipy.fft.ifftn(spectrum, workers=-1, overwrite_x=True).real
    field *= np.float32(np.prod(shape) * np.sqrt(2.0 / n_waves))
    return field.astype(np.float32, copy=False)


def level_cut(field: np.ndarray, solid_fraction: float) -> float:
    """The level xi such that a fraction solid_fraction of the values is <= xi."""
    _check_fraction(solid_fraction, "solid_fraction")
    flat = np.asarray(field).ravel()
    k = min(flat.size - 1, max(0, int(round(solid_fraction * flat.size)) - 1))
    return float(np.partition(flat, k)[k])


def _lattice_shell(shape, voxel, wavelength_nm) -> np.ndarray:
    """Integer reciprocal-lattice vectors n with |n / L| within half a lattice step of 1/wavelength."""
    box = np.array(shape) * voxel
    target = 1.0 / wavelength_nm
    step = 1.0 / box.min()
    if target > 0.5 / voxel.max():
        raise ValueError(
            f"wavelength {wavelength_nm} nm is below two voxels ({2 * voxel.max()} nm): not resolvable"
        )
    if target < step:
        raise ValueError(
            f"wavelength {wavelength_nm} nm is longer than the box ({box.min():.1f} nm along its "
            f"shortest axis): enlarge the volume or shorten the wavelength"
        )
    half = 0.5 * step
    n_max = np.floor((target + half) * box).astype(int)
    axes = [np.arange(-m, m + 1) for m in n_max]
    nz, ny, nx = np.meshgrid(*axes, indexing="ij")
    n = np.stack([nz.ravel(), ny.ravel(), nx.ravel()], axis=1)
    radius = np.linalg.norm(n / box, axis=1)
    return n[np.abs(radius - target) <= half]


def _check_fraction(value: float, name: str) -> None:
    if not (0.0 < float(value) < 1.0) or not np.isfinite(value):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
