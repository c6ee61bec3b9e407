"""Is a TIFF complete? A truncated copy (an interrupted transfer) is refused before hours of
prediction: the image headers (IFDs) and the pixel data must lie inside the file."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import tifffile

__all__ = ["incomplete", "tifffile_errors"]


def incomplete(tif: tifffile.TiffFile, series, size: int) -> str | None:
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
def tifffile_errors() -> Iterator[list[str]]:
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
