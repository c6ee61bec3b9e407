"""Anisotropy metrics: directional S2 and lineal path against brute force, local thickness of
known shapes, eq. (4) and (5) by hand, isotropic vs stretched leveled waves, input checks."""

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage as ndi

from fibml.metrics.anisotropy import (
    anisotropy_report,
    diameter_anisotropy_error,
    l2_anisotropy_error,
    ligament_diameters,
    lineal_path,
    local_thickness_2d,
    resample_nearest,
    two_point_correlation,
)
from fibml.synth.microstructure import leveled_wave

AXIS = {"x": 2, "y": 1, "z": 0}
# 64^3 leveled waves of wavelength 10 voxels at solid fraction 0.5. One 64^3 realisation carries
# sampling noise of a few 0.01 in e_tpcf / e_lpf (measured over 8 seeds: up to 0.044 / 0.064;
# with a 16-voxel wavelength, only 4 periods per box, up to 0.10 / 0.13), so the isotropy check
# is on the mean of four seeds.
SEEDS = range(4)


def _errors(report):
    return np.array([report["e_tpcf"], report["e_lpf"], report["e_d"]])


@pytest.fixture(scope="module")
def leveled_wave_errors():
    iso, stretched, resampled = [], [], []
    for seed in SEEDS:
        solid = leveled_wave((64, 64, 64), wavelength_nm=10.0, solid_fraction=0.5, voxel_size_nm=1.0, seed=seed)
        iso.append(_errors(anisotropy_report(solid)))
        # every slice twice along z, cropped back to 64: features 2x longer in z
        stretched.append(_errors(anisotropy_report(np.repeat(solid, 2, axis=0)[:64])))
        # the same structure imaged with 2 nm slices, resampled back to 1 nm voxels
        resampled.append(_errors(anisotropy_report(solid[::2], voxel_size_nm=(2.0, 1.0, 1.0), resample=True)))
    return np.array(iso), np.array(stretched), np.array(resampled)


def test_isotropic_structure_has_small_errors(leveled_wave_errors):
    iso, _, _ = leveled_wave_errors
    # measured means: e_tpcf 0.032, e_lpf 0.040, e_d 0.027
    assert np.all(iso.mean(axis=0) < 0.05), iso
    assert np.all(iso < 0.08), iso


def test_stretching_along_z_raises_every_error(leveled_wave_errors):
    iso, stretched, _ = leveled_wave_errors
    # measured minima over the seeds: e_tpcf 0.160, e_lpf 0.384, e_d 0.247
    assert np.all(stretched.min(axis=0) > [0.12, 0.3, 0.2]), stretched
    assert np.all(stretched.mean(axis=0) > 3 * iso.mean(axis=0))


def test_resampled_coarse_z_stays_nearly_isotropic(leveled_wave_errors):
    _, stretched, resampled = leveled_wave_errors
    # measured means: e_tpcf 0.031, e_lpf 0.034, e_d 0.063 (z staircase of the 2 nm slices)
    assert np.all(resampled.mean(axis=0) < [0.05, 0.05, 0.1]), resampled
    assert np.all(resampled.mean(axis=0) < stretched.mean(axis=0) / 2)


# --- two-point correlation ----------------------------------------------------------------


def _s2_brute_force(mask, axis, r):
    a = np.moveaxis(mask, axis, -1)
    return np.mean(a[..., : a.shape[-1] - r] & a[..., r:])


def test_s2_at_zero_is_the_phase_fraction_exactly():
    labels = np.random.default_rng(0).integers(0, 3, size=(20, 24, 28))
    s2 = two_point_correlation(labels, phase=2)
    fraction = np.count_nonzero(labels == 2) / labels.size
    for curve in s2.values():
        assert curve[0] == fraction
        assert curve.shape == (11,)  # default: half the shortest axis


def test_s2_of_white_noise_tends_to_fraction_squared():
    noise = np.random.default_rng(1).random((48, 48, 48)) < 0.3
    fraction = noise.mean()
    for curve in two_point_correlation(noise).values():
        assert curve.shape == (25,)
        np.testing.assert_allclose(curve[1:], fraction**2, atol=0.004)


