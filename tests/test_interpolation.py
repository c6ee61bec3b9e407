"""Nearest-neighbour and cubic-spline interpolation between repositioned slices (hand-made
columns with known answers, the spline's hole repair), and the four classical cases of Table 1
end to end on a leveled-wave structure."""

import numpy as np
import pytest

from fibml.baselines import interpolation
from fibml.baselines.interpolation import (
    fill_spline_holes,
    interpolate_nearest,
    interpolate_spline,
)
from fibml.geometry import Repositioned, slice_positions
from fibml.metrics.confusion import segmentation_scores
from fibml.reconstruct.classical import reconstruct
from fibml.reconstruct.repositioning import reposition
from fibml.synth.microstructure import leveled_wave
from fibml.synth.thickness import sample_thicknesses


def _columns(values, positions, n_grid, size=(1, 1)):
    """Repositioned stack whose every pixel follows one column of values (one per slice)."""
    slices = np.broadcast_to(np.asarray(values, np.uint8)[:, None, None], (len(values), *size)).copy()
    return Repositioned(slices, np.asarray(positions), n_grid, 2.5, "accurate")


# --- nearest neighbour ---------------------------------------------------------------------------


def test_nearest_puts_a_boundary_at_the_midpoint():
    # solid from the second slice on: slices 10, 10, 2.5 nm thick sit at rows 0, 4, 8
    rep = reposition(np.array([0, 1, 1], np.uint8)[:, None, None], [10.0, 10.0, 2.5])
    out = interpolate_nearest(rep)
    assert out.dtype == np.uint8 and out.shape == (9, 1, 1)
    # row 2 is 2 rows from both slices: the tie goes to the earlier (pore) slice
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_nearest_multi_phase_ties_and_rows_outside():
    rep = _columns([3, 2, 5], [1, 4, 8], 11)
    out = interpolate_nearest(rep)[:, 0, 0]
    # row 0 precedes the first slice; row 6 ties between rows 4 and 8 -> the earlier (2)
    np.testing.assert_array_equal(out, [3, 3, 3, 2, 2, 2, 2, 5, 5, 5, 5])
    np.testing.assert_array_equal(out[rep.positions], rep.slices[:, 0, 0])  # known rows unchanged
    held = interpolate_nearest(rep, rule="previous")[:, 0, 0]
    np.testing.assert_array_equal(held, [3, 3, 3, 3, 2, 2, 2, 2, 5, 5, 5])
    with pytest.raises(ValueError, match="rule must be 'nearest' or 'previous'"):
        interpolate_nearest(rep, rule="linear")


# --- cubic spline ----------------------------------------------------------------------------------


