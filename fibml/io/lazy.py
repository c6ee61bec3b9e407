"""Stacks larger than memory: ``open_stack`` opens a TIFF without reading its pixels and checks
that it is complete, ``LazyStack`` reads slices (or crops of them) on demand, and
``create_stack_file`` / ``StackFile`` write results slice by slice or block by block. Neither
reads nor writes go through memory maps (whose pages count in the process's resident memory, up
to the size of the files): both use positioned reads and writes (os.preadv / os.pwrite) of just
the bytes needed."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Self

import numpy as np
import tifffile

from fibml.io.integrity import incomplete, tifffile_errors
from fibml.io.tiff import imagej_kwargs, tiff_voxel_size

__all__ = ["LazyStack", "StackFile", "create_stack_file", "open_stack", "open_stack_file"]


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
    with tifffile_errors() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), series.dtype
                if dtype is not None:  # tifffile reports native byte order; read in the file's
                    dtype = np.dtype(tif.byteorder + dtype.char)
                voxel = tiff_voxel_size(tif)
                contiguous = series.dataoffset is not None
                offset = series.dataoffset
                problem = incomplete(tif, series, size)
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
                                   returnoffset=True, **imagej_kwargs(voxel_size_nm))
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
