"""Tests for phase fractions, geodesic tortuosity and sphere intrusion against hand-computed values."""

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from fibml.metrics.morphology import (
    characteristic_bottleneck_radius,
    constrictivity,
    geodesic_tortuosity,
    intrusion_fraction,
    phase_fractions,
    solid_fraction,
)
from fibml.synth.microstructure import leveled_wave

PORE, SOLID = 0, 1


def _label(pore: np.ndarray) -> np.ndarray:
    return np.where(pore, PORE, SOLID).astype(np.uint8)


def _disc(shape, radius, centre) -> np.ndarray:
    """(z, y, x) boolean: voxel centres within ``radius`` of the line (y, x) = centre, for every z."""
    _, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return np.broadcast_to((y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2, shape).copy()


@pytest.fixture(scope="module")
def wave64():
    """64^3 leveled wave, solid fraction 0.3 (so the pore phase percolates), 2.5 nm voxels."""
    return leveled_wave((64, 64, 64), wavelength_nm=60.0, solid_fraction=0.3, voxel_size_nm=2.5).astype(np.uint8)


# Chamber / throat / body, 40 x 25 x 25 voxels: slices z < 12 all pore (the inlet-side chamber),
# z 12..19 a solid wall pierced by a throat of radius 3 on the axis (y, x) = (12, 12), z >= 20 all
# pore (the body). The faces are open (the border counts as pore), so neither chamber nor body has
# corners. Voxel counts: chamber 12 * 625 = 7500; throat 8 * 29 = 232 (29 lattice points with
# y^2 + x^2 <= 9); body 20 * 625 = 12500; total 20232. The throat axis is sqrt(10) from the
# nearest wall voxel centre (y, x) = (3, 1), so spheres pass it for r^2 <= 10 and not above.
N_CHAMBER, N_THROAT, N_BODY = 7500, 232, 12500
N_TOTAL = N_CHAMBER + N_THROAT + N_BODY


@pytest.fixture(scope="module")
def throat():
    pore = np.ones((40, 25, 25), dtype=bool)
    pore[12:20] = _disc((8, 25, 25), 3, (12, 12))
    assert pore.sum() == N_TOTAL
    return _label(pore)


# ---------------------------------------------------------------------------------------- fractions


def test_fractions_sum_to_one_and_match_counts():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 3, size=(10, 11, 12))
    f = phase_fractions(vol)
    assert list(f) == [0, 1, 2]
    assert sum(f.values()) == pytest.approx(1.0, abs=1e-12)
    for k, v in f.items():
        assert v == np.count_nonzero(vol == k) / vol.size
    assert solid_fraction(vol, solid=2) == f[2]
    # a class that does not occur gets 0
    f5 = phase_fractions(vol, n_classes=5)
    assert f5[3] == f5[4] == 0.0 and sum(f5.values()) == pytest.approx(1.0)


def test_solid_fraction_of_boolean_leveled_wave():
    solid = leveled_wave((32, 32, 32), wavelength_nm=60.0, solid_fraction=0.3, voxel_size_nm=2.5)
    assert solid_fraction(solid) == pytest.approx(0.3, abs=1 / solid.size)
    assert phase_fractions(solid)[1] == solid_fraction(solid)


