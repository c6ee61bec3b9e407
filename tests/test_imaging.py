"""BSE forward model: bulk signals, shine-through of epoxy layers, voltage dependence, noise, errors."""

import numpy as np
import pytest

from fibml.synth.imaging import render_bse, shine_through_profile
from fibml.synth.microstructure import leveled_wave
from fibml.synth.physics import get_material

VOXEL = 2.5  # nm
NOISELESS = dict(electrons_per_pixel=None, read_noise=0.0, probe_sigma_nm=0.0)


def eta(material, voltage):
    return float(get_material(material).backscatter_coefficient(voltage))


@pytest.mark.parametrize("voltage", [1.0, 2.0, 4.0])
def test_bulk_phases_render_to_their_eta(voltage):
    solid = np.ones((8, 16, 16), dtype=np.uint8)
    gold = render_bse(solid, voltage, VOXEL, **NOISELESS)
    epoxy = render_bse(np.zeros_like(solid), voltage, VOXEL, **NOISELESS)
    np.testing.assert_allclose(gold, eta("Au", voltage), rtol=1e-5)
    np.testing.assert_allclose(epoxy, eta("epoxy", voltage), rtol=1e-5)
    assert eta("Au", voltage) > 3 * eta("epoxy", voltage)


def test_output_dtype_and_shape():
    labels = leveled_wave((12, 20, 28), 20.0, 0.3, VOXEL, seed=0)
    for kwargs in (NOISELESS, {}):
        image = render_bse(labels.astype(np.uint8), 2.0, VOXEL, **kwargs)
        assert image.dtype == np.float32
        assert image.shape == labels.shape
    # bool labels are accepted as 0 / 1 phases
    np.testing.assert_array_equal(
        render_bse(labels, 2.0, VOXEL, **NOISELESS), render_bse(labels.astype(np.int64), 2.0, VOXEL, **NOISELESS)
    )


def _face_signal(depth_voxels, voltage, n_slices=48):
    """Signal at the face of an epoxy layer `depth_voxels` thick over gold (laterally uniform)."""
    labels = np.ones((n_slices, 6, 6), dtype=np.uint8)
    labels[:depth_voxels] = 0
    return float(render_bse(labels, voltage, VOXEL, boundary="reflect", **NOISELESS)[0].mean())


@pytest.mark.parametrize("voltage", [1.0, 4.0])
def test_epoxy_layer_over_gold_matches_shine_through_profile(voltage):
    depths = np.arange(0, 11)
    signal = np.array([_face_signal(int(d), voltage) for d in depths])
    # falls monotonically from bulk gold towards epoxy as the layer thickens
    assert signal[0] == pytest.approx(eta("Au", voltage), rel=1e-5)
    assert np.all(np.diff(signal) < 0)
    assert np.all(signal > eta("epoxy", voltage))
    np.testing.assert_allclose(signal, shine_through_profile(voltage, depths * VOXEL), rtol=2e-4)


def test_shine_through_profile_by_hand():
    # 1 kV: Lambda_epoxy = 0.2 * R_KO(epoxy, 1 kV) = 0.2 * 55.85 nm = 11.17 nm;
    # 10 nm of epoxy transmits exp(-10 / 11.17) = 0.4085 of the gold signal
    t = np.exp(-10.0 / (0.2 * get_material("epoxy").range_nm(1.0)))
    assert t == pytest.approx(0.4085, abs=1e-3)
    expected = eta("epoxy", 1.0) * (1 - t) + eta("Au", 1.0) * t
    assert shine_through_profile(1.0, [10.0])[0] == pytest.approx(expected, rel=1e-9)
    assert shine_through_profile(1.0, [0.0])[0] == pytest.approx(eta("Au", 1.0), rel=1e-9)
    assert shine_through_profile(1.0, [1e4])[0] == pytest.approx(eta("epoxy", 1.0), rel=1e-6)


@pytest.mark.parametrize("depth_voxels", [2, 4, 8])
def test_shine_through_grows_with_voltage_for_a_layer(depth_voxels):
    # compare the fraction of the gold-epoxy contrast that comes through the layer
    def shine(voltage):
        return (_face_signal(depth_voxels, voltage) - eta("epoxy", voltage)) / (eta("Au", voltage) - eta("epoxy", voltage))

    assert shine(1.0) < shine(2.0) < shine(4.0)
    # the raw signal too, not only the normalised one
    assert _face_signal(depth_voxels, 4.0) > _face_signal(depth_voxels, 1.0)


