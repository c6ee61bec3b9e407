"""Acquisitions as microscopes write them: a folder of one 2D TIFF per slice (Thermo Fisher Auto
Slice & View, Zeiss Atlas / SmartSEM, Tescan), one series per detector or voltage; a multi-page
TIFF stack; or a single image. Read lazily, slice by slice, as slice sources (fibml.protocols):
cropped of the vendor's data bar, grey, with the voxel size and where each value came from.

Ordering: by the slice number in the file name (the last run of digits of the name: "SliceImage
- 2.tif" before "SliceImage - 10.tif"); a missing number is an error naming the files around
the gap, unless allow_gaps (then the gaps are listed and skipped).

Channels: files are grouped by their metadata (detector and beam voltage), else by the file
name with its slice number taken out; or by file-name patterns given in the config
({channel name: glob pattern}). A BSE detector's series at V kV is the channel V (stored as
bse_<V>kV.tif), any other detector's "<detector>_<V>kV" (fibml.channels).

Geometry: the pixel size comes from the config (pixel_size_nm), else from the vendor metadata
(FEI / Thermo, Zeiss, OME, ImageJ, resolution tags). A face imaged at an angle to the electron
beam without the microscope's tilt correction is foreshortened in y: the true y spacing is
pixel / sin(angle) (tilt_deg overrides the angle read from the stage tilt).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tifffile

from fibml.channels import Channel, channel_key, channel_label
from fibml.io.databar import databar_rows
from fibml.io.dataset import MANIFEST, available_channels
from fibml.io.files import shape_mismatch
from fibml.io.integrity import incomplete, tifffile_errors
from fibml.io.vendor import SliceMetadata, read_slice_metadata

__all__ = [
    "BSE_DETECTORS",
    "TIFF_SUFFIXES",
    "Acquisition",
    "SliceSeries",
    "acquisition_channel",
    "is_acquisition_folder",
    "natural_key",
    "open_acquisition",
    "slice_number",
]


TIFF_SUFFIXES = (".tif", ".tiff")

# Detectors whose signal is backscattered electrons (their series become bse_<V>kV): Thermo
# Fisher CBS / ABS / DBS / vCD / T1 (in-lens BSE), Zeiss EsB / AsB / BSD, Tescan BSE / R-BSE.
BSE_DETECTORS = frozenset({"bse", "bsd", "cbs", "abs", "dbs", "vcd", "t1", "esb", "asb", "rbse", "mdbse", "bse1"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key in natural order: 'slice 2' before 'slice 10' (digit runs compare as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(name) if part)


def slice_number(path: str | Path) -> int | None:
    """The slice number in a file name: its last run of digits ('SliceImage - 012.tif' -> 12)."""
    numbers = _DIGITS.findall(Path(path).stem)
    return int(numbers[-1]) if numbers else None


def _series_name(path: Path) -> str:
    """The file name with its slice number replaced by '#': the name of the series it belongs to."""
    stem = Path(path).stem
    match = list(_DIGITS.finditer(stem))
    return stem if not match else stem[: match[-1].start()] + "#" + stem[match[-1].end():]


def is_acquisition_folder(folder: str | Path) -> bool:
    """A folder of TIFFs as a microscope wrote them: TIFF files, but no dataset stacks
    (bse_<V>kV.tif, <detector>_<V>kV.tif) and no manifest.json of a dataset folder."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MANIFEST).exists() or available_channels(folder):
        return False
    return any(p.suffix.lower() in TIFF_SUFFIXES for p in folder.iterdir() if p.is_file())


def acquisition_channel(metadata: SliceMetadata | None) -> Channel | None:
    """The fibml channel of a series from its metadata: a BSE detector's voltage (2.0), or
    '<detector>_<V>kV' ('inlens_2kV'); None when the detector or the voltage is unknown."""
    if metadata is None or metadata.voltage_kv is None or not metadata.detector:
        return None
    detector = re.sub(r"[^a-z0-9]", "", metadata.detector.lower())
    mode = (metadata.detector_mode or "").lower()
    voltage = float(metadata.voltage_kv)
    if detector in BSE_DETECTORS or "bse" in mode or "backscatter" in mode:
        return voltage
    if not detector or not detector[0].isalpha():
        detector = f"d{detector}"
    return channel_key(f"{detector}_{voltage:g}kV")