def test_fraction_input_errors():
    with pytest.raises(ValueError, match="integer labels"):
        phase_fractions(np.zeros((2, 2, 2)) + 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        phase_fractions(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="outside"):
        phase_fractions(np.array([0, 1, 2]), n_classes=2)
    with pytest.raises(ValueError, match="empty"):
        phase_fractions(np.zeros((0, 3), dtype=int))


# --------------------------------------------------------------------------------------- tortuosity


def test_straight_channels_have_tortuosity_exactly_one():
    vol = np.full((24, 16, 16), SOLID, dtype=np.uint8)
    vol[:, 2:5, 2:5] = PORE  # 3 x 3 channel
    vol[:, 10, 10] = PORE  # one-voxel channel
    vol[:, 8:14, 14] = PORE  # 6 x 1 slit
    r = geodesic_tortuosity(vol, voxel_size_nm=2.5)
    assert r["n_start"] == r["n_connected"] == 16 and r["connected_fraction"] == 1.0
    np.testing.assert_allclose(r["values"], 1.0, atol=1e-9)
    assert r["mean"] == pytest.approx(1.0, abs=1e-9) and r["std"] == pytest.approx(0.0, abs=1e-9)
    assert r["straight_nm"] == pytest.approx(23 * 2.5)  # centre of slice 0 to centre of slice 23
    # the same channels along x
    rx = geodesic_tortuosity(np.transpose(vol, (2, 1, 0)), axis=2)
    np.testing.assert_allclose(rx["values"], 1.0, atol=1e-9)


def test_one_voxel_zigzag_has_its_hand_computed_length():
    # z 0..10 at x = 2, then x 2..12 at z = 10, then z 10..29 at x = 12: 29 steps along z + 10 along x.
    vol = np.full((30, 3, 16), SOLID, dtype=np.uint8)
    vol[0:11, 1, 2] = PORE
    vol[10, 1, 2:13] = PORE
    vol[10:, 1, 12] = PORE
    r = geodesic_tortuosity(vol)
    assert r["n_connected"] == 1
    assert r["mean"] == pytest.approx(39 / 29, abs=1e-6)


def test_tilted_slab_gives_euclidean_not_chamfer_lengths():
    # Pore = 0 <= x - z / 2 < 8, a slab tilted along (2, 0, 1) (y is a free direction). It is convex,
    # so the geodesic from a start voxel is the straight line to the nearest end-face pore voxel:
    # sqrt(47^2 + (x_end_min - x0)^2) for x0 < x_end_min. A 26-connected Dijkstra is ~8 % too long.
    n = 48
    z, _, x = np.meshgrid(np.arange(n), np.arange(4), np.arange(48), indexing="ij")
    pore = (x - z / 2 >= 0) & (x - z / 2 < 8)
    r = geodesic_tortuosity(_label(pore))
    x0 = np.nonzero(pore[0])[1]  # same order as r["values"]: np.nonzero of the start face
    x_end = x[-1][pore[-1]].min()
    exact = np.hypot(n - 1, np.maximum(x_end - x0, 0)) / (n - 1)
    assert r["connected_fraction"] == 1.0
    np.testing.assert_allclose(r["values"], exact, rtol=0.02)
    assert r["mean"] == pytest.approx(exact.mean(), rel=0.01)
    assert exact.mean() > 1.08  # the test means something: a real detour


def test_hole_in_a_wall():
    # Solid wall at z = 16 with a 3 x 3 hole (y, x in 15..17); all else pore. Shortest path from
    # (0, y, x): straight to the nearest hole voxel, then straight down: sqrt(16^2 + dy^2 + dx^2) + 16.
    pore = np.ones((33, 33, 33), dtype=bool)
    pore[16] = False
    pore[16, 15:18, 15:18] = True
    r = geodesic_tortuosity(_label(pore))
    _, yy, xx = np.nonzero(pore[:1])
    exact = (np.sqrt(16**2 + (np.clip(yy, 15, 17) - yy) ** 2 + (np.clip(xx, 15, 17) - xx) ** 2) + 16) / 32
    assert r["connected_fraction"] == 1.0
    assert np.all(r["values"] >= exact - 1e-9)  # never shorter than the true geodesic
    np.testing.assert_allclose(r["values"], exact, rtol=0.01)


def test_blocked_channel_is_not_connected():
    vol = np.full((20, 12, 12), SOLID, dtype=np.uint8)
    vol[:, 1:4, 1:4] = PORE
    vol[10, 1:4, 1:4] = SOLID  # blocked in the middle
    r = geodesic_tortuosity(vol)
    assert r["connected_fraction"] == 0.0 and r["n_start"] == 9 and r["values"].size == 0
    assert math.isnan(r["mean"]) and math.isnan(r["std"])
    vol[:, 6:9, 6:9] = PORE  # a second, open channel: half of the start voxels connect
    r = geodesic_tortuosity(vol)
    assert r["connected_fraction"] == 0.5 and r["mean"] == pytest.approx(1.0, abs=1e-9)
    # phase that never reaches the end face
    half = np.full((20, 8, 8), SOLID, dtype=np.uint8)
    half[:10] = PORE
    assert geodesic_tortuosity(half)["connected_fraction"] == 0.0


def test_leveled_wave_pore_tortuosity(wave64):
    # Measured: 1.0145, 1.0135, 1.0139 along z, y, x (std ~0.015): an open, isotropic pore space.
    # Exact: no path is shorter than the straight line (>= 1) and the wave is isotropic by
    # construction. The upper bound 1.06 has no independent reference: it guards the measured value.
    means = []
    for axis in range(3):
        r = geodesic_tortuosity(wave64, phase=PORE, axis=axis, voxel_size_nm=2.5)
        assert r["connected_fraction"] == 1.0  # the pore phase percolates
        assert r["values"].min() >= 1.0 - 1e-9  # no path is shorter than the straight line
        assert 1.005 < r["mean"] < 1.06
        means.append(r["mean"])
    assert max(means) - min(means) < 0.005  # isotropic by construction


# ---------------------------------------------------------------------------------------- intrusion


def test_cylinder_filled_up_to_its_radius_and_empty_above():
    # Cylinder of radius 6 along z, axis on a voxel centre. The nearest wall voxel centre is at
    # sqrt(37) (6, 1), so spheres fit on the axis for r <= sqrt(37) = 6.08 and nowhere above.
    pore = _disc((16, 25, 25), 6, (12, 12))
    radii = [0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.25, 5.5, 6.0, 6.08]
    f = intrusion_fraction(_label(pore), radii)
    assert all(f[r] == 1.0 for r in radii)
    above = intrusion_fraction(_label(pore), [6.1, 7.0, 9.0])
    assert all(v == 0.0 for v in above.values())
    # nm and voxel size: 2.5 nm voxels, radii in nm
    f_nm = intrusion_fraction(_label(pore), [12.5, 15.0, 15.5], voxel_size_nm=2.5)
    assert list(f_nm.values()) == [1.0, 1.0, 0.0]


def test_narrow_throat_is_a_bottleneck(throat):
    # r^2 <= 10: spheres pass the throat and fill everything (no corners anywhere).
    assert intrusion_fraction(throat, [1.0, 2.0, 3.0, math.sqrt(10)]) == {
        1.0: 1.0,
        2.0: 1.0,
        3.0: 1.0,
        math.sqrt(10): 1.0,
    }
    # r = 4 (r^2 = 16): only the chamber fills, plus the caps of the spheres pressed into the throat
    # mouth. A centre on the axis at height h below the wall has dt^2 = h^2 + 10, so h >= sqrt(6):
    # h = 3, dt^2 = 19, covering in the throat z = 12: y^2 + x^2 < 10 (all 29) and z = 13:
    # y^2 + x^2 < 3 (9 voxels). Off-axis centres with h = 3 reach less (their rim is closer).
    f4 = intrusion_fraction(throat, 4.0)[4.0]
    assert f4 * N_TOTAL == pytest.approx(N_CHAMBER + 29 + 9, abs=0.5)
    # any r between the throat and the chamber depth: chamber <= filled <= chamber + throat
    radii = [3.2, 3.5, 5.0, 8.0, 11.0, 12.0]
    for r, v in intrusion_fraction(throat, radii).items():
        assert N_CHAMBER / N_TOTAL <= v <= (N_CHAMBER + N_THROAT) / N_TOTAL, r
    # largest sphere anywhere in the chamber: on the axis at z = 0, dt^2 = 12^2 + 10 = 154
    assert intrusion_fraction(throat, 13.0)[13.0] == 0.0
    # from every face the body fills too (from its end face), but not the middle of the throat
    for r, v in intrusion_fraction(throat, radii, inlet="all").items():
        assert (N_CHAMBER + N_BODY) / N_TOTAL <= v < 1.0, r


def test_intrusion_is_monotone_and_ordered_by_access(throat, wave64):
    for vol, voxel in ((throat, 1.0), (wave64, 2.5)):
        radii = voxel * np.sqrt(np.arange(1, 160, 7))
        by_inlet = {
            inlet: np.array(list(intrusion_fraction(vol, radii, voxel_size_nm=voxel, inlet=inlet).values()))
            for inlet in ("z0", "all", None)
        }
        for values in by_inlet.values():
            assert np.all(np.diff(values) <= 0)
            assert np.all((values >= 0) & (values <= 1))
        # more access, more filled: none >= all faces >= one face
        assert np.all(by_inlet[None] >= by_inlet["all"]) and np.all(by_inlet["all"] >= by_inlet["z0"])
    assert by_inlet["z0"][0] > 0.99  # the leveled-wave pore space is one connected phase
    # the answer for one radius does not depend on the other radii asked for
    assert intrusion_fraction(wave64, [5.0], voxel_size_nm=2.5) == {
        5.0: intrusion_fraction(wave64, [5.0, 7.5, 2.5], voxel_size_nm=2.5)[5.0]
    }


def test_intrusion_matches_brute_force_ball_painting():
    # Reference from scipy (not edt) and explicit spheres: voxel p is filled at radius r if
    # |p - s|^2 < dt(s)^2 for some sphere centre s with dt(s) >= r connected to the z = 0 face
    # through such centres. It must also contain the plain opening (one ball of radius r per centre).
    solid = leveled_wave((20, 20, 20), wavelength_nm=12.0, solid_fraction=0.5, voxel_size_nm=1.0, seed=3)
    pore = ~solid
    dt2 = np.rint(ndi.distance_transform_edt(pore) ** 2)
    grid = np.stack(np.indices(pore.shape), axis=-1)
    for r in (1.5, 2.0, 2.3, 3.0):
        seeds = dt2 >= r * r
        lab, _ = ndi.label(seeds)
        seeds &= np.isin(lab, np.unique(lab[0][lab[0] > 0]))
        filled = np.zeros_like(pore)
        for s in np.argwhere(seeds):
            filled |= ((grid - s) ** 2).sum(-1) < dt2[tuple(s)]
        got = intrusion_fraction(_label(pore), r)[r]
        assert got == np.count_nonzero(filled) / np.count_nonzero(pore), r
        opening = ndi.distance_transform_edt(~seeds) < r
        assert np.count_nonzero(opening & pore & ~filled) == 0


def test_radii_snap_to_the_voxel_lattice():
    # 3 * 0.1 nm = 0.30000000000000004 nm, / 0.1 nm = 3.0000000000000004 voxels: still 3 voxels.
    pore = _disc((8, 15, 15), 3, (7, 7))
    pore[:, 7, 10] = False  # the axis is then exactly 3 voxels from the wall: r = 3 fits, r > 3 not
    vol = _label(pore)
    at_3 = intrusion_fraction(vol, 3.0)[3.0]
    assert at_3 > 0 and intrusion_fraction(vol, 3.0001)[3.0001] < at_3
    assert intrusion_fraction(vol, 3 * 0.1, voxel_size_nm=0.1)[3 * 0.1] == at_3


def test_bottleneck_radius_and_constrictivity(throat, wave64):
    # From z0: everything fills up to r^2 = 10 (throat), then 37 % < 50 %: bottleneck sqrt(10).
    assert characteristic_bottleneck_radius(throat, voxel_size_nm=2.0) == pytest.approx(2 * math.sqrt(10))
    c = constrictivity(throat, voxel_size_nm=2.0)
    assert c["r_min_nm"] == pytest.approx(2 * math.sqrt(10))
    # without access limitation the body (62 % of the pore) fills with spheres of radius 20 centred
    # on its last slice (20 voxels from the wall); no sphere is larger than sqrt(20^2 + 10).
    assert 2 * 20 <= c["r_max_nm"] <= 2 * math.sqrt(410)
    assert c["beta"] == pytest.approx((c["r_min_nm"] / c["r_max_nm"]) ** 2) and c["beta"] <= 10 / 400
    # leveled wave: measured r_min = sqrt(59) * 2.5 = 19.2 nm, r_max = sqrt(89) * 2.5 = 23.6 nm.
    # Independent bound: no sphere inside the pore is larger than the pore's largest Euclidean
    # distance to the solid (scipy's EDT, the faces open), and r_min <= r_max by definition. The
    # lower bounds (10 nm, beta 0.3) have no reference: they guard the measured values.
    cw = constrictivity(wave64, voxel_size_nm=2.5)
    largest = ndi.distance_transform_edt(np.pad(wave64 == PORE, 1, constant_values=True)).max() * 2.5
    assert 10.0 < cw["r_min_nm"] <= cw["r_max_nm"] <= largest + 1e-9 and 0.3 < cw["beta"] <= 1.0


# -------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_message():
    vol = np.zeros((8, 8, 8), dtype=np.uint8)
    for func in (geodesic_tortuosity, lambda v, **k: intrusion_fraction(v, [1.0], **k)):
        with pytest.raises(ValueError, match="anisotropic"):
            func(vol, voxel_size_nm=(5.0, 2.5, 2.5))
        with pytest.raises(ValueError, match="phase 3 absent"):
            func(vol, phase=3)
        with pytest.raises(ValueError, match="3-D"):
            func(vol[0])
    with pytest.raises(ValueError, match="anisotropic"):
        characteristic_bottleneck_radius(vol, voxel_size_nm=[2.5, 2.5, 1.0])
    with pytest.raises(ValueError, match="voxel_size_nm"):
        geodesic_tortuosity(vol, voxel_size_nm=-1.0)
    with pytest.raises(ValueError, match="axis"):
        geodesic_tortuosity(vol, axis=3)
    start_blocked = vol.copy()
    start_blocked[0] = 1
    with pytest.raises(ValueError, match="start face"):
        geodesic_tortuosity(start_blocked)
    with pytest.raises(ValueError, match="inlet"):
        intrusion_fraction(vol, [1.0], inlet="top")
    with pytest.raises(ValueError, match="radii_nm"):
        intrusion_fraction(vol, [1.0, 0.0])


def test_fractions_of_labels_and_empty_volumes():
    # labels 0, 2 and 3 (1 absent): four classes by default, the absent one at 0
    labels = np.array([[0, 0, 2], [3, 3, 3]], np.uint8)
    assert phase_fractions(labels) == {0: 2 / 6, 1: 0.0, 2: 1 / 6, 3: 3 / 6}
    assert phase_fractions(np.ones((2, 2), bool)) == {0: 0.0, 1: 1.0}
    assert phase_fractions(np.array([1])) == {0: 0.0, 1: 1.0}  # one voxel is a volume
    assert solid_fraction(np.array([1])) == 1.0 and solid_fraction(labels, solid=3) == 0.5
    for function in (phase_fractions, solid_fraction):
        with pytest.raises(ValueError, match="^volume is empty$"):
            function(np.zeros((0, 4), np.uint8))


def _sheets():
    """A pore of two parts: a one-voxel-thin sheet on the z0 face (128 voxels) and, not touching
    it, a block of 128 voxels inside the solid."""
    vol = np.full((12, 16, 16), SOLID, dtype=np.uint8)
    vol[0, :8, :] = PORE  # 8 x 16 = 128 voxels on the inlet face, one voxel thick
    vol[4:6, 4:12, 4:12] = PORE  # 2 x 8 x 8 = 128 voxels, disconnected
    return vol


def test_bottleneck_radius_at_its_limits():
    vol = _sheets()
    # no access limitation: every pore voxel fits a one-voxel sphere, r^2 = 2 only the block's ...
    assert characteristic_bottleneck_radius(vol, inlet=None) == 1.0  # default voxel size: 1 nm
    # ... from z0 exactly half the pore is reached by one-voxel spheres: the fraction 0.5 is met
    assert intrusion_fraction(vol, [1.0])[1.0] == 0.5
    assert characteristic_bottleneck_radius(vol) == 1.0
    assert characteristic_bottleneck_radius(vol, fraction=0.6) == 0.0  # more than is reachable
    assert characteristic_bottleneck_radius(vol, inlet=None, fraction=1.0) == 1.0  # fraction 1 is allowed
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"fraction must be in \\(0, 1\\], got {bad}"):
            characteristic_bottleneck_radius(vol, fraction=bad)
    # a half-nanometre voxel: r_max 0.5 nm is a radius, not "no pore"
    c = constrictivity(vol, voxel_size_nm=0.5)
    assert (c["r_min_nm"], c["r_max_nm"], c["beta"]) == (0.5, 0.5, 1.0)
    assert constrictivity(vol)["r_max_nm"] == 1.0  # default voxel size 1 nm