@pytest.mark.parametrize("noise", [NOISELESS, {}])
def test_shine_through_index_of_a_structure_grows_with_voltage(noise):
    labels = leveled_wave((32, 40, 40), 20.0, 0.3, VOXEL, seed=0).astype(np.uint8)
    pore = labels == 0

    def shine_through_index(voltage):
        image = render_bse(labels, voltage, VOXEL, **noise)
        e_ep, e_au = eta("epoxy", voltage), eta("Au", voltage)
        return (image[pore].mean() - e_ep) / (e_au - e_ep)

    index = [shine_through_index(v) for v in (1.0, 2.0, 4.0)]
    assert index[0] < index[1] < index[2]
    # measured 0.33, 0.63, 0.76 without noise. The ordering is the physics (the range grows like
    # E^1.67, so more of the gold beneath shines through); the margins between them have no
    # independent reference (issue 27 calibrates the model against the Monte Carlo) and guard the
    # measured values. index < 1 is exact: a pore pixel mixes epoxy with attenuated gold, never more.
    assert index[1] - index[0] > 0.1 and index[2] - index[1] > 0.05
    assert index[2] < 0.9


def test_same_seed_same_noise_other_seed_other_noise():
    labels = leveled_wave((8, 24, 24), 20.0, 0.3, VOXEL, seed=0).astype(np.uint8)
    a = render_bse(labels, 2.0, VOXEL, seed=7)
    b = render_bse(labels, 2.0, VOXEL, seed=7)
    c = render_bse(labels, 2.0, VOXEL, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.9


@pytest.mark.parametrize("electrons", [50.0, 400.0])
def test_shot_noise_of_bulk_gold(electrons):
    # eta * N backscattered electrons per pixel, Poisson: std of counts / N is sqrt(eta / N)
    image = render_bse(np.ones((16, 32, 32), np.uint8), 2.0, VOXEL, electrons_per_pixel=electrons, read_noise=0.0)
    expected = np.sqrt(eta("Au", 2.0) / electrons)
    assert image.mean() == pytest.approx(eta("Au", 2.0), rel=0.01)
    assert image.std() == pytest.approx(expected, rel=0.05)


def test_read_noise_adds_gaussian_std():
    image = render_bse(np.ones((16, 32, 32), np.uint8), 2.0, VOXEL, electrons_per_pixel=None, read_noise=0.02)
    assert image.std() == pytest.approx(0.02, rel=0.05)
    assert image.mean() == pytest.approx(eta("Au", 2.0), abs=1e-3)


@pytest.mark.parametrize("bad", [2, 5])
def test_label_beyond_materials_raises(bad):
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    labels[1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"labels hold values 0\.\.{bad} but 2 materials"):
        render_bse(labels, 2.0, VOXEL)
    # a third material makes label 2 valid
    if bad == 2:
        image = render_bse(labels, 2.0, VOXEL, materials=("epoxy", "Au", "Ag"), **NOISELESS)
        assert image.shape == labels.shape


def test_negative_label_raises():
    labels = np.zeros((4, 8, 8), dtype=np.int16)
    labels[0, 0, 0] = -1
    with pytest.raises(ValueError, match="labels hold values -1"):
        render_bse(labels, 2.0, VOXEL)


def test_float_labels_raise():
    with pytest.raises(ValueError, match="integer phase indices.*float"):
        render_bse(np.ones((4, 8, 8), dtype=np.float32), 2.0, VOXEL)


def test_bad_arguments_raise():
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="3-D"):
        render_bse(labels[0], 2.0, VOXEL)
    with pytest.raises(ValueError, match="voltage_kV"):
        render_bse(labels, 0.0, VOXEL)
    with pytest.raises(ValueError, match="boundary"):
        render_bse(labels, 2.0, VOXEL, boundary="zero")
    with pytest.raises(ValueError, match="unknown material 'unobtainium'"):
        render_bse(labels, 2.0, VOXEL, materials=("epoxy", "unobtainium"))


