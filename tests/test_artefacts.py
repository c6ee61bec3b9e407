"""Artefacts of real FIB-SEM images (fibml.synth.artefacts) and the realistic target domain they make."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from fibml.config import CONFIG_DIR
from fibml.io import read_dataset
from fibml.metrics.domain import power_spectrum
from fibml.synth.artefacts import ARTEFACTS, DEFAULTS, add_artefacts
from fibml.synth.dataset import cached_dataset, generate_dataset
from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import leveled_wave
from tests.conftest import compose_config

VOXEL = 2.5  # nm
ALL_ON = {name: True for name in ARTEFACTS}
REALISTIC = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "artefacts" / "realistic.yaml"))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A 16 x 64 x 64 clean BSE stack (2 kV, the fast model with its noise)."""
    labels = leveled_wave((16, 64, 64), 30.0, 0.3, VOXEL, seed=0).astype(np.uint8)
    return render_bse(labels, 2.0, VOXEL, seed=1)


def test_reproducible_for_a_seed_and_different_for_another(clean):
    first = add_artefacts(clean, seed=3, voxel_size_nm=VOXEL, **ALL_ON)
    np.testing.assert_array_equal(first, add_artefacts(clean, seed=3, voxel_size_nm=VOXEL, **ALL_ON))
    assert np.mean(first != add_artefacts(clean, seed=4, voxel_size_nm=VOXEL, **ALL_ON)) > 0.9
    # curtaining belongs to the face: shared by the channels; noise is drawn per channel
    curtains = [add_artefacts(clean, 3, VOXEL, channel=c, curtaining=True) for c in (0, 1)]
    np.testing.assert_array_equal(*curtains)
    noisy = [add_artefacts(clean, 3, VOXEL, channel=c, noise=True) for c in (0, 1)]
    assert np.mean(noisy[0] != noisy[1]) > 0.9


def test_shape_dtype_and_switched_off_options(clean):
    out = add_artefacts(clean.astype(np.float64), 0, (5.0, VOXEL, VOXEL), **ALL_ON)
    assert out.shape == clean.shape and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(add_artefacts(clean, 0, VOXEL), clean)
    off = add_artefacts(clean, 0, VOXEL, **{name: None for name in ARTEFACTS} | {"noise": False})
    np.testing.assert_array_equal(off, clean)
    assert off.dtype == np.float32 and off is not clean
    # every realistic option is a known one, and True means the documented defaults
    assert all(set(REALISTIC[name]) <= set(DEFAULTS[name]) for name in REALISTIC)
    np.testing.assert_array_equal(add_artefacts(clean, 0, VOXEL, blur=True),
                                  add_artefacts(clean, 0, VOXEL, blur=dict(DEFAULTS["blur"])))


def test_curtaining_stripes_are_vertical_and_persist(clean):
    out = add_artefacts(clean, 0, VOXEL, curtaining={"amplitude": 0.1})
    # the mean of each column (over y) varies along x much more than in the clean image
    assert out.mean(axis=1).std(axis=1).mean() > 2 * clean.mean(axis=1).std(axis=1).mean()
    gain = out / clean
    assert gain.std(axis=1).max() < 1e-5  # constant along y
    profiles = gain[:, 0, :]  # (z, x)
    consecutive = [np.corrcoef(profiles[z], profiles[z + 1])[0, 1] for z in range(len(profiles) - 1)]
    assert min(consecutive) > 0.9  # persists from slice to slice
    assert np.std(profiles) == pytest.approx(0.1, rel=0.05)
    # additive curtains: the same stripes added, not multiplied
    added = add_artefacts(clean, 0, VOXEL, curtaining={"mode": "additive"}) - clean
    assert added.std(axis=1).max() < 1e-5 and added.std() > 0
    with pytest.raises(ValueError, match="curtaining.mode"):
        add_artefacts(clean, 0, VOXEL, curtaining={"mode": "sideways"})


def test_shading_is_a_smooth_field(clean):
    out = add_artefacts(clean, 0, VOXEL, shading=True)
    assert _polynomial_r2(out) > _polynomial_r2(clean) + 0.05
    gain = out / clean
    assert np.std(gain) == pytest.approx(DEFAULTS["shading"]["amplitude"], rel=0.05)
    assert np.abs(gain.mean() - 1) < 0.01  # a gain around 1, no overall brightening


