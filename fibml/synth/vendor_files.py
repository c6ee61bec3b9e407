"""Synthetic acquisitions as microscope vendors write them: TIFF files with the vendors' metadata
tags and data bars, for tests, notebooks and demonstrations of fibml.io.open_acquisition and
`python -m fibml.ingest` (no real FIB-SEM data can be shipped or downloaded).

FEI / Thermo Fisher: tag 34682 (FEI_HELIOS) with the INI text of a Helios (Auto Slice & View) slice,
sections in the order and with the key names of real Helios files (public dumps of a Helios NanoLab
and a Helios 5 Hydra CX file: [User] [System] [Beam] [EBeam] [GIS] [Scan] [EScan] [Stage] [Image]
[Vacuum] [Specimen] [Detectors] [<detector>] [Accessories] [PrivateFei]), SI units, and a data bar
appended below the scanned area: [Image] ResolutionX / ResolutionY and [PrivateFei] DatabarHeight state
the area without it (the Helios NanoLab dump: ImageLength 943 = ResolutionY 884 + DatabarHeight 59).

Zeiss SmartSEM: tag 34118 (CZ_SEM), CR LF lines encoded cp1252 (µ and ° as single bytes, as in real
dumps), unnamed numeric values first (index 3 and 11: the x / y pixel size in m at the 1024-pixel
reference width, as hyperspy's readers take them), then upper-case key lines each followed by its
"Label = value unit" line ("Date :..." and "Time :..." for AP_DATE / AP_TIME); "Store resolution =
width * height" names the sample area; a SmartSEM-like data zone (white, a black line on top, black
text) below it.

ImageJ and OME-TIFF stacks come from tifffile's own writers. Data bars are drawn from deterministic
pseudo-glyphs (no fonts). See fibml/io/vendor.py for the sources of each layout.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    "fei_ini",
    "write_fei_tiff",
    "write_imagej_tiff",
    "write_ome_tiff",
    "write_zeiss_tiff",
    "zeiss_sem_text",
]

_FEI_TAG = 34682  # FEI_HELIOS
_ZEISS_TAG = 34118  # CZ_SEM
_DTYPES = (np.uint8, np.uint16)


def fei_ini(
    pixel_nm: float = 5.0,
    hv_kv: float = 2.0,
    detector: str = "TLD",
    mode: str = "SE",
    width: int = 3072,
    height: int = 2048,
    wd_mm: float = 4.0,
    dwell_us: float = 3.0,
    current_na: float = 0.1,
    tilt_correction: bool = True,
    tilt_correction_angle_deg: float = 38.0,
    stage_tilt_deg: float = 52.0,
    date: str = "12/03/2026",
    time: str = "10:15:30 AM",
    *,
    databar_rows: int = 0,
) -> str:
    """The [Section] / Key=Value text a Thermo Fisher Helios writes into tag 34682 (CR LF lines).

    Units as the microscope writes them: m, V, A, s, rad; date MM/DD/YYYY, time hh:mm:ss AM/PM.
    width / height: the scanned raster ([Image] ResolutionX / ResolutionY), without the data bar.
    """
    pixel_m = pixel_nm * 1e-9
    hfw, vfw = pixel_m * width, pixel_m * height
    dwell_s = dwell_us * 1e-6
    stage_t = math.radians(stage_tilt_deg)
    stage = {"StageX": 0.00211734, "StageY": -0.00391587, "StageZ": 0.00398338, "StageR": -2.10548}
    bar = databar_rows > 0
    sections: list[tuple[str, list[tuple[str, object]]]] = [
        ("User", [("Date", date), ("Time", time), ("User", "supervisor"), ("UserText", ""),
                  ("UserTextUnicode", "")]),
        ("System", [("Type", "DualBeam"), ("Dnumber", "9954108"), ("Software", "17.22.0.19782"),
                    ("BuildNr", "19782"), ("Source", "FEG"), ("Column", "Elstar"), ("FinalLens", "Elstar"),
                    ("Chamber", "xT-SDB"), ("Stage", "110 x 110"), ("Pump", "TMP"), ("ESEM", "no"),
                    ("Aperture", "AVA"), ("Scan", "PIA 4"), ("Acq", "PIA 4"), ("EucWD", 0.00397609),
                    ("SystemType", "Helios 5 Hydra CX"), ("DisplayWidth", 0.518), ("DisplayHeight", 0.324)]),
        ("Beam", [("HV", hv_kv * 1e3), ("Spot", ""), ("StigmatorX", -0.252203), ("StigmatorY", 0.0272703),
                  ("BeamShiftX", 0), ("BeamShiftY", 0), ("ScanRotation", 0), ("ImageMode", "Normal"),
                  ("FineStageBias", ""), ("Beam", "EBeam"), ("Scan", "EScan")]),
        ("EBeam", [("Source", "FEG"), ("ColumnType", "Elstar"), ("FinalLens", "Elstar"), ("Acq", "PIA 4"),
                   ("Aperture", "AVA"), ("ApertureDiameter", 2.26e-05), ("HV", hv_kv * 1e3), ("HFW", hfw),
                   ("VFW", vfw), ("WD", wd_mm * 1e-3), ("BeamCurrent", current_na * 1e-9),
                   ("TiltCorrectionIsOn", "yes" if tilt_correction else "no"), ("DynamicFocusIsOn", "yes"),
                   ("DynamicWDIsOn", ""), ("ScanRotation", 0), ("LensMode", "Immersion"), ("LensModeA", ""),
                   ("ATubeVoltage", ""), ("UseCase", ""), ("SemOpticalMode", ""), ("ImageMode", "Normal"),
                   ("SourceTiltX", 0.003125), ("SourceTiltY", 0.00166667), *stage.items(), ("StageTa", stage_t),
                   ("StageTb", 0), ("StigmatorX", -0.252203), ("StigmatorY", 0.0272703), ("BeamShiftX", 0),
                   ("BeamShiftY", 0), ("EucWD", 0.00397609), ("EmissionCurrent", ""),
                   ("TiltCorrectionAngle", math.radians(tilt_correction_angle_deg)), ("PreTilt", 0),
                   ("WehneltBias", ""), ("BeamMode", "N-Beam"), ("MagnificationCorrection", "Off")]),
        ("GIS", [("Number", 0)]),
        ("Scan", [("InternalScan", "true"), ("Dwelltime", dwell_s), ("PixelWidth", pixel_m),
                  ("PixelHeight", pixel_m), ("HorFieldsize", hfw), ("VerFieldsize", vfw), ("Average", 0),
                  ("Integrate", 0), ("FrameTime", dwell_s * width * height)]),
        ("EScan", [("Scan", "PIA 4"), ("InternalScan", "true"), ("Dwell", dwell_s), ("PixelWidth", pixel_m),
                   ("PixelHeight", pixel_m), ("HorFieldsize", hfw), ("VerFieldsize", vfw),
                   ("FrameTime", dwell_s * width * height), ("LineTime", dwell_s * width), ("Mainslock", "On"),
                   ("LineIntegration", 1), ("ScanInterlacing", 1)]),
        ("Stage", [*stage.items(), ("StageT", stage_t), ("StageTb", 0), ("SpecTilt", 0),
                   ("WorkingDistance", wd_mm * 1e-3), ("ActiveStage", "Bulk")]),
        ("Image", [("DigitalContrast", 1), ("DigitalBrightness", 0), ("DigitalGamma", 1), ("Average", 0),
                   ("Integrate", 0), ("ResolutionX", width), ("ResolutionY", height), ("DriftCorrected", "Off"),
                   ("ZoomFactor", 1), ("ZoomPanX", ""), ("ZoomPanY", ""), ("MagCanvasRealWidth", ""),
                   ("MagnificationMode", ""), ("PostProcessing", ""), ("Transformation", "")]),
        ("Vacuum", [("ChPressure", 0.000289), ("Gas", ""), ("UserMode", "High vacuum"), ("Humidity", "")]),
        ("Specimen", [("Temperature", ""), ("SpecimenCurrent", -current_na * 1.06e-9)]),
        ("Detectors", [("Number", 1), ("Name", detector), ("Mode", mode)]),
        (detector, [("Contrast", 66), ("Brightness", 38.4391), ("Signal", mode), ("ContrastDB", 30.0887),
                    ("BrightnessDB", -2.77475), ("SuctionTube", 70), ("Mirror", -15), ("MinimumDwellTime", 1e-07)]),
        ("Accessories", [("Number", 0)]),
        ("PrivateFei", [("BitShift", 0),
                        ("DataBarSelected", "HV curr tilt mag HFW WD Label MicronBar" if bar else ""),
                        ("DataBarAvailable", "HV srot frame dwell curr WD mag HFW x y tilt filter det DateTime mode"
                                             " zoom Label MicronBar" if bar else ""),
                        ("TimeOfCreation", _fei_time_of_creation(date, time)),
                        ("DatabarHeight", databar_rows if bar else "")]),
    ]
    lines = []
    for name, keys in sections:
        lines.append(f"[{name}]")
        lines.extend(f"{key}={_fei_value(value)}" for key, value in keys)
        lines.append("")
    return "\r\n".join(lines) + "\r\n"


def write_fei_tiff(path: str | Path, image: np.ndarray, *, databar_rows: int = 0, **fei_ini_kwargs) -> Path:
    """Write `image` (2D uint8 / uint16: the sample area) as a Helios slice: a black data bar of
    `databar_rows` rows below it and the INI of `fei_ini` (ResolutionX / ResolutionY = the image's
    width and height unless given) in tag 34682."""
    path = Path(path)
    image = _checked_image(path, image, databar_rows)
    height, width = image.shape
    fei_ini_kwargs.setdefault("width", width)
    fei_ini_kwargs.setdefault("height", height)
    text = fei_ini(databar_rows=databar_rows, **fei_ini_kwargs)
    ink = np.iinfo(image.dtype).max
    labels = [f"HV {fei_ini_kwargs.get('hv_kv', 2.0):.2f} kV", f"curr {fei_ini_kwargs.get('current_na', 0.1):.2f} nA",
              f"tilt {fei_ini_kwargs.get('stage_tilt_deg', 52.0):.0f}", f"WD {fei_ini_kwargs.get('wd_mm', 4.0):.1f} mm",
              f"det {fei_ini_kwargs.get('detector', 'TLD')}", "Helios 5"]
    bar = _databar(width, databar_rows, image.dtype, background=0, ink=ink, labels=labels, style="fei")
    tifffile.imwrite(path, np.vstack([image, bar]), photometric="minisblack", metadata=None,
                     extratags=[(_FEI_TAG, 2, None, text.encode("ascii"), True)])
    return path


def zeiss_sem_text(
    pixel_nm: float = 5.0,
    eht_kv: float = 1.5,
    detector: str = "InLens",
    wd_mm: float = 5.0,
    tilt_correction: bool = False,
    tilt_angle_deg: float = 36.0,
    stage_tilt_deg: float = 54.0,
    date: str = "12 Mar 2026",
    time: str = "10:15:30",
    current_pa: float = 250.0,
    width: int = 1024,
    height: int = 768,
    *,
    pixel_unit: str = "nm",
    dwell_ns: float = 100.0,
) -> str:
    """The CZ_SEM text SmartSEM writes into tag 34118 (CR LF lines; encode it as cp1252).

    pixel_unit: the unit the pixel size is written in ('pm', 'nm' or 'µm'); width / height: the store
    resolution (the sample area, "width * height").
    """
    factor = {"pm": 1e3, "nm": 1.0, "µm": 1e-3, "um": 1e-3}.get(pixel_unit)
    if factor is None:
        raise ValueError(f"pixel_unit must be 'pm', 'nm' or 'µm', got {pixel_unit!r}")
    unit = "µm" if pixel_unit == "um" else pixel_unit
    pixel_m = pixel_nm * 1e-9
    reference = pixel_m * width / 1024  # the unnamed pixel size: metres at the 1024-pixel reference width
    unnamed = ["", "0", "0", f"{reference:.6e}", "0", "0", "0", "0", "0", "0", "0", f"{reference:.6e}", "0", "0"]
    mag = 0.1143 / (pixel_m * width)  # SmartSEM's magnification: a 114.3 mm wide Polaroid print
    pairs = [
        ("DP_IMAGE_STORE", f"Store resolution = {width} * {height}"),
        ("AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {_four_digits(pixel_nm * factor)} {unit}"),
        ("AP_PIXEL_SIZE", f"Pixel Size = {_four_digits(pixel_nm * factor)} {unit}"),
        ("AP_WIDTH", f"Width = {_four_digits(pixel_nm * width / 1e3)} µm"),
        ("AP_HEIGHT", f"Height = {_four_digits(pixel_nm * height / 1e3)} µm"),
        ("AP_MAG", f"Mag = {_four_digits(mag / 1e3)} K X"),
        ("AP_ACTUALKV", f"EHT = {eht_kv:.2f} kV"),
        ("AP_MANUALKV", f"EHT Target = {eht_kv:.2f} kV"),
        ("AP_WD", f"WD = {_four_digits(wd_mm)} mm"),
        ("AP_IPROBE", f"I Probe = {_four_digits(current_pa)} pA"),
        ("DP_DETECTOR_CHANNEL", f"Signal A = {detector}"),
        ("DP_DETECTOR_TYPE", f"Detector = {detector}"),
        ("DP_SCANRATE", "Scan Speed = 3"),
        ("DP_DWELL_TIME", f"Dwell time = {_four_digits(dwell_ns)} ns"),
        ("DP_NOISE_REDUCTION", "Noise Reduction = Line Avg"),
        ("AP_LINE_AVERAGE_COUNT", "Line Avg.Count = 4"),
        ("AP_FRAME_TIME", f"Cycle Time = {dwell_ns * 1e-9 * width * height * 4:.1f} Secs"),
        ("DP_TILT_CORRECTION", f"Tilt Corrn. = {'On' if tilt_correction else 'Off'}"),
        ("AP_TILT_ANGLE", f"Tilt Angle = {tilt_angle_deg:.1f} °"),
        ("AP_TILT_AXIS", "Tilt Axis = 0.0 °"),
        ("DP_DYNFOCUS", "Dyn.Focus = Off"),
        ("AP_STAGE_AT_X", "Stage at X = 62.1790 mm"),
        ("AP_STAGE_AT_Y", "Stage at Y = 54.0120 mm"),
        ("AP_STAGE_AT_Z", "Stage at Z = 39.7540 mm"),
        ("AP_STAGE_AT_T", f"Stage at T = {stage_tilt_deg:.1f} °"),
        ("AP_STAGE_AT_R", "Stage at R = 0.0 °"),
        ("AP_COLUMN_VAC", "Gun Vacuum = 2.57e-009 mbar"),
        ("AP_SYSTEM_VAC", "System Vacuum = 1.02e-006 mbar"),
        ("DP_HIGH_CURRENT", "High Current = Off"),
        ("AP_DATE", f"Date :{date}"),
        ("AP_TIME", f"Time :{time}"),
        ("SV_SERIAL_NUMBER", "Serial No. = Crossbeam 550-4721"),
        ("SV_VERSION", "Version = V06.03.00.00"),
        ("SV_USER_NAME", "User Name = FIBSEM"),
        ("SV_FILE_NAME", "File Name = slice_0001.tif"),
    ]
    lines = unnamed + [line for pair in pairs for line in pair]
    return "\r\n".join(lines) + "\r\n"


def write_zeiss_tiff(
    path: str | Path,
    image: np.ndarray,
    *,
    databar_rows: int = 0,
    pixel_nm: float = 5.0,
    eht_kv: float = 1.5,
    detector: str = "InLens",
    wd_mm: float = 5.0,
    tilt_correction: bool = False,
    tilt_angle_deg: float = 36.0,
    stage_tilt_deg: float = 54.0,
    date: str = "12 Mar 2026",
    time: str = "10:15:30",
    current_pa: float = 250.0,
    pixel_unit: str = "nm",
    dwell_ns: float = 100.0,
) -> Path:
    """Write `image` (2D uint8 / uint16: the sample area) as a SmartSEM slice: a white data zone of
    `databar_rows` rows below it and the CZ_SEM text of `zeiss_sem_text` (store resolution = the
    image's width * height) in tag 34118."""
    path = Path(path)
    image = _checked_image(path, image, databar_rows)
    height, width = image.shape
    text = zeiss_sem_text(pixel_nm, eht_kv, detector, wd_mm, tilt_correction, tilt_angle_deg, stage_tilt_deg,
                          date, time, current_pa, width, height, pixel_unit=pixel_unit, dwell_ns=dwell_ns)
    ink = np.iinfo(image.dtype).max
    labels = [f"EHT = {eht_kv:.2f} kV", f"WD = {wd_mm:.1f} mm", f"Signal A = {detector}", f"Date :{date}",
              f"Mag = {0.1143 / (pixel_nm * 1e-9 * width) / 1e3:.2f} K X", "ZEISS"]
    bar = _databar(width, databar_rows, image.dtype, background=ink, ink=0, labels=labels, style="zeiss")
    tifffile.imwrite(path, np.vstack([image, bar]), photometric="minisblack", metadata=None,
                     extratags=[(_ZEISS_TAG, 2, None, text.encode("cp1252"), True)])
    return path


def write_imagej_tiff(path: str | Path, stack: np.ndarray, pixel_nm: float, z_nm: float, *, unit: str = "nm") -> Path:
    """Write a (z, y, x) uint8 / uint16 stack with tifffile's ImageJ writer: XResolution / YResolution in
    pixels per `unit` ('nm' or 'micron'), `spacing` = z in that unit."""
    path = Path(path)
    stack = _checked_stack(path, stack)
    per_nm = {"nm": 1.0, "micron": 1e-3}.get(unit)
    if per_nm is None:
        raise ValueError(f"{path}: unit must be 'nm' or 'micron', got {unit!r}")
    size = pixel_nm * per_nm
    tifffile.imwrite(path, stack, imagej=True, resolution=(1.0 / size, 1.0 / size),
                     metadata={"axes": "ZYX", "spacing": z_nm * per_nm, "unit": unit})
    return path


def write_ome_tiff(path: str | Path, stack: np.ndarray, pixel_nm: float, z_nm: float, *, unit: str = "nm") -> Path:
    """Write a (z, y, x) uint8 / uint16 stack with tifffile's OME writer: PhysicalSizeX/Y/Z in `unit`
    ('nm' or 'µm'; OME's default unit µm is used when `unit` is 'µm', by writing no unit)."""
    path = Path(path)
    stack = _checked_stack(path, stack)
    per_nm = {"nm": 1.0, "µm": 1e-3}.get(unit)
    if per_nm is None:
        raise ValueError(f"{path}: unit must be 'nm' or 'µm', got {unit!r}")
    size, z = pixel_nm * per_nm, z_nm * per_nm
    metadata: dict[str, object] = {"axes": "ZYX", "PhysicalSizeX": size, "PhysicalSizeY": size, "PhysicalSizeZ": z}
    if unit == "nm":
        metadata.update(PhysicalSizeXUnit="nm", PhysicalSizeYUnit="nm", PhysicalSizeZUnit="nm")
    tifffile.imwrite(path, stack, ome=True, metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------ helpers


def _checked_image(path: Path, image: np.ndarray, databar_rows: int) -> np.ndarray:
    """`image` as a 2D uint8 / uint16 array; ValueError naming `path` otherwise."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype not in _DTYPES or 0 in image.shape:
        raise ValueError(f"{path}: expected a non-empty 2D uint8 or uint16 image, got {image.dtype} {image.shape}")
    if int(databar_rows) != databar_rows or databar_rows < 0:
        raise ValueError(f"{path}: databar_rows must be a non-negative integer, got {databar_rows!r}")
    return image


def _checked_stack(path: Path, stack: np.ndarray) -> np.ndarray:
    """`stack` as a (z, y, x) uint8 / uint16 array; ValueError naming `path` otherwise."""
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.dtype not in _DTYPES or 0 in stack.shape:
        raise ValueError(f"{path}: expected a non-empty (z, y, x) uint8 or uint16 stack, "
                         f"got {stack.dtype} {stack.shape}")
    return stack


def _fei_value(value: object) -> str:
    """A value as xT writes it: '2000', '5e-09', '0.00396297', 'yes', ''."""
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.6g}"
    return str(value)


def _fei_time_of_creation(date: str, time: str) -> str:
    """[PrivateFei] TimeOfCreation (DD.MM.YYYY HH:MM:SS) from [User] Date / Time; '' if they do not parse."""
    try:
        day = datetime.datetime.strptime(date.strip(), "%m/%d/%Y")
        clock, half = (time.strip().split() + [""])[:2]
        hour, minute, second = (int(v) for v in clock.split(":"))
    except ValueError:
        return ""
    if half.upper() in ("AM", "PM"):
        hour = hour % 12 + (12 if half.upper() == "PM" else 0)
    return f"{day:%d.%m.%Y} {hour:02d}:{minute:02d}:{second:02d}"


def _four_digits(value: float) -> str:
    """A number with four significant digits, as SmartSEM displays it: 5.000, 0.005000, 558.2, 5000."""
    if value == 0:
        return "0.000"
    decimals = max(0, 3 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _glyph(char: str) -> np.ndarray:
    """A 5 x 3 pseudo-glyph for `char` (deterministic bits, never empty): text-like marks without a font."""
    bits = (ord(char) * 2654435761 >> 7) & 0x7FFF
    bits |= 0b010_010_010_010_010 if bits.bit_count() < 5 else 0
    return np.array([(bits >> i) & 1 for i in range(15)], dtype=bool).reshape(5, 3)


def _databar(width: int, rows: int, dtype: np.dtype, *, background: int, ink: int, labels: Sequence[str],
             style: str) -> np.ndarray:
    """A data bar of `rows` rows: flat `background`, `labels` drawn as pseudo-glyphs in `ink` on the left
    three quarters (up to two lines), a scale bar on the right (FEI: a line with end ticks; Zeiss: a solid
    bar), and for Zeiss a 1-2 px `ink` line along the top. Everything is clipped to the bar."""
    bar = np.full((rows, width), background, dtype=dtype)
    if rows == 0:
        return bar
    top = 0
    if style == "zeiss":
        top = 1 if rows < 16 else 2
        bar[:top] = ink
    scale = max(1, (rows - top) // 16)
    line_height = 7 * scale
    n_lines = 2 if rows - top >= 2 * line_height + 2 * scale else 1
    text_right = max(1, width * 3 // 4)
    lines: list[list[str]] = [[] for _ in range(n_lines)]
    for i, label in enumerate(labels):
        lines[i % n_lines].append(label)
    for row, words in enumerate(lines):
        y = top + scale + row * line_height
        x = 2 * scale
        for char in "   ".join(words):
            if x + 3 * scale > text_right:
                break
            if char != " ":
                glyph = np.kron(_glyph(char), np.ones((scale, scale), dtype=bool))
                block = bar[y:y + 5 * scale, x:x + 3 * scale]
                block[glyph[:block.shape[0], :block.shape[1]]] = ink
            x += 4 * scale
    # the scale bar, vertically centred in the rows below the top line
    x0, x1 = text_right + 2 * scale, min(width - 2 * scale, text_right + max(2, width // 5))
    middle = top + (rows - top) // 2
    if style == "zeiss":
        bar[max(top, middle - scale):middle + scale, x0:x1] = ink
    else:
        bar[middle:middle + scale, x0:x1] = ink
        tick = slice(max(top, middle - 2 * scale), middle + 3 * scale)
        bar[tick, x0:x0 + scale] = ink
        bar[tick, max(x0, x1 - scale):x1] = ink
    return bar
