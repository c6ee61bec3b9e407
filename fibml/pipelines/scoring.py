"""One scored method's files: its metrics table, section figure, S2 curves and prediction; and
what a dataset or datamodule says about its phases and labelled slices."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fibml.io import write_stack
from fibml.report import save_sections, save_tpcf, write_table

__all__ = ["phase_count", "phase_names", "truth_slices", "write_method"]


def truth_slices(data, z: range) -> np.ndarray | None:
    """The labels of slices z of a dataset or datamodule, or None when it has no labels."""
    return None if data.labels is None else data.labels[z.start : z.stop]


def phase_count(data) -> int:
    """Phases of a dataset: its manifest's list of phases, else the labels' largest value + 1, at least 2."""
    phases = (data.dataset.manifest or {}).get("phases")
    if phases:
        return len(phases)
    return max(2, int(data.labels.max(initial=0)) + 1) if data.labels is not None else 2


def phase_names(data, n: int) -> list[str]:
    """Names of the n phases: the manifest's, then 'phase <i>'."""
    names = list((data.dataset.manifest or {}).get("phases") or ["pore", "solid"])
    return [names[i] if i < len(names) else f"phase {i}" for i in range(n)]


def write_method(out_dir: Path, row: dict, prediction, datamodule, z: range, save_predictions: bool, print_table: bool,
                  curves: Mapping | None = None):
    """metrics.*, slices.png, tpcf.png (the S2 curves given: ground truth and this method) and
    prediction.tif of one method."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table([row], out_dir / "metrics")
    voxel = datamodule.dataset.voxel_size_nm
    truth = truth_slices(datamodule, z)
    if curves:
        save_tpcf(out_dir / "tpcf.png", curves)
    save_sections(out_dir / "slices.png", datamodule.images[0, z.start : z.stop], prediction, truth, voxel,
                  title=row["method"])
    if save_predictions:
        write_stack(out_dir / "prediction.tif", prediction, voxel)
    if print_table:
        print(f"\n{table}\n\nwritten to {out_dir}")