def test_s2_matches_brute_force_without_wrap_around():
    mask = np.random.default_rng(2).random((6, 7, 8)) < 0.45
    s2 = two_point_correlation(mask, max_distance=5)
    for name, axis in AXIS.items():
        expected = [_s2_brute_force(mask, axis, r) for r in range(6)]
        np.testing.assert_allclose(s2[name], expected, rtol=1e-14)  # integer pair counts: exact


def test_s2_pairs_across_the_volume_edge_do_not_count():
    # phase only in the first and last x column: a periodic S2 would pair them at r = 1
    volume = np.zeros((6, 6, 6), dtype=np.uint8)
    volume[:, :, 0] = volume[:, :, -1] = 1
    s2x = two_point_correlation(volume, max_distance=5)["x"]
    np.testing.assert_allclose(s2x, [2 / 6, 0, 0, 0, 0, 1], rtol=1e-14)


# --- lineal path --------------------------------------------------------------------------


def _lineal_path_brute_force(mask, axis, r):
    a = np.moveaxis(mask, axis, -1)
    n = a.shape[-1]
    whole = np.ones(a.shape[:-1] + (n - r,), dtype=bool)
    for k in range(r + 1):
        whole &= a[..., k : n - r + k]
    return whole.mean()


def test_lineal_path_matches_brute_force():
    mask = np.random.default_rng(3).random((6, 7, 8)) < 0.6
    lp = lineal_path(mask, max_distance=5)
    for name, axis in AXIS.items():
        expected = [_lineal_path_brute_force(mask, axis, r) for r in range(6)]
        np.testing.assert_allclose(lp[name], expected, rtol=0, atol=1e-15)
        assert lp[name][0] == mask.mean()


def _rods_along_z(shape=(40, 32, 32), width=4, spacing=8):
    rods = np.zeros(shape, dtype=bool)
    for y0 in range(0, shape[1], spacing):
        for x0 in range(0, shape[2], spacing):
            rods[:, y0 : y0 + width, x0 : x0 + width] = True
    return rods


def test_lineal_path_of_rods_along_z():
    rods = _rods_along_z()  # 4x4 rods every 8 voxels: fraction 1/4
    lp = lineal_path(rods, max_distance=20)
    np.testing.assert_array_equal(lp["z"], 0.25)  # a segment along z never leaves its rod
    np.testing.assert_allclose(lp["x"], lp["y"])
    assert np.all(lp["x"][:4] > 0) and np.all(np.diff(lp["x"][:5]) < 0)
    np.testing.assert_array_equal(lp["x"][4:], 0.0)  # no 5 consecutive voxels across a 4-wide rod


# --- ligament diameters -------------------------------------------------------------------


def _local_thickness_brute_force(plane):
    """2 max{dt(c) : |p - c|^2 < dt(c)^2} over all phase pixels c, pixel by pixel."""
    dt2 = np.rint(ndi.distance_transform_edt(plane) ** 2)
    ys, xs = np.nonzero(plane)
    out = np.zeros(plane.shape)
    for y, x in zip(ys, xs):
        covering = (ys - y) ** 2 + (xs - x) ** 2 < dt2[ys, xs]
        out[y, x] = 2 * np.sqrt(dt2[ys, xs][covering].max())
    return out


def test_local_thickness_matches_brute_force_definition():
    rng = np.random.default_rng(4)
    planes = ndi.binary_opening(rng.random((6, 23, 19)) < 0.55, structure=np.ones((1, 2, 2)))
    planes[1] = rng.random((23, 19)) < 0.7  # unsmoothed noise too
    thickness = local_thickness_2d(planes)
    for plane, got in zip(planes, thickness):
        np.testing.assert_allclose(got, _local_thickness_brute_force(plane), rtol=1e-12)