def test_charging_streaks_start_on_solid_and_trail_along_x(clean):
    options = {"per_slice": 5.0, "width_nm": 0.0, "length_nm": 10.0, "amplitude": 0.5}
    streaks = add_artefacts(clean, 0, VOXEL, charging=options) - clean
    assert streaks.min() >= -1e-6 and streaks.max() > 0.05
    # onsets: where a streak is more than the decayed value of its left neighbour
    decay = np.exp(-VOXEL / options["length_nm"])
    onset = streaks[..., 1:] - decay * streaks[..., :-1] > 1e-4
    assert 40 <= onset.sum() <= 130  # ~Poisson(5) per slice, 16 slices
    threshold = np.quantile(clean, DEFAULTS["charging"]["bright_quantile"], axis=(1, 2), keepdims=True)
    assert (clean[..., 1:] > threshold)[onset].mean() > 0.9  # on the bright (solid) pixels
    # with the default width: smeared along the scan line (x) more than across it (y)
    smeared = add_artefacts(clean, 0, VOXEL, charging=True) - clean
    assert _lag_correlation(smeared, axis=2) > _lag_correlation(smeared, axis=1) + 0.2


def test_noise_is_correlated_with_row_offsets_and_slice_gains(clean):
    scale = np.subtract(*np.percentile(clean, [99, 1]))
    correlated = add_artefacts(clean, 0, VOXEL, noise={"row_std": 0.0, "gain_std": 0.0}) - clean
    assert correlated.std() == pytest.approx(DEFAULTS["noise"]["std"] * scale, rel=0.05)
    assert _lag_correlation(correlated, axis=2, lag=1) > 0.5  # white noise: ~0
    rows = add_artefacts(clean, 0, VOXEL, noise={"std": 0.0, "gain_std": 0.0}) - clean
    assert rows.std(axis=2).max() < 1e-6  # one offset per scan line
    assert rows.mean(axis=2).std() == pytest.approx(DEFAULTS["noise"]["row_std"] * scale, rel=0.2)
    gain = add_artefacts(clean, 0, VOXEL, noise={"std": 0.0, "row_std": 0.0}) / clean
    assert gain.std(axis=(1, 2)).max() < 1e-5 and gain[:, 0, 0].std() > 0.01  # one gain per slice


def test_blur_removes_high_frequencies(clean):
    out = add_artefacts(clean, 0, VOXEL, blur=True)
    frequency, before = power_spectrum(clean)
    after = power_spectrum(out)[1]
    high = frequency > 0.3  # cycles per pixel
    assert after[high].sum() < 0.2 * before[high].sum()
    assert after[frequency < 0.05].sum() == pytest.approx(before[frequency < 0.05].sum(), rel=0.1)


def test_histogram_reshaping_keeps_the_order(clean):
    out = add_artefacts(clean, 0, VOXEL, histogram=True)
    assert np.all(np.diff(out.ravel()[np.argsort(clean, axis=None)]) >= 0)  # monotone: the order is kept
    assert np.median(out) > np.median(clean) * 1.05  # gamma < 1 lifts the dark pores
    shifted = add_artefacts(clean, 0, VOXEL, histogram={"gamma": 1.0, "contrast": 2.0, "offset": 0.1})
    scale = np.subtract(*np.percentile(clean, [99, 1]))
    np.testing.assert_allclose(shifted, 2 * clean + 0.1 * scale, rtol=1e-5)


def test_errors(clean):
    with pytest.raises(ValueError, match=r"unknown noise options \['sigma'\]"):
        add_artefacts(clean, 0, VOXEL, noise={"sigma": 1})
    with pytest.raises(ValueError, match="3-D"):
        add_artefacts(clean[0], 0, VOXEL, blur=True)


GENERATOR = {
    "shape": [12, 32, 32],
    "voxel_size_nm": VOXEL,
    "voltages": [1, 4],
    "structure": {"function": "fibml.synth.microstructure.leveled_wave", "wavelength_nm": 20, "solid_fraction": 0.3},
    "imaging": {},
    "seed": 5,
}


