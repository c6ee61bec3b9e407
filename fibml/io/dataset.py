"""Dataset folders: ``manifest.json`` (voxel size in nm, voltages, materials, generator
parameters, fibml version), one (z, y, x) TIFF stack per image channel, ``labels.tif`` (uint8
ground truth, 0 = pore, 1 = solid, more classes allowed; real data has none) and, for stacks of
varying slice thickness, ``thickness.csv``."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fibml
from fibml.channels import CHANNEL_RE, Channel, channel_key, channel_label
from fibml.geometry import check_thicknesses
from fibml.io.files import atomic_folder, atomic_path, csv_value, shape_mismatch, write_json
from fibml.io.lazy import LazyStack, open_stack
from fibml.io.tiff import read_stack, write_stack

__all__ = [
    "LABELS",
    "MANIFEST",
    "THICKNESS",
    "Dataset",
    "available_channels",
    "dataset_manifest",
    "open_dataset_stacks",
    "read_dataset",
    "read_manifest",
    "read_thickness_csv",
    "stack_name",
    "write_dataset",
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

    with atomic_folder(folder) as tmp:
        for v, stack in images.items():
            write_stack(tmp / stack_name(v), np.asarray(stack, dtype=np.float32), voxel)
        if labels is not None:
            write_stack(tmp / LABELS, np.asarray(labels).astype(np.uint8), voxel)
        if thickness_nm is not None:
            write_thickness_csv(tmp / THICKNESS, check_thicknesses(thickness_nm, n_slices=reference[0], where=THICKNESS))
        for name, (array, extra_voxel) in (extra_stacks or {}).items():
            write_stack(tmp / name, array, extra_voxel)
        files = [*shapes, *(extra_stacks or {})] + ([THICKNESS] if thickness_nm is not None else [])
        write_json(tmp / MANIFEST, dataset_manifest(list(images), reference, voxel, files, manifest))
    return folder


def dataset_manifest(channels: Sequence[Channel], shape: Sequence[int], voxel_size_nm: Sequence[float],
                     files: Sequence[str], extra: Mapping | None = None) -> dict:
    """The content of a dataset folder's manifest.json: fibml's version, `extra` (what made the
    dataset), then the voxel size (z, y, x) nm, the shape, the voltages, the channels and the files."""
    return {
        "fibml_version": fibml.__version__,
        **dict(extra or {}),
        "voxel_size_nm": [float(v) for v in voxel_size_nm],
        "shape": [int(n) for n in shape],
        "voltages_kV": sorted({_voltage_of(v) for v in channels}),
        "channels": [channel_label(v) for v in _sorted_channels(channels)],
        "files": sorted(files),
    }


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
            writer.writerow([i, repr(float(ti)), *(csv_value(v[i]) for v in extra.values())])
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


def available_channels(folder: str | Path) -> list[Channel]:
    """Channel keys of the image stacks in a folder: BSE voltages ascending, then detector names."""
    return _sorted_channels([channel_key(p.stem) for p in Path(folder).iterdir() if _STACK_RE.match(p.name)])


def _sorted_channels(channels) -> list[Channel]:
    return sorted(channels, key=lambda c: (isinstance(c, str), c))


def _voltage_of(channel: Channel) -> float:
    """The beam voltage (kV) of a channel key (2, 2.0, "bse_2kV" or "se2_1kV")."""
    channel = channel_key(channel)
    return channel if isinstance(channel, float) else float(CHANNEL_RE.match(channel).group(2))


def read_manifest(folder: str | Path) -> dict:
    """The manifest.json of a dataset folder as a dict ({} when the folder has none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


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
