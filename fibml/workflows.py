"""What train.py, evaluate.py and predict.py do, as plain functions of a Hydra config.

The scripts only compose the config and call these; tests call them directly.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fibml.callbacks import EmbedRunConfig
from fibml.channels import channel_key, channel_label
from fibml.checkpoints import (
    adopt_branch_checkpoints,
    build_model,
    load_branches,
    load_model,
    prepare_resume,
    resolve_checkpoint,
)
from fibml.config import register_resolvers
from fibml.data.transforms import normalize_channels
from fibml.inference import PredictorFactory, predict_volume, resolve_device
from fibml.io import (
    LABELS,
    available_channels,
    read_dataset,
    read_stack,
    stack_name,
    write_dataset,
    write_json,
    write_stack,
)
from fibml.metrics.table import (
    ANISOTROPY,
    MORPHOLOGY,
    anisotropy_columns,
    morphology_columns,
    morphology_settings,
    score_row,
)
from fibml.report import (
    save_comparison,
    save_importances,
    save_sections,
    save_tpcf,
    write_table,
)

__all__ = [
    "build_model", "evaluate", "evaluate_model", "load_model", "morphology_settings", "predict",
    "resolve_checkpoint", "score_row", "slug", "train", "train_objective", "voltage_weights",
]

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """A training stopped from outside (SIGTERM: a scheduler's time limit, a kill) before its end."""


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit the configured model on the configured data; then, if cfg.evaluate, predict the
    held-out test block with the best checkpoint and write metrics.csv / metrics.md there."""
    register_resolvers()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    resume = prepare_resume(cfg) if cfg.get("ckpt_path") else None
    branches = adopt_branch_checkpoints(cfg) if cfg.model.get("branch_ckpts") else None
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model)
    if branches:
        load_branches(model, branches)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config.pop("hydra", None)
    callbacks = _instantiate_group(cfg.get("callbacks")) + [EmbedRunConfig(run_config)]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if cfg.get("train", True):
        try:
            # weights_only=False: fibml's checkpoints carry their run config and the optimizer
            # partials in hparams, which the safe unpickler refuses; they are the user's own files.
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False if resume else None)
        except SIGTERMException:
            pass  # a SystemExit without a code: the process would exit with status 0, as if it had finished
        finally:
            _finish_loggers(loggers)
        if trainer.received_sigterm:  # a scheduler's time limit, a kill: not a finished run
            raise TrainingStopped(
                f"training was stopped by SIGTERM in epoch {trainer.current_epoch}: {cfg.paths.output_dir} is not "
                f"finished and was not evaluated; continue it with ckpt_path={cfg.paths.output_dir}"
            )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    evaluate, report = cfg.get("evaluate", False), cfg.get("report")
    has_weights = hasattr(getattr(model, "net", None), "voltage_weights")
    if (evaluate or report or has_weights) and trainer.is_global_zero:
        # the checkpoint that monitors a metric (the other one keeps last.ckpt): what evaluate.py
        # scores, so the report, the test metrics and voltage_weights.json all describe it
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
        if best:
            log.info("the best checkpoint: %s", best)
            model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    weights = voltage_weights(model, cfg.data.get("voltages"))
    if weights and trainer.is_global_zero:
        metrics.update({f"ensemble/weight_{v}": w for v, w in weights.items()})
        write_json(Path(cfg.paths.output_dir) / "voltage_weights.json", weights)
        log.info("learned weight of each voltage (best checkpoint): %s", _format_weights(weights))
    if evaluate and trainer.is_global_zero:
        datamodule.setup("test")
        row = evaluate_model(model, datamodule, Path(cfg.paths.output_dir), method_name(run_config), cfg.inference)
        metrics.update({f"test/{k}": v for k, v in row.items() if isinstance(v, float)})
    if report and trainer.is_global_zero:
        # a task's own report (tables, figures): a function (model, datamodule, out_dir) -> {metric: value}
        found = instantiate(report)(model=model, datamodule=datamodule, out_dir=Path(cfg.paths.output_dir))
        metrics.update({f"test/{k}": float(v) for k, v in (found or {}).items()})
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


def train_objective(cfg: DictConfig) -> float | None:
    """What train.py returns to a sweeper: the value of cfg.optimized_metric (NaN when the run
    did not log it, which Optuna records as a failed trial). When training raises, the
    traceback goes to error.txt in the run folder before the error propagates: Hydra marks the
    job failed, and the Optuna sweeper records the trial as FAIL and goes on (max_failure_rate)."""
    try:
        metrics, _ = train(cfg)
    except Exception:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(traceback.format_exc())
        log.exception("training failed; traceback in %s", out / "error.txt")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory trial must not starve the next one
        raise
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    value = metrics.get(metric, float("nan"))
    if not math.isfinite(value):
        log.warning("optimized_metric %s is %s (logged: %s)", metric, value, sorted(metrics))
    return value


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
    specs = _as_list(cfg.get("ckpt_path"))
    methods = dict(cfg.get("method") or {})
    if not specs and not methods:
        raise ValueError(
            "nothing to evaluate: give ckpt_path=<run folder or .ckpt> (or a list) and/or method=<baseline> "
            f"(one of {', '.join(_method_names())}, or a list: 'method=[kmeans,otsu]')"
        )
    out = Path(cfg.paths.output_dir)
    split = cfg.get("split", "test")
    morphology = morphology_settings(cfg.get("morphology"))
    reference = None if specs else _test_datamodule(cfg.data, cfg.get("data_dir"))
    jobs = _baseline_jobs(methods, reference) if reference is not None else None
    rows, panels, curves = [], {}, {}
    for spec in specs:
        checkpoint = resolve_checkpoint(spec)
        model, run_cfg = load_model(checkpoint)
        if type(model).__name__ == "InpaintingTask":
            raise ValueError(
                f"{checkpoint} is an inpainting model, not a segmentation: use it with predict.py "
                f"reconstruct.method=ml reconstruct.inpainting_ckpt=... or benchmarks/thickness_comparison.py"
            )
        datamodule = _test_datamodule(run_cfg.data, cfg.get("data_dir"))
        if reference is None:
            reference, jobs = datamodule, _baseline_jobs(methods, datamodule)
        several = len(specs) + len(jobs) > 1
        _check_same_slices(datamodule, reference, split, checkpoint)
        name = _unique(method_name(run_cfg), [r["method"] for r in rows], checkpoint)
        row, panels[name] = _evaluate_one(
            model, datamodule, out / slug(name) if several else out, name, cfg.inference, split,
            cfg.get("save_predictions", True), print_table=not several, curves=curves, morphology=morphology,
        )
        rows.append(row)
    several = len(specs) + len(jobs) > 1
    raw = _all_channels(reference) if jobs else None  # every channel, read once for all baselines
    for job in jobs:
        row, panels[job["name"]] = _evaluate_baseline(
            job, reference, raw, split, cfg.get("baseline_training") or {},
            out / slug(job["name"]) if several else out, cfg.get("save_predictions", True), print_table=not several,
            curves=curves, morphology=morphology,
        )
        rows.append(row)
    if several:
        _write_comparison(out, rows, panels, curves, reference, split, morphology)
        return rows
    return rows[0]


def _all_channels(reference):
    """The reference dataset with every channel of its folder: the one already read when it holds them all."""
    from fibml.io import available_channels

    if set(available_channels(reference.dataset_path)) <= set(reference.dataset.images):
        return reference.dataset
    return read_dataset(reference.dataset_path)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]


def _method_names() -> list[str]:
    from fibml.config import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))


def _baseline_jobs(methods: Mapping, reference) -> list[dict]:
    """One job per (baseline, channel group): a method's ``inputs`` list entries are ``all``
    (every channel of the dataset together), ``each`` (every channel alone, one row each, as the
    k-means rows of Table 3) or a list of channels (``[se2_1kV, inlens_1kV]``)."""
    if not methods:
        return []
    from fibml.io import available_channels

    channels = available_channels(reference.dataset_path)
    jobs = []
    for key, spec in methods.items():
        if not isinstance(spec, Mapping) or "segmenter" not in spec:
            raise ValueError(f"method.{key} needs a 'segmenter' (a _target_ with its options): see configs/method/")
        groups = []
        for entry in _as_list(spec.get("inputs") or ["all"]):
            if entry == "all":
                groups.append(list(channels))
            elif entry == "each":
                groups += [[c] for c in channels]
            else:
                group = [channel_key(c) for c in _as_list(entry)]
                missing = [c for c in group if c not in channels]
                if missing:
                    raise ValueError(
                        f"method.{key}.inputs names {', '.join(map(channel_label, missing))}, which "
                        f"{reference.dataset_path} does not hold (found: {', '.join(map(channel_label, channels))})"
                    )
                groups.append(group)
        for group in groups:
            jobs.append({"key": key, "name": f"{spec.get('name', key)}, {channels_text(group)}", "channels": group,
                         "segmenter": spec["segmenter"]})
    return jobs


def _evaluate_baseline(job: Mapping, reference, raw, split: str, training: Mapping, out_dir: Path,
                       save_predictions: bool, print_table: bool, curves: dict, morphology: Mapping | None = None):
    """Fit (on sparse labels of the training block, if the baseline learns) and apply one
    baseline to the scored slices of the reference dataset; its row, prediction and files."""
    z = reference.z_range(split)
    n_phases = _n_phases(reference)
    segmenter = _instantiate_baseline(job["segmenter"], n_phases, job["channels"])
    images = raw.stack(job["channels"])
    extra = {}
    if segmenter.needs_labels:
        train_images, train_labels = _baseline_training_data(job, reference, raw, split, training)
        segmenter.fit(train_images, train_labels)
        extra = _baseline_report(segmenter, train_images, train_labels, out_dir, job["name"],
                                 _phase_names(reference, n_phases))
    # local baselines (filters across slices) see the neighbours of the block, as the networks do
    halo = int(getattr(segmenter, "halo", 0) or 0)
    z0, z1 = max(0, z.start - halo), min(images.shape[1], z.stop + halo)
    prediction = segmenter.predict(images[:, z0:z1])[z.start - z0 : z.stop - z0]
    truth = _labels(reference, z)
    row = score_row(job["name"], split, z, prediction, truth, n_phases, reference.dataset.voxel_size_nm, curves,
                     phases=_phase_names(reference, n_phases), morphology=morphology)
    row |= extra
    method_curves = {key: curves[key] for key in ("ground truth", job["name"]) if key in curves}
    _write_method(out_dir, row, prediction, reference, z, save_predictions, print_table, method_curves)
    return row, prediction


def _instantiate_baseline(node, n_phases: int, channels: list):
    """The configured baseline; ``n_phases: null`` and ``channel_names: null`` are filled in
    from the dataset (its number of phases, the names of the channels it is given)."""
    options = {}
    if "n_phases" in node and node.get("n_phases") is None:
        options["n_phases"] = n_phases
    if "channel_names" in node and node.get("channel_names") is None:
        options["channel_names"] = [channel_label(c) for c in channels]
    return instantiate(node, **options)


def _baseline_training_data(job: Mapping, reference, raw, split: str, training: Mapping):
    """(images, sparse labels) a learning baseline is fitted on: ``n_slices`` evenly spaced slices
    of the training block (or of all of training.data_dir), ``pixels_per_class`` random labelled
    pixels per phase on each, as a user would label a few slices."""
    from fibml.baselines.common import sparse_labels

    if training.get("data_dir"):
        dataset = read_dataset(training["data_dir"], job["channels"], require_labels=True)
        labels, block = dataset.labels, range(dataset.labels.shape[0])
    else:
        if reference.labels is None:
            raise ValueError(
                f"{job['name']} learns from labelled slices, and {reference.dataset_path} has no {LABELS}: "
                f"name a labelled dataset with baseline_training.data_dir=<folder>"
            )
        if split == "all":
            raise ValueError(
                f"{job['name']} learns from labelled slices, and split=all scores every slice of "
                f"{reference.dataset_path}: name another labelled dataset with baseline_training.data_dir=<folder>"
            )
        dataset, labels, block = raw, reference.labels, reference.z_range("train")
    sparse = sparse_labels(labels, block, n_slices=int(training.get("n_slices", 4)),
                           pixels_per_class=training.get("pixels_per_class", 2000), seed=int(training.get("seed", 0)))
    return dataset.stack(job["channels"]), sparse


def _baseline_report(segmenter, images, labels, out_dir: Path, name: str, phases: list[str]) -> dict:
    """What a fitted baseline can tell about itself: the thresholds it found (a column of its
    row), the random forest's feature importances per filter group (tables, Fig. 3)."""
    extra = {}
    if hasattr(segmenter, "describe"):
        extra["rule"] = segmenter.describe()
    if hasattr(segmenter, "feature_importances"):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_table(segmenter.feature_importances(by=("group",)), out_dir / "feature_importances")
        write_table(segmenter.feature_importances(by=("group", "channel")), out_dir / "feature_importances_per_channel")
        if hasattr(segmenter, "class_importances"):
            per_class = segmenter.class_importances(images, labels)
            write_table(per_class, out_dir / "feature_importances_per_class")
            save_importances(out_dir / "feature_importances.png", per_class, phases, title=f"{name}: importance per filter group")
    return extra


def _n_phases(data) -> int:
    """Phases of a dataset: its manifest's list of phases, else the labels' largest value + 1, at least 2."""
    phases = (data.dataset.manifest or {}).get("phases")
    if phases:
        return len(phases)
    return max(2, int(data.labels.max(initial=0)) + 1) if data.labels is not None else 2


def _phase_names(data, n: int) -> list[str]:
    names = list((data.dataset.manifest or {}).get("phases") or ["pore", "solid"])
    return [names[i] if i < len(names) else f"phase {i}" for i in range(n)]


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
    truth = _labels(reference, z)
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
    probabilities = _predict(model, datamodule.images, _data_settings(datamodule), inference, z)
    prediction = probabilities.argmax(0).astype(np.uint8)
    curves = {} if curves is None else curves
    truth, voxel = _labels(datamodule, z), datamodule.dataset.voxel_size_nm
    if truth is not None and "ground truth" not in curves:  # once per evaluation, shared by all methods
        reference = anisotropy_columns(truth, voxel, with_curves=True)["curves"]
        if reference is not None:
            curves["ground truth"] = reference
    n_phases = _n_phases(datamodule) if truth is not None else probabilities.shape[0]
    row = score_row(name, split, z, prediction, truth, max(probabilities.shape[0], n_phases), voxel, curves,
                     phases=_phase_names(datamodule, max(probabilities.shape[0], n_phases)), morphology=morphology)
    weights = voltage_weights(model, getattr(datamodule, "voltages", None))
    if weights:
        row["voltage weights"] = _format_weights(weights)
    method_curves = {key: curves[key] for key in ("ground truth", name) if key in curves}
    _write_method(out_dir, row, prediction, datamodule, z, save_predictions, print_table, method_curves)
    return row, prediction


def _write_method(out_dir: Path, row: dict, prediction, datamodule, z: range, save_predictions: bool, print_table: bool,
                  curves: Mapping | None = None):
    """metrics.*, slices.png, tpcf.png (the S2 curves given: ground truth and this method) and
    prediction.tif of one method."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table([row], out_dir / "metrics")
    voxel = datamodule.dataset.voxel_size_nm
    truth = _labels(datamodule, z)
    if curves:
        save_tpcf(out_dir / "tpcf.png", curves)
    save_sections(out_dir / "slices.png", datamodule.images[0, z.start : z.stop], prediction, truth, voxel,
                  title=row["method"])
    if save_predictions:
        write_stack(out_dir / "prediction.tif", prediction, voxel)
    if print_table:
        print(f"\n{table}\n\nwritten to {out_dir}")


def _labels(data, z: range) -> np.ndarray | None:
    return None if data.labels is None else data.labels[z.start : z.stop]


def _unique(name: str, taken: list[str], checkpoint: Path) -> str:
    if name not in taken:
        return name
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{name} ({run.name})"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def predict(cfg: DictConfig) -> Path:
    """Segment whole stacks of any size: python predict.py ckpt_path=<ckpt or run> input=<dataset
    folder, .tif, or a list of .tif per voltage> output=<folder> (task=translate: translate a
    dataset with a CycleGAN instead, see translate).

    Steps: check everything (inputs against the checkpoint, output folder) -> registration
    (registration.*, optional: shifts.csv) -> chunked sliding-window segmentation straight to
    disk (fibml.inference.predict_to_disk: bounded memory, resumable, several GPUs) ->
    segmentation.tif (+ probability_class<c>.tif) -> optional reconstruction of slices of
    varying thickness -> prediction.json, report.md and sections.png. The inputs are read lazily
    (fibml.io.LazyStack), registered and normalised slice by slice, so a stack larger than
    memory is never held whole; only reconstruct.enabled=true loads the segmentation."""
    if cfg.get("task", "segment") == "translate":
        return translate(cfg)
    if cfg.get("task", "segment") != "segment":
        raise ValueError(f"task must be 'segment' or 'translate', got {cfg.task!r}")
    from fibml.data.registration import (
        ShiftedStack,
        read_shifts_csv,
        registration_shifts,
        write_shifts_csv,
    )
    from fibml.data.transforms import stack_percentiles
    from fibml.inference import NormalizedStack, predict_to_disk
    from fibml.report import prediction_report

    checkpoint = resolve_checkpoint(cfg.ckpt_path)
    model, run_cfg = load_model(checkpoint)
    if not hasattr(model, "probabilities") or "n_classes" not in run_cfg.model:
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}: predict.py segments with a segmentation "
                         "model (task=translate runs a CycleGAN)")
    settings = _data_settings(run_cfg.data)
    voltages = [channel_key(v) for v in run_cfg.data.voltages]
    stacks, voxel, source = _open_inputs(cfg.input, voltages, checkpoint)
    voxel = tuple(float(v) for v in cfg.voxel_size_nm) if cfg.get("voxel_size_nm") else voxel
    reconstruct = cfg.get("reconstruct") or {}
    if reconstruct.get("enabled") and reconstruct.get("method") == "ml" and not reconstruct.get("inpainting_ckpt"):
        raise ValueError("reconstruct.method=ml needs reconstruct.inpainting_ckpt=<run of experiment=inpainting>")
    out = Path(cfg.output)
    started = time.perf_counter()

    registration = cfg.get("registration") or {}
    table = None
    if registration.get("shifts_csv"):
        table = read_shifts_csv(registration.shifts_csv)
    elif registration.get("enabled", False):
        table = registration_shifts(
            stacks, reference=registration.get("reference", 2.0), roi=registration.get("roi"),
            intra=registration.get("intra", True), inter=registration.get("inter", True),
            intra_roi=registration.get("intra_roi"), upsample_factor=registration.get("upsample_factor", 20),
            max_slices=registration.get("max_slices", 50),
        )
    sources = {c: stack if table is None else ShiftedStack(stack, _channel_shifts(table, c, stack))
               for c, stack in stacks.items()}
    normalize = dict(run_cfg.data.get("normalize") or {})
    channels = [NormalizedStack(sources[c], *stack_percentiles(stacks[c], **normalize)) for c in voltages]
    z = _z_range(cfg.get("z_range"), len(stacks[voltages[0]]))
    if z != range(len(stacks[voltages[0]])):
        channels = [_SliceRange(c, z) for c in channels]

    inference = cfg.inference
    devices = _inference_devices(inference.get("devices"))
    device = resolve_device(devices[0] if devices else inference.get("device", "auto"))
    devices = devices if devices and len(devices) > 1 else None
    fingerprint = {
        "checkpoint": _file_identity(checkpoint),
        "input": [_file_identity(stack.path) for stack in stacks.values()],
        "voxel_size_nm": list(voxel) if voxel else None,
        "normalize": normalize,
        "registration": None if table is None else {str(c): np.round(t, 4).tolist() for c, t in table.items()},
        "z_range": [z.start, z.stop],
        "precision": str(inference.get("precision", "32")),
    }
    predictor = CheckpointPredictor(checkpoint, str(inference.get("precision", "32")))
    summary = predict_to_disk(
        predictor if devices else predictor.bind(model, device), channels, out, **settings,
        overlap=inference.get("overlap", 0.5), chunk_slices=inference.get("chunk_slices", 16),
        block=inference.get("block"), slices_per_batch=inference.get("slices_per_batch"),
        sw_batch_size=inference.get("sw_batch_size", 32), device=device, devices=devices,
        n_classes=int(run_cfg.model.n_classes), save_probabilities=bool(cfg.get("save_probabilities", False)),
        voxel_size_nm=voxel, fingerprint=fingerprint, overwrite=bool(cfg.get("overwrite", False)),
        reuse_memory=bool(inference.get("reuse_memory", False)),
    )
    if table is not None:
        write_shifts_csv(out / "shifts.csv", table)

    reconstruction = None
    if reconstruct.get("enabled", False):
        segmentation, _ = read_stack(out / "segmentation.tif")
        raw = np.stack([sources[voltages[0]][i] for i in z])
        reconstruction = _reconstruct(reconstruct, segmentation, raw, voxel, source, inference)
        write_stack(out / "reconstruction.tif", reconstruction["volume"], reconstruction["voxel_size_nm"])
        del segmentation, raw

    info = {
        "checkpoint": str(checkpoint),
        "input": [str(stack.path) for stack in stacks.values()],
        "voltages_kV": voltages,
        "voxel_size_nm": list(voxel) if voxel else None,
        "shape": list(summary["shape"]),
        "z_range": [z.start, z.stop],
        "class_fractions": summary["class_fractions"],
        "chunks": summary["n_chunks"],
        "chunks_computed": summary["chunks_computed"],
        "slices_per_second": _earlier_speed(out, summary),
        "registration": None if table is None else {
            "shifts_csv": str(out / "shifts.csv"),
            "max_shift_px": float(max(np.abs(t).max() for t in table.values())),
        },
        "seconds": round(time.perf_counter() - started, 3),
    } | ({} if reconstruction is None else {"reconstruction": reconstruction["info"]
                                             | {"ruler_band_rows": reconstruction["band_rows"]}})
    info |= prediction_report(out, out / "segmentation.tif", channels[0], voxel, info,
                              crop=int(cfg.get("report_crop", 256)))
    write_json(out / "prediction.json", info)
    fractions = summary["class_fractions"]
    print(f"wrote {out / 'segmentation.tif'} ({summary['shape'][0]} slices, solid fraction "
          f"{fractions[1] if len(fractions) > 1 else float('nan'):.4f}, {summary['slices_per_second']:.2f} slices/s)")
    return out


class CheckpointPredictor(PredictorFactory):
    """The class probabilities of a checkpoint's model on a device, for predict_to_disk: built in
    each worker process from the checkpoint path (several devices), or bound to a model already
    loaded (one device). precision "bf16" runs the net under CUDA autocast in bfloat16."""

    def __init__(self, checkpoint: str | Path, precision: str = "32"):
        if precision not in ("32", "bf16"):
            raise ValueError(f"inference.precision must be 32 or bf16, got {precision!r}")
        self.checkpoint, self.precision = str(checkpoint), precision

    def __call__(self, device) -> Callable:
        return self.bind(load_model(self.checkpoint)[0], device)

    def bind(self, model, device) -> Callable:
        device = torch.device(device)
        model = model.eval().to(device)
        if self.precision == "32":
            return model.probabilities
        if device.type != "cuda":
            raise ValueError("inference.precision=bf16 needs a CUDA device")

        def probabilities(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model.probabilities(x).float()

        return probabilities


class _SliceRange:
    """Slices z of a slice source (predict.py z_range=[start, stop]): a sub-volume."""

    def __init__(self, source, z: range):
        self.source, self.z = source, z
        self.shape = (len(z), *source.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source[self.z[i]]


def _open_inputs(spec, voltages: list, checkpoint: Path) -> tuple[dict, tuple | None, Path]:
    """The model's input stacks, opened lazily and checked: {channel: LazyStack}, voxel size and
    the input path (a dataset folder, one TIFF, or a list of TIFFs in the model's voltage order)."""
    from fibml.io import _shape_mismatch, open_dataset_stacks, open_stack

    wanted = ", ".join(map(channel_label, voltages))
    if isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec):
        paths = [Path(p) for p in spec]
        if len(paths) != len(voltages):
            raise ValueError(f"input lists {len(paths)} TIFF files, but {checkpoint} was trained on {wanted}: "
                             f"give one stack per voltage, in that order")
        stacks = {c: open_stack(p) for c, p in zip(voltages, paths)}
        first = stacks[voltages[0]]
        for stack in stacks.values():
            if stack.shape != first.shape:
                raise ValueError(_shape_mismatch(stack.path, stack.shape, first.path, first.shape))
        voxel = next((s.voxel_size_nm for s in stacks.values() if s.voxel_size_nm), None)
        return stacks, voxel, paths[0].parent
    source = Path(spec)
    if source.is_dir():
        missing = [c for c in voltages if not (source / stack_name(c)).is_file()]
        if missing:  # the checkpoint's model needs other voltages (or channels) than the folder holds
            raise FileNotFoundError(
                f"{source} has no {', '.join(stack_name(c) for c in missing)}, but {checkpoint} was trained on "
                f"{wanted} (found: {', '.join(map(stack_name, available_channels(source))) or 'no stack'})"
            )
        stacks, voxel = open_dataset_stacks(source, voltages)
        return {c: stacks[c] for c in voltages}, voxel, source
    if source.is_file():
        if len(voltages) != 1:
            raise ValueError(
                f"{source}: this model needs BSE stacks at {voltages} kV; give a dataset folder "
                f"holding bse_<V>kV.tif for each, not a single TIFF"
            )
        stack = open_stack(source)
        return {voltages[0]: stack}, stack.voxel_size_nm, source
    raise FileNotFoundError(f"input {source} is neither a dataset folder nor a TIFF file")


def _earlier_speed(out: Path, summary: Mapping) -> float:
    """Slices/s of the prediction: of this run, or, when it found everything finished, of the
    run that computed it (prediction.json)."""
    if summary["chunks_computed"] or not (out / "prediction.json").is_file():
        return summary["slices_per_second"]
    try:
        return float(json.loads((out / "prediction.json").read_text()).get("slices_per_second"))
    except (ValueError, TypeError):
        return summary["slices_per_second"]


def _channel_shifts(table, channel, stack) -> np.ndarray:
    key = channel_key(channel)
    shifts = {channel_key(c): t for c, t in table.items()}.get(key)
    if shifts is None:
        raise ValueError(f"the shift table has no shifts for {channel_label(key)}")
    if len(shifts) != len(stack):
        raise ValueError(f"{stack.path} has {len(stack)} slices, the shift table has {len(shifts)} for it")
    return shifts


def _z_range(value, n_slices: int) -> range:
    if value is None:
        return range(n_slices)
    start, stop = (int(v) for v in value)
    if not 0 <= start < stop <= n_slices:
        raise ValueError(f"z_range={[start, stop]} must satisfy 0 <= start < stop <= {n_slices} (the stack's slices)")
    return range(start, stop)


def _inference_devices(value) -> list[str] | None:
    """inference.devices: null (one device: inference.device), "all" (every visible GPU), or a list."""
    if value is None:
        return None
    if value == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("inference.devices=all found no GPU")
        return [f"cuda:{i}" for i in range(count)]
    if isinstance(value, str) or not len(value):
        raise ValueError(f"inference.devices must be null, all, or a list such as [cuda:0,cuda:1], got {value!r}")
    return [str(d) for d in value]


def _file_identity(path) -> dict:
    """What identifies a file's content for resuming: path, size, modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def translate(cfg: DictConfig) -> Path:
    """python predict.py task=translate ckpt_path=<CycleGAN run> input=<dataset> output=<dataset>:
    the input's channel of the trained source domain (target domain with direction=ba), scaled to
    [-1, 1] by its own percentiles as in training, translated slice by slice (Gaussian-blended
    sliding window), mapped to the grey values of the other domain; written with the same labels
    and voxel size as a new dataset folder, ready for segmentation training. A run folder gives its
    last.ckpt: the validation cycle error that picks best.ckpt does not measure how realistic the
    translation is (it may rise while the generators learn the target's look)."""
    checkpoint = resolve_checkpoint(cfg.ckpt_path, prefer=("last.ckpt", "best.ckpt"))
    model, run_cfg = load_model(checkpoint)
    if not hasattr(model, "translate"):
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}: task=translate needs a CycleGAN run "
                         "(experiment=cyclegan_sim or cyclegan_da)")
    direction = cfg.get("direction") or "ab"
    if direction not in ("ab", "ba"):
        raise ValueError(f"direction must be 'ab' (source -> target) or 'ba', got {direction!r}")
    source_domain, target_domain = ("a", "b") if direction == "ab" else ("b", "a")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    scaling = next((v["scaling"] for v in state.values() if isinstance(v, dict) and "scaling" in v), None)
    if not scaling or target_domain not in scaling:
        raise ValueError(f"{checkpoint} keeps no grey-value scaling of the domains (written by an older fibml?)")
    channel = run_cfg.data.source_channel if direction == "ab" else run_cfg.data.target_channel

    from fibml.data.unpaired import domain_scaling, from_unit, to_unit

    source = Path(cfg.input)
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} is not a dataset folder")
    dataset = read_dataset(source, None if channel is None else [channel_key(channel)])
    key = dataset.voltages[0] if channel is None else channel_key(channel)
    if channel is None and len(dataset.voltages) > 1:
        raise ValueError(f"{source} holds channels {dataset.voltages}: the CycleGAN was trained on one; "
                         "set data.source_channel when training")
    stack = dataset.images[key]
    images = to_unit(stack, *domain_scaling(source, [stack], run_cfg.data.percentiles))[None]
    device = resolve_device(cfg.inference.get("device", "auto"))
    model = model.to(device)
    started = time.perf_counter()
    translated = predict_volume(
        lambda x: model.translate(x, direction), images, dims="2d", patch_size=run_cfg.data.patch_size,
        overlap=cfg.inference.get("overlap", 0.5), slices_per_batch=cfg.inference.get("slices_per_batch", 8),
        sw_batch_size=cfg.inference.get("sw_batch_size", 32), device=device,
        reuse_memory=bool(cfg.inference.get("reuse_memory", False)),
    )[0]
    seconds = time.perf_counter() - started
    translated = from_unit(translated, *scaling[target_domain])
    manifest = dict(dataset.manifest) | {
        "translated": {"checkpoint": str(checkpoint), "direction": direction, "from": str(source),
                       "seconds": round(seconds, 3)},
    }
    out = write_dataset(cfg.output, {key: translated}, dataset.voxel_size_nm, labels=dataset.labels,
                        manifest=manifest, overwrite=bool(cfg.get("overwrite", False)))
    print(f"wrote {out}: {stack.shape[0]} slices translated {direction} in {seconds:.1f} s")
    return out


