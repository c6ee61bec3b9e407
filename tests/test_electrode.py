"""Three-phase electrode structure: phase fractions, where the binder lies, internal pores, seeds, errors."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import ball

from fibml.synth.electrode import ACTIVE, BINDER, PORE, electrode_structure

VOXEL = 10.0  # nm
SHAPE = (80, 80, 80)
SMALL = {"particle_radius_nm": (150.0, 250.0)}  # several particles in an 800 nm box


@pytest.fixture(scope="module")
def electrode():
    return electrode_structure(SHAPE, VOXEL, seed=0, return_particles=True, **SMALL)


def test_three_phases_at_their_target_fractions(electrode):
    labels, particles = electrode
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    assert set(np.unique(labels)) == {PORE, ACTIVE, BINDER}
    fractions = np.bincount(labels.ravel(), minlength=3) / labels.size
    # binder and the solid share of the particles are level cuts: exact to a few voxels
    assert fractions[BINDER] == pytest.approx(0.10, abs=1e-4)
    assert (labels[particles] == ACTIVE).mean() == pytest.approx(0.6, abs=1e-4)
    # particles by random sequential addition: within half a particle (r <= 250 nm) of the target
    assert particles.mean() == pytest.approx(0.45, abs=0.04)
    assert fractions[ACTIVE] == pytest.approx(0.6 * particles.mean(), abs=1e-4)
    assert fractions[PORE] == pytest.approx(1 - fractions[ACTIVE] - fractions[BINDER], abs=1e-6)


def test_default_particles_fill_a_larger_box_to_the_target():
    labels, particles = electrode_structure((96, 96, 96), VOXEL, seed=1, return_particles=True)
    # default radii 250-450 nm: a 960 nm box holds only a few, so the tolerance is wider
    assert particles.mean() == pytest.approx(0.45, abs=0.07)
    assert (labels == BINDER).mean() == pytest.approx(0.10, abs=1e-4)


def test_binder_lies_outside_the_particles_and_near_them(electrode):
    labels, particles = electrode
    binder = labels == BINDER
    assert not np.any(binder & particles)
    gap = ndi.distance_transform_edt(~particles, sampling=VOXEL)
    assert gap[binder].max() <= 100.0  # binder_reach_nm
    # the nearest NMC voxel may lie behind an internal pore opening, at most ~ half a pore wavelength on
    to_active = ndi.distance_transform_edt(labels != ACTIVE, sampling=VOXEL)
    assert to_active[binder].max() <= 100.0 + 75.0
    # binder_adhesion: denser near the particle surface than at the edge of its reach
    near = (gap > 0) & (gap <= 40)
    far = (gap > 60) & (gap <= 100)
    assert binder[near].mean() > 2 * binder[far].mean()


def test_uniform_binder_without_adhesion():
    labels, particles = electrode_structure(
        SHAPE, VOXEL, seed=0, return_particles=True, binder_adhesion=0.0, **SMALL
    )
    gap = ndi.distance_transform_edt(~particles, sampling=VOXEL)
    binder = labels == BINDER
    near, far = binder[(gap > 0) & (gap <= 40)].mean(), binder[(gap > 60) & (gap <= 100)].mean()
    assert near == pytest.approx(far, rel=0.3)


def test_particles_are_porous_inside(electrode):
    labels, particles = electrode
    # 40 % internal porosity, pores open to the particle surface
    assert (labels[particles] == PORE).mean() == pytest.approx(0.4, abs=1e-4)
    # without the particle mask: a closing of the NMC (radius 40 nm) encloses pores
    hull = ndi.binary_closing(labels == ACTIVE, ball(4))
    enclosed = (hull & (labels == PORE)).sum() / hull.sum()
    dense = electrode_structure(SHAPE, VOXEL, seed=0, internal_solid_fraction=0.97, **SMALL)
    hull_dense = ndi.binary_closing(dense == ACTIVE, ball(4))
    enclosed_dense = (hull_dense & (dense == PORE)).sum() / hull_dense.sum()
    assert enclosed > 0.08
    assert enclosed_dense < 0.3 * enclosed


def test_same_seed_same_volume_other_seed_other_volume():
    a = electrode_structure((48, 56, 64), VOXEL, seed=3, **SMALL)
    b = electrode_structure((48, 56, 64), VOXEL, seed=3, **SMALL)
    c = electrode_structure((48, 56, 64), VOXEL, seed=4, **SMALL)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.2


def test_called_as_a_dataset_structure_function_with_anisotropic_voxels():
    # fibml.synth.dataset calls function(shape=..., voxel_size_nm=..., seed=..., **kwargs)
    labels = electrode_structure(shape=[40, 80, 80], voxel_size_nm=(20.0, 10.0, 10.0), seed=2, **SMALL)
    assert labels.shape == (40, 80, 80)
    assert (labels == BINDER).mean() == pytest.approx(0.10, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (32, 32)}, "shape must be three sizes"),
        ({"particle_fraction": 0.0}, "particle_fraction must lie strictly between 0 and 1, got 0.0"),
        ({"internal_solid_fraction": 1.2}, "internal_solid_fraction must lie strictly between"),
        ({"binder_fraction": -0.1}, "binder_fraction must lie strictly between"),
        ({"particle_fraction": 0.6, "binder_fraction": 0.45}, r"particle_fraction \(0.6\) \+ binder_fraction"),
        ({"particle_radius_nm": (300.0, 200.0)}, r"particle_radius_nm must be \(min, max\)"),
        ({"particle_radius_nm": (-5.0, 200.0)}, "particle_radius_nm"),
        ({"binder_reach_nm": 0.0}, "binder_reach_nm must be > 0 nm"),
        ({"internal_wavelength_nm": -150.0}, "internal_wavelength_nm must be > 0 nm"),
        ({"max_overlap": 1.0}, "max_overlap must lie in"),
        ({"roughness": -0.1}, "roughness must be >= 0"),
        ({"binder_adhesion": -1.0}, "binder_adhesion must be >= 0"),
        ({"voxel_size_nm": 0.0}, "voxel_size_nm must be > 0"),
        ({"roughness_wavelength_nm": 900.0}, "longer than the box"),
        ({"binder_fraction": 0.3, "binder_reach_nm": 20.0}, "does not fit into the"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    args = dict(shape=(48, 48, 48), voxel_size_nm=VOXEL, seed=0, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        electrode_structure(**args)
