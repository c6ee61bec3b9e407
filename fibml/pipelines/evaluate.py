"""`python evaluate.py`: trained models and classical baselines scored on the same slices against
ground truth (or, for a stack without labels, by the measures that need none)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from fibml.channels import channel_key
from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.data.transforms import normalize_channels
from fibml.io import LABELS, read_dataset
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
from fibml.pipelines.scoring import phase_count, phase_names, truth_slices, write_method
from fibml.protocols import INPAINTING, task_of
from fibml.report import save_comparison, save_sections, save_tpcf, write_table

__all__ = ["UnlabelledStack", "evaluate", "evaluate_model", "morphology_settings"]


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
    reference = None if specs else _test_datamodule(cfg.data, cfg.get("data_dir"))
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
        datamodule = _test_datamodule(run_cfg.data, cfg.get("data_dir"))
        if reference is None:
            reference, jobs = datamodule, baseline_jobs(methods, datamodule)
        several = len(specs) + len(jobs) > 1
        _check_same_slices(datamodule, reference, split, checkpoint)
        name = _unique(method_name(run_cfg), [r["method"] for r in rows], checkpoint)
        row, panels[name] = _evaluate_one(
            model, datamodule, out / slug(name) if several else out, name, cfg.inference, split,
            cfg.get("save_predictions", True), print_table=not several, curves=curves, morphology=morphology,
        )
        rows.append(row)
    several = len(specs) + len(jobs) > 1
    raw = all_channels(reference) if jobs else None  # every channel, read once for all baselines
    for job in jobs:
        row, panels[job["name"]] = evaluate_baseline(
            job, reference, raw, split, cfg.get("baseline_training") or {},
            out / slug(job["name"]) if several else out, cfg.get("save_predictions", True), print_table=not several,
            curves=curves, morphology=morphology,
        )
        rows.append(row)
    if several:
        _write_comparison(out, rows, panels, curves, reference, split, morphology)
        return rows
    return rows[0]


def evaluate_model(
    model,
    datamodule,
    out_dir: Path,
    name: str,
    inference: Mapping,
    split: str = "test",
    save_predictions: bool = True,
) -> dict:
    """Predict a split of the datamodule's volume slice by slice (sliding window over whole
    slices), compare with the labels, write metrics.csv / metrics.md / slices.png, print the table."""
    return _evaluate_one(model, datamodule, out_dir, name, inference, split, save_predictions)[0]


def _evaluate_one(model, datamodule, out_dir, name, inference, split, save_predictions, print_table=True,
                  curves: dict | None = None, morphology: Mapping | None = None):
    z = datamodule.z_range(split)
    probabilities = predict_probabilities(model, datamodule.images, data_settings(datamodule), inference, z)
    prediction = probabilities.argmax(0).astype(np.uint8)
    curves = {} if curves is None else curves
    truth, voxel = truth_slices(datamodule, z), datamodule.dataset.voxel_size_nm
    if truth is not None and "ground truth" not in curves:  # once per evaluation, shared by all methods
        reference = anisotropy_columns(truth, voxel, with_curves=True)["curves"]
        if reference is not None:
            curves["ground truth"] = reference
    n_phases = phase_count(datamodule) if truth is not None else probabilities.shape[0]
    row = score_row(name, split, z, prediction, truth, max(probabilities.shape[0], n_phases), voxel, curves,
                     phases=phase_names(datamodule, max(probabilities.shape[0], n_phases)), morphology=morphology)
    weights = voltage_weights(model, getattr(datamodule, "voltages", None))
    if weights:
        row["voltage weights"] = format_weights(weights)
    method_curves = {key: curves[key] for key in ("ground truth", name) if key in curves}
    write_method(out_dir, row, prediction, datamodule, z, save_predictions, print_table, method_curves)
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


def _test_datamodule(data_cfg: DictConfig, data_dir: str | None):
    """The datamodule a model was trained with, without augmentation, on data_dir if given; a
    data_dir without labels.tif (a real acquisition) gives an UnlabelledStack instead."""
    if data_dir and not (Path(data_dir) / LABELS).is_file():
        return UnlabelledStack(data_cfg, data_dir)
    data_cfg.augmentation = None
    if data_dir:
        data_cfg.data_dir = str(data_dir)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


class UnlabelledStack:
    """A dataset folder without labels.tif (a real acquisition), with the attributes evaluation
    reads from a datamodule: every slice is predicted and only the measures that need no ground
    truth are reported (solid fraction, anisotropy errors)."""

    labels = None

    def __init__(self, data_cfg: Mapping, folder: str | Path):
        self.dataset_path = Path(folder)
        wanted = data_cfg.get("voltages")
        self.dataset = read_dataset(self.dataset_path, None if wanted is None else [channel_key(v) for v in wanted])
        self.voltages = self.dataset.voltages if wanted is None else [channel_key(v) for v in wanted]
        normalize = dict(data_cfg.get("normalize") or {})
        self.images = normalize_channels([self.dataset.images[v] for v in self.voltages], **normalize)
        self.dims, self.patch_size, self.n_adjacent = data_cfg["dims"], data_cfg["patch_size"], data_cfg["n_adjacent"]

    def z_range(self, split: str) -> range:
        if split != "all":
            raise ValueError(
                f"{self.dataset_path} has no {LABELS}, so it has no held-out {split!r} block: "
                f"evaluate it with split=all (every slice; solid fraction and anisotropy errors)"
            )
        return range(self.images.shape[1])


def _check_same_slices(datamodule, reference, split: str, checkpoint: Path) -> None:
    """Methods are compared only on the same (labelled) slices of the same dataset."""
    here = (Path(datamodule.dataset_path).resolve(), datamodule.z_range(split))
    there = (Path(reference.dataset_path).resolve(), reference.z_range(split))
    z = here[1]
    same_labels = datamodule.labels is None or np.array_equal(
        datamodule.labels[z.start : z.stop], reference.labels[z.start : z.stop]
    )
    if here != there or not same_labels:
        raise ValueError(
            f"{checkpoint} would be scored on {here[0]} z {z.start}-{z.stop - 1}, the first model on "
            f"{there[0]} z {there[1].start}-{there[1].stop - 1}: pass data_dir=<dataset> (and split=all "
            f"for a separate test dataset) to score all on the same slices"
        )


def _write_comparison(out: Path, rows: list[dict], panels: dict, curves: dict, reference, split: str,
                      morphology: Mapping | None = None) -> None:
    """metrics.* (a row per method), comparison.* (a column per method) and comparison.png."""
    z = reference.z_range(split)
    truth = truth_slices(reference, z)
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(rows, out / "metrics")
    scores = [m for m in dict.fromkeys(k for r in rows for k in r) if m.startswith("IoU ")]
    measures = [m for m in ("MP %", "MGP %", "MDS", "awe %", *scores, "solid fraction", *ANISOTROPY, *MORPHOLOGY)
                if any(m in r for r in rows)]
    transposed = [{"measure": m} | {r["method"]: r.get(m, "") for r in rows} for m in measures]
    if truth is not None:  # the ground truth's own values, anisotropy included (finite size)
        truth_aniso = anisotropy_columns(truth, reference.dataset.voxel_size_nm)
        ideal = {"MP %": 0.0, "MGP %": 0.0, "MDS": 1.0, "awe %": 0.0, "solid fraction": float((truth == 1).mean())}
        ideal |= {m: 1.0 for m in scores} | truth_aniso
        if morphology:
            ideal |= morphology_columns(truth, reference.dataset.voxel_size_nm, **morphology)
        transposed = [{"measure": t["measure"], "ground truth": ideal[t["measure"]]} | t for t in transposed]
        save_comparison(out / "comparison.png", reference.images[0, z.start : z.stop], truth, panels,
                        title=f"{Path(reference.dataset_path).name}, {split} slices")
    comparison = write_table(transposed, out / "comparison")
    save_tpcf(out / "tpcf.png", curves)
    save_sections(out / "slices.png", reference.images[0, z.start : z.stop], panels, truth,
                  reference.dataset.voxel_size_nm, title=f"{Path(reference.dataset_path).name}, {split} slices")
    print(f"\n{table}\n\n{comparison}\n\nwritten to {out}")


def _unique(name: str, taken: list[str], checkpoint: Path) -> str:
    if name not in taken:
        return name
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{name} ({run.name})"