def _reconstruct(settings: Mapping, segmentation: np.ndarray, raw: np.ndarray, voxel, source: Path,
                 inference: Mapping) -> dict | None:
    """Slices of varying thickness -> isotropic volume (predict.py reconstruct.*): thicknesses
    from the input's thickness.csv, a CSV or ruler marks, repositioning, interpolation."""
    if not settings.get("enabled", False):
        return None
    from fibml.reconstruct.pipeline import reconstruct_stack, thicknesses_from

    if voxel is None:
        raise ValueError(f"{source} carries no voxel size: give voxel_size_nm=[z,y,x] to reconstruct in nm")
    pixel_nm = float(voxel[2])
    grid_nm = float(settings.get("grid_nm") or pixel_nm)
    ruler = dict(settings.get("ruler") or {})
    band_rows = int(ruler.pop("band_rows", 0)) if settings.get("thickness") == "ruler" else 0
    thicknesses, info = thicknesses_from(
        settings.get("thickness", "csv"), segmentation.shape[0], folder=source if source.is_dir() else None,
        band=raw[:, :band_rows] if band_rows else None, pixel_nm=pixel_nm, ruler=ruler,
    )
    inpainter = None
    if settings.get("method") == "ml":
        inpainter = _inpainter(settings.get("inpainting_ckpt"), inference)
    volume = reconstruct_stack(
        segmentation[:, band_rows:], thicknesses, method=settings.get("method", "spline"),
        repositioning=settings.get("repositioning", "accurate"), grid_nm=grid_nm,
        target_nm=float(settings.get("target_nm", 10.0)), inpainter=inpainter,
    )
    info |= {"method": settings.get("method"), "repositioning": settings.get("repositioning"), "grid_nm": grid_nm,
             "slices": int(segmentation.shape[0]), "grid_rows": int(volume.shape[0]),
             "mean_thickness_nm": float(np.mean(thicknesses))}
    print(f"reconstructed {segmentation.shape[0]} slices onto {volume.shape[0]} rows of {grid_nm:g} nm "
          f"({settings.get('repositioning')} repositioning, {settings.get('method')})")
    return {"volume": volume, "voxel_size_nm": (grid_nm, float(voxel[1]), float(voxel[2])), "band_rows": band_rows,
            "info": info}


