"""Slice repositioning on hand-made thickness lists: accurate (2.5 nm), standard (10 nm), direct,
re-gridding, and every input error."""

import numpy as np
import pytest

from fibml.geometry import UNKNOWN, Repositioned, check_binary, slice_positions
from fibml.reconstruct.classical import place, reconstruct
from fibml.reconstruct.repositioning import (
    direct,
    reposition,
    reposition_standard,
    to_grid,
)


def _numbered(n, size=3):
    """n slices of size x size pixels, slice i filled with label i: where each lands is visible."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, size, size)).copy()


def test_exact_multiples_land_on_their_depth():
    # starts 0, 5, 15, 17.5 nm -> rows 0, 2, 6, 7; the grid covers the 25 nm milled
    positions, n_grid = slice_positions([5.0, 10.0, 2.5, 7.5], 2.5)
    np.testing.assert_array_equal(positions, [0, 2, 6, 7])
    assert positions.dtype == np.int64
    assert n_grid == 10


def test_rounding_to_the_nearest_row_halves_up():
    # starts 0, 3, 6 nm = 0, 1.2, 2.4 rows -> 0, 1, 2; 9 nm = 3.6 rows -> n_grid 4
    positions, n_grid = slice_positions([3.0, 3.0, 3.0], 2.5)
    np.testing.assert_array_equal(positions, [0, 1, 2])
    assert n_grid == 4
    # starts 0, 3.75, 7.5 nm = 0, 1.5, 3 rows: the half goes up; 11.25 nm = 4.5 rows -> 5
    positions, n_grid = slice_positions([3.75, 3.75, 3.75], 2.5)
    np.testing.assert_array_equal(positions, [0, 2, 3])
    assert n_grid == 5


def test_collisions_move_later_slices_to_the_next_free_row_and_lose_none():
    # starts 0, 1, 2, 3 nm all round to rows 0 or 1: each later slice takes the next free row
    thicknesses = [1.0, 1.0, 1.0, 5.0]
    positions, n_grid = slice_positions(thicknesses, 2.5)
    np.testing.assert_array_equal(positions, [0, 1, 2, 3])
    assert n_grid == 4  # round(8 / 2.5) = 3 rows would not hold the shifted last slice

    rep = reposition(_numbered(4), thicknesses)
    volume = rep.volume()
    assert volume.shape == (4, 3, 3) and volume.dtype == np.uint8
    for i in range(4):  # every slice exactly once, in order
        rows = np.flatnonzero((volume == i).all(axis=(1, 2)))
        np.testing.assert_array_equal(rows, [i])


def test_reposition_places_slices_and_leaves_unknown_rows():
    rep = reposition(_numbered(4), [5.0, 10.0, 2.5, 7.5], grid_nm=2.5)
    assert isinstance(rep, Repositioned)
    assert (rep.n_grid, rep.grid_nm, rep.method) == (10, 2.5, "accurate")
    np.testing.assert_array_equal(rep.known(), [1, 0, 1, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rep.source, [0, 1, 2, 3])
    volume = rep.volume()
    np.testing.assert_array_equal(volume[:, 0, 0], [0, UNKNOWN, 1, UNKNOWN, UNKNOWN, UNKNOWN, 2, 3, UNKNOWN, UNKNOWN])
    assert (rep.volume(fill=7)[1] == 7).all()
    # bool slices (a thresholded stack) are taken as 0 / 1 labels
    assert reposition(np.ones((2, 2, 2), bool), [2.5, 2.5]).slices.dtype == np.uint8


def test_standard_repositioning_on_the_target_grid():
    # depths 0, 7.5, 15, 30 nm = 0, 0.75, 1.5, 3 rows of 10 nm -> 0, 1, 2, 3
    rep = reposition_standard(_numbered(4), [7.5, 7.5, 15.0, 12.5], target_nm=10.0)
    np.testing.assert_array_equal(rep.positions, [0, 1, 2, 3])
    assert (rep.n_grid, rep.grid_nm, rep.method) == (4, 10.0, "standard")


def test_standard_repositioning_keeps_the_nearest_of_colliding_slices():
    # depths 0, 2.5, 7.5, 20 nm -> rows 0, 0, 1, 2: row 0 keeps slice 0 (0 nm away), slice 1 is dropped
    rep = reposition_standard(_numbered(4), [2.5, 5.0, 12.5, 10.0])
    np.testing.assert_array_equal(rep.positions, [0, 1, 2])
    np.testing.assert_array_equal(rep.source, [0, 2, 3])
    np.testing.assert_array_equal(rep.slices[:, 0, 0], [0, 2, 3])
    assert rep.n_grid == 3
    # depths 7.5 and 12.5 nm are both 2.5 nm from row 1: the tie keeps the earlier slice
    tie = reposition_standard(_numbered(3), [7.5, 5.0, 10.0])
    np.testing.assert_array_equal(tie.source, [0, 1])
    np.testing.assert_array_equal(tie.positions, [0, 1])
    # "shift" keeps all four, the later ones pushed forward as in accurate repositioning
    shifted = reposition_standard(_numbered(4), [2.5, 5.0, 12.5, 10.0], collisions="shift")
    np.testing.assert_array_equal(shifted.positions, [0, 1, 2, 3])
    assert shifted.n_grid == 4
    with pytest.raises(ValueError, match="collisions must be"):
        reposition_standard(_numbered(4), [10.0] * 4, collisions="drop")


def test_direct_ignores_thickness():
    rep = direct(_numbered(5), target_nm=10.0)
    np.testing.assert_array_equal(rep.positions, np.arange(5))
    assert (rep.n_grid, rep.grid_nm, rep.method) == (5, 10.0, "direct")
    assert rep.known().all()


def test_to_grid_moves_a_coarse_placement_onto_the_fine_grid():
    coarse = reposition_standard(_numbered(4), [2.5, 5.0, 12.5, 10.0])
    fine = to_grid(coarse, 2.5)
    np.testing.assert_array_equal(fine.positions, [0, 4, 8])
    assert (fine.n_grid, fine.grid_nm, fine.method) == (12, 2.5, "standard")
    np.testing.assert_array_equal(fine.source, [0, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(fine.known()), [0, 4, 8])
    np.testing.assert_array_equal(fine.volume()[[0, 4, 8]], coarse.slices)
    assert to_grid(coarse, 10.0).n_grid == 3  # same grid: unchanged
    with pytest.raises(ValueError, match="ratio 3.33333 is not a whole number"):
        to_grid(coarse, 3.0)
    with pytest.raises(ValueError, match="ratio 0.5 is not a whole number"):
        to_grid(coarse, 20.0)


def test_place_builds_every_case_on_the_output_grid():
    slices, t = _numbered(4), [2.5, 5.0, 12.5, 10.0]
    np.testing.assert_array_equal(place(slices, t, "accurate").positions, [0, 1, 3, 8])
    np.testing.assert_array_equal(place(slices, t, "standard").positions, [0, 4, 8])
    np.testing.assert_array_equal(place(slices, None, "direct").positions, [0, 4, 8, 12])
    with pytest.raises(ValueError, match="needs the measured slice thicknesses"):
        place(slices, None, "accurate")
    with pytest.raises(ValueError, match="placement must be"):
        place(slices, t, "exact")
    with pytest.raises(ValueError, match=r"method must be one of \['DNN', 'RCS', 'RNN', 'SRCS'\]"):
        reconstruct(slices, t, method="RML?")


def test_errors_name_what_was_expected_and_found():
    with pytest.raises(ValueError, match="3 thicknesses for a stack of 4 slices"):
        reposition(_numbered(4), [10.0, 10.0, 10.0])
    with pytest.raises(ValueError, match="3 thicknesses for a stack of 4 slices"):
        reposition_standard(_numbered(4), [10.0, 10.0, 10.0])
    with pytest.raises(ValueError, match="slice 1 has -2.5 nm"):
        reposition(_numbered(3), [10.0, -2.5, 10.0])
    with pytest.raises(ValueError, match="slice 2 has 0.0 nm"):
        reposition_standard(_numbered(3), [10.0, 2.5, 0.0])
    with pytest.raises(ValueError, match=r"got 2 dimensions \(shape \(4, 4\)\)"):
        reposition(np.zeros((4, 4), np.uint8), [10.0] * 4)
    with pytest.raises(ValueError, match="integer phase labels, got dtype float64"):
        direct(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"in \[0, 254\] \(255 marks unknown rows\), got 0..255"):
        direct(np.array([[[0, 255]]], np.uint8))
    with pytest.raises(ValueError, match="labels up to 200: expected a segmented stack .* not grey values"):
        direct(np.array([[[0, 200]]], np.uint8))  # a BSE image where the segmentation belongs
    with pytest.raises(ValueError, match="slices are empty"):
        direct(np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="grid_nm must be a positive number"):
        reposition(_numbered(2), [2.5, 2.5], grid_nm=0.0)


def test_repositioned_checks_its_positions():
    slices = _numbered(3)
    with pytest.raises(ValueError, match="slice 2 is at row 1, slice 1 at row 1"):
        Repositioned(slices, np.array([0, 1, 1]), 4, 2.5, "accurate")
    with pytest.raises(ValueError, match=r"in \[0, 3\) \(n_grid\), got 0..3"):
        Repositioned(slices, np.array([0, 1, 3]), 3, 2.5, "accurate")
    with pytest.raises(ValueError, match="2 positions for a stack of 3 slices"):
        Repositioned(slices, np.array([0, 1]), 3, 2.5, "accurate")


def test_repositioned_normalises_what_it_is_given():
    # lists, int32 rows, an integer grid: stored as uint8 slices, int64 rows, float grid, int n_grid
    rep = Repositioned(_numbered(3).astype(np.int64).tolist(), np.array([0, 2, 5], np.int32), np.int32(6), 2, "accurate",
                       source=np.array([0, 1, 3], np.int16))
    assert rep.slices.dtype == np.uint8 and rep.slices.shape == (3, 3, 3)
    assert rep.positions.dtype == np.int64 and rep.source.dtype == np.int64
    assert type(rep.n_grid) is int and type(rep.grid_nm) is float and rep.grid_nm == 2.0
    assert rep.known().dtype == bool and rep.known().tolist() == [True, False, True, False, False, True]
    np.testing.assert_array_equal(rep.source, [0, 1, 3])
    # the default grids: 2.5 nm accurate, 10 nm standard and direct
    assert reposition(_numbered(2), [2.5, 2.5]).grid_nm == 2.5
    assert direct(_numbered(2)).grid_nm == 10.0 and reposition_standard(_numbered(2), [10.0, 10.0]).grid_nm == 10.0
    assert direct(_numbered(3)).positions.dtype == np.int64
    # thicknesses as integers are fine
    np.testing.assert_array_equal(reposition_standard(_numbered(3), [10, 10, 10]).positions, [0, 1, 2])


def test_repositioned_refuses_bad_rows_grid_and_source():
    slices = _numbered(3)
    with pytest.raises(ValueError, match=r"positions must be a 1-D integer array of grid rows, got float64 \(3,\)"):
        Repositioned(slices, np.array([0.0, 1.0, 2.0]), 4, 2.5, "accurate")
    with pytest.raises(ValueError, match=r"positions must be a 1-D integer array of grid rows, got int64 \(3, 1\)"):
        Repositioned(slices, np.array([[0], [1], [2]]), 4, 2.5, "accurate")
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 4\) \(n_grid\), got -1..2"):
        Repositioned(slices, np.array([-1, 1, 2]), 4, 2.5, "accurate")
    for grid in (0.0, -2.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"grid_nm must be a positive number, got {grid}"):
            Repositioned(slices, np.array([0, 1, 2]), 4, grid, "accurate")
    assert Repositioned(slices, np.array([0, 1, 2]), 4, 0.5, "accurate").grid_nm == 0.5  # below 1 nm is fine
    with pytest.raises(ValueError, match=r"source must hold the integer input index of every slice, shape \(3,\), "
                                         r"got int64 \(2,\)"):
        Repositioned(slices, np.array([0, 1, 2]), 4, 2.5, "accurate", source=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"got float64 \(3,\)"):
        Repositioned(slices, np.array([0, 1, 2]), 4, 2.5, "accurate", source=np.array([0.0, 1.0, 2.0]))


def test_standard_and_fine_grids_refuse_bad_spacings():
    for bad in (0.0, -10.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"target_nm must be a positive number, got {bad}"):
            reposition_standard(_numbered(2), [10.0, 10.0], target_nm=bad)
        with pytest.raises(ValueError, match=f"grid_nm must be a positive number, got {bad}"):
            to_grid(direct(_numbered(2)), bad)
    # spacings below 1 nm work: 0.5 nm slices on a 0.5 nm grid, moved onto a 0.25 nm one
    rep = reposition_standard(_numbered(3), [0.5, 0.5, 0.5], target_nm=0.5)
    np.testing.assert_array_equal(rep.positions, [0, 1, 2])
    np.testing.assert_array_equal(to_grid(rep, 0.25).positions, [0, 2, 4])
    # a ratio off a whole number by float rounding is accepted: up to 1e-9 of the ratio (at least
    # 1e-9), so 100 (1 + 1e-10) passes, 1 + 1.5e-9 and 3 (1 + 1e-7) do not
    assert to_grid(direct(_numbered(2)), 10.0 / 3.0).n_grid == 6
    assert to_grid(direct(_numbered(2)), 10.0 / (100 * (1 + 1e-10))).n_grid == 200
    for off in (10.0 / (1 + 1.5e-9), 10.0 / 3.0 * (1 + 1e-7)):
        with pytest.raises(ValueError, match="is not a whole number"):
            to_grid(direct(_numbered(2)), off)


def test_standard_repositioning_rounds_each_depth_to_its_nearest_row():
    # depths 0, 4, 9, 26, 31 nm on 10 nm rows: 0, 0.4, 0.9, 2.6, 3.1 -> rows 0, 0, 1, 3, 3;
    # row 0 keeps slice 0 (0 from it), row 3 keeps slice 4 (0.1 from it, slice 3 is 0.4 away)
    rep = reposition_standard(_numbered(5), [4.0, 5.0, 17.0, 5.0, 4.0])
    np.testing.assert_array_equal(rep.source, [0, 2, 4])
    np.testing.assert_array_equal(rep.positions, [0, 1, 3])
    assert rep.n_grid == 4  # 35 nm milled = 3.5 rows, rounded up; at least one past row 3
    # the grid covers what was milled even where the last slice's row is early
    assert reposition_standard(_numbered(2), [10.0, 34.0]).n_grid == 4  # 44 nm -> 4.4 rows -> 4
    assert reposition_standard(_numbered(3), [10.0, 10.0, 4.0]).n_grid == 3  # rows 0, 1, 2: at least 3
    assert reposition_standard(_numbered(2), [10.0, 25.0]).n_grid == 4  # 3.5 rows: halves round up
    # a small target grid: the first slice is at depth 0, row 0
    np.testing.assert_array_equal(reposition_standard(_numbered(2), [2.0, 2.0], target_nm=2.0).positions, [0, 1])


def test_a_segmented_stack_is_not_copied():
    labels = _numbered(4)  # uint8 already: placed as it is (a real stack is large)
    assert np.shares_memory(direct(labels).slices, labels)
    rows = np.arange(4, dtype=np.int64)
    rep = Repositioned(labels, rows, 4, 2.5, "accurate", source=rows)
    assert np.shares_memory(rep.positions, rows) and np.shares_memory(rep.source, rows)


def test_grey_values_and_phases_are_told_apart():
    direct(np.full((1, 2, 2), 15, np.uint8))  # 16 phases: labels 0..15 are allowed
    with pytest.raises(ValueError, match="labels up to 16: expected a segmented stack"):
        direct(np.full((1, 2, 2), 16, np.uint8))


def test_check_binary_names_the_labels_found():
    check_binary(direct(np.ones((2, 3, 3), np.uint8)))  # 0 / 1: fine
    three = np.zeros((2, 3, 3), np.uint8)
    three[1, 0, 0] = 2
    with pytest.raises(ValueError, match=r"^this interpolation needs binary slices \(0 = pore, 1 = solid\), "
                                         r"found labels \[0, 2\]$"):
        check_binary(direct(three))
    with pytest.raises(ValueError, match=r"^cubic-spline interpolation needs binary"):
        check_binary(direct(three), "cubic-spline interpolation")


def test_grids_are_passed_on_and_small_grids_work():
    t = [5.0, 10.0, 2.5, 7.5]
    np.testing.assert_array_equal(reposition(_numbered(4), t, grid_nm=5.0).positions, [0, 1, 3, 4])  # 0, 5, 15, 17.5 nm
    assert slice_positions(t)[0].tolist() == slice_positions(t, 2.5)[0].tolist() == [0, 2, 6, 7]  # default 2.5 nm
    positions, n_grid = slice_positions([1.0, 1.0, 0.5], 0.5)  # below 1 nm: rows 0, 2, 4
    assert positions.tolist() == [0, 2, 4] and n_grid == 5
    shifted = reposition_standard(_numbered(4), [2.5, 5.0, 12.5, 10.0], collisions="shift")
    assert shifted.method == "standard"