@dataclass
class _Page:
    """What one TIFF file holds, read from its first page's tags (no pixels)."""

    path: Path
    pages: int
    height: int
    width: int
    dtype: np.dtype
    samples: int  # 1 grey, 3 or 4 RGB(A)
    metadata: SliceMetadata


def _inspect(path: Path) -> _Page:
    """Open a TIFF and check, without reading its pixels, that it can be read whole (a truncated
    slice is refused here, not in the middle of a long ingest): ValueError naming the file."""
    with tifffile_errors() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                page = tif.pages.first
                shape = tuple(int(n) for n in series.shape)
                samples = int(page.samplesperpixel)
                problem = incomplete(tif, series, path.stat().st_size)
                metadata = read_slice_metadata(tif)
                n_pages = int(np.prod(shape[: -3 if samples > 1 else -2]))
                dtype = np.dtype(series.dtype)
        except Exception as error:  # tifffile raises TiffFileError, struct.error, ValueError, ...
            detail = f"{type(error).__name__}: {error}" + (f"; tifffile: {logged[0]}" if logged else "")
            raise ValueError(f"{path}: expected a TIFF image, found a file tifffile cannot read (not a TIFF, or a "
                             f"damaged or truncated one): {detail}") from error
    if problem:
        raise ValueError(f"{path}: truncated TIFF: {problem}")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{path}: expected grey-value pixels, found dtype {dtype}")
    height, width = (shape[-3], shape[-2]) if samples > 1 else (shape[-2], shape[-1])
    return _Page(path, n_pages, height, width, dtype, samples, metadata)