def _column_signal(labels, voltage, voxel=VOXEL, depth_slices=4000):
    """The closed form of the module docstring, summed down each column directly (no sweep):
    S = sum_k eta_k a_k prod_{j<k} (1 - a_k), over the stack and its continuation below
    (periodic copies), until less than 1e-12 is transmitted. No lateral spread."""
    materials = [get_material("epoxy"), get_material("Au")]
    eta_ = np.array([m.backscatter_coefficient(voltage) for m in materials])
    absorb = 1 - np.exp(-voxel / np.array([0.2 * m.range_nm(voltage) for m in materials]))
    out = np.zeros(labels.shape)
    transmitted = np.ones(labels.shape)
    for k in range(depth_slices):
        phase = np.take(labels, np.arange(labels.shape[0]) + k, axis=0, mode="wrap")
        out += transmitted * eta_[phase] * absorb[phase]
        transmitted *= 1 - absorb[phase]
        if transmitted.max() < 1e-12:
            break
    return out


@pytest.mark.parametrize("voltage", [1.0, 4.0])
def test_the_sweep_equals_the_column_sums_of_the_closed_form(voltage):
    labels = leveled_wave((12, 16, 16), 20.0, 0.3, VOXEL, seed=4).astype(np.uint8)
    image = render_bse(labels, voltage, VOXEL, lateral_spread=0.0, **NOISELESS)
    # the sweep starts 0.1 % of the transmission below the stack, from the mean eta: off by < 1e-3 eta
    np.testing.assert_allclose(image, _column_signal(labels, voltage), rtol=0, atol=1e-3 * eta("Au", voltage))


def test_below_the_stack_lie_periodic_or_mirrored_copies():
    labels = leveled_wave((8, 16, 16), 20.0, 0.3, VOXEL, seed=5).astype(np.uint8)
    settings = dict(lateral_spread=0.3, **NOISELESS)
    periodic = render_bse(labels, 4.0, VOXEL, boundary="periodic", **settings)
    copies = render_bse(np.concatenate([labels, labels]), 4.0, VOXEL, boundary="periodic", **settings)
    np.testing.assert_allclose(periodic, copies[:8], atol=5e-4)
    mirrored = render_bse(labels, 4.0, VOXEL, boundary="reflect", **settings)
    mirror_copies = render_bse(np.concatenate([labels, labels[::-1]]), 4.0, VOXEL, boundary="reflect", **settings)
    np.testing.assert_allclose(mirrored, mirror_copies[:8], atol=5e-4)
    assert np.abs(periodic - mirrored).max() > 0.01  # the two boundaries do differ at 4 kV