def test_bottleneck_radius_is_the_largest_radius_filling_the_fraction(wave64):
    # brute force over every squared radius k: the largest sqrt(k) whose intrusion fills >= fraction
    wave = wave64[:40, :40, :40]
    k_max = int(ndi.distance_transform_edt(np.pad(wave == PORE, 1, constant_values=True)).max() ** 2) + 1
    for inlet, fraction in (("z0", 0.5), (None, 0.5), ("x1", 0.3)):
        radii = [math.sqrt(k) for k in range(1, k_max + 1)]
        fills = dict(zip(range(1, k_max + 1), intrusion_fraction(wave, radii, inlet=inlet).values()))
        expected = max((k for k, f in fills.items() if f >= fraction), default=0)
        assert expected > 4  # the bisection has several steps to take
        assert characteristic_bottleneck_radius(wave, inlet=inlet, fraction=fraction) == pytest.approx(
            math.sqrt(expected), rel=1e-12), (inlet, fraction)
        # a fraction that one radius fills exactly: that radius still counts
        k_exact = expected
        exact = characteristic_bottleneck_radius(wave, inlet=inlet, fraction=fills[k_exact])
        assert exact == pytest.approx(math.sqrt(k_exact), rel=1e-12)
    # every threshold the fills cross (a 24^3 corner, inlet z0): each fraction that some radius
    # fills exactly gives the largest such radius, wherever the bisection's steps land
    corner = wave64[:24, :24, :24]
    fills = dict(zip(range(1, k_max + 1), intrusion_fraction(corner, radii, inlet="z0").values()))
    for fraction in sorted(set(fills.values()) - {0.0}):
        expected = max(k for k, f in fills.items() if f >= fraction)
        found = characteristic_bottleneck_radius(corner, inlet="z0", fraction=fraction)
        assert found == pytest.approx(math.sqrt(expected), rel=1e-12), fraction


