"""`python evaluate.py`: trained models and classical baselines scored on the same slices against
ground truth (or, for a stack without labels, by the measures that need none)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.data.volume import EvaluationVolume, unlabelled_volume
from fibml.io import LABELS
from fibml.metrics.morphology import INLETS
from fibml.metrics.table import (
    ANISOTROPY,
    AXES,
    MORPHOLOGY,
    anisotropy_columns,
    morphology_columns,
    score_row,
)
from fibml.pipelines.baselines import all_channels, baseline_jobs, evaluate_baseline, method_names
from fibml.pipelines.common import (
    as_list,
    data_settings,
    format_weights,
    method_name,
    predict_probabilities,
    slug,
    voltage_weights,
)
from fibml.pipelines.ingest import acquisition_settings
from fibml.pipelines.scoring import write_method
from fibml.protocols import INPAINTING, task_of
from fibml.report import save_comparison, save_sections, save_tpcf, write_table

__all__ = ["evaluate", "evaluate_model", "morphology_settings"]


def evaluate(cfg: DictConfig) -> dict | list[dict]:
    """Score trained models and classical baselines on ground truth, all on the same slices.

    cfg.ckpt_path: a checkpoint / run folder, a list of them, or null. Each model is rebuilt
    from its checkpoint's own config and predicts the split of its dataset (or of cfg.data_dir).
    cfg.method: the baselines (configs/method/*.yaml: kmeans, otsu, double_threshold,
    triple_threshold, random_forest), each on the channels its ``inputs`` names; without a
    checkpoint they run on cfg.data (the embedded default) or cfg.data_dir. Baselines that learn
    (thresholds fitted on labels, the random forest) get sparse labels from the training block,
    never from the scored slices (cfg.baseline_training).

    One method alone: metrics.csv / metrics.md / slices.png / prediction.tif in the output
    folder, as after training. Several: one subfolder each, and the comparison in the output
    folder: metrics.csv / metrics.md (one row per method, Table 2 layout), comparison.md
    (measures as rows, methods as columns, Table 3 layout), comparison.png (one slice: ground
    truth and every method's prediction with its errors coloured) and tpcf.png (S2 along x, y,
    z). Every row carries MP / MGP / MDS / awe and the IoU of each phase, and the prediction's
    anisotropy errors (eq. 4, 5). A data_dir without labels.tif (a real stack) is predicted
    whole (split=all) and scored without ground truth: solid fraction and anisotropy errors."""
    specs = as_list(cfg.get("ckpt_path"))
    methods = dict(cfg.get("method") or {})
    if not specs and not methods:
        raise ValueError(
            "nothing to evaluate: give ckpt_path=<run folder or .ckpt> (or a list) and/or method=<baseline> "
            f"(one of {', '.join(method_names())}, or a list: 'method=[kmeans,otsu]')"
        )
    out = Path(cfg.paths.output_dir)
    split = cfg.get("split", "test")
    morphology = morphology_settings(cfg.get("morphology"))
    acquisition = acquisition_settings(cfg.get("acquisition") or {})
    reference = None if specs else _test_volume(cfg.data, cfg.get("data_dir"), split, acquisition)
    jobs = baseline_jobs(methods, reference) if reference is not None else None
    rows, panels, curves = [], {}, {}
    for spec in specs:
        checkpoint = resolve_checkpoint(spec)
        model, run_cfg = load_model(checkpoint)
        if task_of(model) == INPAINTING:
            raise ValueError(
                f"{checkpoint} is an inpainting model, not a segmentation: use it with predict.py "
                f"reconstruct.method=ml reconstruct.inpainting_ckpt=... or benchmarks/thickness_comparison.py"
            )
        volume = _test_volume(run_cfg.data, cfg.get("data_dir"), split, acquisition)
        if reference is None:
            reference, jobs = volume, baseline_jobs(methods, volume)
        several = len(specs) + len(jobs) > 1
        _check_same_slices(volume, reference, checkpoint)
        name = _unique(method_name(run_cfg), [r["method"] for r in rows], checkpoint)
        row, panels[name] = _evaluate_one(
            model, volume, data_settings(run_cfg.data), out / slug(name) if several else out, name, cfg.inference,
            cfg.get("save_predictions", True), print_table=not several, curves=curves, morphology=morphology,
        )
        rows.append(row)
    several = len(specs) + len(jobs) > 1
    raw = all_channels(reference) if jobs else None  # every channel, read once for all baselines
    for job in jobs:
        row, panels[job["name"]] = evaluate_baseline(
            job, reference, raw, cfg.get("baseline_training") or {},
            out / slug(job["name"]) if several else out, cfg.get("save_predictions", True), print_table=not several,
            curves=curves, morphology=morphology,
        )
        rows.append(row)
    if several:
        _write_comparison(out, rows, panels, curves, reference, morphology)
        return rows
    return rows[0]


def evaluate_model(
    model,
    volume: EvaluationVolume,
    settings: Mapping,
    out_dir: Path,
    name: str,
    inference: Mapping,
    save_predictions: bool = True,
) -> dict:
    """Predict the scored slices of the volume slice by slice (sliding window over whole slices,
    the model's input layout `settings`: dims, patch_size, n_adjacent), compare with the labels,
    write metrics.csv / metrics.md / slices.png, print the table."""
    return _evaluate_one(model, volume, settings, out_dir, name, inference, save_predictions)[0]


def _evaluate_one(model, volume: EvaluationVolume, settings: Mapping, out_dir, name, inference, save_predictions,
                  print_table=True, curves: dict | None = None, morphology: Mapping | None = None):
    z, truth, voxel = volume.z, volume.truth, volume.voxel_size_nm
    probabilities = predict_probabilities(model, volume.images, dict(settings), inference, z)
    prediction = probabilities.argmax(0).astype(np.uint8)
    curves = {} if curves is None else curves
    if truth is not None and "ground truth" not in curves:  # once per evaluation, shared by all methods
        reference = anisotropy_columns(truth, voxel, with_curves=True)["curves"]
        if reference is not None:
            curves["ground truth"] = reference
    n_phases = volume.n_phases if truth is not None else probabilities.shape[0]
    n = max(probabilities.shape[0], n_phases)
    row = score_row(name, volume.split, z, prediction, truth, n, voxel, curves, phases=volume.phase_names(n),
                    morphology=morphology)
    weights = voltage_weights(model, volume.voltages)
    if weights:
        row["voltage weights"] = format_weights(weights)
    method_curves = {key: curves[key] for key in ("ground truth", name) if key in curves}
    write_method(out_dir, row, prediction, volume, save_predictions, print_table, method_curves)
    return row, prediction


def morphology_settings(node) -> dict | None:
    """evaluate.yaml's ``morphology`` node as keyword arguments of morphology_columns, or None when off."""
    if not node or not node.get("enabled", False):
        return None
    axes = [str(a) for a in as_list(node.get("axes", list(AXES)))]
    unknown = [a for a in axes if a not in AXES]
    if unknown or not axes:
        raise ValueError(f"morphology.axes must name some of z, y, x, got {axes}")
    inlet = node.get("inlet", "z0")
    if inlet is not None and str(inlet) not in INLETS:
        raise ValueError(f"morphology.inlet must be one of {', '.join(INLETS)} or null, got {inlet!r}")
    return {"phase": int(node.get("phase", 0)), "axes": axes, "inlet": None if inlet is None else str(inlet)}


def _test_volume(data_cfg: DictConfig, data_dir: str | None, split: str,
                 acquisition: Mapping | None = None) -> EvaluationVolume:
    """The slices `split` of the dataset a model was trained on (its datamodule without
    augmentation), or of data_dir if given; a data_dir without labels.tif (a real acquisition:
    a dataset folder, or slices as the microscope wrote them) gives every slice, unlabelled."""
    if data_dir and not (Path(data_dir) / LABELS).is_file():
        return unlabelled_volume(data_dir, data_cfg.get("voltages"), data_cfg.get("normalize"), split, acquisition)
    data_cfg.augmentation = None
    if data_dir:
        data_cfg.data_dir = str(data_dir)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.evaluation_volume(split)


def _check_same_slices(volume: EvaluationVolume, reference: EvaluationVolume, checkpoint: Path) -> None:
    """Methods are compared only on the same (labelled) slices of the same dataset."""
    here = (Path(volume.path).resolve(), volume.z)
    there = (Path(reference.path).resolve(), reference.z)
    z = here[1]
    same_labels = volume.labels is None or np.array_equal(
        volume.labels[z.start : z.stop], reference.labels[z.start : z.stop]
    )
    if here != there or not same_labels:
        raise ValueError(
            f"{checkpoint} would be scored on {here[0]} z {z.start}-{z.stop - 1}, the first model on "
            f"{there[0]} z {there[1].start}-{there[1].stop - 1}: pass data_dir=<dataset> (and split=all "
            f"for a separate test dataset) to score all on the same slices"
        )


def _write_comparison(out: Path, rows: list[dict], panels: dict, curves: dict, reference: EvaluationVolume,
                      morphology: Mapping | None = None) -> None:
    """metrics.* (a row per method), comparison.* (a column per method) and comparison.png."""
    z, truth, voxel = reference.z, reference.truth, reference.voxel_size_nm
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(rows, out / "metrics")
    scores = [m for m in dict.fromkeys(k for r in rows for k in r) if m.startswith("IoU ")]
    measures = [m for m in ("MP %", "MGP %", "MDS", "awe %", *scores, "solid fraction", *ANISOTROPY, *MORPHOLOGY)
                if any(m in r for r in rows)]
    transposed = [{"measure": m} | {r["method"]: r.get(m, "") for r in rows} for m in measures]
    if truth is not None:  # the ground truth's own values, anisotropy included (finite size)
        truth_aniso = anisotropy_columns(truth, voxel)
        ideal = {"MP %": 0.0, "MGP %": 0.0, "MDS": 1.0, "awe %": 0.0, "solid fraction": float((truth == 1).mean())}
        ideal |= {m: 1.0 for m in scores} | truth_aniso
        if morphology:
            ideal |= morphology_columns(truth, voxel, **morphology)
        transposed = [{"measure": t["measure"], "ground truth": ideal[t["measure"]]} | t for t in transposed]
        save_comparison(out / "comparison.png", reference.images[0, z.start : z.stop], truth, panels,
                        title=reference.title())
    comparison = write_table(transposed, out / "comparison")
    save_tpcf(out / "tpcf.png", curves)
    save_sections(out / "slices.png", reference.images[0, z.start : z.stop], panels, truth, voxel,
                  title=reference.title())
    print(f"\n{table}\n\n{comparison}\n\nwritten to {out}")


def _unique(name: str, taken: list[str], checkpoint: Path) -> str:
    if name not in taken:
        return name
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{name} ({run.name})"