def _grey(image: np.ndarray, path: Path, samples: int) -> np.ndarray:
    """A grey image; an RGB(A) image whose three colour channels are equal (grey saved as
    colour, as some acquisition software does) becomes its first channel, real colour is refused."""
    if samples == 1:
        return image
    rgb = image[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ValueError(f"{path}: a colour image (its red, green and blue differ): expected a grey SEM image")
    return rgb[..., 0]


class SliceSeries:
    """A (z, y, x) slice source over 2D TIFF files (one slice each) or the pages of one
    multi-page TIFF, cropped to crop = (y0, y1, x0, x1) and read one slice at a time: a stack of
    any length never sits in memory. Pickles as paths, for worker processes."""

    ndim = 3

    def __init__(self, files: Sequence[Path], crop: tuple[int, int, int, int], dtype, samples: int = 1,
                 voxel_size_nm: tuple[float, float, float] | None = None, name: str = "", paged: bool = False,
                 n_slices: int | None = None):
        self.files = [Path(f) for f in files]
        self.crop = tuple(int(c) for c in crop)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.samples, self.paged, self.name = int(samples), bool(paged), name
        self.voxel_size_nm = voxel_size_nm
        n = int(n_slices) if paged else len(self.files)
        y0, y1, x0, x1 = self.crop
        self.shape = (n, y1 - y0, x1 - x0)

    @property
    def path(self) -> Path:
        """The folder of the slices (a multi-page file: the file)."""
        return self.files[0] if self.paged else self.files[0].parent

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"SliceSeries({self.name!r}, {len(self)} slices of {self.shape[1]} x {self.shape[2]} from {self.path})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            z = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= z < len(self):
                raise IndexError(f"slice {key} of a series of {len(self)} slices ({self.path})")
            return self._read(z)
        if isinstance(key, slice):
            return np.stack([self._read(z) for z in range(*key.indices(len(self)))])
        raise TypeError(f"{self.path}: index a SliceSeries with a slice number or a slice of them, not {key!r}")

    def region(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        return self[z][ys, xs]

    def _read(self, z: int) -> np.ndarray:
        path = self.files[0] if self.paged else self.files[z]
        try:
            image = tifffile.imread(path, key=z if self.paged else 0)
        except Exception as error:  # a slice that went bad after it was inspected
            raise ValueError(f"{path}: cannot read {'page ' + str(z) if self.paged else 'the slice'} ({error})") from error
        image = _grey(np.asarray(image), path, self.samples)
        y0, y1, x0, x1 = self.crop
        if image.shape[0] < y1 or image.shape[1] < x1:
            raise ValueError(f"{path}: {image.shape[0]} x {image.shape[1]} pixels, expected at least {y1} x {x1}")
        return np.ascontiguousarray(image[y0:y1, x0:x1]).astype(self.dtype, copy=False)


@dataclass
class Acquisition:
    """An acquisition opened for reading: {channel: SliceSeries}, all of one (z, y, x) shape;
    voxel_size_nm (z, y, x) with z None while the slice thickness is unknown; per channel its
    first slice's metadata and its files; `provenance` says where each value came from."""

    channels: dict[Channel, SliceSeries]
    voxel_size_nm: tuple[float | None, float, float]
    metadata: dict[Channel, SliceMetadata]
    crop: tuple[int, int, int, int]
    provenance: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # gaps and ignored files, for the report

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.channels.values())).shape

    def without_top_rows(self, rows: int) -> Acquisition:
        """The acquisition with `rows` more rows cut off the top of every slice (a band of ruler
        marks above the sample)."""
        y0, y1, x0, x1 = self.crop
        if not 0 <= rows < y1 - y0:
            raise ValueError(f"cannot cut {rows} rows off slices of {y1 - y0} rows")
        crop = (y0 + int(rows), y1, x0, x1)
        channels = {c: SliceSeries(s.files, crop, s.dtype, s.samples, s.voxel_size_nm, s.name, s.paged, len(s))
                    for c, s in self.channels.items()}
        return replace(self, channels=channels, crop=crop)

    def manifest(self) -> dict:
        """What the dataset folder's manifest keeps of the acquisition."""
        return {
            "acquisition": {
                "channels": {channel_label(c): {"files": [str(f) for f in s.files], "metadata": self.metadata[c].as_dict()}
                             for c, s in self.channels.items()},
                "crop_yx": list(self.crop),
                "provenance": dict(self.provenance),
                "skipped": list(self.skipped),
            }
        }