def test_constrictivity_uses_its_inlet(throat):
    # from the chamber side (z0) the throat limits the intrusion; from the body side (z1) it does not
    z0, z1 = constrictivity(throat, inlet="z0"), constrictivity(throat, inlet="z1")
    assert z0["r_min_nm"] == pytest.approx(characteristic_bottleneck_radius(throat, inlet="z0"))
    assert z1["r_min_nm"] == pytest.approx(characteristic_bottleneck_radius(throat, inlet="z1"))
    assert z1["r_min_nm"] > z0["r_min_nm"] and z0["r_max_nm"] == z1["r_max_nm"]
    assert characteristic_bottleneck_radius(throat) == pytest.approx(math.sqrt(10))  # 1 nm voxels by default


def test_tortuosity_units_limits_and_float_volumes():
    vol = np.full((2, 6, 6), SOLID, dtype=np.uint8)
    vol[:, 2:4, 2:4] = PORE  # straight channel through 2 slices (the fewest allowed)
    r = geodesic_tortuosity(vol)
    assert (r["mean"], r["straight_nm"], r["mean_path_nm"]) == (1.0, 1.0, 1.0)  # default 1 nm voxels
    r = geodesic_tortuosity(vol, voxel_size_nm=2.5)
    assert r["straight_nm"] == 2.5 and r["mean_path_nm"] == pytest.approx(r["mean"] * 2.5)
    # float labels (0.0 / 1.0, as a mean of segmentations can come) are read as labels too
    assert geodesic_tortuosity(vol.astype(np.float64))["mean"] == 1.0
    assert characteristic_bottleneck_radius(vol.astype(np.float32), inlet=None) == 1.0
    with pytest.raises(ValueError, match="volume has 1 slice along axis 0; need >= 2 for a tortuosity"):
        geodesic_tortuosity(vol[:1])


