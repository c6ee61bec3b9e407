"""TIFF stacks and dataset folders on disk.

A dataset is a folder with `manifest.json` (voxel size in nm, voltages, materials, generator
parameters, fibml version) and (z, y, x) TIFF stacks, one per image channel, and `labels.tif`
(uint8 ground truth, 0 = pore, 1 = solid, more classes allowed). Real data has the same layout
without labels.

Channels. A BSE stack at V kV is `bse_<V>kV.tif` and its channel key is the voltage, a float
(2 -> bse_2kV.tif). Other detectors (the in-lens and chamber SE2 detectors of
random-forest-multi-detector.txt) are `<detector>_<V>kV.tif` and their key is that name, a
string ("se2_1kV" -> se2_1kV.tif). Wherever fibml asks for `voltages` (data.voltages, the
dataset reader), either kind of key may be given: `[1, 2, 4]` or `[se2_1kV, inlens_1kV]`. Every writer is atomic: a temporary file (or folder) is
renamed into place, so an interrupted run leaves nothing half-written.

Lazy stacks. A real acquisition (3 voltages x 316 slices x 3072 x 2048) does not fit in memory
as float32; `open_stack` opens a TIFF without reading its pixels and checks that it is complete
(a truncated copy is refused before hours of prediction), `LazyStack` reads slices on demand,
`open_dataset_stacks` opens a dataset folder that way (fibml.data.transforms.stack_percentiles
computes the normalisation range of such a stack from a bounded sub-sample). Results too large for memory are written piece
by piece: `create_stack_file` creates an ImageJ TIFF of zeros (laid out like write_stack's) and
returns a `StackFile` that writes slices or 3D blocks into it. Neither reads nor writes go
through memory maps (whose pages count in the process's resident memory, up to the size of
the files): both use positioned reads and writes (os.preadv / os.pwrite) of just the bytes
needed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import tifffile

import fibml
from fibml.channels import _CHANNEL_RE, Channel, channel_key, channel_label
from fibml.geometry import check_thicknesses

__all__ = [
    "Dataset",
    "LazyStack",
    "StackFile",
    "atomic_path",
    "available_channels",
    "channel_key",
    "channel_label",
    "create_stack_file",
    "open_dataset_stacks",
    "open_stack",
    "open_stack_file",
    "read_dataset",
    "read_manifest",
    "read_stack",
    "read_thickness_csv",
    "stack_name",
    "write_dataset",
    "write_json",
    "write_stack",
    "write_thickness_csv",
]

LABELS = "labels.tif"
MANIFEST = "manifest.json"
THICKNESS = "thickness.csv"  # slice thicknesses (nm), one row per slice
_STACK_RE = re.compile(r"^([a-z][a-z0-9]*)_(\d+(?:\.\d+)?)kV\.tif$", re.IGNORECASE)


@dataclass
class Dataset:
    """A dataset folder in memory: images[voltage_kV] and labels are (z, y, x) arrays."""

    path: Path
    images: dict[Channel, np.ndarray]
    voxel_size_nm: tuple[float, float, float]
    labels: np.ndarray | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def voltages(self) -> list[Channel]:
        """The channel keys: BSE voltages (kV, ascending), then detector signals by name."""
        return _sorted_channels(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape

    def stack(self, voltages: Sequence[Channel] | None = None) -> np.ndarray:
        """Images of the given channels (voltages or detector names) as one (channel, z, y, x) float32 array."""
        voltages = self.voltages if voltages is None else voltages
        return np.stack([self.images[channel_key(v)] for v in voltages]).astype(np.float32, copy=False)


def stack_name(channel) -> str:
    """File name of a channel's stack: 2 -> 'bse_2kV.tif', 1.5 -> 'bse_1.5kV.tif', 'se2_1kV' -> 'se2_1kV.tif'."""
    key = channel_key(channel)
    return f"bse_{key:g}kV.tif" if isinstance(key, float) else f"{key}.tif"


