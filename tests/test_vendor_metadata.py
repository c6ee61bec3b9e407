"""fibml.io.vendor on files laid out as the vendors write them (fibml/synth/vendor_files.py): every field read
back in its unit, the layouts checked against tifffile's own parsers, and files without metadata."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from fibml.io.vendor import SliceMetadata, read_slice_metadata
from fibml.synth.vendor_files import (
    fei_ini,
    write_fei_tiff,
    write_imagej_tiff,
    write_ome_tiff,
    write_zeiss_tiff,
    zeiss_sem_text,
)

ANGLE = 1e-3  # degrees: FEI writes radians with 6 significant digits


def _image(dtype, shape=(48, 64)) -> np.ndarray:
    """A non-square gradient (48 rows x 64 columns: a swapped height / width shows)."""
    top = 250 if dtype == np.uint8 else 60000
    return np.linspace(10, top, shape[0] * shape[1]).reshape(shape).astype(dtype)


def _roundtrip(metadata: SliceMetadata) -> None:
    data = metadata.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) >= {"vendor", "pixel_size_nm", "z_spacing_nm", "image_size", "raw", "source"}


# ------------------------------------------------------------------------------------------ FEI / Thermo


def test_fei_slice_every_field_in_its_unit(tmp_path):
    image = _image(np.uint8)
    path = write_fei_tiff(tmp_path / "SliceImage-001.tif", image, databar_rows=12, pixel_nm=5.0, hv_kv=2.0,
                          detector="TLD", mode="SE", wd_mm=4.0, dwell_us=3.0, current_na=0.1, tilt_correction=True,
                          tilt_correction_angle_deg=38.0, stage_tilt_deg=52.0, date="12/03/2026", time="10:15:30 AM")
    meta = read_slice_metadata(path)
    assert meta.vendor == "fei"
    assert meta.pixel_size_nm == pytest.approx((5.0, 5.0))
    assert meta.voltage_kv == pytest.approx(2.0)
    assert (meta.detector, meta.detector_mode) == ("TLD", "SE")
    assert meta.working_distance_mm == pytest.approx(4.0)
    assert meta.dwell_us == pytest.approx(3.0)
    assert meta.beam_current_na == pytest.approx(0.1)
    assert meta.date == "2026-12-03T10:15:30"  # MM/DD/YYYY: 3 December
    assert meta.tilt_correction is True
    assert meta.tilt_correction_angle_deg == pytest.approx(38.0, abs=ANGLE)
    assert meta.stage_tilt_deg == pytest.approx(52.0, abs=ANGLE)
    assert meta.image_size == (48, 64)  # [Image] ResolutionY / ResolutionX: the bar is not counted
    assert meta.z_spacing_nm is None
    assert meta.source == "FEI_HELIOS tag 34682"
    assert meta.raw["PrivateFei.DatabarHeight"] == 12
    _roundtrip(meta)

    pixels = tifffile.imread(path)
    assert pixels.shape == (60, 64) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[:48], image)
    bar = pixels[48:]
    assert np.median(bar) == 0 and bar.max() == 255  # black with white text and scale bar


def test_fei_layout_is_what_tifffile_parses(tmp_path):
    path = write_fei_tiff(tmp_path / "slice.tif", _image(np.uint8), databar_rows=9, pixel_nm=2.5, hv_kv=1.5,
                          current_na=0.4, dwell_us=0.3)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_fei and not tif.is_sem
        fei = tif.fei_metadata
        page = tif.pages.first
        assert page.tags[34682].dtype == 2  # ASCII
    assert list(fei)[:13] == ["User", "System", "Beam", "EBeam", "GIS", "Scan", "EScan", "Stage", "Image", "Vacuum",
                              "Specimen", "Detectors", "TLD"]
    assert list(fei)[-2:] == ["Accessories", "PrivateFei"]
    assert fei["Scan"]["PixelWidth"] == pytest.approx(2.5e-9) and fei["Scan"]["PixelHeight"] == pytest.approx(2.5e-9)
    assert fei["EScan"]["PixelWidth"] == pytest.approx(2.5e-9)
    assert fei["Beam"]["HV"] == 1500 and fei["EBeam"]["HV"] == 1500  # volts
    assert fei["Beam"]["Beam"] == "EBeam"
    assert fei["EBeam"]["BeamCurrent"] == pytest.approx(4e-10)  # amperes
    assert fei["EBeam"]["WD"] == pytest.approx(4e-3) and fei["Stage"]["WorkingDistance"] == pytest.approx(4e-3)
    assert fei["Scan"]["Dwelltime"] == pytest.approx(3e-7)  # seconds
    assert fei["EBeam"]["TiltCorrectionIsOn"] == "yes"
    assert fei["EBeam"]["TiltCorrectionAngle"] == pytest.approx(math.radians(38.0), abs=1e-5)
    assert fei["Stage"]["StageT"] == pytest.approx(math.radians(52.0), abs=1e-5)
    assert fei["EBeam"]["StageTa"] == fei["Stage"]["StageT"]
    assert (fei["Image"]["ResolutionX"], fei["Image"]["ResolutionY"]) == (64, 48)
    assert (fei["Detectors"]["Name"], fei["Detectors"]["Mode"], fei["TLD"]["Signal"]) == ("TLD", "SE", "SE")
    assert (fei["User"]["Date"], fei["User"]["Time"]) == ("12/03/2026", "10:15:30 AM")
    assert fei["PrivateFei"]["DatabarHeight"] == 9
    assert fei["PrivateFei"]["TimeOfCreation"] == "03.12.2026 10:15:30"


def test_fei_uint16_without_bar_other_detector_tilt_correction_off(tmp_path):
    image = _image(np.uint16)
    path = write_fei_tiff(tmp_path / "ice.tif", image, pixel_nm=3.2, hv_kv=5.0, detector="ICE", mode="BSE",
                          wd_mm=4.1, dwell_us=0.1, current_na=0.8, tilt_correction=False,
                          tilt_correction_angle_deg=-38.0, stage_tilt_deg=0.0, date="10/09/2023", time="08:04:59 PM")
    meta = read_slice_metadata(path)
    assert meta.pixel_size_nm == pytest.approx((3.2, 3.2))
    assert meta.voltage_kv == pytest.approx(5.0)
    assert (meta.detector, meta.detector_mode) == ("ICE", "BSE")
    assert meta.working_distance_mm == pytest.approx(4.1)
    assert meta.dwell_us == pytest.approx(0.1)
    assert meta.beam_current_na == pytest.approx(0.8)
    assert meta.date == "2023-10-09T20:04:59"  # PM
    assert meta.tilt_correction is False
    assert meta.tilt_correction_angle_deg == pytest.approx(-38.0, abs=ANGLE)  # as stored, sign kept
    assert meta.stage_tilt_deg == pytest.approx(0.0)
    assert meta.image_size == (48, 64)
    pixels = tifffile.imread(path)
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, image)  # no bar
    with tifffile.TiffFile(path) as tif:
        private = tif.fei_metadata["PrivateFei"]
    assert private["DatabarHeight"] == "" and private["DataBarSelected"] == ""


def test_fei_ini_text_follows_the_real_layout():
    text = fei_ini(width=1536, height=1024)
    assert text.startswith("[User]\r\nDate=12/03/2026\r\nTime=10:15:30 AM\r\n")
    assert "\r\n[Scan]\r\nInternalScan=true\r\nDwelltime=3e-06\r\nPixelWidth=5e-09\r\n" in text
    assert "ResolutionX=1536\r\nResolutionY=1024\r\n" in text
    assert "[Detectors]\r\nNumber=1\r\nName=TLD\r\nMode=SE\r\n" in text
    assert "TiltCorrectionIsOn=yes" in text and "TiltCorrectionAngle=0.663225" in text
    text.encode("ascii")  # tag 34682 is ASCII


def test_fei_missing_keys_and_string_numbers_give_none_not_errors(tmp_path):
    text = ("[User]\r\nDate=12/03/2026\r\nTime=\r\n[Scan]\r\nPixelWidth=4e-009\r\n[Beam]\r\nHV=\r\n"
            "[EBeam]\r\nHV=garbage\r\n")
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, _image(np.uint8), metadata=None, extratags=[(34682, 2, None, text.encode(), True)])
    meta = read_slice_metadata(path)
    assert meta.vendor == "fei"
    assert meta.pixel_size_nm == pytest.approx((4.0, 4.0))  # PixelHeight missing: square pixels
    assert meta.date == "2026-12-03"  # no time: the date alone
    for name in ("voltage_kv", "detector", "detector_mode", "working_distance_mm", "dwell_us", "beam_current_na",
                 "stage_tilt_deg", "tilt_correction", "tilt_correction_angle_deg", "image_size", "z_spacing_nm"):
        assert getattr(meta, name) is None, name
    _roundtrip(meta)


def test_fei_mode_from_the_detector_section_when_detectors_mode_is_empty(tmp_path):
    text = "[Detectors]\r\nNumber=1\r\nName=CBS\r\nMode=\r\n[CBS]\r\nContrast=70\r\nSignal=BSE\r\n"
    path = tmp_path / "cbs.tif"
    tifffile.imwrite(path, _image(np.uint8), metadata=None, extratags=[(34682, 2, None, text.encode(), True)])
    meta = read_slice_metadata(path)
    assert (meta.detector, meta.detector_mode) == ("CBS", "BSE")


def test_vendor_tags_win_over_imagej_and_resolution(tmp_path):
    path = tmp_path / "resaved.tif"
    tifffile.imwrite(path, np.stack([_image(np.uint8)] * 2), imagej=True, resolution=(0.5, 0.5),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 9.0},
                     extratags=[(34682, 2, None, fei_ini(pixel_nm=3.0).encode(), True)])
    meta = read_slice_metadata(path)
    assert meta.vendor == "fei" and meta.pixel_size_nm == pytest.approx((3.0, 3.0))


# ------------------------------------------------------------------------------------------ Zeiss


def test_zeiss_slice_every_field_in_its_unit(tmp_path):
    image = _image(np.uint16)
    path = write_zeiss_tiff(tmp_path / "slice_0001.tif", image, databar_rows=10, pixel_nm=5.0, eht_kv=1.5,
                            detector="InLens", wd_mm=5.1, tilt_correction=False, tilt_angle_deg=36.0,
                            stage_tilt_deg=54.0, date="12 Mar 2026", time="10:15:30", current_pa=250.0)
    meta = read_slice_metadata(path)
    assert meta.vendor == "zeiss"
    assert meta.pixel_size_nm == pytest.approx((5.0, 5.0))
    assert meta.voltage_kv == pytest.approx(1.5)
    assert meta.detector == "InLens"
    assert meta.working_distance_mm == pytest.approx(5.1)
    assert meta.dwell_us == pytest.approx(0.1)  # "Dwell time = 100 ns"
    assert meta.beam_current_na == pytest.approx(0.25)  # "I Probe = 250.0 pA"
    assert meta.date == "2026-03-12T10:15:30"
    assert meta.tilt_correction is False
    assert meta.tilt_correction_angle_deg == pytest.approx(36.0)
    assert meta.stage_tilt_deg == pytest.approx(54.0)
    assert meta.image_size == (48, 64)  # "Store resolution = 64 * 48": width * height
    assert meta.source == "CZ_SEM tag 34118"
    _roundtrip(meta)

    pixels = tifffile.imread(path)
    assert pixels.shape == (58, 64) and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels[:48], image)
    bar = pixels[48:]
    assert np.median(bar) == 65535 and bar.min() == 0  # white zone, black line and text
    assert (bar[0] == 0).all()  # the line along its top


def test_zeiss_layout_is_what_tifffile_parses(tmp_path):
    path = write_zeiss_tiff(tmp_path / "z.tif", _image(np.uint8), databar_rows=6, pixel_nm=2.5, eht_kv=2.0,
                            detector="SE2", wd_mm=4.0, tilt_correction=True, tilt_angle_deg=38.0, stage_tilt_deg=54.0,
                            current_pa=1200.0)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_sem and not tif.is_fei
        sem = tif.sem_metadata
    assert sem["ap_image_pixel_size"] == ("Image Pixel Size", 2.5, "nm")
    assert sem["ap_actualkv"] == ("EHT", 2.0, "kV")
    assert sem["dp_detector_channel"] == ("Signal A", "SE2")
    assert sem["ap_wd"] == ("WD", 4.0, "mm")
    assert sem["ap_iprobe"] == ("I Probe", 1200, "pA")
    assert sem["dp_dwell_time"] == ("Dwell time", 100.0, "ns")
    assert sem["dp_tilt_correction"] == ("Tilt Corrn.", True)  # "On"
    assert sem["ap_tilt_angle"] == ("Tilt Angle", 38.0, "°")  # cp1252 0xB0, decoded by tifffile
    assert sem["ap_stage_at_t"] == ("Stage at T", 54.0, "°")
    assert sem["dp_image_store"] == ("Store resolution", "64 * 48")
    assert sem["ap_date"] == ("Date", "12 Mar 2026") and sem["ap_time"] == ("Time", "10:15:30")
    # the unnamed values: the pixel size in m at the 1024-pixel reference width, where hyperspy reads it
    assert sem[""][3] * 1024 / 64 == pytest.approx(2.5e-9) and sem[""][11] == sem[""][3]
    meta = read_slice_metadata(path)
    assert meta.tilt_correction is True and meta.tilt_correction_angle_deg == pytest.approx(38.0)
    assert meta.detector == "SE2" and meta.beam_current_na == pytest.approx(1.2)


@pytest.mark.parametrize(("unit", "pixel_nm", "written"), [
    ("µm", 2.5, "Image Pixel Size = 0.002500 µm"),
    ("pm", 0.5582, "Image Pixel Size = 558.2 pm"),
    ("nm", 12.34, "Image Pixel Size = 12.34 nm"),
])
def test_zeiss_pixel_size_units(tmp_path, unit, pixel_nm, written):
    assert f"AP_IMAGE_PIXEL_SIZE\r\n{written}\r\n" in zeiss_sem_text(pixel_nm, pixel_unit=unit)
    path = write_zeiss_tiff(tmp_path / f"{unit}.tif", _image(np.uint8), pixel_nm=pixel_nm, pixel_unit=unit)
    assert read_slice_metadata(path).pixel_size_nm == pytest.approx((pixel_nm, pixel_nm))


def test_zeiss_text_is_cp1252_with_crlf_lines():
    text = zeiss_sem_text(width=1024, height=768)
    assert "DP_IMAGE_STORE\r\nStore resolution = 1024 * 768\r\n" in text
    assert "AP_DATE\r\nDate :12 Mar 2026\r\nAP_TIME\r\nTime :10:15:30\r\n" in text
    assert "Stage at T = 54.0 °".encode("cp1252") in text.encode("cp1252")
    assert b"\xb0" in text.encode("cp1252") and b"\xb5" in text.encode("cp1252")  # ° and µ as one byte each


def test_zeiss_missing_keys_give_none(tmp_path):
    text = "\r\n0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 7.5 nm\r\nAP_DATE\r\nDate :31 Dec 2025\r\n"
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, _image(np.uint8), metadata=None, extratags=[(34118, 2, None, text.encode(), True)])
    meta = read_slice_metadata(path)
    assert meta.vendor == "zeiss" and meta.pixel_size_nm == pytest.approx((7.5, 7.5))
    assert meta.date == "2025-12-31"
    assert meta.voltage_kv is None and meta.detector is None and meta.image_size is None
    assert meta.tilt_correction is None and meta.stage_tilt_deg is None


# ------------------------------------------------------------------------------------------ ImageJ, OME, plain


@pytest.mark.parametrize("unit", ["nm", "micron"])
def test_imagej_stack_pixel_and_z_spacing(tmp_path, unit):
    stack = np.stack([_image(np.uint16)] * 3)
    meta = read_slice_metadata(write_imagej_tiff(tmp_path / "stack.tif", stack, 3.7, 7.5, unit=unit))
    assert meta.vendor == "imagej"
    assert meta.pixel_size_nm == pytest.approx((3.7, 3.7), rel=1e-6)
    assert meta.z_spacing_nm == pytest.approx(7.5)
    assert meta.voltage_kv is None and meta.image_size is None
    _roundtrip(meta)


@pytest.mark.parametrize("unit", ["nm", "µm"])
def test_ome_stack_pixel_and_z_spacing(tmp_path, unit):
    stack = np.stack([_image(np.uint8)] * 4)
    meta = read_slice_metadata(write_ome_tiff(tmp_path / "stack.ome.tif", stack, 4.2, 10.0, unit=unit))
    assert meta.vendor == "ome"
    assert meta.pixel_size_nm == pytest.approx((4.2, 4.2))
    assert meta.z_spacing_nm == pytest.approx(10.0)
    assert meta.image_size == (48, 64)
    _roundtrip(meta)


def test_plain_tiff_without_metadata(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _image(np.uint8))
    meta = read_slice_metadata(path)
    assert meta.vendor == "tiff" and meta.pixel_size_nm is None and meta.source is None
    _roundtrip(meta)


@pytest.mark.parametrize(("resolution", "unit", "expected"), [
    (1e7 / 4.0, "CENTIMETER", 4.0),  # 4 nm per pixel: a calibration
    (2.54e7 / 2.5, "INCH", 2.5),
    (72.0, "INCH", None),  # screen defaults are not calibrations
    (96.0, "INCH", None),
    (1.0, "INCH", None),
    (1e7 / 2000.0, "CENTIMETER", None),  # 2 µm per pixel: not believed
    (1e7 / 4.0, "NONE", None),  # no physical unit
])
def test_plain_resolution_tags(tmp_path, resolution, unit, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, _image(np.uint8), resolution=(resolution, resolution), resolutionunit=unit)
    meta = read_slice_metadata(path)
    assert meta.vendor == "tiff"
    assert meta.pixel_size_nm == (None if expected is None else pytest.approx((expected, expected)))


def test_an_open_tifffile_is_accepted(tmp_path):
    path = write_fei_tiff(tmp_path / "s.tif", _image(np.uint8), pixel_nm=6.0)
    with tifffile.TiffFile(path) as tif:
        assert read_slice_metadata(tif).pixel_size_nm == pytest.approx((6.0, 6.0))


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_slice_metadata(missing)
    not_tiff = tmp_path / "notes.tif"
    not_tiff.write_text("not a TIFF")
    with pytest.raises(ValueError, match="notes.tif"):
        read_slice_metadata(not_tiff)
    with pytest.raises(ValueError, match="float.tif"):
        write_fei_tiff(tmp_path / "float.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="bar.tif"):
        write_zeiss_tiff(tmp_path / "bar.tif", np.zeros((8, 8), np.uint8), databar_rows=-1)