def test_tortuosity_of_an_unconnected_phase_is_nan_without_warnings():
    import warnings

    vol = np.full((6, 6, 6), SOLID, dtype=np.uint8)
    vol[0, 1:3, 1:3] = PORE  # pore on the start face only
    vol[5, 3:5, 3:5] = PORE  # and on the end face, not connected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = geodesic_tortuosity(vol)
    assert math.isnan(r["mean"]) and math.isnan(r["std"]) and math.isnan(r["mean_path_nm"])
    assert r["connected_fraction"] == 0.0 and r["n_start"] == 4


def test_tortuosity_mean_path_is_the_mean_tau_times_the_straight_length(wave64):
    r = geodesic_tortuosity(wave64, phase=PORE, axis=2, voxel_size_nm=2.5)
    assert r["mean_path_nm"] == pytest.approx(r["mean"] * 63 * 2.5, rel=1e-12)
    assert r["std"] == pytest.approx(r["values"].std(), rel=1e-12) and r["std"] > 0


def _brute_intrusion(pore: np.ndarray, r: float, inlet_face) -> float:
    """Ball painting by hand (scipy's EDT, every centre's ball drawn explicitly): inlet_face is
    (axis, index) of the face the centres must connect to, or None (no access limitation)."""
    dt2 = np.rint(ndi.distance_transform_edt(pore) ** 2)
    seeds = dt2 >= r * r
    if inlet_face is not None:
        lab, _ = ndi.label(seeds)
        face = np.take(lab, inlet_face[1], axis=inlet_face[0])
        seeds &= np.isin(lab, np.unique(face[face > 0]))
    grid = np.stack(np.indices(pore.shape), axis=-1)
    filled = np.zeros_like(pore)
    for s in np.argwhere(seeds):
        filled |= ((grid - s) ** 2).sum(-1) < dt2[tuple(s)]
    return np.count_nonzero(filled & pore) / np.count_nonzero(pore)