def _inpainter(checkpoint, inference: Mapping):
    """inpaint_volume with the trained inpainting net of a run of experiment=inpainting."""
    from functools import partial

    from fibml.reconstruct.inpainting import inpaint_volume

    if not checkpoint:
        raise ValueError("reconstruct.method=ml needs reconstruct.inpainting_ckpt=<run of experiment=inpainting>")
    model, run_cfg = load_model(resolve_checkpoint(checkpoint))
    if not hasattr(model, "probabilities") or type(model).__name__ != "InpaintingTask":
        raise ValueError(f"{checkpoint} is a {type(model).__name__}, not an inpainting model (experiment=inpainting)")
    device = resolve_device(inference.get("device", "auto"))
    model = model.eval().to(device)
    return partial(inpaint_volume, predictor=model.probabilities, patch_size=run_cfg.data.patch_size,
                   overlap=inference.get("overlap", 0.5), device=device, progress=True)


def voltage_weights(model, voltages) -> dict[str, float]:
    """{'1kV': w, ...}: the learned weight of each voltage of a late-fusion model, else {}."""
    net = getattr(model, "net", None)
    if not hasattr(net, "voltage_weights"):
        return {}
    names = [channel_label(v) for v in voltages] if voltages is not None else [
        f"branch{i}" for i in range(net.n_voltages)
    ]
    return dict(zip(names, net.voltage_weights()))


