"""One scored method's files: its metrics table, section figure, S2 curves and prediction."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fibml.data.volume import EvaluationVolume
from fibml.io import write_stack
from fibml.report import save_sections, save_tpcf, write_table

__all__ = ["write_method"]


def write_method(out_dir: Path, row: dict, prediction, volume: EvaluationVolume, save_predictions: bool,
                 print_table: bool, curves: Mapping | None = None):
    """metrics.*, slices.png, tpcf.png (the S2 curves given: ground truth and this method) and
    prediction.tif of one method scored on the volume's slices."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table([row], out_dir / "metrics")
    voxel, z = volume.voxel_size_nm, volume.z
    if curves:
        save_tpcf(out_dir / "tpcf.png", curves)
    save_sections(out_dir / "slices.png", volume.images[0, z.start : z.stop], prediction, volume.truth, voxel,
                  title=row["method"])
    if save_predictions:
        write_stack(out_dir / "prediction.tif", prediction, voxel)
    if print_table:
        print(f"\n{table}\n\nwritten to {out_dir}")
