"""What predict_to_disk keeps in its output folder to resume: the work folder with its output
files and fingerprint, each process's record of finished chunks, the finished summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fibml.io import create_stack_file, json_default, write_json

__all__ = ["FINGERPRINT", "LEDGER", "SEGMENTATION", "WORK_DIR", "canonical", "clear_finished", "differences",
           "finished_chunks", "probability_name", "read_json", "read_records", "start_work", "summary_paths"]


WORK_DIR = ".partial"  # work folder inside out_dir: temporary outputs, ledger, done files


FINGERPRINT = "prediction_fingerprint.json"  # fingerprint and summary of a finished prediction


LEDGER = "ledger.json"


SEGMENTATION = "segmentation.tif"


def probability_name(class_index: int) -> str:
    """File name of one class's probabilities: 'probability_class1.tif'."""
    return f"probability_class{class_index}.tif"


def finished_chunks(out_dir: str | Path) -> list[int]:
    """Indices of the chunks an unfinished predict_to_disk into out_dir has committed."""
    return sorted(read_records(Path(out_dir) / WORK_DIR))


def start_work(work: Path, shape, names: Sequence[str], voxel, ledger: dict) -> None:
    """Create the work folder's output files, then its ledger (a folder without one holds
    nothing finished and is discarded by the next run)."""
    work.mkdir(parents=True)
    for name in names:
        create_stack_file(work / name, shape, np.uint8 if name == SEGMENTATION else np.float32, voxel).close()
    write_json(work / LEDGER, ledger)


def clear_finished(out_dir: Path, fp: dict, finished: dict | None, overwrite: bool) -> None:
    """Remove a finished result of another fingerprint (only with overwrite) or the remains of
    one of this fingerprint (files deleted since)."""
    old = [p for p in [out_dir / FINGERPRINT, *sorted(out_dir.glob("probability_class*.tif")), out_dir / SEGMENTATION]
           if p.is_file()]
    if not old:
        return
    same = finished is not None and finished.get("fingerprint") == fp
    if not same and not overwrite:
        raise ValueError(
            f"{out_dir} already holds a prediction ({', '.join(p.name for p in old)}) made with other settings "
            f"(differing: {differences(finished, fp)}): set overwrite=true to replace it, or choose another "
            "output folder"
        )
    for path in old:  # the fingerprint first: no finished-claim outlives its files
        path.unlink()


def read_records(work: Path) -> dict[int, dict]:
    """Committed chunks {index: record} from every done file of the work folder."""
    records: dict[int, dict] = {}
    for path in sorted(work.glob("done-*.json")) if work.is_dir() else []:
        content = read_json(path) or {}
        records.update({int(i): r for i, r in content.get("chunks", {}).items()})
    return records


def read_json(path: Path) -> dict | None:
    """A JSON file's content; None when missing or unreadable (then treated as foreign)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def canonical(value) -> dict:
    """value as it reads back from JSON (tuples -> lists, keys -> str), to compare with a stored one."""
    return json.loads(json.dumps(value, default=json_default, sort_keys=True))


def differences(stored: dict | None, fp: dict) -> str:
    """The fingerprint keys in which a stored prediction differs from this one."""
    stored = (stored or {}).get("fingerprint")
    if not isinstance(stored, dict):
        return "no readable fingerprint"
    keys = []
    for part in ("settings", "layout"):
        old, new = stored.get(part), fp.get(part)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += [f"{part}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            keys.append(part)
    return ", ".join(keys) or "none"


def summary_paths(summary: dict, out_dir: Path, names: Sequence[str]) -> dict:
    probabilities = [out_dir / n for n in names if n != SEGMENTATION]
    paths = {"segmentation": out_dir / SEGMENTATION, "probabilities": probabilities, "fingerprint": out_dir / FINGERPRINT}
    return {**summary, "out_dir": out_dir, "paths": paths}