def read_stack(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a (z, y, x) TIFF stack and its voxel size in nm (z, y, x), or None if not stored.

    A single 2-D image is returned as one slice. Raises ValueError for stacks that are not
    numeric or hold NaN / inf, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TIFF file")
    with tifffile.TiffFile(path) as tif:
        array = tif.asarray()
        voxel = _voxel_size(tif)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a (z, y, x) stack, found an array of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: expected integer or float pixels, found dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{path}: stack contains {np.count_nonzero(~np.isfinite(array))} NaN or inf pixels")
    return array, voxel


def write_stack(path: str | Path, array: np.ndarray, voxel_size_nm: Sequence[float] | float | None = None) -> Path:
    """Write a (z, y, x) stack as an ImageJ TIFF with the voxel size (nm), atomically."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **_imagej_kwargs(voxel_size_nm))
    return Path(path)


def create_stack_file(
    path: str | Path,
    shape: Sequence[int],
    dtype,
    voxel_size_nm: Sequence[float] | float | None = None,
) -> StackFile:
    """Create a (z, y, x) ImageJ TIFF of zeros, laid out like write_stack's (contiguous pixels),
    and open it for writing piece by piece (see StackFile) without holding the stack in memory.

    Not atomic (it is meant for a work folder whose files are renamed into place once complete).
    The file is sparse until written; stacks over 4 GB become ImageJ's own large-file layout
    (one IFD, contiguous pixels), which ImageJ and tifffile both read.
    """
    path, shape, dtype = Path(path), tuple(int(n) for n in shape), np.dtype(dtype).newbyteorder("=")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{path}: expected a (z, y, x) shape, got {shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncating ImageJ file")  # the >4 GB layout, on purpose
        # the header tifffile.memmap would write: pixels aligned to the allocation granularity
        written = tifffile.imwrite(path, data=None, shape=shape, dtype=dtype, align=tifffile.TIFF.ALLOCATIONGRANULARITY,
                                   returnoffset=True, **_imagej_kwargs(voxel_size_nm))
    if written is None:
        raise ValueError(f"{path}: tifffile did not store the pixels of a {shape} {dtype} stack contiguously")
    return StackFile(path, shape, dtype, int(written[0]))  # the first page's offset: the others follow it


def open_stack_file(path: str | Path, shape: Sequence[int] | None = None) -> StackFile:
    """Open an existing TIFF stack with contiguous (uncompressed) pixels, e.g. one that
    create_stack_file made, to write into it piece by piece (see StackFile).

    shape: the (z, y, x) shape to address it as (tifffile drops axes of length 1); it must have
    as many pixels as the file. ValueError when the pixels are not stored in one block."""
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        stored, offset = tuple(int(n) for n in series.shape), series.dataoffset
        dtype = None if series.dtype is None else np.dtype(tif.byteorder + series.dtype.char)
    if offset is None or dtype is None:
        raise ValueError(f"{path}: expected an uncompressed TIFF stack with contiguous pixels to write into")
    if shape is None:
        shape = (1,) * (3 - len(stored)) + stored if len(stored) <= 3 else stored
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or int(np.prod(shape)) != int(np.prod(stored)):
        raise ValueError(f"{path}: holds a {stored} stack, which cannot be written as a (z, y, x) stack of shape {shape}")
    return StackFile(path, shape, dtype, int(offset))


class _Closing:
    """Context-manager protocol of the lazily opened files below: close() on exit and on
    garbage collection (quietly: at interpreter shutdown tifffile may already be gone)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with suppress(Exception):
            self.close()


class StackFile(_Closing):
    """Writes pixels into a (z, y, x) TIFF stack whose pixels are stored contiguously (made by
    create_stack_file, opened by open_stack_file), with positioned writes (os.pwrite).

    `f[z0:z1] = slices` writes whole slices (one write), `f[z0:z1, y0:y1, x0:x1] = block` a
    3D block (one write per slice for full-width rows, else one per row: bytes outside the
    block are never touched, so processes can write disjoint blocks of the same file at the
    same time). Values are cast to the file's dtype like numpy assignment casts them.
    `flush()` hands the written data to the disk (fsync); `close()` (or `with f:`) closes the
    file. Unlike a memory map, nothing written stays in this process's memory: the written
    pages live in the OS page cache, not in the process's resident set.

    When pickled it holds only the path and the geometry, and reopens the file on its next
    write in the receiving process.
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype, offset: int):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)  # as stored, byte order included
        self.offset = int(offset)  # of the first pixel in the file
        self._file = None

    ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StackFile({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, offset={self.offset})"

    def __setitem__(self, key, value) -> None:
        (z0, z1), (y0, y1), (x0, x1), target = _block_key(key, self.shape, self.path)
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value).astype(self.dtype, copy=False), target))
        if data.size == 0:
            return
        data = data.reshape(z1 - z0, y1 - y0, x1 - x0)
        _, n_y, n_x = self.shape
        item = self.dtype.itemsize
        fd = self._fd()
        if x0 == 0 and x1 == n_x:
            if y0 == 0 and y1 == n_y:  # whole slices: one contiguous range
                _pwrite(fd, data, self.offset + z0 * n_y * n_x * item, self.path)
                return
            for i, z in enumerate(range(z0, z1)):  # full-width rows: contiguous within a slice
                _pwrite(fd, data[i], self.offset + (z * n_y + y0) * n_x * item, self.path)
            return
        for i, z in enumerate(range(z0, z1)):
            for j, y in enumerate(range(y0, y1)):
                _pwrite(fd, data[i, j], self.offset + ((z * n_y + y) * n_x + x0) * item, self.path)

    def flush(self) -> None:
        """Make what was written durable (fsync) before, e.g., a ledger records it."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # reopened lazily in the receiving process
        return state

    def _fd(self) -> int:
        if self._file is None:
            self._file = open(self.path, "r+b", buffering=0)  # noqa: SIM115 -- held until close()
            size = os.fstat(self._file.fileno()).st_size
            end = self.offset + int(np.prod(self.shape)) * self.dtype.itemsize
            if size < end:
                self.close()
                raise ValueError(f"{self.path}: the file has {size} bytes, its pixels end at byte {end}")
        return self._file.fileno()


def _block_key(key, shape, path) -> tuple:
    """((z0, z1), (y0, y1), (x0, x1), shape a value must have) of a StackFile index: up to
    three ints or step-1 slices."""
    key = key if isinstance(key, tuple) else (key,)
    if len(key) > 3:
        raise IndexError(f"{path}: a (z, y, x) stack takes at most 3 indices, got {len(key)}")
    key = key + (slice(None),) * (3 - len(key))
    bounds, target = [], []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"{path}: index {i} is out of range for an axis of {n}")
            bounds.append((i % n, i % n + 1))
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"{path}: write contiguous ranges (step 1), not {k}")
            bounds.append((start, max(start, stop)))
            target.append(max(0, stop - start))
        else:
            raise TypeError(f"{path}: index a StackFile with ints and slices, not {k!r}")
    return (*bounds, tuple(target))