def _format_weights(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {w:.2f}" for name, w in weights.items())


def method_name(run_cfg: Mapping) -> str:
    """A short name for tables: net, input kind and voltages, e.g. 'ResidualUNet 2.5d, 1+2+4 kV'."""
    net = str(run_cfg["model"]["net"]["_target_"]).rsplit(".", 1)[-1]
    return f"{net} {run_cfg['data']['dims']}, {channels_text(run_cfg['data']['voltages'])}"


def channels_text(channels) -> str:
    """Channels for a table: '1+2+4 kV' for BSE voltages, 'se2_1kV+inlens_1kV' for detector stacks."""
    keys = [channel_key(c) for c in channels]
    if all(isinstance(k, float) for k in keys):
        return "+".join(f"{k:g}" for k in keys) + " kV"
    return "+".join(channel_label(k) for k in keys)


def _predict(model, images: np.ndarray, settings: dict, inference: Mapping, z_range: range | None = None) -> np.ndarray:
    device = resolve_device(inference.get("device", "auto"))
    model = model.eval().to(device)
    return predict_volume(
        model.probabilities, images, z_range=z_range, device=device,
        overlap=inference.get("overlap", 0.5),
        slices_per_batch=inference.get("slices_per_batch", 8),
        sw_batch_size=inference.get("sw_batch_size", 32),
        reuse_memory=bool(inference.get("reuse_memory", False)),
        **settings,
    )


def _data_settings(data) -> dict:
    """The input layout a model was trained with, from its data config or its datamodule."""
    keys = ("dims", "patch_size", "n_adjacent")
    return {k: data[k] if isinstance(data, Mapping) else getattr(data, k) for k in keys}


def _finish_loggers(loggers: list) -> None:
    """Close the wandb run, so the next run in this process (a sweep trial, a test) gets its own."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks / logger group that has a _target_."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]