def open_acquisition(
    inputs: str | Path | Sequence[str | Path],
    *,
    channels: Mapping[str, str] | None = None,
    allow_gaps: bool = False,
    crop: Sequence[int] | None = None,
    tilt_deg: float | None = None,
    pixel_size_nm: float | Sequence[float] | None = None,
    slice_thickness_nm: float | None = None,
    default_channel: Channel | None = None,
) -> Acquisition:
    """Open an acquisition: a folder of per-slice TIFFs (several series in it become channels),
    one multi-page TIFF, one 2D image, or a list of files; checked before anything is read.

    channels: {channel name (2, bse_2kV, inlens_2kV): glob pattern of its file names}; None
        groups by the metadata (detector, voltage), else by the file names.
    allow_gaps: skip missing slice numbers (listed in `skipped`) instead of refusing them.
    crop: [y0, y1, x0, x1] of the sample area, instead of cutting off the detected data bar.
    tilt_deg: the angle between the electron beam and the face, instead of the stage tilt.
    pixel_size_nm: one size (or [y, x]) instead of the metadata's; slice_thickness_nm: z.
    default_channel: the channel of a single series whose metadata names no detector and voltage
        (predict.py gives the model's); without it such a series must be named in `channels`.
    """
    files, skipped = _input_files(inputs)
    pages = [_inspect(f) for f in files]
    if len(pages) > 1 and any(p.pages > 1 for p in pages):
        stacks = [str(p.path) for p in pages if p.pages > 1]
        raise ValueError(f"{stacks[0]} is a multi-page stack among {len(pages)} files: give it on its own")
    groups = _group(pages, channels)
    series: dict[Channel, list[_Page]] = {}
    provenance: dict[str, str] = {}
    for key, members in groups.items():
        ordered, gaps = _order(members, allow_gaps)
        skipped += gaps
        channel = _channel_of(key, ordered[0], len(groups), default_channel, provenance)
        if channel in series:
            raise ValueError(f"{ordered[0].path} and {series[channel][0].path} both read as channel "
                             f"{channel_label(channel)}: name the channels with channels={{<name>: '<file pattern>'}}")
        series[channel] = ordered
    _check_same_slices(series)
    first = next(iter(series.values()))[0]
    reference = (first.height, first.width)
    for members in series.values():
        for page in members:
            if (page.height, page.width) != reference:
                raise ValueError(shape_mismatch(page.path, (page.height, page.width), first.path, reference))
    box = _crop(first, crop, provenance)
    pixel = _pixel_size(series, pixel_size_nm, provenance)
    y_nm = _tilt(first.metadata, pixel[0], tilt_deg, provenance)
    z_nm = _slice_thickness(first.metadata, slice_thickness_nm, provenance)
    voxel = (z_nm, y_nm, pixel[1])
    opened = {
        channel: SliceSeries(
            [p.path for p in members], box, members[0].dtype, members[0].samples,
            None if z_nm is None else (z_nm, y_nm, pixel[1]), name=channel_label(channel),
            paged=members[0].pages > 1, n_slices=members[0].pages,
        )
        for channel, members in series.items()
    }
    return Acquisition(opened, voxel, {c: m[0].metadata for c, m in series.items()}, box, provenance, skipped)


