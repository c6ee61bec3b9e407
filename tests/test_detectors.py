"""In-lens and SE2 detector model: shine-through by hand, edges, contrasts on an electrode, noise, errors."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.tree import DecisionTreeClassifier

from fibml.synth.detectors import DETECTORS, render_detector
from fibml.synth.electrode import ACTIVE, BINDER, PORE, electrode_structure
from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import leveled_wave
from fibml.synth.physics import get_material

DZ = 10.0  # nm
NOISELESS = {"electrons_per_pixel": None, "read_noise": 0.0, "probe_sigma_nm": 0.0}


@pytest.fixture(scope="module")
def electrode():
    return electrode_structure((64, 80, 80), DZ, seed=0)


@pytest.fixture(scope="module")
def images(electrode):
    return {name: render_detector(electrode, name, seed=i + 1) for i, name in enumerate(("inlens", "se2"))}


@pytest.mark.parametrize("detector", ["inlens", "se2"])
@pytest.mark.parametrize("depth", [1, 3, 6])
@pytest.mark.parametrize("phase", [ACTIVE, BINDER])
def test_pore_over_solid_shows_attenuated_emission(detector, depth, phase):
    # a laterally uniform pore layer `depth` slices thick over a solid: no edges, blur irrelevant
    labels = np.full((depth + 4, 6, 6), phase, dtype=np.uint8)
    labels[:depth] = PORE
    image = render_detector(labels, detector, **NOISELESS)
    e = DETECTORS[detector]["emission"]
    transmit = np.exp(-DZ / DETECTORS[detector]["escape_length_nm"])
    # face k slices above the solid: the pore's own background e[0] (1 - T^k) plus e[phase] T^k
    for z in range(depth):
        k = depth - z
        expected = e[0] * (1 - transmit**k) + e[phase] * transmit**k
        np.testing.assert_allclose(image[z], expected, rtol=1e-5)
    np.testing.assert_allclose(image[depth:], e[phase], rtol=1e-6)


def test_column_by_hand():
    # SE2, L = 50 nm: 3 slices of 10 nm of pore over NMC pass exp(-30 / 50) = 0.5488
    labels = np.ones((8, 4, 4), dtype=np.uint8)
    labels[:3] = PORE
    image = render_detector(labels, "se2", **NOISELESS)
    assert image[0, 0, 0] == pytest.approx(0.5488, abs=1e-4)
    # the in-lens, L = 15 nm, passes exp(-2) = 0.1353 of NMC over a background 0.03 (1 - 0.1353)
    image = render_detector(labels, "inlens", **NOISELESS)
    assert image[0, 0, 0] == pytest.approx(0.1353 + 0.03 * 0.8647, abs=1e-4)
    # an explicit escape length and emission table
    image = render_detector(labels, "se2", escape_length_nm=10.0, emission=(0.0, 0.5), **NOISELESS)
    assert image[0, 0, 0] == pytest.approx(0.5 * np.exp(-3.0), rel=1e-5)


@pytest.mark.parametrize("detector", ["inlens", "se2"])
def test_edge_of_a_wall_by_hand(detector):
    # pore for x < 8, NMC for x >= 8, through the whole depth: a vertical wall
    labels = np.ones((6, 8, 32), dtype=np.uint8)
    labels[:, :, :8] = PORE
    image = render_detector(labels, detector, lateral_spread=0.0, **NOISELESS)[2, 4]
    table = DETECTORS[detector]
    (e_pore, e_nmc, _), (g_pore, g_solid), width = table["emission"], table["edge_gain"], table["edge_width_nm"]

    def edge(gain, d):  # d: pixel centre to the boundary, nm
        return gain * e_nmc * np.exp(-d / width)

    # an endless pore shows its background (to 0.1 %, the sweep's start below the volume)
    assert image[7] == pytest.approx(e_pore + edge(g_pore, 5.0), abs=2e-3)
    assert image[6] == pytest.approx(e_pore + edge(g_pore, 15.0), abs=2e-3)
    assert image[8] == pytest.approx(e_nmc + edge(g_solid, 5.0), rel=1e-5)
    assert image[9] == pytest.approx(e_nmc + edge(g_solid, 15.0), rel=1e-5)
    assert image[24] == pytest.approx(e_nmc, rel=1e-5)  # flat NMC, far from the wall
    assert image[8] > image[24]  # the solid edge is brighter than flat NMC
    if detector == "se2":
        # the pore side of the edge is brighter than flat NMC: the paper's bright background
        assert image[7] > 1.05 * image[24]
    else:
        assert image[7] < 0.2 * image[24]


def test_emission_table_and_edge_gain_arguments():
    labels = np.ones((6, 8, 32), dtype=np.uint8)
    labels[:, :, :8] = PORE
    both = render_detector(labels, "se2", edge_gain=0.5, lateral_spread=0.0, **NOISELESS)[2, 4]
    pair = render_detector(labels, "se2", edge_gain=(0.5, 0.5), lateral_spread=0.0, **NOISELESS)[2, 4]
    none = render_detector(labels, "se2", edge_gain=0.0, lateral_spread=0.0, **NOISELESS)[2, 4]
    np.testing.assert_array_equal(both, pair)
    assert both[7] - none[7] == pytest.approx(both[8] - none[8], rel=1e-5)
    np.testing.assert_allclose(none, np.where(np.arange(32) < 8, 0.0, 1.0), atol=2e-3)


def test_periodic_boundary_is_translation_invariant():
    labels = np.zeros((10, 24, 24), dtype=np.uint8)
    labels[3:, 5:15, 2:9] = ACTIVE
    labels[6:, 0:4, 16:23] = BINDER  # touches the border: edges wrap around
    blurred = {**NOISELESS, "probe_sigma_nm": 3.0}
    a = render_detector(labels, "se2", boundary="periodic", **blurred)
    b = render_detector(np.roll(labels, (7, 11), axis=(1, 2)), "se2", boundary="periodic", **blurred)
    # the wrapped edge distance is exact within 12 edge widths, beyond them the term is < 1e-5
    np.testing.assert_allclose(np.roll(a, (7, 11), axis=(1, 2)), b, atol=3e-5)


def test_se2_background_brighter_than_inlens_relative_to_nmc(electrode, images):
    pore, nmc = electrode == PORE, electrode == ACTIVE
    relative = {name: image[pore].mean() / image[nmc].mean() for name, image in images.items()}
    # measured 0.44 (SE2) and 0.07 (in-lens): shine-through and edges light up the SE2 pores. The
    # contrasts were chosen to look like the paper's Fig. 2 and 4 (fibml.synth.detectors), so these
    # two bounds have no independent reference: they guard the measured values with margins.
    assert relative["se2"] > 0.3
    assert relative["inlens"] < 0.12
    # a part of the SE2 background (measured 16 %; no reference, a guard) is brighter than typical
    # NMC. None of the in-lens one, by derivation: the brightest noiseless in-lens pore pixel, a pore
    # one slice deep over NMC at an edge, is 0.03 (1 - T) + T * 1.0 + 0.05 = 0.57 with T =
    # exp(-10 / 15) = 0.51, before the probe blur lowers it; NMC's median is about 1.0, and the shot
    # noise at 150 electrons per pixel (sd sqrt(0.57 / 150) = 0.06) would need 7 sd to close the gap.
    bright = {name: (image[pore] > np.median(image[nmc])).mean() for name, image in images.items()}
    assert bright["se2"] > 0.08
    assert bright["inlens"] < 0.005


def test_se2_edges_of_particles_are_brighter_than_flat_nmc(electrode, images):
    se2 = images["se2"]
    solid = electrode > 0
    # in-plane distance to the other side of the boundary, per face
    d_pore = np.stack([ndi.distance_transform_edt(~face) for face in solid])
    d_solid = np.stack([ndi.distance_transform_edt(face) for face in solid])
    flat_nmc = (electrode == ACTIVE) & (d_solid >= 4)
    pore_edge_by_nmc = (electrode == PORE) & (d_pore == 1)
    assert np.median(se2[pore_edge_by_nmc]) > np.median(se2[flat_nmc])


def _iou_weighted_error(labels_train, features_train, labels_test, features_test, classifier):
    classifier.fit(features_train, labels_train)
    predicted = classifier.predict(features_test)
    fraction = np.bincount(labels_test, minlength=3) / labels_test.size
    iou = [
        ((predicted == c) & (labels_test == c)).sum() / ((predicted == c) | (labels_test == c)).sum() for c in range(3)
    ]
    return 1.0 - float(np.dot(iou, fraction))


def test_two_detectors_beat_either_one_and_triple_beats_double_threshold(electrode, images):
    se2, inlens = images["se2"], images["inlens"]
    both = np.stack([se2, inlens, se2 - inlens], axis=-1)
    features = {"se2": se2[..., None], "inlens": inlens[..., None], "both": both}
    train, test = slice(0, 27), slice(37, 64)  # 100 nm apart in z, as the paper's test slice

    def error(name, classifier):
        x = features[name]
        return _iou_weighted_error(
            electrode[train].ravel(), x[train].reshape(-1, x.shape[-1]),
            electrode[test].ravel(), x[test].reshape(-1, x.shape[-1]), classifier,
        )  # fmt: skip

    double = error("se2", DecisionTreeClassifier(max_leaf_nodes=3, random_state=0))
    triple = error("se2", DecisionTreeClassifier(max_leaf_nodes=4, random_state=0))
    depth_two = error("se2", DecisionTreeClassifier(max_depth=2, random_state=0))
    # measured 0.36 and 0.25 (no independent reference: the margin 0.05 guards the measured gap):
    # the fourth interval (void again) takes the bright background.
    # The paper's depth-2 tree finds it too when its root split falls between carbon and NMC;
    # here (root between pore and carbon) it cannot, and equals the double threshold
    assert triple < double - 0.05
    assert depth_two <= double + 1e-9
    deep = {"max_depth": 6, "min_samples_leaf": 50, "random_state": 0}
    one = {name: error(name, DecisionTreeClassifier(**deep)) for name in ("se2", "inlens")}
    two = error("both", DecisionTreeClassifier(**deep))
    # measured 0.25 (SE2), 0.07 (in-lens), 0.03 (both + difference); the paper's claim is the
    # ordering (two detectors beat one), the factor 0.6 and the 0.15 are guards on measured values
    assert two < 0.6 * min(one.values())
    assert one["se2"] > 0.15


def test_noise_off_is_deterministic_same_seed_same_image(electrode):
    labels = electrode[:12, :40, :40]
    a = render_detector(labels, "se2", **NOISELESS, seed=1)
    b = render_detector(labels, "se2", **NOISELESS, seed=2)
    np.testing.assert_array_equal(a, b)
    c = render_detector(labels, "se2", seed=7)
    d = render_detector(labels, "se2", seed=7)
    e = render_detector(labels, "se2", seed=8)
    np.testing.assert_array_equal(c, d)
    assert np.mean(c != e) > 0.9
    assert c.dtype == np.float32 and c.shape == labels.shape


@pytest.mark.parametrize("electrons", [50.0, 400.0])
def test_shot_noise_of_bulk_nmc(electrons):
    nmc = np.ones((8, 32, 32), np.uint8)
    image = render_detector(nmc, "inlens", electrons_per_pixel=electrons, read_noise=0.0)
    assert image.mean() == pytest.approx(1.0, rel=0.01)
    assert image.std() == pytest.approx(np.sqrt(1.0 / electrons), rel=0.05)


def test_bool_labels_are_pore_and_nmc():
    labels = leveled_wave((8, 16, 16), 60.0, 0.5, DZ, seed=0)
    np.testing.assert_array_equal(
        render_detector(labels, "se2", **NOISELESS), render_detector(labels.astype(np.uint8), "se2", **NOISELESS)
    )


def _render_bse_before_refactor(labels, voltage, voxel, materials, boundary, seed):
    """render_bse as written before its sweep moved into _emission_absorption_sweep (defaults)."""
    materials = [get_material(m) for m in materials]
    dz, dy, dx = np.broadcast_to(np.asarray(voxel, dtype=np.float64), (3,))
    eta = np.array([m.backscatter_coefficient(voltage) for m in materials], dtype=np.float32)
    depth = np.array([0.2 * m.range_nm(voltage) for m in materials])
    absorb = (1.0 - np.exp(-dz / depth)).astype(np.float32)
    emit = eta * absorb
    sigma_step_nm = 0.3 * np.sqrt(depth.max() * dz)
    sigma_step = (sigma_step_nm / dy, sigma_step_nm / dx)
    blur_mode = "wrap" if boundary == "periodic" else "reflect"
    n_z = labels.shape[0]
    n_below = int(np.ceil(np.log(1e3) * depth.max() / dz))
    below = np.arange(n_z, n_z + n_below)
    period = np.mod(below, 2 * n_z)
    source = np.mod(below, n_z) if boundary == "periodic" else np.where(period < n_z, period, 2 * n_z - 1 - period)
    image = np.empty(labels.shape, dtype=np.float32)
    signal = np.full(labels.shape[1:], float((eta[labels]).mean()), dtype=np.float32)
    steps = list(zip(source[::-1], [None] * n_below)) + [(z, z) for z in range(n_z - 1, -1, -1)]
    for src, out in steps:
        phase = labels[src]
        signal = ndi.gaussian_filter(signal, sigma_step, mode=blur_mode)
        signal = emit[phase] + (1.0 - absorb[phase]) * signal
        if out is not None:
            image[out] = signal
    image = ndi.gaussian_filter(image, (0, 1.5 / dy, 1.5 / dx), mode=blur_mode)
    rng = np.random.default_rng(seed)
    image = rng.poisson(np.clip(image, 0, None) * 200.0) / 200.0
    image = image + rng.normal(0.0, 0.01, size=image.shape)
    return image.astype(np.float32, copy=False)


@pytest.mark.parametrize(("voltage", "boundary"), [(1.0, "periodic"), (4.0, "reflect")])
def test_render_bse_unchanged_by_the_shared_sweep(voltage, boundary):
    labels = leveled_wave((10, 16, 20), 20.0, 0.3, 2.5, seed=1).astype(np.uint8)
    labels[4:6, 3:9, 5:12] = 2
    materials = ("epoxy", "Au", "Ag")
    expected = _render_bse_before_refactor(labels, voltage, 2.5, materials, boundary, seed=5)
    actual = render_bse(labels, voltage, 2.5, materials=materials, boundary=boundary, seed=5)
    np.testing.assert_array_equal(actual, expected)


def test_unknown_detector_raises_listing_the_known():
    with pytest.raises(ValueError, match=r"unknown detector 'bse'.*\['inlens', 'se2'\]"):
        render_detector(np.zeros((4, 8, 8), np.uint8), "bse")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((8, 8), np.uint8), "3-D"),
        (np.zeros((0, 8, 8), np.uint8), "non-empty"),
        (np.zeros((4, 8, 8), np.float32), "integer phase indices.*float32"),
        (np.full((4, 8, 8), 3, np.uint8), r"labels hold values 3\.\.3 but the 'se2' emission table has 3 phases"),
        (np.full((4, 8, 8), -1, np.int16), r"labels hold values -1\.\.-1"),
    ],
)
def test_bad_labels_raise(labels, match):
    with pytest.raises(ValueError, match=match):
        render_detector(labels, "se2")


def test_bad_arguments_raise():
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="holds defaults for 1 keV.*voltage_kV=2"):
        render_detector(labels, "se2", voltage_kV=2.0)
    # another voltage is fine with an explicit table
    assert render_detector(labels, "se2", 2.0, emission=(0, 1, 0.5), escape_length_nm=80.0).shape == labels.shape
    with pytest.raises(ValueError, match="voltage_kV must be > 0"):
        render_detector(labels, "se2", voltage_kV=0.0)
    with pytest.raises(ValueError, match="escape_length_nm must be > 0"):
        render_detector(labels, "se2", escape_length_nm=0.0)
    with pytest.raises(ValueError, match="edge_width_nm must be > 0"):
        render_detector(labels, "inlens", edge_width_nm=-1.0)
    with pytest.raises(ValueError, match=r"edge_gain must be a finite number or \(pore side, solid side\)"):
        render_detector(labels, "se2", edge_gain=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="emission must be >= 2 finite values"):
        render_detector(labels, "se2", emission=(1.0,))
    with pytest.raises(ValueError, match="boundary must be 'reflect' or 'periodic'"):
        render_detector(labels, "se2", boundary="zero")
    with pytest.raises(ValueError, match="voxel_size_nm must be > 0"):
        render_detector(labels, "se2", voxel_size_nm=0.0)
    with pytest.raises(ValueError, match="electrons_per_pixel must be > 0"):
        render_detector(labels, "se2", electrons_per_pixel=0.0)
    with pytest.raises(ValueError, match="lateral_spread, probe_sigma_nm and read_noise must be >= 0"):
        render_detector(labels, "se2", read_noise=-0.01)
