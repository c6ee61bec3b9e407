"""Segmentations as OME-Zarr (NGFF 0.4), which napari (napari-ome-zarr), Neuroglancer, webKnossos
and other volume-EM tools open lazily, chunk by chunk.

One multiscale image with a single full-resolution level "0": axes z, y, x in nanometres, the
voxel size as its scale transform, chunks of whole 64 x 256 x 256 blocks. Written slice by slice
from any slice source (a LazyStack of segmentation.tif), into a folder beside the target that is
renamed into place when complete. zarr is an optional dependency (pip install -e ".[zarr]"):
the zarr-python library, not a writer of our own, because the format's chunk layout and codecs
are its job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fibml.io.files import atomic_folder

__all__ = ["NGFF_VERSION", "read_ome_zarr", "write_ome_zarr"]

NGFF_VERSION = "0.4"


def _zarr():
    try:
        import zarr
    except ImportError as error:  # an optional extra
        raise ImportError('OME-Zarr output needs zarr: pip install -e ".[zarr]" (or pip install "zarr>=3")') from error
    return zarr


def write_ome_zarr(path: str | Path, source, voxel_size_nm: Sequence[float] | None, name: str = "segmentation",
                   chunks: Sequence[int] = (64, 256, 256), overwrite: bool = False) -> Path:
    """Write a (z, y, x) slice source (anything with .shape, .dtype or [z] arrays) as an OME-Zarr
    image at `path` (conventionally <name>.ome.zarr), one slice at a time."""
    zarr = _zarr()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: set overwrite=true to replace it")
    shape = tuple(int(n) for n in source.shape)
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a (z, y, x) stack, got shape {shape}")
    dtype = np.dtype(getattr(source, "dtype", None) or np.asarray(source[0]).dtype)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape))
    scale = [1.0, 1.0, 1.0] if voxel_size_nm is None else [float(v) for v in voxel_size_nm]
    with atomic_folder(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        array = root.create_array("0", shape=shape, chunks=chunks, dtype=dtype,
                                  chunk_key_encoding={"name": "v2", "separator": "/"}, fill_value=0)
        for z0 in range(0, shape[0], chunks[0]):  # one z-block of chunks at a time: whole chunks, bounded memory
            z1 = min(shape[0], z0 + chunks[0])
            array[z0:z1] = np.stack([np.asarray(source[z], dtype=dtype) for z in range(z0, z1)])
        root.attrs["multiscales"] = [{
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }]
    return path


def read_ome_zarr(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The full-resolution level of an OME-Zarr image written by write_ome_zarr and its voxel size (nm)."""
    zarr = _zarr()
    root = zarr.open_group(str(path), mode="r")
    multiscale = root.attrs["multiscales"][0]
    level = multiscale["datasets"][0]
    scale = next(t["scale"] for t in level["coordinateTransformations"] if t["type"] == "scale")
    return np.asarray(root[level["path"]][:]), tuple(float(s) for s in scale)
