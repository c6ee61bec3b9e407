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
    image_agreement,
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


def test_power_spectrum_bins_and_default_count():
    # non-square images: the default is half the smaller side, one bin per frequency step
    frequency, power = power_spectrum(np.random.default_rng(1).normal(size=(2, 32, 64)))
    assert len(frequency) == 16
    np.testing.assert_allclose(frequency, (np.arange(16) + 0.5) * 0.5 / 16, rtol=0, atol=1e-15)  # bin centres
    one = power_spectrum(np.random.default_rng(1).normal(size=(2, 32, 32)), n_bins=1)
    assert one[0].tolist() == [0.25] and np.isfinite(one[1]).all()  # one bin is allowed
    with pytest.raises(ValueError, match="n_bins must be >= 1, got 0"):
        power_spectrum(np.zeros((1, 8, 8)), n_bins=0)


def test_a_cosine_puts_its_power_in_its_frequency_bin():
    y, x = np.mgrid[0:64, 0:64]
    cosine = np.cos(2 * np.pi * 0.25 * x)[None]  # 0.25 cycles per pixel along x
    frequency, power = power_spectrum(cosine)  # 32 bins of 1/64: 0.25 lies in bin 16
    assert int(np.nanargmax(power)) == 16 and frequency[16] == pytest.approx(0.2578125)
    assert power[16] > 100 * np.nansum(np.delete(power, [15, 16, 17]))  # the Hann window leaks to neighbours only


def test_each_image_has_its_own_mean_removed():
    noise = np.random.default_rng(2).normal(0.0, 1.0, size=(2, 32, 32))
    offset = noise + np.array([10.0, -10.0])[:, None, None]  # the stack's mean is unchanged, each image's is not
    np.testing.assert_allclose(power_spectrum(offset)[1], power_spectrum(noise)[1], rtol=1e-4)


def test_images_of_two_sizes_pool_their_frequencies():
    rng = np.random.default_rng(3)
    small = list(rng.normal(0.0, 1.0, size=(16, 32, 32)))  # variance 1
    large = list(rng.normal(0.0, 2.0, size=(16, 64, 64)))  # variance 4, 4x as many frequencies per bin
    power = power_spectrum(small + large)[1]  # 16 bins: (1 x 1 + 4 x 4) / 5 = 3.4 in each
    assert power[2:].mean() == pytest.approx(3.4, rel=0.03)


def test_empty_bins_hold_nan_quietly_and_are_left_out_of_the_distance():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 in an empty bin is expected: no RuntimeWarning
        frequency, power = power_spectrum(np.random.default_rng(4).normal(size=(1, 16, 16)), n_bins=64)
    assert len(power) == 64 and np.isnan(power).any() and np.isfinite(power).sum() > 4
    big = np.random.default_rng(5).normal(size=(2, 64, 64))
    small = np.random.default_rng(6).normal(size=(2, 16, 16))
    assert np.isfinite(spectrum_distance(big, small, n_bins=64))  # bins empty in the small images left out
    # the default bins are half the smallest side of both domains, whichever comes first
    assert spectrum_distance(big, small) == pytest.approx(spectrum_distance(big, small, n_bins=8), rel=1e-12)
    assert spectrum_distance(small, big) == pytest.approx(spectrum_distance(small, big, n_bins=8), rel=1e-12)
    wide = np.random.default_rng(7).normal(size=(2, 24, 64))
    assert spectrum_distance(big, wide) == pytest.approx(spectrum_distance(big, wide, n_bins=12), rel=1e-12)


def test_images_without_finite_power_are_refused():
    broken = np.full((1, 16, 16), np.nan)  # e.g. a NaN image: no bin holds finite power
    with pytest.raises(ValueError, match=r"no frequency bin holds data of both domains \(n_bins=8\)"):
        spectrum_distance(broken, np.zeros((1, 16, 16)))