@pytest.mark.parametrize("shape", [(3, 14, 14), (14, 3, 14), (14, 14, 3), (2, 14, 14), (14, 14, 2)])
def test_intrusion_of_thin_volumes_matches_brute_force(shape):
    # a thin axis: balls reach across it (offsets up to n - 1 along it)
    rng = np.random.default_rng(sum(shape))
    pore = ndi.binary_opening(rng.random(shape) < 0.8, structure=np.ones((2, 2, 2)))
    for r in (1.0, 1.5, 2.0):
        for inlet, face in ((None, None), ("x1", (2, -1)), ("y0", (1, 0))):
            assert intrusion_fraction(_label(pore), r, inlet=inlet)[r] == pytest.approx(
                _brute_intrusion(pore, r, face), abs=1e-12), (r, inlet)


def test_intrusion_reaches_across_a_whole_thin_axis():
    # 3 slices, 90 % pore: some voxels are reached only by balls centred on the opposite face
    # (an offset of n - 1 along the thin axis); found by searching seeds, checked by brute force
    pore = ndi.binary_opening(np.random.default_rng(0).random((3, 12, 12)) < 0.9, structure=np.ones((2, 2, 2)))
    for r in (1.5, 2.0):
        for inlet, face in ((None, None), ("z0", (0, 0))):
            assert intrusion_fraction(_label(pore), r, inlet=inlet)[r] == pytest.approx(
                _brute_intrusion(pore, r, face), abs=1e-12), (r, inlet)


