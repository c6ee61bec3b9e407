"""Voxel Monte Carlo BSE simulator: bulk eta against Hunger & Kuchler, penetration against the
Kanaya-Okayama range, shine-through in images, layers, reproducibility, resume, errors."""

import csv

import numpy as np
import pytest

from fibml.synth.montecarlo import (
    backscatter_dataset,
    bulk_backscatter,
    safe_distance,
    simulate_bse_stack,
    simulate_layers,
    write_backscatter_csv,
)
from fibml.synth.physics import get_material

ELEMENTS = ("C", "Al", "Cu", "Ag", "Au")
VOLTAGES = (5.0, 10.0, 20.0)
# light elements backscatter little: more electrons keep their binomial error (sd 3-5 % of eta
# here) well inside the 10 % that montecarlo.simulate_bse_stack documents for the Browning cross
# section. The systematic part was measured once with many more electrons (C 1e5 and Au 2e4 per
# point, seed 7, RESULTS 2026-12-03): C 0.975 / 1.009 / 1.088 and Au 1.015 / 0.978 / 0.984 of
# Hunger & Kuchler at 5 / 10 / 20 kV; with these counts and seed 1 the largest is 8 % (C, 10 kV).
ELECTRONS = {"C": 6000, "Al": 4000, "Cu": 2500, "Ag": 2500, "Au": 2500}


@pytest.fixture(scope="module")
def bulk():
    return {(el, v): bulk_backscatter(el, v, electrons=ELECTRONS[el], seed=1) for el in ELEMENTS for v in VOLTAGES}


@pytest.mark.slow
@pytest.mark.parametrize("element", ELEMENTS)
@pytest.mark.parametrize("voltage", VOLTAGES)
def test_bulk_eta_within_10_percent_of_hunger_kuchler(bulk, element, voltage):
    simulated = bulk[element, voltage].eta
    reference = get_material(element).backscatter_coefficient(voltage)
    assert simulated == pytest.approx(reference, rel=0.10)


@pytest.mark.slow
def test_eta_rises_with_atomic_number(bulk):
    for voltage in VOLTAGES:
        etas = [bulk[el, voltage].eta for el in ELEMENTS]
        assert etas == sorted(etas), (voltage, etas)


@pytest.mark.slow
def test_penetration_grows_with_voltage_on_the_kanaya_okayama_scale(bulk):
    for element in ELEMENTS:
        depths = [bulk[element, v].mean_penetration_nm for v in VOLTAGES]
        assert depths == sorted(depths) and depths[-1] > 5 * depths[0], (element, depths)
        for v, depth in zip(VOLTAGES, depths):
            ratio = depth / get_material(element).range_nm(v)
            assert 0.1 < ratio < 1.0, (element, v, ratio)  # the mean deepest point is a fraction of the range


def test_screened_rutherford_overestimates_gold_at_low_energy():
    """The reason Browning's Mott fit is the default: Joy's screened Rutherford puts Au at 5 keV
    about 25 % above experiment."""
    rutherford = bulk_backscatter("Au", 5.0, electrons=2000, cross_section="rutherford").eta
    browning = bulk_backscatter("Au", 5.0, electrons=2000, cross_section="browning").eta
    reference = get_material("Au").backscatter_coefficient(5.0)
    assert rutherford > 1.15 * reference
    assert browning == pytest.approx(reference, rel=0.1)


def test_epoxy_layers_fade_gold_into_epoxy():
    thickness = [0, 10, 20, 40, 80, 150]
    results = simulate_layers("Au", 2.0, thickness, electrons=3000, seed=2)
    eta = np.array([r.eta for r in results])
    gold = bulk_backscatter("Au", 2.0, electrons=3000, seed=3).eta
    epoxy = bulk_backscatter("epoxy", 2.0, electrons=3000, seed=4)
    assert eta[0] == pytest.approx(gold, abs=4 * results[0].eta_std)
    assert np.all(np.diff(eta[:4]) < 0)  # each 10-20 nm of epoxy hides more of the gold
    assert eta[-1] == pytest.approx(epoxy.eta, abs=4 * np.hypot(results[-1].eta_std, epoxy.eta_std))
    assert eta[0] > 3 * eta[-1]