def test_periodic_images_shift_with_the_structure_and_reflected_ones_do_not_wrap():
    labels = leveled_wave((6, 24, 24), 10.0, 0.3, VOXEL, seed=6).astype(np.uint8)
    settings = dict(lateral_spread=0.5, probe_sigma_nm=3.0, electrons_per_pixel=None, read_noise=0.0)
    periodic = render_bse(labels, 2.0, VOXEL, boundary="periodic", **settings)
    rolled = render_bse(np.roll(labels, (5, -7), axis=(1, 2)), 2.0, VOXEL, boundary="periodic", **settings)
    np.testing.assert_allclose(rolled, np.roll(periodic, (5, -7), axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # a gold wall in the first column: under "reflect" the last column, 127 pixels away, sees
    # only epoxy; under "periodic" it is the wall's neighbour
    wall = np.zeros((4, 8, 128), np.uint8)
    wall[:, :, 0] = 1
    epoxy = render_bse(np.zeros_like(wall), 2.0, VOXEL, boundary="reflect", **settings)
    reflect = render_bse(wall, 2.0, VOXEL, boundary="reflect", **settings)
    assert np.abs(reflect[:, :, -1] - epoxy[:, :, -1]).max() < 1e-5
    wrapped = render_bse(wall, 2.0, VOXEL, boundary="periodic", **settings)
    assert (wrapped[:, :, -1] - epoxy[:, :, -1]).min() > 0.01


@pytest.mark.parametrize("boundary, mode", [("periodic", "wrap"), ("reflect", "reflect")])
def test_probe_blur_is_a_gaussian_in_nm_of_each_pixel_size(boundary, mode):
    from scipy import ndimage as ndi

    labels = leveled_wave((4, 20, 30), 8.0, 0.3, (2.5, 2.0, 3.0), seed=7).astype(np.uint8)
    sharp = render_bse(labels, 2.0, (2.5, 2.0, 3.0), boundary=boundary, **NOISELESS)
    blurred = render_bse(labels, 2.0, (2.5, 2.0, 3.0), boundary=boundary, **(NOISELESS | {"probe_sigma_nm": 0.6}))
    np.testing.assert_allclose(blurred, ndi.gaussian_filter(sharp, (0, 0.3, 0.2), mode=mode), rtol=1e-5, atol=1e-6)
    assert np.abs(blurred - sharp).max() > 1e-4  # 0.6 nm is a blur too (below one pixel)


def test_read_noise_is_zero_mean_and_off_at_zero():
    labels = np.ones((2, 64, 64), np.uint8)
    clean = render_bse(labels, 2.0, VOXEL, probe_sigma_nm=0.0, electrons_per_pixel=None, read_noise=0.0)
    noisy = render_bse(labels, 2.0, VOXEL, probe_sigma_nm=0.0, electrons_per_pixel=None, read_noise=0.05, seed=3)
    residual = noisy - clean
    assert abs(residual.mean()) < 0.005 and residual.std() == pytest.approx(0.05, rel=0.05)
    np.testing.assert_array_equal(clean, np.full_like(clean, clean[0, 0, 0]))  # no noise at read_noise 0


def test_defaults_are_those_documented():
    labels = leveled_wave((6, 16, 16), 10.0, 0.3, VOXEL, seed=8).astype(np.uint8)
    explicit = render_bse(labels, 2.0, 2.5, ("epoxy", "Au"), information_depth_fraction=0.2, lateral_spread=0.3,
                          probe_sigma_nm=1.5, electrons_per_pixel=200.0, read_noise=0.01, boundary="periodic", seed=0)
    np.testing.assert_array_equal(render_bse(labels, 2.0), explicit)


def test_the_sweep_follows_the_documented_recurrence_with_lateral_spread():
    """S_z = eta a + (1 - a) G(S_{z+1}), G a Gaussian of lateral_spread sqrt(Lambda_max dz) nm
    (per pixel size along y and x), started ceil(ln(1000) Lambda_max / dz) slices below the
    stack from the mean eta: written out here from the docstrings, in float64."""
    from scipy import ndimage as ndi

    labels = leveled_wave((5, 12, 18), 8.0, 0.3, (2.5, 2.0, 3.0), seed=9).astype(np.uint8)
    voltage, voxel, spread = 1.0, (2.5, 2.0, 3.0), 0.3
    materials = [get_material("epoxy"), get_material("Au")]
    eta_ = np.array([m.backscatter_coefficient(voltage) for m in materials])
    depth = np.array([0.2 * m.range_nm(voltage) for m in materials])
    absorb = 1 - np.exp(-voxel[0] / depth)
    sigma_nm = spread * np.sqrt(depth.max() * voxel[0])
    below = int(np.ceil(np.log(1e3) * depth.max() / voxel[0]))
    signal = np.full(labels.shape[1:], eta_[labels].mean())
    expected = np.empty(labels.shape)
    for z in list(range(labels.shape[0] + below - 1, -1, -1)):
        phase = labels[z % labels.shape[0]]
        signal = ndi.gaussian_filter(signal, (sigma_nm / voxel[1], sigma_nm / voxel[2]), mode="wrap")
        signal = eta_[phase] * absorb[phase] + (1 - absorb[phase]) * signal
        if z < labels.shape[0]:
            expected[z] = signal
    image = render_bse(labels, voltage, voxel, lateral_spread=spread, **NOISELESS)
    np.testing.assert_allclose(image, expected, rtol=2e-6, atol=2e-6)
    # a lateral spread of a fifth of a pixel per step still blurs
    faint = render_bse(labels, voltage, voxel, lateral_spread=0.1, **NOISELESS)
    assert np.abs(faint - render_bse(labels, voltage, voxel, lateral_spread=0.0, **NOISELESS)).max() > 1e-4


def test_progress_is_shown_only_when_asked(capsys):
    labels = np.zeros((2, 8, 8), np.uint8)
    render_bse(labels, 2.0)
    assert capsys.readouterr().err == ""
    render_bse(labels, 2.0, progress=True)
    assert "BSE 2 kV" in capsys.readouterr().err
