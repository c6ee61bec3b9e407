"""Synthetic three-phase battery-cathode microstructure: porous NMC particles in a carbon binder.

Labels (z, y, x), uint8: 0 = pore (unfilled, vacuum), 1 = active material (NMC-like secondary
particles), 2 = carbon-binder domain (CBD). Lengths in nm. The model, after the NMC cathode of
the random-forest multi-detector paper (sections 2.1 and 3):

- particles: spheres with radii drawn uniformly from particle_radius_nm, placed by random
  sequential addition (centres anywhere in the box, so particles are cut by its faces; the
  volume is not periodic) with centre distances >= (1 - max_overlap) (r_i + r_j), until their
  volume fraction reaches particle_fraction. Their surface is roughened by a coarse leveled-wave
  field f: a voxel belongs to a particle where min_i |x - c_i| / r_i <= 1 + roughness * f(x);
- internal porosity: inside the particles the active material is a leveled-wave network at
  internal_solid_fraction (0.6: 40 % internal porosity, as the paper's 40.6 %), so pores open
  to the particle surface;
- carbon binder: outside the particles and within binder_reach_nm of their surface, a fine
  leveled-wave network whose level cut gives binder_fraction of the whole volume. The field is
  raised by binder_adhesion * gap / binder_reach_nm (gap: distance to the nearest particle), so
  the binder clings to the particle surfaces and fills the necks between close particles, and
  thins out away from them: fine and sparse, as the paper's carbon-binder matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from fibml.synth.microstructure import level_cut, leveled_wave_field

__all__ = ["ACTIVE", "BINDER", "PHASES", "PORE", "electrode_structure"]

PORE, ACTIVE, BINDER = 0, 1, 2
PHASES = ("pore", "active", "binder")


def electrode_structure(
    shape: Sequence[int],
    voxel_size_nm: float | Sequence[float] = 10.0,
    seed: int | None = 0,
    *,
    particle_radius_nm: tuple[float, float] = (250.0, 450.0),
    particle_fraction: float = 0.45,
    max_overlap: float = 0.15,
    roughness: float = 0.12,
    roughness_wavelength_nm: float = 300.0,
    internal_solid_fraction: float = 0.6,
    internal_wavelength_nm: float = 150.0,
    binder_fraction: float = 0.10,
    binder_reach_nm: float = 100.0,
    binder_wavelength_nm: float = 80.0,
    binder_adhesion: float = 2.0,
    n_waves: int = 1000,
    return_particles: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Porous NMC particles in a fine carbon binder, uint8 labels (z, y, x): 0 pore, 1 NMC, 2 binder.

    shape: (z, y, x) voxels. voxel_size_nm: scalar or (z, y, x). seed: the random stream (same
    seed, same volume). particle_radius_nm: (min, max) radius of the secondary particles.
    particle_fraction: target volume fraction of the particles (their hulls, pores included);
    it is hit to within about one small particle (the particle whose addition lands closest is
    the last). max_overlap: allowed overlap of two particles, a fraction of the sum of their
    radii. roughness: amplitude of the surface undulation, a fraction of the radius (per unit
    standard deviation of a leveled-wave field of roughness_wavelength_nm).
    internal_solid_fraction, internal_wavelength_nm: the NMC network inside the particles.
    binder_fraction: binder volume / total volume; the binder lies outside the particles within
    binder_reach_nm of them, as a leveled-wave network of binder_wavelength_nm, the denser the
    closer to a particle (binder_adhesion, 0 = uniform within the reach).
    return_particles: also return the particle mask (bool, hulls with their internal pores),
    e.g. to score a classification inside one particle only.

    The wavelengths must lie between two voxels and the box size (leveled_wave_field raises).
    Measured at the defaults (10 nm voxels, 128^3, seeds 0-4): pore 0.627, NMC 0.273, binder
    0.100 (std < 0.003; particles 0.456, of which 40 % internal pores); about 1.1 s for 128^3 and
    10 s for 256^3 on 2 cores.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be three sizes >= 2 (z, y, x), got {shape}")
    voxel = np.broadcast_to(np.asarray(voxel_size_nm, dtype=np.float64), (3,)).copy()
    if not np.all(voxel > 0):
        raise ValueError(f"voxel_size_nm must be > 0, got {voxel_size_nm}")
    r_min, r_max = _check_radius_range(particle_radius_nm)
    for name, value in (
        ("particle_fraction", particle_fraction),
        ("internal_solid_fraction", internal_solid_fraction),
        ("binder_fraction", binder_fraction),
    ):
        _check_open_unit(value, name)
    if not 0.0 <= max_overlap < 1.0:
        raise ValueError(f"max_overlap must lie in [0, 1), got {max_overlap}")
    if roughness < 0:
        raise ValueError(f"roughness must be >= 0, got {roughness}")
    if binder_adhesion < 0:
        raise ValueError(f"binder_adhesion must be >= 0, got {binder_adhesion}")
    if binder_fraction + particle_fraction >= 1.0:
        raise ValueError(
            f"particle_fraction ({particle_fraction}) + binder_fraction ({binder_fraction}) must be < 1"
        )
    for name, value in (
        ("roughness_wavelength_nm", roughness_wavelength_nm),
        ("internal_wavelength_nm", internal_wavelength_nm),
        ("binder_reach_nm", binder_reach_nm),
        ("binder_wavelength_nm", binder_wavelength_nm),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 nm, got {value}")

    rng = np.random.default_rng(seed)
    rough = leveled_wave_field(shape, roughness_wavelength_nm, voxel, n_waves, rng)
    particles = _place_particles(shape, voxel, rng, r_min, r_max, particle_fraction, max_overlap, roughness, rough)
    del rough
    if not particles.any():
        raise ValueError(f"no particle fits into a box of {shape} voxels of {voxel.tolist()} nm")

    labels = np.zeros(shape, dtype=np.uint8)
    internal = leveled_wave_field(shape, internal_wavelength_nm, voxel, n_waves, rng)
    xi = level_cut(internal[particles], internal_solid_fraction)
    labels[particles & (internal <= xi)] = ACTIVE
    del internal

    # distance (nm) from every voxel outside the particles to the nearest particle voxel;
    # scipy's exact EDT takes anisotropic voxels (sampling) and is fast enough for one call
    gap = ndi.distance_transform_edt(~particles, sampling=voxel)
    shell = (gap > 0) & (gap <= binder_reach_nm)
    shell_fraction = shell.mean()
    if binder_fraction >= shell_fraction:
        raise ValueError(
            f"binder_fraction {binder_fraction} does not fit into the {shell_fraction:.3f} of the volume "
            f"that lies outside the particles within binder_reach_nm={binder_reach_nm} of them: "
            f"raise binder_reach_nm or lower binder_fraction"
        )
    binder = leveled_wave_field(shape, binder_wavelength_nm, voxel, n_waves, rng)
    # the level rises towards the particle surface: binder clings to the particles and their necks
    binder += np.float32(binder_adhesion / binder_reach_nm) * gap.astype(np.float32)
    del gap
    xi = level_cut(binder[shell], binder_fraction / shell_fraction)
    labels[shell & (binder <= xi)] = BINDER
    return (labels, particles) if return_particles else labels


def _place_particles(shape, voxel, rng, r_min, r_max, target, max_overlap, roughness, rough) -> np.ndarray:
    """Random sequential addition of roughened spheres until their volume fraction nears target."""
    box = np.array(shape) * voxel
    axes = [(np.arange(n) + 0.5) * v for n, v in zip(shape, voxel)]  # voxel centres, nm
    # normalised distance to the nearest particle centre, |x - c| / r
    nearest = np.full(shape, np.inf, dtype=np.float32)
    threshold = 1.0 + roughness * rough  # inside a particle where nearest <= threshold
    centres, radii = np.empty((0, 3)), np.empty(0)
    n_inside, n_total = 0, int(np.prod(shape))
    attempts, overshoots = 0, 0
    # placement tries are cheap, rasterisations are not: bound both
    while n_inside < target * n_total and attempts < 5000 and overshoots < 30:
        attempts += 1
        centre = rng.uniform(0.0, box)
        radius = rng.uniform(r_min, r_max)
        if len(radii) and np.any(
            np.linalg.norm(centres - centre, axis=1) < (1.0 - max_overlap) * (radii + radius)
        ):
            continue
        reach = radius * (1.0 + 4.0 * roughness)  # the roughened surface stays within 4 sigma
        window = tuple(
            slice(max(0, int((c - reach) / v)), min(n, int(np.ceil((c + reach) / v)) + 1))
            for c, v, n in zip(centre, voxel, shape)
        )
        z, y, x = (a[w] - c for a, w, c in zip(axes, window, centre))
        distance = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2) / radius
        local = np.minimum(nearest[window], distance.astype(np.float32))
        before = int(np.count_nonzero(nearest[window] <= threshold[window]))
        after = int(np.count_nonzero(local <= threshold[window]))
        gained = after - before
        # skip a particle that would overshoot the target by more than it now falls short
        if n_inside + gained - target * n_total > target * n_total - n_inside:
            overshoots += 1
            continue
        nearest[window] = local
        n_inside += gained
        centres = np.vstack([centres, centre])
        radii = np.append(radii, radius)
    return nearest <= threshold


def _check_radius_range(radius_nm) -> tuple[float, float]:
    values = np.atleast_1d(np.asarray(radius_nm, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not (0 < values[0] <= values[1]) or not np.all(np.isfinite(values)):
        raise ValueError(f"particle_radius_nm must be (min, max) with 0 < min <= max, got {radius_nm}")
    return float(values[0]), float(values[1])


def _check_open_unit(value: float, name: str) -> None:
    if not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
