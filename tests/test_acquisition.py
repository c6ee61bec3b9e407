"""Acquisitions as microscopes write them (fibml.io.open_acquisition): vendor slice series
built with fibml/synth/vendor_files.py (FEI / Thermo Fisher INI in tag 34682, Zeiss CZ_SEM in tag
34118), in natural order, with data bars, tilt, gaps, two detectors, bad files."""

from __future__ import annotations

import math
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile

from fibml.io import SliceSeries, natural_key, open_acquisition, slice_number
from fibml.synth.vendor_files import write_fei_tiff, write_imagej_tiff, write_zeiss_tiff

H, W = 40, 48


def _slice(n: int, dtype=np.uint8) -> np.ndarray:
    """A noisy slice whose mean encodes its number (to check the order) - never a flat band."""
    rng = np.random.default_rng(n)
    top = 255 if dtype == np.uint8 else 60000
    image = rng.integers(10, 30, size=(H, W)) + 5 * n
    return np.clip(image * (top // 255), 0, top).astype(dtype)


def _fei_series(folder, numbers, detector="TLD", mode="SE", databar=12, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        write_fei_tiff(folder / f"SliceImage - {n}.tif", _slice(n), databar_rows=databar, detector=detector,
                       mode=mode, **kwargs)
    return folder


def test_natural_order_and_slice_numbers():
    names = ["SliceImage - 10.tif", "SliceImage - 2.tif", "SliceImage - 1.tif"]
    assert sorted(names, key=natural_key) == ["SliceImage - 1.tif", "SliceImage - 2.tif", "SliceImage - 10.tif"]
    assert slice_number("run3_slice_0012.tif") == 12 and slice_number("image.tif") is None


def test_fei_series_in_slice_order_with_its_data_bar_cut_off(tmp_path):
    folder = _fei_series(tmp_path / "asv", [3, 1, 10, 2, 4, 5, 6, 7, 8, 9], pixel_nm=4.5, hv_kv=2.0)
    acquisition = open_acquisition(folder)
    (channel, series), = acquisition.channels.items()
    assert channel == "tld_2kV" and isinstance(series, SliceSeries)
    assert series.shape == (10, H, W)  # the 12 rows of the bar are gone: [Image] ResolutionY = 40
    assert [f.name for f in series.files][:3] == ["SliceImage - 1.tif", "SliceImage - 2.tif", "SliceImage - 3.tif"]
    for z in (0, 9):
        np.testing.assert_array_equal(series[z], _slice(z + 1))
    assert acquisition.voxel_size_nm == (None, pytest.approx(4.5), pytest.approx(4.5))  # tilt corrected
    assert "12" in acquisition.provenance["crop"] and "corrected by the microscope" in acquisition.provenance["tilt"]
    assert acquisition.metadata[channel].voltage_kv == 2.0


def test_two_detectors_in_one_folder_become_two_channels(tmp_path):
    folder = tmp_path / "asv"
    _fei_series(folder, range(1, 5), detector="TLD", mode="SE", hv_kv=2.0)
    for n in range(1, 5):
        write_fei_tiff(folder / f"CBS SliceImage - {n}.tif", _slice(n + 20), databar_rows=12, detector="CBS",
                       mode="BSE", hv_kv=2.0)
    acquisition = open_acquisition(folder, slice_thickness_nm=5)
    assert set(acquisition.channels) == {2.0, "tld_2kV"}
    np.testing.assert_array_equal(acquisition.channels[2.0][0], _slice(21))
    assert acquisition.voxel_size_nm[0] == 5.0
    # named by file patterns instead: the config's channels win
    named = open_acquisition(folder, channels={"bse_2kV": "CBS*", "se_2kV": "SliceImage*"})
    assert set(named.channels) == {2.0, "se_2kV"}


def test_zeiss_face_imaged_at_an_angle_without_tilt_correction(tmp_path):
    folder = tmp_path / "atlas"
    folder.mkdir()
    for n in range(1, 4):
        write_zeiss_tiff(folder / f"slice_{n:04d}.tif", _slice(n), databar_rows=20, pixel_nm=5.0, eht_kv=1.5,
                         detector="ESB", tilt_correction=False, stage_tilt_deg=54.0)
    acquisition = open_acquisition(folder)
    assert list(acquisition.channels) == [1.5]  # EsB: backscattered electrons -> bse_1.5kV
    assert acquisition.shape == (3, H, W)
    z, y, x = acquisition.voxel_size_nm
    assert x == pytest.approx(5.0) and y == pytest.approx(5.0 / math.sin(math.radians(54.0)))
    assert "foreshortened" in acquisition.provenance["tilt"]
    head_on = open_acquisition(folder, tilt_deg=90)
    assert head_on.voxel_size_nm[1] == pytest.approx(5.0)


def test_gaps_are_refused_or_listed_and_skipped(tmp_path):
    folder = _fei_series(tmp_path / "gap", [1, 2, 3, 6, 7])
    with pytest.raises(ValueError, match=r"slices 4-5 missing between SliceImage - 3.tif and SliceImage - 6.tif"):
        open_acquisition(folder)
    acquisition = open_acquisition(folder, allow_gaps=True)
    assert acquisition.shape[0] == 5 and "slices 4-5 missing" in acquisition.skipped[0]


@pytest.mark.parametrize("problem", ["size", "pixel", "truncated", "not_tiff", "colour"])
def test_bad_slices_are_named(tmp_path, problem):
    folder = _fei_series(tmp_path / "bad", [1, 2, 3], pixel_nm=5.0)
    bad = folder / "SliceImage - 2.tif"
    if problem == "size":
        write_fei_tiff(bad, _slice(2)[:, :40], databar_rows=12, pixel_nm=5.0)
        match = "SliceImage - 2.tif"
    elif problem == "pixel":
        write_fei_tiff(bad, _slice(2), databar_rows=12, pixel_nm=6.0)
        match = r"SliceImage - 2.tif: pixel size 6 x 6 nm"
    elif problem == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        match = r"SliceImage - 2.tif"
    elif problem == "not_tiff":
        bad.write_text("exported by hand\n")
        match = r"SliceImage - 2.tif: expected a TIFF image"
    else:
        rgb = np.stack([_slice(2), _slice(2)[::-1], _slice(2)], axis=-1)
        tifffile.imwrite(bad, rgb, photometric="rgb")
        match = r"SliceImage - 2.tif"
    with pytest.raises(ValueError, match=match):
        acquisition = open_acquisition(folder, pixel_size_nm=5.0 if problem == "colour" else None)
        acquisition.channels[next(iter(acquisition.channels))][1]


def test_empty_folder_other_files_and_no_pixel_size(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("run 3\n")
    with pytest.raises(FileNotFoundError, match="holds no TIFF file"):
        open_acquisition(empty)
    plain = tmp_path / "plain"
    plain.mkdir()
    for n in range(1, 4):
        tifffile.imwrite(plain / f"img{n}.tif", _slice(n))
    (plain / "notes.txt").write_text("run 3\n")
    with pytest.raises(ValueError, match="img1.tif: no pixel size.*set pixel_size_nm=") as error:
        open_acquisition(plain, channels={"bse_2kV": "img*"})
    assert "notes.txt" not in str(error.value)
    acquisition = open_acquisition(plain, channels={"bse_2kV": "img*"}, pixel_size_nm=3.0)
    assert acquisition.voxel_size_nm[2] == 3.0 and "notes.txt: not a TIFF file, ignored" in acquisition.skipped[0]
    assert "no data bar" in acquisition.provenance["crop"]  # noisy bottom rows: nothing cut
    with pytest.raises(ValueError, match="channel is unknown.*channels="):
        open_acquisition(plain, pixel_size_nm=3.0)


def test_grey_saved_as_rgb_and_16_bit(tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    for n in range(1, 3):
        grey = _slice(n, np.uint16)
        tifffile.imwrite(folder / f"s{n}.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    acquisition = open_acquisition(folder, channels={"bse_2kV": "s*"}, pixel_size_nm=2.0)
    series = acquisition.channels[2.0]
    assert series.dtype == np.uint16 and series.shape == (2, H, W)
    np.testing.assert_array_equal(series[1], _slice(2, np.uint16))


def test_multipage_stack_and_single_image(tmp_path):
    stack = np.stack([_slice(n) for n in range(6)])
    path = write_imagej_tiff(tmp_path / "stack.tif", stack, pixel_nm=2.5, z_nm=7.5)
    acquisition = open_acquisition(path, channels={"bse_1kV": "stack*"})
    series = acquisition.channels[1.0]
    assert series.shape == (6, H, W) and acquisition.voxel_size_nm == (7.5, 2.5, 2.5)
    np.testing.assert_array_equal(series[4], stack[4])
    single = write_fei_tiff(tmp_path / "one.tif", _slice(3), databar_rows=12, detector="CBS", mode="BSE", hv_kv=4)
    one = open_acquisition(single)
    assert one.shape == (1, H, W) and list(one.channels) == [4.0]


def test_a_long_series_is_read_one_slice_at_a_time(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    first = tmp_path / "first.tif"
    write_fei_tiff(first, np.random.default_rng(0).integers(0, 60000, (256, 256)).astype(np.uint16),
                   databar_rows=16, pixel_nm=5.0)
    for n in range(120):  # 120 slices of 256 x 256 uint16: 15.7 MB
        shutil.copy(first, folder / f"slice_{n:03d}.tif")
    acquisition = open_acquisition(folder)
    series = next(iter(acquisition.channels.values()))
    tracemalloc.start()
    total = sum(int(series[z].sum(dtype=np.int64)) for z in range(len(series)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total > 0 and peak < 4 * 272 * 256 * 2  # a few slices, never the 15.7 MB series