def test_generate_dataset_with_artefacts(tmp_path):
    plain = read_dataset(generate_dataset(tmp_path / "plain", **GENERATOR, progress=False))
    for empty in (None, {}):
        again = read_dataset(generate_dataset(tmp_path / f"empty{empty}", **GENERATOR, artefacts=empty, progress=False))
        assert all(np.array_equal(again.images[v], plain.images[v]) for v in plain.voltages)
        assert "artefacts" not in again.manifest["parameters"]
    realistic = read_dataset(generate_dataset(tmp_path / "real", **GENERATOR, artefacts=REALISTIC, progress=False))
    np.testing.assert_array_equal(realistic.labels, plain.labels)
    for v in plain.voltages:
        assert realistic.images[v].dtype == np.float32 and realistic.images[v].shape == plain.images[v].shape
        assert np.mean(realistic.images[v] != plain.images[v]) > 0.99
    assert realistic.manifest["parameters"]["artefacts"] == REALISTIC
    # curtaining and shading are shared by the voltages: the gains of the two channels correlate
    gains = [realistic.images[v].mean(axis=(0, 1)) / plain.images[v].mean(axis=(0, 1)) for v in plain.voltages]
    assert np.corrcoef(*gains)[0, 1] > 0.5
    # the cache tells the two domains apart
    assert cached_dataset(tmp_path / "cache", GENERATOR, progress=False) != cached_dataset(
        tmp_path / "cache", {**GENERATOR, "artefacts": REALISTIC}, progress=False)


def test_monte_carlo_images_get_the_artefacts_too(tmp_path, monkeypatch):
    # the Monte Carlo itself is tested in test_montecarlo.py: here a stand-in, to keep this fast
    def simulate_bse_stack(labels, voltage, voxel_size_nm, seed, **kwargs):
        return (0.1 + 0.3 * labels).astype(np.float32)

    monkeypatch.setattr("fibml.synth.montecarlo.simulate_bse_stack", simulate_bse_stack)
    simulator = {"name": "montecarlo", "electrons_per_pixel": 2}
    data = read_dataset(generate_dataset(tmp_path / "mc", **GENERATOR, simulator=simulator, artefacts={"noise": True},
                                         progress=False))
    for channel, voltage in enumerate(data.voltages):
        expected = add_artefacts(0.1 + 0.3 * data.labels, GENERATOR["seed"], VOXEL, channel=channel, noise=True)
        np.testing.assert_array_equal(data.images[voltage], expected)
    assert data.manifest["parameters"]["simulator"]["name"] == "montecarlo"


def test_synth_config_has_the_artefacts_group(tmp_path):
    assert "artefacts" not in compose_config("synth", [], tmp_path)
    cfg = compose_config("synth", ["artefacts=realistic", "seed=7", "artefacts.charging=null"], tmp_path)
    assert cfg.artefacts.curtaining.mode == "multiplicative" and cfg.artefacts.charging is None
    assert set(cfg.artefacts) == set(ARTEFACTS)


def _polynomial_r2(images: np.ndarray, order: int = 2) -> float:
    """Mean over slices of the variance share that a polynomial of `order` in (y, x) explains."""
    n_y, n_x = images.shape[1:]
    y, x = np.meshgrid(np.linspace(-1, 1, n_y), np.linspace(-1, 1, n_x), indexing="ij")
    basis = np.stack([(y**i * x ** (t - i)).ravel() for t in range(order + 1) for i in range(t + 1)], axis=1)
    pixels = images.reshape(len(images), -1).T  # (pixels, slices)
    fit = basis @ np.linalg.lstsq(basis, pixels, rcond=None)[0]
    return float(np.mean(1 - (pixels - fit).var(axis=0) / pixels.var(axis=0)))


def _lag_correlation(images: np.ndarray, axis: int, lag: int = 3) -> float:
    """Correlation of the images with themselves shifted by `lag` pixels along `axis`."""
    a = np.moveaxis(images, axis, -1)
    return float(np.corrcoef(a[..., :-lag].ravel(), a[..., lag:].ravel())[0, 1])
