"""Slice repositioning on hand-made thickness lists: accurate (2.5 nm), standard (10 nm), direct,
re-gridding, and every input error."""

import numpy as np
import pytest

from fibml.reconstruct.classical import place, reconstruct
from fibml.reconstruct.repositioning import (
    UNKNOWN,
    Repositioned,
    direct,
    reposition,
    reposition_standard,
    slice_positions,
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
