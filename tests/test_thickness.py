"""Slice thicknesses: gamma draws on the 2.5 nm grid, the gamma fit, the mimicking stack and thickness.csv."""

import numpy as np
import pytest

from fibml.geometry import check_thicknesses, slice_positions
from fibml.io import THICKNESS, read_thickness_csv, write_thickness_csv
from fibml.synth.thickness import (
    fit_gamma,
    mimic_stack,
    sample_thicknesses,
    slices_that_fit,
    thickness_table,
)

# by hand: slices start at 0, 2.5, 7.5, 17.5, 25, 27.5 nm = fine slices 0, 1, 3, 7, 10, 11;
# the milled extent is 40 nm = 16 fine slices
HAND_T = [2.5, 5.0, 10.0, 7.5, 2.5, 12.5]
HAND_Z = [0, 1, 3, 7, 10, 11]


def _volume(depth=20, shape=(3, 4)):
    """Fine slice k filled with the value k."""
    return np.broadcast_to(np.arange(depth, dtype=np.int16)[:, None, None], (depth, *shape)).copy()


# ----------------------------------------------------------------------------- sample / fit / check


def test_sample_thicknesses_lie_on_the_grid_with_the_target_mean():
    t = sample_thicknesses(20000, target_nm=10.0, shape=4.0, bin_nm=2.5, seed=3)
    assert t.shape == (20000,) and t.dtype == np.float64
    np.testing.assert_array_equal(t / 2.5, np.round(t / 2.5))  # multiples of the bin
    assert t.min() == 2.5  # never thinner than one bin, and the smallest bin does occur
    # the discretised gamma(4, 2.5 nm) has mean 10.005 nm; the sample mean's std is 0.035 nm
    assert t.mean() == pytest.approx(10.0, abs=0.12)
    assert t.std() == pytest.approx(10.0 / np.sqrt(4.0), rel=0.05)  # gamma std = target / sqrt(shape)


def test_sample_thicknesses_are_seeded():
    np.testing.assert_array_equal(sample_thicknesses(50, seed=7), sample_thicknesses(50, seed=7))
    assert not np.array_equal(sample_thicknesses(50, seed=7), sample_thicknesses(50, seed=8))
    t = sample_thicknesses(5000, target_nm=20.0, shape=2.0, bin_nm=5.0, seed=0)
    np.testing.assert_array_equal(t % 5.0, 0.0)
    assert t.mean() == pytest.approx(20.0, rel=0.05)


def test_sample_thicknesses_rejects_bad_parameters():
    with pytest.raises(ValueError, match="n_slices"):
        sample_thicknesses(0)
    with pytest.raises(ValueError, match="shape"):
        sample_thicknesses(10, shape=-1.0)


def test_fit_gamma_recovers_shape_and_scale():
    draws = np.random.default_rng(0).gamma(3.0, 2.0, size=50000)
    shape, scale = fit_gamma(draws)
    assert shape == pytest.approx(3.0, rel=0.03)
    assert scale == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="two different"):
        fit_gamma([10.0, 10.0, 10.0])


def test_check_thicknesses_names_the_bad_slice_and_the_length():
    np.testing.assert_array_equal(check_thicknesses([2.5, 10]), [2.5, 10.0])
    with pytest.raises(ValueError, match=r"run\.csv: .*slice 2 has -1\.0 nm"):
        check_thicknesses([10, 10, -1, 10], where="run.csv")
    with pytest.raises(ValueError, match="slice 1 has nan nm"):
        check_thicknesses([10, np.nan])
    with pytest.raises(ValueError, match="slice 0 has 0.0 nm"):
        check_thicknesses([0.0, 10])
    with pytest.raises(ValueError, match="lists 3 thicknesses, the stack has 4 slices"):
        check_thicknesses([10, 10, 10], n_slices=4)
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):
        check_thicknesses([[10, 10], [10, 10]])
    # one slice is a stack; none is not; the message names "thicknesses" unless told otherwise
    np.testing.assert_array_equal(check_thicknesses([7.5]), [7.5])
    with pytest.raises(ValueError, match=r"^thicknesses: expected a list of slice thicknesses in nm, got shape \(0,\)$"):
        check_thicknesses([])
    with pytest.raises(ValueError, match=r"^thicknesses: slice thicknesses must be positive"):
        check_thicknesses([0.0, 10])


# ----------------------------------------------------------------------------- mimicking stack