def _input_files(inputs) -> tuple[list[Path], list[str]]:
    """The TIFF files of the inputs (a folder's in natural order) and the other files ignored."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise ValueError("no input: give a folder of slices, a TIFF stack or a list of TIFF files")
    files, ignored = [], []
    for item in map(Path, items):
        if item.is_dir():
            entries = sorted((p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")),
                             key=lambda p: natural_key(p.name))
            tiffs = [p for p in entries if p.suffix.lower() in TIFF_SUFFIXES]
            ignored += [f"{p}: not a TIFF file, ignored" for p in entries if p.suffix.lower() not in TIFF_SUFFIXES]
            if not tiffs:
                raise FileNotFoundError(f"{item} holds no TIFF file (.tif, .tiff): expected one TIFF per slice")
            files += tiffs
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files, ignored


def _group(pages: list[_Page], patterns: Mapping[str, str] | None) -> dict:
    """{channel or None: pages}: by the patterns of the config, else by metadata, else by name."""
    if patterns:
        groups: dict = {}
        for page in pages:
            hits = [name for name, pattern in patterns.items() if fnmatch.fnmatch(page.path.name, str(pattern))]
            if len(hits) > 1:
                raise ValueError(f"{page.path} matches the patterns of channels {hits}: make them exclusive")
            if hits:
                groups.setdefault(channel_key(hits[0]), []).append(page)
        empty = [name for name in patterns if channel_key(name) not in groups]
        if empty:
            raise ValueError(f"channels.{empty[0]}: no file matches {patterns[empty[0]]!r}")
        return groups
    by_metadata: dict = {}
    for page in pages:
        by_metadata.setdefault(acquisition_channel(page.metadata), []).append(page)
    if None not in by_metadata:
        return by_metadata
    by_name: dict = {}
    for page in pages:
        by_name.setdefault(_series_name(page.path), []).append(page)
    return {None: pages} if len(by_name) == 1 else {f"series:{name}": members for name, members in by_name.items()}


def _channel_of(key, first: _Page, n_groups: int, default, provenance: dict) -> Channel:
    """The channel of a series: its config or metadata name; a series whose metadata gives a
    voltage but no detector is taken as BSE; a lone unnamed series takes `default`."""
    if key is not None and not (isinstance(key, str) and key.startswith("series:")):
        return key
    metadata = first.metadata
    if acquisition_channel(metadata) is not None:  # series grouped by name: its first file names it
        return acquisition_channel(metadata)
    if metadata.voltage_kv is not None and not metadata.detector:
        provenance["channels"] = f"{first.path.name}: no detector in the metadata, read as BSE at {metadata.voltage_kv:g} kV"
        return float(metadata.voltage_kv)
    if default is not None and n_groups == 1:
        provenance["channels"] = f"{first.path.name}: no detector and voltage in the metadata, read as {channel_label(default)}"
        return channel_key(default)
    where = first.path.parent if n_groups > 1 else first.path
    raise ValueError(
        f"{where}: the metadata name no detector and beam voltage, so the channel is unknown: name it with "
        f"channels={{<name>: '<file pattern>'}}, e.g. channels={{bse_2kV: '*.tif'}}"
    )


def _check_same_slices(series: Mapping[Channel, list[_Page]]) -> None:
    """Every channel holds the same slice numbers (the stacks of a dataset align slice by slice)."""
    numbers = {c: [slice_number(p.path) for p in pages] if len(pages) > 1 else [None] for c, pages in series.items()}
    (first, reference), *others = numbers.items()
    for channel, found in others:
        if found != reference:
            extra = sorted(set(found) ^ set(reference), key=lambda n: -1 if n is None else n)
            raise ValueError(
                f"channels {channel_label(first)} ({series[first][0].path.parent}) and {channel_label(channel)} hold "
                f"different slices ({len(reference)} and {len(found)}; numbers in one only: {extra[:10]})"
            )


def _order(pages: list[_Page], allow_gaps: bool) -> tuple[list[_Page], list[str]]:
    """Pages in slice-number order; a repeated number is an error, a gap too unless allow_gaps."""
    if len(pages) == 1:
        return pages, []
    numbers = [slice_number(p.path) for p in pages]
    missing = [p.path for p, n in zip(pages, numbers) if n is None]
    if missing:
        raise ValueError(f"{missing[0]}: no slice number in the file name (expected e.g. 'slice_0012.tif')")
    order = sorted(range(len(pages)), key=lambda i: numbers[i])
    pages, numbers = [pages[i] for i in order], [numbers[i] for i in order]
    skipped = []
    for (a, n_a), (b, n_b) in zip(zip(pages, numbers), zip(pages[1:], numbers[1:])):
        if n_b == n_a:
            raise ValueError(f"{b.path} and {a.path} both carry slice number {n_b}")
        if n_b > n_a + 1:
            gap = f"slices {n_a + 1}-{n_b - 1}" if n_b > n_a + 2 else f"slice {n_a + 1}"
            if not allow_gaps:
                raise ValueError(f"{a.path.parent}: {gap} missing between {a.path.name} and {b.path.name}: "
                                 "set allow_gaps=true to skip the gap (the stack then has uneven spacing there)")
            skipped.append(f"{a.path.parent}: {gap} missing between {a.path.name} and {b.path.name}, skipped")
    return pages, skipped


def _crop(first: _Page, crop, provenance: dict) -> tuple[int, int, int, int]:
    """The sample area (y0, y1, x0, x1): the config's crop, else the page without its data bar."""
    if crop is not None:
        y0, y1, x0, x1 = (int(c) for c in crop)
        if not (0 <= y0 < y1 <= first.height and 0 <= x0 < x1 <= first.width):
            raise ValueError(f"crop={[y0, y1, x0, x1]} must lie inside the {first.height} x {first.width} images "
                             f"({first.path}) with y0 < y1, x0 < x1")
        provenance["crop"] = f"crop={[y0, y1, x0, x1]} from the config"
        return y0, y1, x0, x1
    stated = first.metadata.image_size[0] if first.metadata.image_size else None
    image = None
    if stated is None:
        image = _grey(np.asarray(tifffile.imread(first.path, key=0)), first.path, first.samples)
    rows, reason = databar_rows(first.height, stated, image)
    provenance["crop"] = f"{rows} bottom rows cut ({reason})" if rows else reason
    return 0, first.height - rows, 0, first.width