@pytest.mark.parametrize("radius", [3, 5, 8])
def test_cylinder_diameter_is_twice_its_radius(radius):
    _, y, x = np.ogrid[:6, :40, :40]
    cylinders = ((y - 12) ** 2 + (x - 12) ** 2 <= radius**2) | ((y - 28) ** 2 + (x - 27) ** 2 <= radius**2)
    cylinders = np.broadcast_to(cylinders, (6, 40, 40))
    d_xy = ligament_diameters(cylinders)["xy"]
    assert abs(d_xy - 2 * radius) <= 1.0
    # every pixel lies in the disc around the centre, whose nearest background is at R^2 + 1
    assert d_xy == pytest.approx(2 * np.sqrt(radius**2 + 1), rel=1e-12)


@pytest.mark.parametrize("thickness", [4, 5, 9])
def test_slab_diameter_is_its_thickness(thickness):
    slab = np.zeros((20, 24, 30), dtype=np.uint8)
    slab[:, :, 10 : 10 + thickness] = 1  # a wall perpendicular to x
    d = ligament_diameters(slab)
    for name in ("xy", "xz"):  # the planes that cut across the wall
        assert d[name] == thickness + thickness % 2  # 2 dt: exact if even, one more if odd
    assert d["yz"] == 20  # planes inside the wall hold no background: their shorter side


def test_ligament_diameters_step_and_labels():
    labels = np.random.default_rng(5).integers(0, 3, size=(16, 18, 20))
    full = ligament_diameters(labels, phase=2)
    assert ligament_diameters(labels == 2) == full
    sub = ligament_diameters(labels, phase=2, step=4)
    sub_expected = local_thickness_2d((labels == 2)[::4])
    assert sub["xy"] == pytest.approx(sub_expected[(labels == 2)[::4]].mean())


# --- eq. (4) and (5) ----------------------------------------------------------------------


def test_eq4_is_zero_for_identical_curves():
    f = np.array([0.3, 0.2, 0.12, 0.09])
    assert l2_anisotropy_error(f, f, f) == 0.0
    assert l2_anisotropy_error([0, 0], [0, 0], [0, 0]) == 0.0  # not NaN


def test_eq4_by_hand():
    # x term: 2 |(0, -1)| / (|(1, 0)| + |(1, 1)|) = 2 / (1 + sqrt 2); y term: 0
    assert l2_anisotropy_error([1, 0], [1, 1], [1, 1]) == pytest.approx(np.sqrt(2) - 1)
    # x term: 2 |(2, 0)| / (|(3, 4)| + |(1, 4)|) = 4 / (5 + sqrt 17)
    # y term: 2 |(0, -1)| / (|(1, 3)| + |(1, 4)|) = 2 / (sqrt 10 + sqrt 17)
    expected = 0.5 * (4 / (5 + np.sqrt(17)) + 2 / (np.sqrt(10) + np.sqrt(17)))
    assert l2_anisotropy_error([3, 4], [1, 3], [1, 4]) == pytest.approx(expected, rel=1e-12)


def test_eq4_bounds():
    rng = np.random.default_rng(6)
    # any non-negative curves: at most 2, and 2 is reached (fx = fy = 0, fz != 0)
    assert l2_anisotropy_error([0, 0, 0], [0, 0, 0], [0.5, 0.2, 0.1]) == pytest.approx(2.0)
    curves = rng.random((2000, 3, 8)) * (rng.random((2000, 3, 1)) < 0.9)
    errors = np.array([l2_anisotropy_error(*c) for c in curves])
    assert errors.max() <= 2.0 and errors.min() >= 0.0
    assert errors.max() > 1.0  # so [0, 1] (the paper's claim) does not hold in general
    # within a factor 3 of fz, point by point: at most 1
    fz = rng.random((2000, 8)) + 1e-3
    factors = np.exp(rng.uniform(-np.log(3), np.log(3), size=(2000, 2, 8)))
    assert max(l2_anisotropy_error(fz_ * k[0], fz_ * k[1], fz_) for fz_, k in zip(fz, factors)) <= 1.0
    # and a real structure beyond 1: rods along z, lineal path (L_z flat, L_x, L_y vanish)
    assert 1.0 < anisotropy_report(_rods_along_z())["e_lpf"] <= 2.0