def test_mimic_stack_takes_the_slice_where_each_milled_slice_starts():
    volume = _volume()
    stack, z_index = mimic_stack(volume, HAND_T, fine_nm=2.5)
    np.testing.assert_array_equal(z_index, HAND_Z)
    assert stack.shape == (6, 3, 4) and stack.dtype == volume.dtype
    np.testing.assert_array_equal(stack[:, 0, 0], HAND_Z)  # slice k of the volume holds the value k
    np.testing.assert_array_equal(stack, volume[HAND_Z])


def test_mimic_stack_rounds_and_resolves_collisions_like_the_repositioning():
    # starts 0, 3, 6, 9 nm / 2.5 = 0, 1.2, 2.4, 3.6 -> 0, 1, 2, 4
    stack, z_index = mimic_stack(_volume(), [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(z_index, [0, 1, 2, 4])
    np.testing.assert_array_equal(stack[:, 0, 0], [0, 1, 2, 4])
    # starts 0, 1, 2 nm all round to 0: the later slices move to the next free fine slices
    _, z_index = mimic_stack(_volume(), [1.0, 1.0, 5.0])
    np.testing.assert_array_equal(z_index, [0, 1, 2])
    t = sample_thicknesses(40, seed=2)
    _, z_index = mimic_stack(_volume(depth=400), t)
    np.testing.assert_array_equal(z_index, slice_positions(t, 2.5)[0])


def test_mimic_stack_errors_when_the_slices_run_past_the_volume():
    assert slices_that_fit(HAND_T, 16) == 6  # the milled extent is exactly 16 fine slices
    assert slices_that_fit(HAND_T, 15) == 5  # the last slice would end at 40 nm > 37.5 nm
    assert slices_that_fit(HAND_T, 11) == 5  # the first five end at 27.5 nm = 11 fine slices
    assert slices_that_fit(HAND_T, 10) == 4  # the first four end at 25 nm = 10 fine slices
    assert slices_that_fit(HAND_T, 0) == 0
    mimic_stack(_volume(depth=16), HAND_T)  # fits exactly
    with pytest.raises(ValueError, match=r"span 40 nm \(16 slices of 2.5 nm\).*15 slices deep.*first 5 slices fit"):
        mimic_stack(_volume(depth=15), HAND_T)
    with pytest.raises(ValueError, match="slice 1 has -2.5 nm"):
        mimic_stack(_volume(), [2.5, -2.5])
    with pytest.raises(ValueError, match=r"\(z, y, x\) volume"):
        mimic_stack(np.zeros((4, 4)), [2.5])


def test_thickness_table_lists_start_depths():
    rows = thickness_table(HAND_T)
    assert [r["slice"] for r in rows] == list(range(6))
    assert [r["thickness_nm"] for r in rows] == HAND_T
    assert [r["z_nm"] for r in rows] == [0.0, 2.5, 7.5, 17.5, 25.0, 27.5]
    # with mimic_stack's grid indices: the depth the geometry was taken from
    _, z_index = mimic_stack(_volume(), [3.0, 3.0, 3.0, 3.0])
    assert [r["z_nm"] for r in thickness_table([3.0] * 4, z_index)] == [0.0, 2.5, 5.0, 10.0]
    with pytest.raises(ValueError, match="z_index has 2 entries"):
        thickness_table(HAND_T, z_index=[0, 1])


# ----------------------------------------------------------------------------- thickness.csv


def test_thickness_csv_round_trip(tmp_path):
    path = tmp_path / THICKNESS
    t = np.array([10.0 / 3.0, 7.5, 12.5, 2.5])  # 10/3 has no short decimal form: must round-trip exactly
    z_nm = [0.0, 10.0 / 3.0, 10.0 / 3.0 + 7.5, 10.0 / 3.0 + 20.0]
    write_thickness_csv(path, t, {"z_nm": z_nm, "source": ["ruler"] * 4})
    lines = path.read_text().splitlines()
    assert lines[0] == "slice,thickness_nm,z_nm,source"
    assert lines[2] == "1,7.5,3.3333333333333335,ruler"
    out = read_thickness_csv(path, n_slices=4)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, t)
    assert sorted(p.name for p in tmp_path.iterdir()) == [THICKNESS]  # no temporary file left behind


def test_thickness_csv_without_slice_column_and_with_blank_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("thickness_nm\n10\n\n12.5\n")
    np.testing.assert_array_equal(read_thickness_csv(path), [10.0, 12.5])


def test_read_thickness_csv_errors_name_the_file(tmp_path):
    path = tmp_path / THICKNESS
    with pytest.raises(FileNotFoundError, match="thickness.csv"):
        read_thickness_csv(path)

    path.write_text("slice,depth\n0,10\n")
    with pytest.raises(ValueError, match=r"thickness.csv: no 'thickness_nm' column \(found: slice, depth\)"):
        read_thickness_csv(path)

    path.write_text("")
    with pytest.raises(ValueError, match="thickness.csv: no 'thickness_nm' column"):
        read_thickness_csv(path)

    path.write_text("slice,thickness_nm\n")
    with pytest.raises(ValueError, match="thickness.csv: lists no slices"):
        read_thickness_csv(path)

    path.write_text("slice,thickness_nm\n0,10\n1,7.5\n2,abc\n3,10\n")
    with pytest.raises(ValueError, match=r"thickness.csv, row 2 \(line 4\): thickness_nm 'abc' is not a number"):
        read_thickness_csv(path)

    path.write_text("slice,thickness_nm\n0,10\n1,0\n2,10\n")
    with pytest.raises(ValueError, match=r"thickness.csv: slice thicknesses must be positive, slice 1 has 0.0 nm"):
        read_thickness_csv(path)

    path.write_text("slice,thickness_nm\n0,10\n1,10\n2,inf\n")
    with pytest.raises(ValueError, match="thickness.csv: .*slice 2 has inf nm"):
        read_thickness_csv(path)

    path.write_text("slice,thickness_nm\n0,10\n2,10\n")
    with pytest.raises(ValueError, match=r"thickness.csv, row 1 \(line 3\): slice '2', expected 1"):
        read_thickness_csv(path)

    write_thickness_csv(path, np.full(199, 10.0))
    with pytest.raises(ValueError, match="thickness.csv lists 199 thicknesses, the stack has 200 slices"):
        read_thickness_csv(path, n_slices=200)


def test_write_thickness_csv_errors(tmp_path):
    path = tmp_path / THICKNESS
    with pytest.raises(ValueError, match="thickness.csv: .*slice 1 has -1.0 nm"):
        write_thickness_csv(path, [10.0, -1.0])
    with pytest.raises(ValueError, match="extra column 'z_nm' has 1 values, there are 2 slices"):
        write_thickness_csv(path, [10.0, 10.0], {"z_nm": [0.0]})
    with pytest.raises(ValueError, match="'thickness_nm' would replace a standard column"):
        write_thickness_csv(path, [10.0, 10.0], {"thickness_nm": [1.0, 2.0]})
    assert not path.exists()


def test_mimicking_thicknesses_through_the_csv(tmp_path):
    """The mimicking stack's thicknesses and grid depths survive thickness.csv."""
    t = sample_thicknesses(30, seed=5)
    stack, z_index = mimic_stack(_volume(depth=200), t)
    rows = thickness_table(t, z_index)
    write_thickness_csv(tmp_path / THICKNESS, t, {"z_nm": [r["z_nm"] for r in rows]})
    back = read_thickness_csv(tmp_path / THICKNESS, n_slices=stack.shape[0])
    np.testing.assert_array_equal(back, t)
    np.testing.assert_array_equal(slice_positions(back, 2.5)[0], stack[:, 0, 0])


def test_synth_writes_the_mimicking_dataset(tmp_path):
    """generate_dataset(thickness=...): gamma-thick slices, each the face at its true depth,
    stored 10 nm apart, with thickness.csv and the isotropic ground truth beside them."""
    from fibml.io import read_dataset, read_stack, read_thickness_csv
    from fibml.synth.dataset import generate_dataset
    from tests.conftest import TINY_STRUCTURE

    folder = generate_dataset(tmp_path / "mimic", shape=(40, 48, 48), voxel_size_nm=2.5, voltages=[2],
                              structure=TINY_STRUCTURE, imaging={}, seed=3, progress=False,
                              thickness={"target_nm": 10.0, "shape": 4.0})
    dataset = read_dataset(folder)
    t = read_thickness_csv(folder / "thickness.csv", n_slices=dataset.labels.shape[0])
    assert dataset.voxel_size_nm == (10.0, 2.5, 2.5) and np.all(t % 2.5 == 0)
    truth, voxel = read_stack(folder / "labels_isotropic.tif")
    positions, n_grid = slice_positions(t, 2.5)
    assert voxel == (2.5, 2.5, 2.5) and truth.shape[0] == n_grid <= 40
    np.testing.assert_array_equal(dataset.labels, truth[positions])  # slice i is the face at its true depth
    assert 2 < dataset.labels.shape[0] < 40 and dataset.manifest["periodic"] is False
    # the images are those of the same faces: the same seed without thickness renders them all
    plain = read_dataset(generate_dataset(tmp_path / "plain", shape=(40, 48, 48), voxel_size_nm=2.5, voltages=[2],
                                          structure=TINY_STRUCTURE, imaging={}, seed=3, progress=False))
    np.testing.assert_array_equal(dataset.images[2.0], plain.images[2.0][positions])
