"""Ruler marks (Fig. 2 of the slice-thickness paper): rendering, thickness recovery, outliers, errors."""

import numpy as np
import pytest
from scipy import stats

from fibml.reconstruct.ruler import (
    add_ruler,
    max_ruler_angle,
    measure_thickness,
    render_ruler,
)
from fibml.synth.thickness import sample_thicknesses

GRID_NM = 2.5  # the thickness grid: one step is the tolerance of the recovery


def _starts(t):
    """Depth (nm) of every milled face: slice i starts at sum_{j<i} t_j."""
    return np.concatenate([[0.0], np.cumsum(t)[:-1]])


@pytest.fixture(scope="module")
def gamma_stack():
    t = sample_thicknesses(150, target_nm=10.0, bin_nm=GRID_NM, seed=1)
    return t, _starts(t)


@pytest.mark.parametrize(("pixel_nm", "width_px"), [(2.5, 1500), (5.0, 800), (8.0, 500)])
def test_recovers_gamma_thicknesses_within_one_grid_step(gamma_stack, pixel_nm, width_px):
    t, z = gamma_stack
    band = render_ruler(z, width_px, pixel_nm, noise_sigma=0.05, drift_sigma_nm=3.0, seed=4)
    m = measure_thickness(band, pixel_nm, angle_deg=45.0, outlier_z=None)
    assert m.thickness_nm.shape == (150,) and m.mark_x_px.shape == (150, 4)
    error = m.thickness_nm[:-1] - t[:-1]  # the last slice has no face after it: not measurable
    # measured (seeds 0-4): max |error| 0.3 / 0.6 / 0.9 nm, mean |error| 0.07 / 0.14 / 0.24 nm.
    # The claim is the test's name: every thickness within the repositioning grid step (GRID_NM).
    # The mean bound, 0.2 pixel, and the bias bound have no independent reference (no Cramer-Rao
    # bound was worked for this mark shape): they guard the measured precision with a margin.
    assert np.abs(error).max() < GRID_NM
    assert np.abs(error).mean() < 0.2 * pixel_nm
    assert abs(error.mean()) < 0.05  # no bias
    np.testing.assert_allclose(m.depth_nm, z, atol=GRID_NM)
    assert m.thickness_nm[-1] == pytest.approx(m.measured_nm.mean())  # the last slice: the mean
    assert len(m.dropped) == 0 and len(m.kept) == 149


def test_noiseless_marks_give_the_depths_to_a_fraction_of_a_nanometre(gamma_stack):
    t, z = gamma_stack
    band = render_ruler(z, 800, 5.0, noise_sigma=0.0)
    m = measure_thickness(band, 5.0, 45.0, outlier_z=None)
    np.testing.assert_allclose(m.measured_nm, t[:-1], atol=0.1)  # subpixel: 0.02 pixel
    # the parallel marks do not move, the inclined ones move apart by 2 dz tan(45 deg) = 2 dz
    # parallel marks at the band centre -+ 0.45 of the width: 200 and 3800 nm = columns 39.5 and 759.5
    # (column k's centre is x = k)
    np.testing.assert_allclose(m.mark_x_px[:, [0, 3]], np.broadcast_to([39.5, 759.5], (150, 2)), atol=1e-3)
    distance_nm = (m.mark_x_px[:, 2] - m.mark_x_px[:, 1]) * 5.0
    np.testing.assert_allclose(distance_nm - distance_nm[0], 2 * z, atol=0.1)


def test_marks_are_area_weighted():
    """A mark's summed intensity is its width in pixels, wherever it falls between columns."""
    for z0 in (0.0, 0.7, 1.9, 3.3):
        band = render_ruler([z0], 200, 5.0, band_rows=12, trench_width_nm=12.0, blur_sigma_px=0.0, noise_sigma=0.0,
                            background=0.0, contrast=1.0, angle_deg=60.0)
        profile = band[0, 6]  # a row across the trenches
        assert profile.sum() == pytest.approx(2 * 12.0 / 5.0 + 2 * 12.0 / np.cos(np.radians(60.0)) / 5.0, rel=1e-5)
        assert profile.max() <= 1.0 + 1e-6


def test_negative_angle_and_a_wrong_pixel_size_corrected_by_the_parallel_marks(gamma_stack):
    t, z = gamma_stack
    t, z = t[:60], z[:60]
    band = render_ruler(z, 600, 5.0, angle_deg=-30.0, seed=2)  # marks move together with depth
    m = measure_thickness(band, 5.0, angle_deg=-30.0, outlier_z=None)
    assert np.all(np.diff(m.mark_x_px[:, 2] - m.mark_x_px[:, 1]) < 0)
    assert np.abs(m.thickness_nm[:-1] - t[:-1]).max() < GRID_NM

    # measured with a pixel size 5 % too large: every thickness 5 % too large ...
    wrong = measure_thickness(band, 5.25, angle_deg=-30.0, outlier_z=None)
    assert wrong.measured_nm.sum() / t[:-1].sum() == pytest.approx(1.05, abs=0.005)
    # ... unless the parallel marks' known separation (0.9 of the band width) sets the scale
    fixed = measure_thickness(band, 5.25, angle_deg=-30.0, parallel_separation_nm=0.9 * 600 * 5.0, outlier_z=None)
    assert fixed.pixel_nm == pytest.approx(5.0, rel=1e-3)
    assert fixed.measured_nm.sum() / t[:-1].sum() == pytest.approx(1.0, abs=0.005)


