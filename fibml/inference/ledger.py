"""What predict_to_disk keeps in its output folder to resume: the work folder with its output
files and fingerprint, each process's record of finished chunks, the finished summary; and the
ResumeLedger that opens, resumes, commits and finalises one prediction there."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fibml
from fibml.io import create_stack_file, json_default, write_json

__all__ = ["FINGERPRINT", "LEDGER", "SEGMENTATION", "WORK_DIR", "DoneFile", "ResumeLedger", "canonical",
           "clear_finished", "differences", "finished_chunks", "probability_name", "read_json", "read_records",
           "start_work", "summary_paths"]


WORK_DIR = ".partial"  # work folder inside out_dir: temporary outputs, ledger, done files


FINGERPRINT = "prediction_fingerprint.json"  # fingerprint and summary of a finished prediction


LEDGER = "ledger.json"


SEGMENTATION = "segmentation.tif"


class ResumeLedger:
    """One prediction's state in its output folder, so that a run stopped at any point resumes.

    open: a finished result of this fingerprint is reused, a work folder of this fingerprint is
    resumed, anything else is set up anew (a foreign result or work folder only with overwrite).
    commit: each process records the chunks it finished in its own done file (done_file), after
    flushing the output files. finalise: every chunk committed, the outputs are renamed into
    place (segmentation.tif last), the fingerprint is written with the summary, the work folder
    removed."""

    def __init__(self, out_dir: str | Path, fingerprint: dict, files: Sequence[str]):
        self.out_dir, self.fingerprint, self.files = Path(out_dir), fingerprint, list(files)
        self.work = self.out_dir / WORK_DIR
        self.run_id = f"{os.getpid()}-{time.time_ns()}"

    def open(self, shape, voxel, n_chunks: int, overwrite: bool = False) -> dict | None:
        """The stored summary of a finished prediction of this fingerprint whose files are all
        there; else None, with the work folder resumed or set up (empty output files of `shape`
        and `voxel`, then the ledger)."""
        out_dir, work, fp, names = self.out_dir, self.work, self.fingerprint, self.files
        finished = read_json(out_dir / FINGERPRINT)
        ledger = read_json(work / LEDGER)
        if finished is not None and finished.get("fingerprint") == fp and all((out_dir / n).is_file() for n in names):
            if work.exists() and ledger is not None and ledger.get("fingerprint") == fp:
                shutil.rmtree(work)  # a finalisation stopped just before its last step
            return finished["summary"]
        resume = False
        if work.exists():
            if not (work / LEDGER).exists():
                shutil.rmtree(work)  # stopped while being set up: holds no finished chunk
            elif ledger is not None and ledger.get("fingerprint") == fp:
                resume = True
            elif overwrite:
                shutil.rmtree(work)
            else:
                raise ValueError(
                    f"{work} holds an unfinished prediction with other settings (differing: "
                    f"{differences(ledger, fp)}): set overwrite=true to discard it, or choose another output folder"
                )
        if resume and not all((work / n).is_file() or (out_dir / n).is_file() for n in names):
            shutil.rmtree(work)  # its output files are gone: start again
            resume = False
        if not resume:
            clear_finished(out_dir, fp, finished, overwrite)
            start_work(work, shape, names, voxel, {"fibml_version": fibml.__version__, "fingerprint": fp,
                                                   "n_chunks": n_chunks, "files": names})
        return None

    def committed(self) -> dict[int, dict]:
        """The chunks committed so far, by this run or an earlier one: {index: record}."""
        return read_records(self.work)

    def done_file(self, rank: int, device) -> DoneFile:
        """The done file in which the process of this rank commits its chunks."""
        return DoneFile(self.work / f"done-{self.run_id}-{rank}.json", str(device))

    def error_file(self, rank: int) -> Path:
        """Where the worker process of this rank leaves its traceback when it fails."""
        return self.work / f"error-{self.run_id}-{rank}.txt"

    def finalise(self, summary: dict) -> dict:
        """Rename the outputs into place, store the fingerprint with the summary, remove the work
        folder; the summary with its out_dir and paths."""
        for name in self.files:  # probabilities first, segmentation.tif last
            if (self.work / name).exists():
                os.replace(self.work / name, self.out_dir / name)
            elif not (self.out_dir / name).is_file():
                raise RuntimeError(f"{self.work / name} is missing: delete {self.work} and run again")
        write_json(self.out_dir / FINGERPRINT,
                   {"fibml_version": fibml.__version__, "fingerprint": self.fingerprint, "summary": summary})
        shutil.rmtree(self.work)
        return summary_paths(summary, self.out_dir, self.files)


@dataclass
class DoneFile:
    """A process's record of the chunks it committed (done-<run>-<rank>.json in the work folder),
    rewritten whole after each chunk; picklable, for worker processes."""

    path: Path
    device: str
    chunks: dict[str, dict] = field(default_factory=dict)

    def commit(self, index: int, class_counts: Sequence[int], seconds: float) -> None:
        """Record a chunk whose outputs are flushed: from now on a rerun does not compute it again."""
        self.chunks[str(index)] = {"class_counts": [int(c) for c in class_counts], "seconds": round(seconds, 3)}
        write_json(self.path, {"device": self.device, "chunks": self.chunks})


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