def test_an_absent_phase_lists_up_to_ten_labels():
    many = (np.arange(12 * 4 * 4).reshape(12, 4, 4) // 16).astype(np.uint8)  # labels 0..11
    with pytest.raises(ValueError, match=r"phase 20 absent from the volume \(labels present: \[0, 1, 2, 3, 4, 5, 6, 7, "
                                         r"8, 9, '\.\.\.'\]\)"):
        geodesic_tortuosity(many, phase=20)
    with pytest.raises(ValueError, match=r"\(labels present: \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, '\.\.\.'\]\)$"):
        geodesic_tortuosity(many[:11], phase=20)  # 11 labels: one more than shown
    with pytest.raises(ValueError, match=r"\(labels present: \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]\)$"):
        geodesic_tortuosity(many[:10], phase=20)


@pytest.mark.parametrize("voxel, message", [
    ([[1.0, 1.0, 1.0]], r"voxel_size_nm must be a number or \(z, y, x\) sizes, got \[\[1.0, 1.0, 1.0\]\]"),
    ((1.0, 1.0), r"voxel_size_nm must be a number or \(z, y, x\) sizes, got \(1.0, 1.0\)"),
    (0.0, r"voxel_size_nm must be finite and > 0, got \[0.0\]"),
    ((1.0, 1.000005, 1.0), r"anisotropic voxel size \[1.0, 1.000005, 1.0\] nm \(z, y, x\): morphology needs cubic voxels"),
])
def test_voxel_sizes_are_one_cubic_size(voxel, message):
    vol = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=message):
        geodesic_tortuosity(vol, voxel_size_nm=voxel)
    assert geodesic_tortuosity(vol, voxel_size_nm=(2, 2, 2.0000001))["straight_nm"] == pytest.approx(6.0)


def test_intrusion_radii_are_checked_and_float_volumes_read():
    vol = _sheets()
    with pytest.raises(ValueError, match="^radii_nm must be a scalar or a 1-D sequence of radii$"):
        intrusion_fraction(vol, [[1.0]])
    with pytest.raises(ValueError, match="^radii_nm must be a scalar or a 1-D sequence of radii$"):
        intrusion_fraction(vol, [])
    assert intrusion_fraction(vol.astype(np.float32), [1])[1.0] == intrusion_fraction(vol, 1.0)[1.0] == 0.5
