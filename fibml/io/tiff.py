"""Whole TIFF stacks: read and write (z, y, x) arrays with their voxel size in nm (ImageJ
metadata, as Fiji reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from fibml.io.files import atomic_path

__all__ = ["imagej_kwargs", "read_stack", "tiff_voxel_size", "write_stack"]


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
        voxel = tiff_voxel_size(tif)
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
        tifffile.imwrite(tmp, array, **imagej_kwargs(voxel_size_nm))
    return Path(path)


def imagej_kwargs(voxel_size_nm) -> dict:
    """tifffile keywords for an ImageJ (z, y, x) stack carrying the voxel size in nm."""
    kwargs: dict = {"imagej": True, "metadata": {"axes": "ZYX"}}
    if voxel_size_nm is not None:
        dz, dy, dx = np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,))
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        kwargs["metadata"].update(spacing=float(dz), unit="nm")
    return kwargs


def tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
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