def _pwrite(fd: int, data: np.ndarray, offset: int, path: Path) -> None:
    """Write a C-contiguous array at offset, all of it (os.pwrite may write less at once)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view[done:], offset + done)
        else:  # no positioned writes (Windows): seek, then write
            os.lseek(fd, offset + done, os.SEEK_SET)
            n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(f"{path}: could not write {len(view) - done} bytes at byte {offset + done}")
        done += n


def _pread(fd: int, out: np.ndarray, offset: int, path: Path) -> np.ndarray:
    """Fill a C-contiguous array from offset (os.preadv may read less at once)."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:  # no positioned reads (Windows): seek, then read
            os.lseek(fd, offset + done, os.SEEK_SET)
            chunk = os.read(fd, len(view) - done)
            view[done : done + len(chunk)] = chunk
            n = len(chunk)
        if n <= 0:
            raise OSError(f"{path}: the file ends before byte {offset + len(view)} (truncated since it was opened?)")
        done += n
    return out


def _imagej_kwargs(voxel_size_nm) -> dict:
    """tifffile keywords for an ImageJ (z, y, x) stack carrying the voxel size in nm."""
    kwargs: dict = {"imagej": True, "metadata": {"axes": "ZYX"}}
    if voxel_size_nm is not None:
        dz, dy, dx = np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,))
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        kwargs["metadata"].update(spacing=float(dz), unit="nm")
    return kwargs