def test_eq4_rejects_mismatched_curves():
    with pytest.raises(ValueError, match="differ in length"):
        l2_anisotropy_error([1, 2], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        l2_anisotropy_error([1, np.nan], [1, 2], [1, 2])


def test_eq5_by_hand():
    assert diameter_anisotropy_error(10.0, 12.0, 7.0) == pytest.approx(0.5 * (0.2 + 0.3))
    assert diameter_anisotropy_error(4.0, 4.0, 4.0) == 0.0
    assert diameter_anisotropy_error(4.0, 8.0, 0.0) == pytest.approx(1.0)  # <= 1 while D <= 2 D_xy
    assert diameter_anisotropy_error(4.0, 12.0, 12.0) == pytest.approx(2.0)  # unbounded beyond
    with pytest.raises(ValueError, match="D_xy > 0"):
        diameter_anisotropy_error(0.0, 1.0, 1.0)


# --- report and input checks --------------------------------------------------------------


def test_report_keys_units_and_labels():
    labels = np.random.default_rng(7).integers(0, 3, size=(24, 24, 24)).astype(np.uint8)
    report = anisotropy_report(labels, voxel_size_nm=2.5, phase=2, max_distance=10)
    binary = anisotropy_report(labels == 2, voxel_size_nm=(2.5, 2.5, 2.5), max_distance=10)
    for key in ("e_tpcf", "e_lpf", "e_d", "solid_fraction", "d_xy_nm", "d_xz_nm", "d_yz_nm"):
        assert np.isfinite(report[key]) and report[key] == binary[key]
    assert report["solid_fraction"] == np.count_nonzero(labels == 2) / labels.size
    curves = report["curves"]
    np.testing.assert_allclose(curves["distance_nm"], np.arange(11) * 2.5)
    assert set(curves["tpcf"]) == set(curves["lpf"]) == {"x", "y", "z"}
    d_voxels = ligament_diameters(labels, phase=2)
    assert report["d_xy_nm"] == pytest.approx(2.5 * d_voxels["xy"])


def test_anisotropic_voxels_are_refused_unless_resampled():
    solid = leveled_wave((16, 32, 32), wavelength_nm=8.0, solid_fraction=0.4, voxel_size_nm=1.0, seed=0)
    with pytest.raises(ValueError, match=r"voxel size \(2\.0, 1\.0, 1\.0\) nm.*resample=True"):
        anisotropy_report(solid, voxel_size_nm=(2.0, 1.0, 1.0))
    anisotropy_report(solid, voxel_size_nm=(1.0005, 1.0, 1.0))  # within 0.1 %: isotropic
    report = anisotropy_report(solid, voxel_size_nm=(2.0, 1.0, 1.0), resample=True)
    assert report["voxel_size_nm"] == 1.0
    assert report["solid_fraction"] == solid.mean()  # slices repeated twice: same fraction
    np.testing.assert_array_equal(
        report["curves"]["lpf"]["x"], lineal_path(np.repeat(solid, 2, axis=0), max_distance=16)["x"]
    )
    uneven = anisotropy_report(solid, voxel_size_nm=(1.5, 1.0, 1.0), resample=True)  # 16 * 1.5 = 24 slices
    assert uneven["curves"]["tpcf"]["z"].shape == (13,)


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.ones((4, 4), dtype=int), {}, "3-D"),
        (np.ones((0, 4, 4), dtype=int), {}, "empty"),
        (np.zeros((4, 4, 4), dtype=int), {}, r"phase 1 does not occur.*labels present: 0"),
        (np.ones((4, 4, 4), dtype=float), {}, "integer labels"),
        (np.ones((4, 5, 6), dtype=int), {"max_distance": 4}, r"max_distance.*\[0, 3\]"),
        (np.ones((4, 4, 4), dtype=int), {"voxel_size_nm": (1.0, -1.0, 1.0)}, "positive"),
        (np.ones((4, 4, 4), dtype=int), {"step": 0}, "step"),
    ],
)
def test_bad_input_is_refused(volume, kwargs, match):
    with pytest.raises(ValueError, match=match):
        anisotropy_report(volume, **kwargs)