def test_jensen_shannon_divergence_by_hand():
    # two images of 4 grey levels: histograms over 4 bins spanning [0, 3] are the level counts
    a = np.array([[0.0, 0.0, 1.0, 2.0]])
    b = np.array([[1.0, 2.0, 3.0, 3.0]])
    p, q = np.array([2, 1, 1, 0]) / 4, np.array([0, 1, 1, 2]) / 4
    m = (p + q) / 2

    def kl(x, y):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    divergence = 0.5 * kl(p, m) + 0.5 * kl(q, m)  # = 0.5 here
    assert histogram_distance(a, b, bins=4, metric="jensen_shannon") == pytest.approx(divergence, rel=1e-12)
    assert divergence == pytest.approx(0.5)
    # exactly `bins` bins: in 2 bins over [0, 3] both are two low and two high pixels (identical),
    # in 3 they differ
    flat, split = np.array([[0.0, 1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, 3.0, 3.0]])
    assert histogram_distance(flat, split, bins=2, metric="jensen_shannon") == 0.0
    assert histogram_distance(flat, split, bins=3, metric="jensen_shannon") > 0.1
    # the default is 256 bins, and constant images (no range) are identical or not
    pixels = np.random.default_rng(1).random((2, 16, 16))
    other = pixels**2
    assert histogram_distance(pixels, other, metric="jensen_shannon") == pytest.approx(
        histogram_distance(pixels, other, 256, metric="jensen_shannon"), rel=1e-12)
    assert histogram_distance(np.full((4, 4), 0.3), np.full((4, 4), 0.3), metric="jensen_shannon") == 0.0
    assert histogram_distance(np.full((4, 4), 0.3), np.full((4, 4), 0.7), metric="jensen_shannon") == pytest.approx(1.0)


def test_a_single_image_is_a_stack_of_one():
    image = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(power_spectrum(image)[1], power_spectrum(image[None])[1])
    assert histogram_distance(image, image[None] + 0.25) == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(ValueError, match=r"got an array of shape \(2, 2, 32, 32\)$"):
        power_spectrum(np.zeros((2, 2, 32, 32)))


def test_the_pixel_subsample_of_large_domains_is_the_same_every_time():
    # more than 2^20 pixels: a fixed-seed subsample, so a distance is reproducible
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 512, 512)), rng.random((5, 512, 512)) ** 1.1
    assert histogram_distance(a, b) == histogram_distance(a, b)
    assert histogram_distance(a, a.copy()) == 0.0  # equal sizes draw the same pixels


def test_image_agreement_levels_contrast_correlation_and_noise_ceiling():
    rng = np.random.default_rng(0)
    labels = (rng.random((3, 32, 32)) < 0.4).astype(np.uint8)
    truth = np.where(labels == 1, 0.45, 0.15)  # a noiseless reference: pore 0.15, solid 0.45
    reference, repeat = (truth + rng.normal(0, 0.05, truth.shape) for _ in range(2))
    model = 0.8 * truth + 0.05  # darker solid, brighter pore: contrast 0.39 / 0.41
    out = image_agreement(model, reference, labels, repeat=repeat)
    assert out["model pore"] == pytest.approx(0.17) and out["model solid"] == pytest.approx(0.41)
    assert out["model contrast"] == pytest.approx(0.24 / 0.41)
    assert out["reference pore"] == pytest.approx(0.15, abs=0.005) and out["reference solid"] == pytest.approx(0.45, abs=0.005)
    # a noiseless model proportional to the truth reaches the noise ceiling: r(model, ref) = sqrt(r(ref, repeat))
    assert out["correlation"] == pytest.approx(out["noise ceiling"], abs=0.02)
    assert out["noise ceiling"] < 0.99
    same = image_agreement(reference, reference, labels)
    assert same["correlation"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0) and "noise ceiling" not in same
    with pytest.raises(ValueError, match="both pore and solid"):
        image_agreement(model, reference, np.zeros_like(labels))