def test_voxel_geometry_agrees_with_the_flat_layer_model():
    """Delta tracking through voxels (a 10 nm epoxy layer of 2.5 nm voxels over gold) gives the
    same eta as the exact flat-layer geometry."""
    labels = np.ones((40, 8, 8), dtype=np.uint8)
    labels[:4] = 0  # 4 x 2.5 nm = 10 nm of epoxy on top
    image = simulate_bse_stack(labels, 2.0, 2.5, electrons_per_pixel=40, slices=[0], boundary="reflect",
                               probe_sigma_nm=0, progress=False)
    layer = simulate_layers("Au", 2.0, [10.0], electrons=3000, seed=5)[0]
    n = 8 * 8 * 40
    assert image.mean() == pytest.approx(layer.eta, abs=4 * np.hypot(layer.eta_std, np.sqrt(0.1 / n)))


@pytest.fixture(scope="module")
def wave():
    from fibml.synth.microstructure import leveled_wave

    return leveled_wave((24, 24, 24), wavelength_nm=30.0, solid_fraction=0.3, voxel_size_nm=2.5).astype(np.uint8)


def test_pores_brighten_with_voltage_while_solid_stays_bright(wave):
    pore, solid = [], []
    for voltage in (1.0, 2.0, 4.0):
        image = simulate_bse_stack(wave, voltage, 2.5, electrons_per_pixel=8, slices=[0, 12], progress=False)
        faces = wave[[0, 12]]
        pore.append(image[faces == 0].mean())
        solid.append(image[faces == 1].mean())
    assert pore[0] < pore[1] < pore[2]  # shine-through: deeper gold shows through the epoxy
    assert all(s > p + 0.1 for s, p in zip(solid, pore))
    assert max(solid) - min(solid) < pore[2] - pore[0]


def test_same_seed_same_image_and_slices_independent_of_the_run(wave):
    options = {"electrons_per_pixel": 4, "progress": False}
    labels = wave[:, :8, :8]
    full = simulate_bse_stack(labels, 1.0, 2.5, slices=range(4), seed=7, **options)
    again = simulate_bse_stack(labels, 1.0, 2.5, slices=range(4), seed=7, **options)
    part = simulate_bse_stack(labels, 1.0, 2.5, slices=[3, 1], seed=7, **options)
    other = simulate_bse_stack(labels, 1.0, 2.5, slices=range(4), seed=8, **options)
    np.testing.assert_array_equal(full, again)
    np.testing.assert_array_equal(part, full[[3, 1]])
    assert not np.array_equal(full, other)


def test_work_dir_resumes_and_refuses_other_settings(wave, tmp_path):
    labels = wave[:3, :10, :10]
    options = {"electrons_per_pixel": 4, "progress": False, "work_dir": tmp_path / "mc"}
    first = simulate_bse_stack(labels, 2.0, 2.5, slices=[0, 1], **options)
    saved = sorted((tmp_path / "mc").glob("*.npy"))  # one file per finished slice
    assert len(saved) == 2
    np.testing.assert_array_equal(np.load(saved[1]), first[1])
    np.save(saved[1], np.full_like(first[1], -1.0))  # a finished slice is loaded, never simulated again
    resumed = simulate_bse_stack(labels, 2.0, 2.5, **options)
    np.testing.assert_array_equal(resumed[0], first[0])
    assert (resumed[1] == -1.0).all()
    fresh = simulate_bse_stack(labels, 2.0, 2.5, electrons_per_pixel=4, progress=False)
    np.testing.assert_array_equal(resumed[[0, 2]], fresh[[0, 2]])  # slice 2 simulated as in one run
    with pytest.raises(ValueError, match="other settings"):
        simulate_bse_stack(labels, 4.0, 2.5, **options)


