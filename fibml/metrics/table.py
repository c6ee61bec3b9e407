"""The columns of fibml's metrics tables, one row per segmentation: what evaluate.py, the baseline
jobs, predict.py's report and the benchmarks all print.

score_row: MP / MGP / MDS / awe and per-phase IoU against a ground truth (fibml.metrics.confusion),
the solid fraction, the anisotropy errors of eq. 4 / 5 (fibml.metrics.anisotropy, needing no
ground truth) and optionally tortuosity and constrictivity (fibml.metrics.morphology).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from fibml.metrics.anisotropy import anisotropy_report, resample_nearest
from fibml.metrics.confusion import segmentation_scores
from fibml.metrics.morphology import constrictivity, geodesic_tortuosity

__all__ = [
    "ANISOTROPY",
    "AXES",
    "MORPHOLOGY",
    "anisotropy_columns",
    "morphology_columns",
    "score_row",
]

log = logging.getLogger(__name__)


def score_row(name: str, split: str, z: range, prediction: np.ndarray, truth: np.ndarray, n_classes: int,
               voxel_size_nm=None, curves: dict | None = None, phases: list[str] | None = None,
               morphology: Mapping | None = None) -> dict:
    """MP / MGP / MDS / awe and the IoU of each phase against the truth, and the anisotropy
    errors (eq. 4, 5) of the prediction alone: the numbers a user can also get for real data
    without ground truth. The S2 curves go into ``curves[name]`` when a dict is given (for tpcf.png).
    With ``morphology`` (keyword arguments of morphology_columns, e.g. from
    fibml.pipelines.evaluate.morphology_settings), also the prediction's tortuosity and
    constrictivity (morphology_columns)."""
    row = {"method": name, "split": f"{split} (z {z.start}-{z.stop - 1})"}
    if truth is not None:
        n_classes = max(n_classes, int(truth.max(initial=0)) + 1, int(prediction.max(initial=0)) + 1)
        names = phases or []
        names = [names[i] if i < len(names) else ("pore", "solid")[i] if i < 2 else f"phase {i}" for i in range(n_classes)]
        scores = segmentation_scores(prediction, truth, n_classes=n_classes)
        row |= {"MP %": scores["mp"], "MGP %": scores["mgp"], "MDS": scores["mds"], "awe %": scores["awe"]}
        row |= {f"IoU {phase}": iou for phase, iou in zip(names, scores["iou"])}
    row["solid fraction"] = float((prediction == 1).mean())
    if truth is not None:
        row["solid fraction (GT)"] = float((truth == 1).mean())
    aniso = anisotropy_columns(prediction, voxel_size_nm, with_curves=True)
    if curves is not None and aniso["curves"] is not None:
        curves[name] = aniso["curves"]
    row |= {key: aniso[key] for key in ANISOTROPY}
    if morphology:
        row |= morphology_columns(prediction, voxel_size_nm, **morphology)
    return row


ANISOTROPY = {"e_TPCF": "e_tpcf", "e_LPF": "e_lpf", "e_D": "e_d"}


def anisotropy_columns(volume: np.ndarray, voxel_size_nm=None, with_curves: bool = False) -> dict:
    """e_TPCF, e_LPF, e_D of the solid (label 1) of a segmented volume; NaN where they are
    undefined (no solid, or a single slice). Anisotropic voxels are resampled to the finest
    size first (nearest neighbour), as the papers evaluate isotropic grids."""
    voxel = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm is not None else (1.0, 1.0, 1.0)
    if max(voxel) > min(voxel) * 1.001:
        log.info("anisotropy errors on a grid resampled from %s nm voxels to %.3g nm", voxel, min(voxel))
    try:
        report = anisotropy_report(volume.astype(np.uint8), voxel, phase=1, resample=True)
    except ValueError as error:  # no solid voxel, or too thin for a curve: nothing to measure
        log.warning("anisotropy errors not computed: %s", error)
        return {key: float("nan") for key in ANISOTROPY} | ({"curves": None} if with_curves else {})
    columns = {key: float(report[source]) for key, source in ANISOTROPY.items()}
    return columns | ({"curves": report["curves"]} if with_curves else {})


AXES = "zyx"
MORPHOLOGY = [f"tau {a}" for a in AXES] + ["beta"]


def morphology_columns(volume: np.ndarray, voxel_size_nm=None, phase: int = 0, axes=AXES,
                       inlet: str | None = "z0") -> dict:
    """Mean geodesic tortuosity of ``phase`` along each of ``axes`` ("tau z", "tau y", "tau x") and its
    constrictivity ("beta", spheres intruding from ``inlet``), as random-forest-multi-detector.txt
    section 3.7.2 compares segmentations with them ("very sensitive to the quality of segmentation").
    NaN where undefined: the phase absent or not connecting the two faces, a direction with one slice.
    Anisotropic voxels are resampled to the finest size first (nearest neighbour), as for anisotropy."""
    voxel = np.asarray(voxel_size_nm if voxel_size_nm is not None else (1.0, 1.0, 1.0), dtype=np.float64)
    voxel = np.broadcast_to(voxel, (3,))
    labels = resample_nearest(np.asarray(volume), voxel / voxel.min())
    size = float(voxel.min())
    if not np.any(labels == phase):
        log.warning("phase %d absent: tortuosity and constrictivity not computed", phase)
        return {f"tau {axis}": math.nan for axis in axes} | {"beta": math.nan}
    columns = {}
    for axis in axes:
        k = AXES.index(axis)
        columns[f"tau {axis}"] = (
            geodesic_tortuosity(labels, phase, k, size)["mean"] if labels.shape[k] > 1 else math.nan
        )
    return columns | {"beta": constrictivity(labels, phase, size, inlet=inlet)["beta"]}