def _pixel_size(series: Mapping[Channel, list[_Page]], given, provenance: dict) -> tuple[float, float]:
    """The (y, x) pixel size in nm: the config's, else the metadata's, equal on every slice."""
    if given is not None:
        y, x = (float(v) for v in np.broadcast_to(np.asarray(given, float), (2,)))
        if not (y > 0 and x > 0 and math.isfinite(y) and math.isfinite(x)):
            raise ValueError(f"pixel_size_nm must be positive, got {given}")
        provenance["pixel_size"] = "pixel_size_nm from the config"
        return y, x
    reference = None
    for members in series.values():
        for page in members:
            size = page.metadata.pixel_size_nm
            if size is None:
                raise ValueError(
                    f"{page.path}: no pixel size in its metadata (no FEI/Thermo, Zeiss, OME or ImageJ resolution): "
                    "set pixel_size_nm=<nm per pixel>"
                )
            if reference is None:
                reference = (page, size)
            elif not np.allclose(size, reference[1], rtol=1e-3):
                raise ValueError(
                    f"{page.path}: pixel size {size[1]:g} x {size[0]:g} nm, {reference[0].path} has "
                    f"{reference[1][1]:g} x {reference[1][0]:g} nm: a series must keep one pixel size "
                    "(set pixel_size_nm= to override)"
                )
    page, size = reference
    provenance["pixel_size"] = f"{page.metadata.vendor or 'TIFF'} metadata ({page.metadata.source or page.path.name})"
    return float(size[0]), float(size[1])


def _tilt(metadata: SliceMetadata, pixel_y: float, tilt_deg, provenance: dict) -> float:
    """The true y spacing: the pixel size, or pixel / sin(angle) for a face imaged at an angle
    without the microscope's tilt correction."""
    if tilt_deg is not None:
        angle = float(tilt_deg)
        if not 0 < angle <= 90:
            raise ValueError(f"tilt_deg must be in (0, 90] (90: the face seen head-on), got {tilt_deg}")
        source = "tilt_deg from the config"
    elif metadata.tilt_correction:
        provenance["tilt"] = "corrected by the microscope (tilt correction on): y spacing = pixel size"
        return pixel_y
    elif metadata.stage_tilt_deg is not None and 10 <= metadata.stage_tilt_deg < 89.5 and metadata.tilt_correction is False:
        angle, source = float(metadata.stage_tilt_deg), "the stage tilt of the metadata (tilt correction off)"
    else:
        provenance["tilt"] = ("no tilt information: y spacing = pixel size (set tilt_deg= if the face was imaged "
                              "at an angle without tilt correction)")
        return pixel_y
    y = pixel_y / math.sin(math.radians(angle))
    provenance["tilt"] = (f"face at {angle:g} deg to the beam ({source}): y foreshortened, true y spacing "
                          f"{pixel_y:g} / sin({angle:g} deg) = {y:.4g} nm" if angle < 90 else
                          f"face seen head-on ({source}): y spacing = pixel size")
    return y


def _slice_thickness(metadata: SliceMetadata, given, provenance: dict) -> float | None:
    if given is not None:
        z = float(given)
        if not z > 0:
            raise ValueError(f"slice_thickness_nm must be positive, got {given}")
        provenance["slice_thickness"] = "slice_thickness_nm from the config"
        return z
    if getattr(metadata, "z_spacing_nm", None):
        provenance["slice_thickness"] = f"{metadata.vendor} metadata (z spacing)"
        return float(metadata.z_spacing_nm)
    provenance["slice_thickness"] = "unknown: not in the files (set slice_thickness_nm=<nm> or auto)"
    return None
