"""Small files fibml writes beside its stacks: JSON (atomic, NaN-safe values), CSV values,
atomic paths (a temporary file or folder renamed into place, so an interrupted run leaves
nothing half-written), and the message that names two stacks of different shapes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_folder", "atomic_path", "csv_value", "json_default", "shape_mismatch", "write_json"]


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


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; only if the block succeeds does it replace `path`
    (a folder there is removed first), else it is removed: a folder appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def shape_mismatch(name, shape, reference_name, reference) -> str:
    axes = ("slices", "rows", "columns")
    for axis, (a, b) in enumerate(zip(shape, reference)):
        if a != b:
            return f"{name} has {a} {axes[axis]}, {reference_name} has {b}"
    return f"{name} has shape {shape}, {reference_name} has shape {reference}"


def csv_value(value) -> str:
    """A CSV cell: floats in full precision (repr round-trips), everything else as str."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)