def read_dataset(
    folder: str | Path,
    voltages: Sequence[Channel] | None = None,
    require_labels: bool = False,
) -> Dataset:
    """Read a dataset folder; check that every stack has the same shape and a voxel size.

    voltages: which channels to read: BSE voltages (bse_<V>kV.tif) and / or detector stack
        names (se2_1kV -> se2_1kV.tif); default: every channel in the folder.
    """
    folder = Path(folder)
    manifest = read_manifest(_dataset_folder(folder))
    wanted = _wanted_channels(folder, voltages)

    images, voxels = {}, {}
    for v in wanted:
        images[v], voxels[stack_name(v)] = read_stack(folder / stack_name(v))
    labels = None
    if (folder / LABELS).is_file():
        labels, voxels[LABELS] = read_stack(folder / LABELS)
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"{folder / LABELS}: expected non-negative integer class labels, found dtype {labels.dtype}")
        labels = labels.astype(np.uint8, copy=False)
    elif require_labels:
        raise FileNotFoundError(f"{folder} has no {LABELS}: ground truth is needed here")

    reference_name = stack_name(wanted[0])
    reference = images[wanted[0]].shape
    others = {stack_name(v): images[v].shape for v in wanted[1:]}
    if labels is not None:
        others[LABELS] = labels.shape
    for name, shape in others.items():
        if shape != reference:
            raise ValueError(f"{folder}: {shape_mismatch(name, shape, reference_name, reference)}")

    voxel = _dataset_voxel_size(folder, manifest, voxels.values())
    return Dataset(folder, images, voxel, labels, manifest)


def _dataset_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    return folder


def _wanted_channels(folder: Path, voltages: Sequence[Channel] | None) -> list[Channel]:
    """The channel keys to read from a dataset folder (default: all); FileNotFoundError naming
    the missing stacks and those found."""
    available = available_channels(folder)
    wanted = available if voltages is None else [channel_key(v) for v in voltages]
    if not wanted:
        raise FileNotFoundError(
            f"{folder} holds no image stack (expected files named like bse_2kV.tif or se2_1kV.tif)"
        )
    missing = [v for v in wanted if v not in available]
    if missing:
        found = ", ".join(stack_name(v) for v in available) or "none"
        raise FileNotFoundError(
            f"{folder} has no {', '.join(stack_name(v) for v in missing)} (found: {found})"
        )
    return wanted


def _dataset_voxel_size(folder: Path, manifest: Mapping, tiff_voxels) -> tuple[float, float, float]:
    """The manifest's voxel size, else the first one stored in the stacks' TIFF metadata."""
    voxel = manifest.get("voxel_size_nm") or next((v for v in tiff_voxels if v), None)
    if voxel is None:
        raise ValueError(
            f"{folder}: no voxel size: expected 'voxel_size_nm' in {MANIFEST} or in the TIFF metadata"
        )
    return tuple(float(v) for v in np.broadcast_to(np.asarray(voxel, dtype=float), (3,)))