def test_spline_follows_the_cubic_not_the_midpoint():
    # not-a-knot through 3 points is the parabola f(z) = 3z/8 - z^2/32 through (0,0), (4,1), (8,1):
    # f(1) = 0.34, f(2) = 0.625, so the boundary is between rows 1 and 2; nearest puts row 2 in pore
    rep = _columns([0, 1, 1], [0, 4, 8], 9)
    np.testing.assert_array_equal(interpolate_spline(rep)[:, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert interpolate_nearest(rep)[2, 0, 0] == 0
    # two slices: a straight line, rows outside the slices copy the nearest slice
    line = _columns([1, 0], [2, 7], 9)  # 0.8, 0.6, 0.4, 0.2 at rows 3-6
    np.testing.assert_array_equal(interpolate_spline(line)[:, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0])
    # one slice fills the whole grid
    np.testing.assert_array_equal(interpolate_spline(_columns([1], [2], 4))[:, 0, 0], [1, 1, 1, 1])


def test_spline_keeps_known_rows_and_blocks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(40, size=12, replace=False))
    slices = (rng.random((12, 9, 7)) < 0.4).astype(np.uint8)
    rep = Repositioned(slices, positions, 43, 2.5, "accurate")
    whole = interpolate_spline(rep, fix_holes=False)
    np.testing.assert_array_equal(whole[positions], slices)
    np.testing.assert_array_equal(interpolate_spline(rep)[positions], slices)
    monkeypatch.setattr(interpolation, "SPLINE_BLOCK_VOXELS", 1)  # one y row per block
    np.testing.assert_array_equal(interpolate_spline(rep, fix_holes=False), whole)


def test_spline_refuses_labels_other_than_pore_and_solid():
    rep = _columns([0, 2, 1], [0, 3, 6], 7)
    with pytest.raises(ValueError, match=r"needs binary slices \(0 = pore, 1 = solid\), found labels \[0, 1, 2\]"):
        interpolate_spline(rep)
    with pytest.raises(ValueError, match="found labels"):
        reconstruct(rep.slices, [7.5, 7.5, 2.5], method="RCS")
    assert interpolate_nearest(rep).max() == 2  # nearest takes any phases


# --- hole repair -----------------------------------------------------------------------------------

# thin slices at rows 0-3 and 11-14, a 20 nm gap between rows 3 and 11 (slices 3 and 4)
GAP_POSITIONS = [0, 1, 2, 3, 11, 12, 13, 14]


def _ligament(centre, channel=None, size=(5, 7)):
    """Solid everywhere in every slice, except the centre pixel (2, 3) following ``centre`` and,
    if given, a channel from it to the right border (2, 4..6) following ``channel``."""
    slices = np.ones((len(GAP_POSITIONS), *size), np.uint8)
    slices[:, 2, 3] = centre
    if channel is not None:
        slices[:, 2, 4:] = np.asarray(channel)[:, None]
    return Repositioned(slices, np.asarray(GAP_POSITIONS), 15, 2.5, "accurate")


def test_fix_holes_closes_a_dip_in_a_ligament_solid_in_both_slices():
    # the centre is solid in slices 2-5, both ends of the gap; the spline dips to 0.46-0.49 at rows 6-8
    rep = _ligament([0, 0, 1, 1, 1, 1, 0, 0])
    raw = interpolate_spline(rep, fix_holes=False)
    np.testing.assert_array_equal(raw[:, 2, 3], [0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    assert raw[6].sum() == raw[6].size - 1  # a one-pixel hole in a solid section
    fixed = interpolate_spline(rep)
    np.testing.assert_array_equal(fixed[3:12, 2, 3], np.ones(9))
    np.testing.assert_array_equal(fixed[rep.positions], rep.slices)
    # a whole row of such columns is a groove open to the border, not a cavity: rule (a) alone closes it
    groove = rep.slices.copy()
    groove[:, 2, :] = np.array([0, 0, 1, 1, 1, 1, 0, 0])[:, None]
    groove = Repositioned(groove, rep.positions, 15, 2.5, "accurate")
    assert not interpolate_spline(groove, fix_holes=False)[6:9, 2].any()
    assert interpolate_spline(groove)[3:12].all()


def test_fix_holes_removes_an_island_in_a_pore_of_both_slices():
    # the mirror image: a pore column whose spline bumps to 0.51-0.58 between two pore slices
    slices = np.zeros((8, 5, 5), np.uint8)
    slices[:, 2, 2] = [1, 1, 0, 0, 0, 0, 1, 1]
    rep = Repositioned(slices, np.asarray(GAP_POSITIONS), 15, 2.5, "accurate")
    assert interpolate_spline(rep, fix_holes=False)[6:9, 2, 2].all()
    assert not interpolate_spline(rep)[4:11].any()


def test_fix_holes_fills_a_cavity_that_no_slice_has():
    # the centre and a channel to the border are solid in slice 3 and pore in slice 4 (row 11); the
    # centre's spline falls below 0.5 at row 6, the channel's only at row 8: at rows 6-7 the centre
    # is a pore pixel enclosed by solid, though in slice 4 it is open to the border
    rep = _ligament(centre=[0, 0, 1, 1, 0, 0, 0, 0], channel=[0, 1, 1, 1, 0, 0, 0, 0])
    raw = interpolate_spline(rep, fix_holes=False)
    assert raw[6, 2, 3] == 0 and raw[6, 2, 4:].all()
    assert raw[7, 2, 3] == 0 and raw[7, 2, 4:].all()
    fixed = interpolate_spline(rep)
    assert fixed[6, 2, 3] == 1 and fixed[7, 2, 3] == 1
    np.testing.assert_array_equal(fixed[8:12, 2, 3:], raw[8:12, 2, 3:])  # open pore untouched


def test_fix_holes_keeps_a_cavity_that_a_slice_has():
    # a pore enclosed by the ligament in slices 0-3 that closes by slice 4: a real cavity, kept
    rep = _ligament(centre=[0, 0, 0, 0, 1, 1, 1, 1])
    raw = interpolate_spline(rep, fix_holes=False)
    assert raw[4, 2, 3] == 0
    np.testing.assert_array_equal(interpolate_spline(rep), raw)
    # fill_spline_holes works in place on any binary volume over the same slices
    volume = raw.copy()
    assert fill_spline_holes(volume, rep) is volume


# --- the classical cases of Table 1, end to end ---------------------------------------------------

SEEDS = (0, 1, 2)


def _mimicking(seed, shape=(96, 48, 48)):
    """Ground truth (2.5 nm voxels) and the stack FIB milling with gamma thicknesses would give:
    every slice is the ground-truth row at its start depth (slices beyond the volume left out)."""
    truth = leveled_wave(shape, wavelength_nm=60, solid_fraction=0.3, voxel_size_nm=2.5, seed=seed).astype(np.uint8)
    thicknesses = sample_thicknesses(40, target_nm=10.0, seed=seed)
    starts = slice_positions(thicknesses, 2.5)[0]
    inside = starts < shape[0]
    return truth, truth[starts[inside]], thicknesses[inside]


def _scores(volume, truth):
    n = min(len(volume), len(truth))  # the rows both cover
    return segmentation_scores(volume[:n], truth[:n])


def test_classical_cases_rank_as_in_the_paper():
    mp = {case: [] for case in ("RNN", "RCS", "SRCS", "DNN", "RNN midpoint")}
    for seed in SEEDS:
        truth, slices, thicknesses = _mimicking(seed)
        for case in ("RNN", "RCS", "SRCS", "DNN"):
            volume = reconstruct(slices, thicknesses, method=case)
            assert volume.dtype == np.uint8 and volume.shape[1:] == truth.shape[1:]
            mp[case].append(_scores(volume, truth)["mp"])
        midpoint = interpolate_nearest(reposition(slices, thicknesses), rule="nearest")
        mp["RNN midpoint"].append(_scores(midpoint, truth)["mp"])
        # accurate repositioning of this stack puts every slice back on its own ground-truth row
        rep = reposition(slices, thicknesses)
        np.testing.assert_array_equal(truth[rep.positions], slices)
    mean = {case: float(np.mean(v)) for case, v in mp.items()}
    # seeds 0-7: RNN (slab) 8.59, RCS 5.42, SRCS 7.17, DNN 21.9, RNN midpoint 5.35 (mean MP %)
    assert mean["RCS"] < mean["RNN"] - 1.5  # the paper: 3.12 vs 4.89
    assert mean["RCS"] < mean["SRCS"] - 0.5 and mean["SRCS"] < mean["DNN"] - 5.0
    # a column-wise spline through binary data crosses 0.5 close to the midpoint, as midpoint nearest does
    assert abs(mean["RCS"] - mean["RNN midpoint"]) < 0.5
    for case in ("RNN", "RCS", "SRCS"):
        for seed_mp, seed_dnn in zip(mp[case], mp["DNN"]):
            assert seed_mp < seed_dnn
