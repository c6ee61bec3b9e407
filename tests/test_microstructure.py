"""Leveled-wave microstructures: solid fraction, determinism, periodicity, isotropy, hierarchy."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from fibml.synth.microstructure import (
    hierarchical_leveled_wave,
    level_cut,
    leveled_wave,
    leveled_wave_field,
)

VOXEL = 2.5  # nm
WAVELENGTH = 20.0  # nm = 8 voxels: several periods in a 48-voxel box


@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 40, 56), (16, 64, 32)])
@pytest.mark.parametrize("fraction", [0.12, 0.3, 0.5, 0.7])
def test_solid_fraction_hits_target(shape, fraction):
    solid = leveled_wave(shape, WAVELENGTH, fraction, VOXEL, seed=1)
    assert solid.shape == shape
    assert solid.dtype == bool
    assert solid.mean() == pytest.approx(fraction, abs=0.01)


def test_anisotropic_voxels_keep_the_solid_fraction():
    solid = leveled_wave((16, 48, 48), WAVELENGTH, 0.3, voxel_size_nm=(7.5, 2.5, 2.5), seed=2)
    assert solid.mean() == pytest.approx(0.3, abs=0.01)


def test_field_is_standardised():
    field = leveled_wave_field((32, 32, 32), WAVELENGTH, VOXEL, rng=0)
    assert field.dtype == np.float32
    # sum of N unit cosines scaled by sqrt(2/N): zero mean, unit variance
    assert abs(field.mean()) < 0.05
    assert field.std() == pytest.approx(1.0, abs=0.1)


def test_level_cut_is_the_quantile():
    values = np.arange(100.0)
    assert level_cut(values, 0.3) == 29.0
    assert (values <= level_cut(values, 0.3)).mean() == 0.3


def test_same_seed_same_volume_other_seed_other_volume():
    a = leveled_wave((24, 24, 24), WAVELENGTH, 0.3, VOXEL, seed=5)
    b = leveled_wave((24, 24, 24), WAVELENGTH, 0.3, VOXEL, seed=5)
    c = leveled_wave((24, 24, 24), WAVELENGTH, 0.3, VOXEL, seed=6)
    np.testing.assert_array_equal(a, b)
    # two independent structures at phi = 0.3 disagree on ~2 phi (1 - phi) = 42 % of the voxels
    assert (a != c).mean() > 0.3


def _phase_changes(solid, axis):
    """Per-plane fraction of voxels that change phase from plane i to i+1 along `axis`
    (interior), and the same across the wrap-around from the last plane to the first."""
    a = np.moveaxis(solid, axis, 0)
    interior = (a[1:] != a[:-1]).mean(axis=(1, 2))
    wrap = (a[-1] != a[0]).mean()
    return interior, wrap


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_is_periodic(axis):
    solid = leveled_wave((40, 48, 56), WAVELENGTH, 0.3, VOXEL, seed=3)
    interior, wrap = _phase_changes(solid, axis)
    # Tolerance: a single plane pair is a sample of the interior distribution, so it must lie
    # within a few of the interior planes' own standard deviations (0.011-0.017 here) of their mean.
    # A seam between unrelated planes would change phase in 2 phi (1 - phi) = 42 % of the
    # voxels instead of the interior ~13 %.
    assert abs(wrap - interior.mean()) < 4 * interior.std() + 0.01
    # the check has teeth: a non-periodic crop of the same volume fails it
    cropped = np.moveaxis(np.moveaxis(solid, axis, 0)[:-13], 0, axis)
    interior_c, wrap_c = _phase_changes(cropped, axis)
    assert abs(wrap_c - interior_c.mean()) > 4 * interior_c.std() + 0.01


def _two_point_correlation(solid, lags):
    """S2(r) = P(x solid and x + r solid) along z, y, x on a periodic volume: (3, len(lags))."""
    x = solid.astype(np.float64)
    return np.array([[np.mean(x * np.roll(x, lag, axis=axis)) for lag in lags] for axis in range(3)])


def _isotropy_error(solid, lags=range(1, 7)):
    """Largest deviation of a directional S2 from the mean of the three, relative to the
    S2 range phi - phi^2 (S2(0) = phi, S2(inf) = phi^2)."""
    s2 = _two_point_correlation(solid, lags)
    phi = solid.mean()
    return np.abs(s2 - s2.mean(axis=0)).max() / (phi - phi**2)


# 48^3 voxels hold 6 wavelengths per axis; across seeds the isotropic structure stays below
# ~0.04 (sampling noise of 1000 random directions), the z-stretched one is at ~0.24.
ISOTROPY_TOLERANCE = 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_structure_is_isotropic(seed):
    solid = leveled_wave((48, 48, 48), WAVELENGTH, 0.3, VOXEL, seed=seed)
    assert _isotropy_error(solid) < ISOTROPY_TOLERANCE


def test_isotropy_check_catches_a_stretched_structure():
    # the same kind of structure stretched 2x in z: still periodic, same shape, anisotropic
    flat = leveled_wave((24, 48, 48), WAVELENGTH, 0.3, VOXEL, seed=0)
    stretched = np.repeat(flat, 2, axis=0)
    assert stretched.shape == (48, 48, 48)
    assert _isotropy_error(stretched) > 2 * ISOTROPY_TOLERANCE


HIER = dict(
    voxel_size_nm=VOXEL,
    coarse_wavelength_nm=100.0,
    fine_wavelength_nm=15.0,
    coarse_solid_fraction=0.35,
    solid_fraction=0.12,
)


@pytest.mark.parametrize("seed", [0, 1])
def test_hierarchical_solid_fraction_and_coarse_network(seed):
    shape = (64, 64, 64)
    solid = hierarchical_leveled_wave(shape, seed=seed, **HIER)
    assert solid.shape == shape
    assert solid.mean() == pytest.approx(0.12, abs=0.01)

    # The coarse network is the first field drawn from the seed's generator, the same one
    # leveled_wave draws: the hierarchical solid must be a subset of it, filling ~0.12 / 0.35.
    coarse = leveled_wave(shape, HIER["coarse_wavelength_nm"], HIER["coarse_solid_fraction"], VOXEL, seed=seed)
    assert not np.any(solid & ~coarse)
    assert (solid.sum() / coarse.sum()) == pytest.approx(0.12 / 0.35, abs=0.01)

    # coarse pores: big empty regions that a single fine network at the same fraction lacks
    fine_only = leveled_wave(shape, HIER["fine_wavelength_nm"], 0.12, VOXEL, seed=seed)
    assert fine_only.mean() == pytest.approx(0.12, abs=0.01)
    largest_pore_hier = ndi.distance_transform_edt(~solid).max()
    largest_pore_fine = ndi.distance_transform_edt(~fine_only).max()
    assert largest_pore_hier > 1.8 * largest_pore_fine


def test_hierarchical_same_seed_same_volume():
    a = hierarchical_leveled_wave((32, 32, 32), seed=4, **{**HIER, "coarse_wavelength_nm": 60.0})
    b = hierarchical_leveled_wave((32, 32, 32), seed=4, **{**HIER, "coarse_wavelength_nm": 60.0})
    np.testing.assert_array_equal(a, b)


def test_hierarchical_rejects_total_fraction_above_coarse():
    with pytest.raises(ValueError, match="below coarse_solid_fraction"):
        hierarchical_leveled_wave((32, 32, 32), **{**HIER, "coarse_wavelength_nm": 60.0, "solid_fraction": 0.4})


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.2, float("nan")])
def test_invalid_solid_fraction_raises(fraction):
    with pytest.raises(ValueError, match="solid_fraction"):
        leveled_wave((16, 16, 16), WAVELENGTH, fraction, VOXEL)
    with pytest.raises(ValueError, match="solid_fraction"):
        hierarchical_leveled_wave((64, 64, 64), **{**HIER, "solid_fraction": fraction})
    with pytest.raises(ValueError, match="solid_fraction"):
        level_cut(np.arange(10.0), fraction)


def test_wavelength_below_two_voxels_raises():
    with pytest.raises(ValueError, match="below two voxels"):
        leveled_wave((32, 32, 32), 4.9, 0.3, VOXEL)
    # with anisotropic voxels the coarsest axis decides: 7.5 nm voxels need >= 15 nm
    with pytest.raises(ValueError, match="below two voxels"):
        leveled_wave((16, 32, 32), 12.0, 0.3, (7.5, 2.5, 2.5))


def test_wavelength_longer_than_box_raises():
    # box = 32 * 2.5 = 80 nm along its shortest axis
    with pytest.raises(ValueError, match="longer than the box"):
        leveled_wave((32, 64, 64), 81.0, 0.3, VOXEL)
    # and the same wavelength is fine in a box long enough on every axis
    assert leveled_wave((40, 40, 40), 81.0, 0.3, VOXEL).mean() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("shape", [(16, 16), (1, 16, 16), (16, 16, 16, 2)])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        leveled_wave(shape, WAVELENGTH, 0.3, VOXEL)