# --- porespy, where it computes the same quantity -----------------------------------------
# porespy.metrics.two_point_correlation is radially averaged over all directions, but on a single
# line (an (N, 1, 1) image) it is S2 of that line, zero-padded and pair-normalised as here; the
# mean over lines is the directional S2. porespy.metrics.lineal_path_distribution is a histogram
# (pdf) of chord distances, not L(r); porespy.filters.distance_transform_lin (mode "forward")
# gives the run length up to each voxel, and L(r) = #(that >= r + 1) / #segment positions.
# porespy.filters.local_thickness quantises radii to integers and returns radii (not the same
# quantity): it is compared for speed and value in benchmarks/metrics_speed.py only.


def test_s2_and_lineal_path_agree_with_porespy():
    ps = pytest.importorskip("porespy")
    mask = np.random.default_rng(8).random((12, 5, 4)) < 0.5
    n = mask.shape[0]
    per_line = [
        np.nan_to_num(ps.metrics.two_point_correlation(line.reshape(n, 1, 1), bins=np.arange(n)).probability_scaled)
        for line in mask.reshape(n, -1).T
    ]
    s2z = two_point_correlation(mask, max_distance=3)["z"]
    np.testing.assert_allclose(s2z, np.mean(per_line, axis=0)[:4], rtol=1e-9)
    lp = lineal_path(mask, max_distance=3)
    for name, axis in AXIS.items():
        run = ps.filters.distance_transform_lin(mask, axis=axis, mode="forward")
        lines = mask.size // mask.shape[axis]
        expected = [np.count_nonzero(run >= r + 1) / (lines * (mask.shape[axis] - r)) for r in range(4)]
        np.testing.assert_allclose(lp[name], expected, rtol=1e-12)


def test_local_thickness_of_one_plane_and_of_a_stack_agree():
    plane = np.zeros((9, 11), bool)
    plane[2:6, 1:10] = True  # a slab 4 pixels thick (even: 2 dt = 4)
    one = local_thickness_2d(plane)
    assert one.shape == (9, 11)
    np.testing.assert_array_equal(one[plane], 4.0)
    assert (one[~plane] == 0).all()
    stack = local_thickness_2d(np.stack([plane, plane[::-1]]))
    assert stack.shape == (2, 9, 11)
    np.testing.assert_array_equal(stack[0], one)
    np.testing.assert_array_equal(stack[1], one[::-1])
    # a single pixel (a 1 x 1 plane without background): its shorter side, 1
    np.testing.assert_array_equal(local_thickness_2d(np.ones((1, 1), bool)), [[1.0]])


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3, 3), (0, 4, 4), (4, 0)])
def test_local_thickness_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=rf"planes must be a non-empty \(H, W\) or \(P, H, W\) array, got shape "
                                         rf"\({', '.join(map(str, shape))},?\)"):
        local_thickness_2d(np.zeros(shape, bool))


def test_resample_nearest_per_axis():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    # factors (1, 1, 2): only x is resampled, each column twice (an isotropic axis does not stop the loop)
    np.testing.assert_array_equal(resample_nearest(volume, np.array([1.0, 1.0, 2.0])), np.repeat(volume, 2, axis=2))
    np.testing.assert_array_equal(resample_nearest(volume, np.array([2.0, 1.0, 1.0])), np.repeat(volume, 2, axis=0))
    # within the isotropy tolerance (1e-3) nothing changes, even where n x factor would round up
    long = np.zeros((3000, 1, 1), np.uint8)
    assert resample_nearest(long, np.array([1.0005, 1.0, 1.0])).shape == (3000, 1, 1)
    # 5 slices x 1.1 = 5.5 -> 6 output slices; the last one's centre maps to 5.0: clamped to slice 4
    np.testing.assert_array_equal(resample_nearest(np.arange(5).reshape(5, 1, 1), np.array([1.1, 1.0, 1.0])).ravel(),
                                  [0, 1, 2, 3, 4, 4])