def test_detector_weighting_and_angles():
    count = bulk_backscatter("Cu", 5.0, electrons=2000, seed=9)
    energy = bulk_backscatter("Cu", 5.0, electrons=2000, seed=9, energy_weighting=True)
    narrow = bulk_backscatter("Cu", 5.0, electrons=2000, seed=9, detector_angle_deg=(0, 30))
    assert 0.4 * count.eta < energy.eta < count.eta  # BSE leave with less than the beam energy
    # a cosine-like exit distribution puts sin^2(30 deg) = 25 % of the BSE within 30 deg of the normal
    assert 0.1 * count.eta < narrow.eta < 0.45 * count.eta


def test_safe_distance_is_the_chessboard_distance_to_another_material():
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[4, 4, 4] = 1
    safe = safe_distance(labels, ("reflect",) * 3)
    assert safe[4, 4, 4] == 0 and safe[3, 5, 4] == 0  # next to the other material
    assert safe[4, 4, 7] == 2 and safe[1, 4, 4] == 2
    periodic = safe_distance(labels, ("periodic",) * 3)
    assert periodic[0, 4, 4] == 3  # across the periodic border the gold voxel is 5 - 1 = 4 away
    assert safe[0, 4, 4] == 3 and safe[0, 0, 0] == 3
    assert safe_distance(np.ones((2, 3, 3), dtype=np.uint8), ("periodic",) * 3).min() == 15


def test_backscatter_dataset_table_and_csv(tmp_path):
    rows = backscatter_dataset([29, 79], [2.0], [0, 20, 190], electrons=400, progress=False)
    assert len(rows) == 2 * 1 * 3
    assert {"Z", "element", "voltage_kV", "epoxy_thickness_nm", "eta", "eta_std", "eta_hunger_kuchler"} <= set(rows[0])
    gold = [r["eta"] for r in rows if r["Z"] == 79]
    assert gold[0] > gold[1] > gold[2]
    path = write_backscatter_csv(rows, tmp_path / "bs.csv")
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert len(read) == 6 and float(read[0]["eta"]) == pytest.approx(rows[0]["eta"])


def test_bad_input_is_refused():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = 2
    with pytest.raises(ValueError, match="2 materials"):
        simulate_bse_stack(labels, 2.0, progress=False)
    with pytest.raises(ValueError, match="outside the stack"):
        simulate_bse_stack(np.zeros((4, 4, 4), dtype=np.uint8), 2.0, slices=[4], progress=False)
    with pytest.raises(ValueError, match="voltage_kV"):
        simulate_bse_stack(np.zeros((4, 4, 4), dtype=np.uint8), 0.0, progress=False)
    with pytest.raises(ValueError, match="cross_section"):
        bulk_backscatter("Au", 2.0, cross_section="mott")
    with pytest.raises(ValueError, match="thickness"):
        simulate_layers("Au", 2.0, [-10.0])


def test_generate_dataset_with_the_monte_carlo_simulator(tmp_path):
    from fibml.io import read_dataset
    from fibml.synth.dataset import generate_dataset

    structure = {"function": "fibml.synth.microstructure.leveled_wave", "wavelength_nm": 10.0,
                 "solid_fraction": 0.3}
    simulator = {"name": "montecarlo", "electrons_per_pixel": 3}
    folder = generate_dataset(tmp_path / "mc", (8, 8, 8), 2.5, [1, 2], structure, {"materials": ["epoxy", "Au"]},
                              progress=False, simulator=simulator)
    data = read_dataset(folder)
    assert set(data.images) == {1.0, 2.0} and data.images[2.0].shape == (8, 8, 8)
    assert data.manifest["parameters"]["simulator"]["name"] == "montecarlo"
    solid = data.labels == 1
    assert data.images[1.0][solid].mean() > data.images[1.0][~solid].mean()
    with pytest.raises(ValueError, match="BSE images only"):
        generate_dataset(tmp_path / "x", (4, 8, 8), 2.5, [1], structure, progress=False, simulator=simulator,
                         detectors=["se2"])
    with pytest.raises(ValueError, match="simulator.name"):
        generate_dataset(tmp_path / "y", (4, 8, 8), 2.5, [1], structure, progress=False, simulator={"name": "mcx"})