def test_an_outlier_thickness_is_dropped_and_replaced_by_the_mean():
    t = np.full(40, 10.0)
    t[17] = 60.0  # one slice milled far too thick
    band = render_ruler(_starts(t), 600, 5.0, seed=3)
    m = measure_thickness(band, 5.0, 45.0, outlier_z=1.5)
    np.testing.assert_array_equal(m.dropped, [17])
    assert 17 not in m.kept and len(m.kept) == 38
    mean_kept = m.measured_nm[m.kept].mean()
    assert mean_kept == pytest.approx(10.0, abs=0.2)
    assert m.thickness_nm[17] == mean_kept and m.thickness_nm[-1] == mean_kept
    np.testing.assert_array_equal(m.thickness_nm[m.kept], m.measured_nm[m.kept])
    # outlier_z=None keeps it
    kept_all = measure_thickness(band, 5.0, 45.0, outlier_z=None)
    assert len(kept_all.dropped) == 0 and kept_all.thickness_nm[17] == pytest.approx(60.0, abs=1.0)


def test_a_corrupted_slice_is_dropped_and_reported(gamma_stack):
    t, z = gamma_stack
    t, z = t[:80], z[:80]
    band = render_ruler(z, 600, 5.0, seed=5)
    corrupted = band.copy()
    corrupted[30] = render_ruler(z + 40.0 * (np.arange(80) == 30), 600, 5.0, seed=6)[30]  # marks misplaced
    # z-scores are relative to the spread of the gamma thicknesses: keep the others for this check
    m = measure_thickness(corrupted, 5.0, 45.0, outlier_z=3.0)
    np.testing.assert_array_equal(m.dropped, [29, 30])  # slice 30 looks 40 nm deeper: t_29 too big, t_30 too small
    np.testing.assert_allclose(m.thickness_nm[m.kept], t[m.kept], atol=GRID_NM)


def test_dropped_are_exactly_the_thicknesses_with_z_above_the_threshold(gamma_stack):
    t, z = gamma_stack
    m = measure_thickness(render_ruler(z, 800, 5.0, seed=7), 5.0, 45.0, outlier_z=1.5)
    expected = np.flatnonzero(np.abs(stats.zscore(m.measured_nm)) > 1.5)  # population std, as the paper
    assert len(expected) > 5  # the gamma tail has some
    np.testing.assert_array_equal(m.dropped, expected)
    np.testing.assert_array_equal(np.sort(np.concatenate([m.kept, m.dropped])), np.arange(149))
    np.testing.assert_allclose(m.thickness_nm[m.dropped], m.measured_nm[m.kept].mean())
    # the thickest true slices are among them
    assert set(np.argsort(t[:-1])[-3:]) <= set(m.dropped)


def test_a_slice_without_four_marks_is_named():
    z = np.arange(12) * 10.0
    band = render_ruler(z, 400, 5.0, seed=0)
    m = measure_thickness(band, 5.0, 45.0)
    x = int(np.round(m.mark_x_px[7, 2]))
    band[7, :, x - 8 : x + 9] = 0.1  # wipe the right inclined mark of slice 7
    with pytest.raises(ValueError, match=r"slice 7: expected 4 ruler marks .*found 3 at x = \["):
        measure_thickness(band, 5.0, 45.0)
    band[9] = 0.1 + np.random.default_rng(0).normal(0, 0.05, band[9].shape)  # no marks at all
    band[7] = render_ruler(z, 400, 5.0, seed=1)[7]
    with pytest.raises(ValueError, match="slice 9: expected 4 ruler marks .*found 0"):
        measure_thickness(band, 5.0, 45.0)
    with pytest.raises(ValueError, match="at least 2 slices"):
        measure_thickness(band[:1], 5.0, 45.0)
    with pytest.raises(ValueError, match="angle_deg"):
        measure_thickness(band, 5.0, 0.0)


def test_the_inclined_marks_must_stay_between_the_parallel_ones():
    z = np.arange(200) * 10.0  # 1990 nm of depth: at 45 deg the inclined marks move 3980 nm apart
    with pytest.raises(ValueError, match=r"spans 1990 nm .*angle_deg\| <= 44\.4 \(max_ruler_angle\).*611 px wide"):
        render_ruler(z, 600, 8.0)
    limit = max_ruler_angle(z, 600, 8.0)
    assert 44.4 < limit < 44.5
    band = render_ruler(z, 600, 8.0, angle_deg=limit - 0.01, noise_sigma=0.0)
    m = measure_thickness(band, 8.0, limit - 0.01, outlier_z=None)
    np.testing.assert_allclose(m.measured_nm, 10.0, atol=0.3)
    render_ruler(z, 611, 8.0, noise_sigma=0.0)
    with pytest.raises(ValueError, match="parallel ruler marks"):
        render_ruler(z, 600, 8.0, parallel_separation_nm=600 * 8.0)


def test_add_ruler_puts_the_band_above_unchanged_images(gamma_stack):
    t, z = gamma_stack
    images = np.random.default_rng(0).random((30, 40, 500)).astype(np.float32)
    stack, rows = add_ruler(images, z[:30], 8.0, band_rows=20, seed=9)
    assert stack.shape == (30, 60, 500) and stack.dtype == np.float32
    assert rows == slice(0, 20)
    np.testing.assert_array_equal(stack[:, 20:], images)  # the image rows below the band are untouched
    np.testing.assert_array_equal(stack[:, rows], render_ruler(z[:30], 500, 8.0, band_rows=20, seed=9))
    m = measure_thickness(stack[:, rows], 8.0, 45.0, outlier_z=None)
    assert np.abs(m.thickness_nm[:-1] - t[:29]).max() < GRID_NM

    labels, _ = add_ruler(np.ones((30, 5, 500), dtype=np.uint8), z[:30], 8.0)
    assert labels.dtype == np.float32 and np.all(labels[:, 24:] == 1.0)
    with pytest.raises(ValueError, match="z_nm lists 29 depths, the stack has 30 slices"):
        add_ruler(images, z[:29], 8.0)