def _s2_by_pairs(mask: np.ndarray, axis: int, rmax: int) -> np.ndarray:
    """S2 along an axis by counting the pairs directly (no FFT): the independent reference."""
    m = np.moveaxis(mask, axis, 0)
    return np.array([(m[: len(m) - r] & m[r:]).sum() / m[r:].size for r in range(rmax + 1)])


def test_s2_of_a_volume_larger_than_one_fft_block_counts_every_pair_once():
    # 40 x 400 x 320 = 5.1 M voxels, more than one FFT block (4 M voxels): the spectra are summed
    # over blocks of lines, each line in exactly one block
    rng = np.random.default_rng(11)
    mask = ndi.uniform_filter(rng.random((40, 400, 320), dtype=np.float32), 3) > 0.5
    s2 = two_point_correlation(mask, max_distance=6)
    for name, axis in (("z", 0), ("y", 1), ("x", 2)):
        np.testing.assert_allclose(s2[name], _s2_by_pairs(mask, axis, 6), rtol=1e-12, atol=0, err_msg=name)


def test_report_voxel_sizes_and_diameters_in_nm():
    solid = leveled_wave((16, 24, 24), wavelength_nm=8.0, solid_fraction=0.4, voxel_size_nm=1.0, seed=1)
    # 5 nm slices over 2.5 nm pixels: resampled to 2.5 nm by repeating every slice twice
    coarse = anisotropy_report(solid, voxel_size_nm=(5.0, 2.5, 2.5), resample=True)
    fine = anisotropy_report(np.repeat(solid, 2, axis=0), voxel_size_nm=2.5)
    assert coarse["voxel_size_nm"] == 2.5 and coarse["e_tpcf"] == pytest.approx(fine["e_tpcf"], rel=1e-12)
    d = ligament_diameters(np.repeat(solid, 2, axis=0))
    assert [coarse[f"d_{p}_nm"] for p in ("xy", "xz", "yz")] == pytest.approx([2.5 * d[p] for p in ("xy", "xz", "yz")])
    # isotropic within the tolerance and not resampled: the mean voxel size is the unit
    near = anisotropy_report(solid, voxel_size_nm=(1.0006, 1.0, 1.0))
    assert near["voxel_size_nm"] == pytest.approx(1.0002, rel=1e-12)
    assert anisotropy_report(solid, voxel_size_nm=[2, 2, 2])["voxel_size_nm"] == 2.0  # integer sizes are fine


@pytest.mark.parametrize("voxel", [(1.0, 2.0), [[1.0], [1.0], [1.0]], (1.0, 1.0, 1.0, 1.0)])
def test_voxel_sizes_must_be_one_or_three(voxel):
    with pytest.raises(ValueError, match=r"voxel_size_nm must be one size or three \(z, y, x\) sizes"):
        anisotropy_report(np.ones((4, 4, 4), int), voxel_size_nm=voxel)


def test_voxel_sizes_must_be_positive_and_finite():
    for voxel in (0.0, (1.0, 0.0, 1.0), (1.0, np.inf, 1.0)):
        with pytest.raises(ValueError, match="voxel sizes must be positive and finite"):
            anisotropy_report(np.ones((4, 4, 4), int), voxel_size_nm=voxel)


def test_steps_and_max_distances_at_their_limits():
    volume = np.ones((4, 6, 6), int)
    with pytest.raises(ValueError, match="step must be a positive integer, got 1.5"):
        anisotropy_report(volume, step=1.5)
    short = anisotropy_report(volume, max_distance=0)  # one point per curve: allowed
    assert short["curves"]["tpcf"]["x"].shape == (1,) and short["e_tpcf"] == 0.0
    for bad in (-1, 4, 2.5):
        with pytest.raises(ValueError, match=r"max_distance must be an integer in \[0, 3\]"):
            lineal_path(volume, max_distance=bad)
    # a single solid voxel: one pixel in one plane of each family, diameter 1 (its plane's
    # distance to the background is 1 pixel, 2 dt = 2)
    single = np.zeros((5, 5, 5), int)
    single[2, 2, 2] = 1
    assert ligament_diameters(single) == {"xy": 2.0, "xz": 2.0, "yz": 2.0}
    with pytest.raises(ValueError, match="no phase pixel in the xy planes taken with step 4; use a smaller step"):
        ligament_diameters(single, step=4)