def write_dataset(
    folder: str | Path,
    images: Mapping[Channel, np.ndarray],
    voxel_size_nm: Sequence[float] | float,
    labels: np.ndarray | None = None,
    manifest: Mapping | None = None,
    overwrite: bool = False,
    thickness_nm: Sequence[float] | None = None,
    extra_stacks: Mapping[str, tuple[np.ndarray, Sequence[float] | float]] | None = None,
) -> Path:
    """Write a dataset folder atomically (built beside it, then renamed into place).

    thickness_nm: the slices' true thicknesses, written as thickness.csv (one row per slice).
    extra_stacks: further TIFFs, {file name: (array, voxel size nm)}, e.g. the isotropic
        ground truth of a stack with varying slice thickness.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists: choose another output folder or set overwrite=true")
    shapes = {stack_name(v): np.shape(a) for v, a in images.items()}
    if labels is not None:
        shapes[LABELS] = np.shape(labels)
    reference_name, reference = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if shape != reference:
            raise ValueError(shape_mismatch(name, shape, reference_name, reference))
    voxel = [float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,))]

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for v, stack in images.items():
            write_stack(tmp / stack_name(v), np.asarray(stack, dtype=np.float32), voxel)
        if labels is not None:
            write_stack(tmp / LABELS, np.asarray(labels).astype(np.uint8), voxel)
        if thickness_nm is not None:
            write_thickness_csv(tmp / THICKNESS, check_thicknesses(thickness_nm, n_slices=reference[0], where=THICKNESS))
        for name, (array, extra_voxel) in (extra_stacks or {}).items():
            write_stack(tmp / name, array, extra_voxel)
        content = {
            "fibml_version": fibml.__version__,
            **dict(manifest or {}),
            "voxel_size_nm": voxel,
            "shape": list(reference),
            "voltages_kV": sorted({_voltage_of(v) for v in images}),
            "channels": [channel_label(v) for v in _sorted_channels(images)],
            "files": sorted([*shapes, *(extra_stacks or {})] + ([THICKNESS] if thickness_nm is not None else [])),
        }
        write_json(tmp / MANIFEST, content)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_thickness_csv(
    path: str | Path,
    thicknesses_nm: Sequence[float],
    extra_columns: Mapping[str, Sequence] | None = None,
) -> Path:
    """Write slice thicknesses (nm) as a CSV with header `slice,thickness_nm[,extra...]`, one
    row per slice (slice = 0, 1, ...), atomically. extra_columns: more per-slice columns (e.g.
    z_nm), each as long as thicknesses_nm."""
    path = Path(path)
    t = check_thicknesses(thicknesses_nm, where=str(path))
    extra = {str(k): list(v) for k, v in dict(extra_columns or {}).items()}
    for name, values in extra.items():
        if name in ("slice", "thickness_nm"):
            raise ValueError(f"{path}: extra column {name!r} would replace a standard column")
        if len(values) != len(t):
            raise ValueError(f"{path}: extra column {name!r} has {len(values)} values, there are {len(t)} slices")
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slice", "thickness_nm", *extra])
        for i, ti in enumerate(t):
            writer.writerow([i, repr(float(ti)), *(_csv_value(v[i]) for v in extra.values())])
    return path


def read_thickness_csv(path: str | Path, n_slices: int | None = None) -> np.ndarray:
    """Slice thicknesses (nm, float64 (n,)) from the `thickness_nm` column of a thickness.csv.

    Checks, naming the file: the file exists and has a thickness_nm column; every value is a
    number (else the row), finite and positive (else the slice); a `slice` column, if present,
    counts 0, 1, 2, ...; there are n_slices rows when n_slices is given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such thickness file (expected a CSV with a thickness_nm column)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "thickness_nm" not in columns:
            found = ", ".join(columns) or "an empty file"
            raise ValueError(f"{path}: no 'thickness_nm' column (found: {found})")
        reader.fieldnames = columns
        values = []
        for row_index, row in enumerate(reader):
            raw = row["thickness_nm"]
            try:
                values.append(float(raw))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}, row {row_index} (line {reader.line_num}): thickness_nm {raw!r} is not a number"
                ) from None
            if "slice" in row and str(row["slice"]).strip() != str(row_index):
                raise ValueError(
                    f"{path}, row {row_index} (line {reader.line_num}): slice {row['slice']!r}, expected "
                    f"{row_index} (rows must list slices 0, 1, 2, ... in order)"
                )
    if not values:
        raise ValueError(f"{path}: lists no slices (a header and no rows)")
    return check_thicknesses(values, n_slices, where=str(path))


