"""Distances between image domains (fibml.metrics.domain): histograms and power spectra."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import ndimage as ndi

import fibml.metrics.domain
from fibml.config import CONFIG_DIR
from fibml.metrics.domain import (
    domain_distances,
    histogram_distance,
    power_spectrum,
    spectrum_distance,
)
from fibml.synth.artefacts import add_artefacts
from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import leveled_wave

VOXEL = 2.5  # nm


def _clean(seed: int, shape=(32, 32, 32)) -> np.ndarray:
    """A clean 2 kV BSE stack of a leveled-wave structure of this seed."""
    labels = leveled_wave(shape, 20.0, 0.3, VOXEL, seed=seed).astype(np.uint8)
    return render_bse(labels, 2.0, VOXEL, seed=seed * 1000 + 1)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return _clean(0)


def test_histogram_distance_is_zero_for_identical_data_and_grows_with_a_shift(clean):
    for metric in ("wasserstein", "jensen_shannon"):
        assert histogram_distance(clean, clean.copy(), metric=metric) == 0.0
        shifts = [histogram_distance(clean, clean + c, metric=metric) for c in (0.01, 0.03, 0.1)]
        assert 0 < shifts[0] < shifts[1] < shifts[2]
    # the Wasserstein distance of a shift is the shift, in intensity units
    assert histogram_distance(clean, clean + 0.03) == pytest.approx(0.03, rel=1e-3)
    assert histogram_distance(clean, clean * 0 + 5, metric="jensen_shannon") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="metric must be"):
        histogram_distance(clean, clean, metric="kl")


def test_lists_of_images_and_subsampling(clean, monkeypatch):
    # a list of 2-D images is the same domain as their stack; sizes may differ
    assert histogram_distance(list(clean), clean) == 0.0
    assert spectrum_distance(list(clean), clean) == 0.0
    assert spectrum_distance([clean[0], clean[1, :24, :28]], clean) < 0.5
    exact = histogram_distance(clean, clean + 0.02)
    monkeypatch.setattr(fibml.metrics.domain, "MAX_PIXELS", 2**12)
    assert histogram_distance(clean, clean + 0.02) == pytest.approx(exact, abs=0.005)
    with pytest.raises(ValueError, match="2-D"):
        histogram_distance([clean], clean)


def test_power_spectrum_of_white_noise_is_flat_at_its_variance():
    noise = np.random.default_rng(0).normal(0.0, 0.5, size=(8, 64, 64))
    frequency, power = power_spectrum(noise)
    assert frequency.shape == power.shape == (32,)
    assert 0 < frequency.min() and frequency.max() < 0.5
    assert power[2:].mean() == pytest.approx(0.25, rel=0.05)
    assert power[2:].std() / power[2:].mean() < 0.15
    # smoothing keeps the low frequencies, removes the high ones
    smooth = power_spectrum(ndi.gaussian_filter(noise, (0, 2, 2)))[1]
    assert smooth[-1] < 1e-3 * power[-1]


def test_spectrum_distance_ignores_gain_but_sees_blur(clean):
    assert spectrum_distance(clean, clean) == 0.0
    assert spectrum_distance(clean, 1.7 * clean + 0.2) < 1e-5
    blurred = spectrum_distance(clean, ndi.gaussian_filter(clean, (0, 1, 1)))
    assert blurred > 0.3
    assert spectrum_distance(clean, ndi.gaussian_filter(clean, (0, 2, 2))) > blurred


def test_realistic_images_are_further_from_clean_than_another_clean_structure(clean):
    realistic = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "artefacts" / "realistic.yaml"))
    target = add_artefacts(_clean(7), seed=7, voxel_size_nm=VOXEL, **realistic)
    between_clean = domain_distances(clean, _clean(1))
    to_realistic = domain_distances(clean, target)
    assert set(between_clean) == {"wasserstein", "jensen_shannon", "spectrum"}
    for name in between_clean:
        assert to_realistic[name] > 3 * between_clean[name], name


def test_domain_distances_gathers_the_three_with_its_bins(clean):
    other = clean[::-1] * 0.8 + 0.1
    both = domain_distances(clean, other, bins=16)
    assert both == {
        "wasserstein": pytest.approx(histogram_distance(clean, other, metric="wasserstein"), rel=1e-12),
        "jensen_shannon": pytest.approx(histogram_distance(clean, other, 16, metric="jensen_shannon"), rel=1e-12),
        "spectrum": pytest.approx(spectrum_distance(clean, other), rel=1e-12),
    }
    coarse, fine = both["jensen_shannon"], domain_distances(clean, other)["jensen_shannon"]
    assert fine == pytest.approx(histogram_distance(clean, other, 256, metric="jensen_shannon"), rel=1e-12)
    assert coarse != pytest.approx(fine, rel=1e-3)  # the bins matter


@pytest.mark.parametrize("images, described", [
    (np.zeros(5), r"an array of shape \(5,\)"),
    ([], r"list \[\]"),
    ((), r"tuple \(\)"),
])
def test_what_is_not_images_is_named(images, described):
    with pytest.raises(ValueError, match=rf"a list of 2-D images, got {described}$"):
        histogram_distance(images, np.zeros((4, 4)))