def test_eq4_and_eq5_name_the_bad_input():
    with pytest.raises(ValueError, match=r"fy must be a non-empty 1-D curve, got shape \(0,\)"):
        l2_anisotropy_error([1.0], [], [1.0])
    with pytest.raises(ValueError, match=r"fz must be a non-empty 1-D curve, got shape \(1, 2\)"):
        l2_anisotropy_error([1.0, 2.0], [1.0, 2.0], [[1.0, 2.0]])
    assert l2_anisotropy_error([1], [1], [3]) == pytest.approx(1.0)  # one-point integer curves: 2 |1 - 3| / 4
    with pytest.raises(ValueError, match="curves differ in length: fx 2, fy 3, fz 3"):
        l2_anisotropy_error([1, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="curves differ in length: fx 3, fy 2, fz 3"):
        l2_anisotropy_error([1, 2, 3], [1, 2], [1, 2, 3])
    assert diameter_anisotropy_error(0.5, 0.5, 1.0) == pytest.approx(0.5)  # diameters below 1 are fine
    with pytest.raises(ValueError, match=r"D_xz, D_yz >= 0; got \(1.0, -1.0, 1.0\)"):
        diameter_anisotropy_error(1.0, -1.0, 1.0)


def test_local_thickness_of_many_planes_painted_in_groups_equals_each_part_alone():
    # 120 000 planes of 8 x 8 are painted in groups of ~42 000 (the paint buffer holds 16 M
    # padded pixels): data in the first and last groups, none in the middle one. Planes are
    # independent, so the whole stack must give what its parts give alone.
    rng = np.random.default_rng(12)
    planes = np.zeros((120000, 8, 8), bool)
    for part in (slice(0, 30000), slice(90000, 120000)):
        planes[part] = ndi.binary_opening(rng.random((30000, 8, 8)) < 0.6, structure=np.ones((1, 2, 2)))
    tracemalloc.start()
    whole = local_thickness_2d(planes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a guard on a measured value, no derivation: 184 MiB measured (numpy 2); a buffer over every
    # plane instead of each group's (plane indices not made relative to the group) measured 614 MiB
    assert peak < 300 * 2**20
    assert not whole[30000:90000].any()
    for part in (slice(0, 30000), slice(90000, 120000)):
        np.testing.assert_array_equal(whole[part], local_thickness_2d(planes[part]))
    np.testing.assert_allclose(whole[90000:90050], [_local_thickness_brute_force(p) for p in planes[90000:90050]],
                               rtol=1e-12)


def test_local_thickness_of_wide_phases_reaching_the_edges_matches_brute_force():
    # mostly phase with a few background pixels: large discs cross the plane edges (painted into
    # the padding), several planes at once
    rng = np.random.default_rng(13)
    planes = rng.random((4, 21, 17)) < 0.97
    planes[:, 10, 8] = False
    planes[3] = False
    planes[3, 2:19, 1:9] = True  # and a wide block with background only beyond one side
    for plane, got in zip(planes, local_thickness_2d(planes)):
        np.testing.assert_allclose(got, _local_thickness_brute_force(plane), rtol=1e-12)


def test_a_missing_phase_lists_the_labels_present():
    with pytest.raises(ValueError, match=r"phase 7 does not occur in the volume \(labels present: 0, 1, 2\)$"):
        anisotropy_report(np.arange(27).reshape(3, 3, 3) % 3, phase=7)
    many = np.arange(11 * 4 * 4).reshape(11, 4, 4) // 16  # labels 0..10: one more than is shown
    with pytest.raises(ValueError, match=r"\(labels present: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\)$"):
        anisotropy_report(many, phase=20)
    ten = np.arange(10 * 4 * 4).reshape(10, 4, 4) // 16  # exactly ten labels: all shown, no "..."
    with pytest.raises(ValueError, match=r"\(labels present: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\)$"):
        anisotropy_report(ten, phase=20)