def _csv_value(value) -> str:
    """A CSV cell: floats in full precision (repr round-trips), everything else as str."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def available_channels(folder: str | Path) -> list[Channel]:
    """Channel keys of the image stacks in a folder: BSE voltages ascending, then detector names."""
    return _sorted_channels([channel_key(p.stem) for p in Path(folder).iterdir() if _STACK_RE.match(p.name)])


def _sorted_channels(channels) -> list[Channel]:
    return sorted(channels, key=lambda c: (isinstance(c, str), c))


def _voltage_of(channel: Channel) -> float:
    """The beam voltage (kV) of a channel key (2, 2.0, "bse_2kV" or "se2_1kV")."""
    channel = channel_key(channel)
    return channel if isinstance(channel, float) else float(_CHANNEL_RE.match(channel).group(2))


def read_manifest(folder: str | Path) -> dict:
    """The manifest.json of a dataset folder as a dict ({} when the folder has none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def write_json(path: str | Path, content: Mapping) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=json_default) + "\n")
    return Path(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- lazy stacks -------------------------------------------------------------------------------


class LazyStack(_Closing):
    """A (z, y, x) TIFF stack that reads slices on demand, never the whole stack.

    Create it with `open_stack`, which checks the file first. `stack[z]` is one (y, x) slice,
    `stack[a:b]` a (z, y, x) array, `stack.region(z, ys, xs)` a crop of one slice. Pixels are
    returned in the file's dtype, in native byte order (normalise them with
    fibml.inference.NormalizedStack).

    Uncompressed files (the data of all pages stored contiguously, as tifffile and ImageJ write
    them) are read with positioned reads (os.preadv) at the data offset: a slice is one read,
    a crop one read of the rows it spans. Nothing is memory-mapped, so what was read does not
    stay in the process's resident memory (the OS page cache still keeps it, outside the
    process). Other files (compressed, tiled, scattered pages) are decoded page by page through
    an open tifffile.TiffFile.

    The object holds only the path and the file's geometry when pickled: a worker process
    reopens the file on its first read. `close()` (or `with stack:`) releases the open file
    now; arrays already returned stay valid.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        dtype: np.dtype,
        voxel_size_nm: tuple[float, float, float] | None,
        contiguous: bool,
        offset: int | None = None,
    ):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.file_dtype = np.dtype(dtype)  # as stored, byte order included
        self.dtype = self.file_dtype.newbyteorder("=")  # as returned
        self.voxel_size_nm = voxel_size_nm
        self.contiguous = contiguous  # read at offsets (True) or decoded page by page (False)
        self.offset = offset  # of the first pixel (contiguous files; found on the first read if None)
        self._file = None
        self._tif: tifffile.TiffFile | None = None

    ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        how = "contiguous" if self.contiguous else "paged"
        return f"LazyStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, {how})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._slice(self._index(key))
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            zs = range(start, stop, step)
            if self.contiguous and step == 1:
                return self._read_rows(start, len(zs), 0, self.shape[1]).reshape(len(zs), *self.shape[1:])
            out = np.empty((len(zs), *self.shape[1:]), dtype=self.dtype)
            for i, z in enumerate(zs):
                out[i] = self._slice(z)
            return out
        raise TypeError(f"{self.path}: index a LazyStack with a slice number or a slice of them, not {key!r}")

    def region(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        """The rows ys and columns xs of slice z (a contiguous file reads only those rows)."""
        z = self._index(z)
        if not self.contiguous:
            return self._slice(z)[ys, xs]
        if isinstance(ys, (int, np.integer)):
            y = int(ys)
            if not -self.shape[1] <= y < self.shape[1]:
                raise IndexError(f"{self.path}: row {y} is out of range (slices have {self.shape[1]} rows)")
            return self.region(z, slice(y % self.shape[1], y % self.shape[1] + 1), xs)[0]
        rows = range(*ys.indices(self.shape[1]))
        if len(rows) == 0:
            return np.empty((0, self.shape[2]), dtype=self.dtype)[:, xs]
        lo, hi = min(rows[0], rows[-1]), max(rows[0], rows[-1]) + 1
        read = self._read_rows(z, 1, lo, hi)[0]
        out = (read if rows.step == 1 else read[rows[0] - lo :: rows.step][: len(rows)])[:, xs]
        return out if out.size == read.size else out.copy()  # a crop does not pin the rows read for it

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None


    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_tif"] = None  # reopened lazily in the receiving process
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("file_dtype", state.get("dtype"))  # pickled by an older fibml
        state.setdefault("offset", None)
        state.setdefault("_file", None)
        state.pop("_memmap", None)
        self.__dict__.update(state)

    def _index(self, z) -> int:
        n = self.shape[0]
        z = int(z)
        if not -n <= z < n:
            raise IndexError(f"{self.path}: slice {z} is out of range (the stack has {n} slices)")
        return z % n

    def _read_rows(self, z: int, n_z: int, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1 of the n_z slices from z of a contiguous file, (n_z, y1 - y0, x), in one
        read: whole slices, or rows of one slice, are contiguous in the file."""
        _, n_y, n_x = self.shape
        if n_z > 1 and (y0, y1) != (0, n_y):
            raise ValueError("internal error: rows of several slices are not contiguous")
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 -- held until close()
        if self.offset is None:
            with tifffile.TiffFile(self.path) as tif:
                self.offset = int(tif.series[0].dataoffset)
        out = np.empty((n_z, y1 - y0, n_x), dtype=self.file_dtype)
        _pread(self._file.fileno(), out, self.offset + (z * n_y + y0) * n_x * self.file_dtype.itemsize, self.path)
        return out if out.dtype == self.dtype else out.astype(self.dtype)

    def _slice(self, z: int) -> np.ndarray:
        if self.contiguous:
            return self._read_rows(z, 1, 0, self.shape[1])[0]
        if self._tif is None:
            self._tif = tifffile.TiffFile(self.path)
        page = self._tif.asarray(key=z, series=0)
        return page.reshape(self.shape[1:])


def open_stack(path: str | Path) -> LazyStack:
    """Open a (z, y, x) TIFF stack lazily after checking, without reading its pixels, that it
    can be read whole: it exists, tifffile parses it, its pixels are numbers, it is 3-D (a 2-D
    image becomes one slice) and it is complete: every image header (IFD) and the pixel data
    lie inside the file (a truncated copy is refused here, not hours into a prediction).

    Raises FileNotFoundError / ValueError naming the file and saying what was expected. NaN
    and inf pixels are not looked for here (that needs every pixel; fibml.data.transforms.stack_percentiles checks
    the slices it samples).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TIFF file")
    size = path.stat().st_size
    with _tifffile_errors() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), series.dtype
                if dtype is not None:  # tifffile reports native byte order; read in the file's
                    dtype = np.dtype(tif.byteorder + dtype.char)
                voxel = _voxel_size(tif)
                contiguous = series.dataoffset is not None
                offset = series.dataoffset
                problem = _incomplete(tif, series, size)
                page_shape = tuple(series.keyframe.shape)
        except Exception as err:  # tifffile raises TiffFileError, struct.error, ValueError, ...
            detail = f"{type(err).__name__}: {err}"
            if logged:
                detail += f"; tifffile: {logged[0]}"
            raise ValueError(
                f"{path}: expected a TIFF stack, found a file tifffile cannot read (not a TIFF, or a damaged "
                f"or truncated one): {detail}"
            ) from err
    if problem:
        raise ValueError(f"{path}: truncated TIFF: {problem}" + (f" (tifffile: {logged[0]})" if logged else ""))
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{path}: expected integer or float pixels, found dtype {dtype}")
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a (z, y, x) stack, found an array of shape {shape}")
    if not contiguous and page_shape != shape[1:]:
        raise ValueError(
            f"{path}: expected one (y, x) image of shape {shape[1:]} per TIFF page, found pages of shape {page_shape}"
        )
    return LazyStack(path, shape, dtype, voxel, contiguous, offset)


def open_dataset_stacks(
    folder: str | Path, channels: Sequence[Channel] | None = None
) -> tuple[dict[Channel, LazyStack], tuple[float, float, float]]:
    """Open a dataset folder's image stacks lazily (see open_stack): ({channel key: LazyStack},
    voxel size nm (z, y, x)). channels: voltages and / or detector stack names as for
    read_dataset (default: every channel in the folder); the same errors for missing stacks, and
    a ValueError naming both files and both shapes when the stacks differ in shape."""
    folder = Path(folder)
    manifest = read_manifest(_dataset_folder(folder))
    stacks = {v: open_stack(folder / stack_name(v)) for v in _wanted_channels(folder, channels)}
    (first, reference), *others = stacks.items()
    for v, stack in others:
        if stack.shape != reference.shape:
            raise ValueError(
                f"{folder}: {shape_mismatch(stack_name(v), stack.shape, stack_name(first), reference.shape)}: "
                f"{stack.path.name} is {stack.shape}, {reference.path.name} is {reference.shape} (z, y, x); "
                "every image stack of a dataset must have the same shape"
            )
    voxel = _dataset_voxel_size(folder, manifest, [s.voxel_size_nm for s in stacks.values()])
    return stacks, voxel


def _incomplete(tif: tifffile.TiffFile, series, size: int) -> str | None:
    """Why a TIFF is incomplete (image headers or pixel data past the end of the file), or None.

    Looks at the whole chain of image headers (IFDs), the last one byte by byte (its entries,
    the values they point to and its link to a next IFD), and where the pixel data end.
    """
    n_ifds = len(tif.pages)  # walks the whole IFD chain; tifffile stops at an IFD past the end
    if not getattr(series, "is_truncated", False) and n_ifds < len(series.pages):
        return f"it lists {len(series.pages)} images but only {n_ifds} image headers (IFDs) are in the file"
    images = (tif.imagej_metadata or {}).get("images")
    n_images = int(np.prod(series.shape[:-2])) if len(series.shape) > 2 else 1
    if isinstance(images, int) and images > n_images:  # tifffile fell back to the pages it could read
        first = tif.pages[0]
        if getattr(first, "is_contiguous", False):  # ImageJ's layout: all images after the first header
            offset, need = int(first.dataoffsets[0]), images * int(first.nbytes)
            if offset + need > size:
                return f"the data need {need} bytes past offset {offset} but the file has {size}"
        return f"its ImageJ metadata lists {images} images but only {n_images} can be read"
    problem = _last_ifd_problem(tif, tif.pages[n_ifds - 1].offset, size)
    if problem:
        return problem
    if series.dataoffset is not None:
        if series.dataoffset + series.nbytes > size:
            return f"the data need {series.nbytes} bytes past offset {series.dataoffset} but the file has {size}"
        return None
    ends = [
        int(offset) + int(count)
        for page in series.pages
        if page is not None
        for offset, count in zip(page.dataoffsets, page.databytecounts)
    ]
    if ends and max(ends) > size:
        return f"the image data end at byte {max(ends)} but the file has {size}"
    return None


# bytes per value of each TIFF field type (TIFF 6 and BigTIFF)
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def _last_ifd_problem(tif: tifffile.TiffFile, offset: int, size: int) -> str | None:
    """Read the last IFD raw: its entries and the values they point to must lie inside the
    file, and its link to a next IFD must be 0 (else the chain was cut short)."""
    fmt, fh = tif.tiff, tif.filehandle
    fh.seek(offset)
    raw = fh.read(fmt.tagnosize)
    if len(raw) < fmt.tagnosize:
        return f"the last image header (IFD) at byte {offset} lies past the end of the file ({size} bytes)"
    n_tags = struct.unpack(fmt.tagnoformat, raw)[0]
    entries_end = offset + fmt.tagnosize + n_tags * fmt.tagsize
    if entries_end + fmt.offsetsize > size:
        return f"the last image header (IFD) needs {entries_end + fmt.offsetsize} bytes but the file has {size}"
    entries = fh.read(n_tags * fmt.tagsize)
    value_size = fmt.tagsize - 4 - fmt.offsetsize  # bytes of an entry's count field
    count_format = fmt.byteorder + ("I" if value_size == 4 else "Q")
    for i in range(n_tags):
        entry = entries[i * fmt.tagsize : (i + 1) * fmt.tagsize]
        code, kind = struct.unpack(fmt.byteorder + "HH", entry[:4])
        count = struct.unpack(count_format, entry[4 : 4 + value_size])[0]
        nbytes = count * _TIFF_TYPE_SIZES.get(kind, 1)
        if nbytes > fmt.offsetsize:  # the value lies elsewhere in the file
            value_offset = struct.unpack(fmt.offsetformat, entry[4 + value_size :])[0]
            if value_offset + nbytes > size:
                return f"tag {code} of the last image header needs {value_offset + nbytes} bytes but the file has {size}"
    next_ifd = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]
    if next_ifd:
        where = "past the end of the file" if next_ifd >= size else "to an unreadable header"
        return f"the chain of image headers (IFDs) is cut short: after {len(tif.pages)} it points {where} (byte {next_ifd} of {size})"
    return None


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs (rather than raises) while parsing a damaged file."""
    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler = Collect(level=logging.ERROR)
    logger.addHandler(handler)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)


def _voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in nm from ImageJ metadata and the resolution tags, if present."""
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    xr, yr = tags["XResolution"].value, tags["YResolution"].value
    if xr[0] == 0 or yr[0] == 0:
        return None
    dx, dy = xr[1] / xr[0], yr[1] / yr[0]
    scale = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "micron": 1e3, "\\u00B5m": 1e3, "µm": 1e3}.get(
        str(meta.get("unit", "")).strip(), None
    )
    if scale is None or (dx == 1 and dy == 1 and "spacing" not in meta):
        return None  # resolution tags without a physical unit carry no voxel size
    dz = float(meta.get("spacing", dx))
    return (dz * scale, dy * scale, dx * scale)


def shape_mismatch(name, shape, reference_name, reference) -> str:
    axes = ("slices", "rows", "columns")
    for axis, (a, b) in enumerate(zip(shape, reference)):
        if a != b:
            return f"{name} has {a} {axes[axis]}, {reference_name} has {b}"
    return f"{name} has shape {shape}, {reference_name} has shape {reference}"


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
