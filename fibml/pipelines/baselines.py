"""The classical baselines of evaluate.py (configs/method/*.yaml): one job per method and channel
group, fitted on sparse labels of the training block when the method learns, scored like a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hydra.utils import instantiate

from fibml.baselines.common import sparse_labels
from fibml.channels import channel_key, channel_label
from fibml.config import CONFIG_DIR
from fibml.data.volume import EvaluationVolume
from fibml.io import LABELS, available_channels, read_dataset
from fibml.metrics.table import score_row
from fibml.pipelines.common import as_list, channels_text
from fibml.pipelines.scoring import write_method
from fibml.protocols import RanksFeatures, StatesRule
from fibml.report import save_importances, write_table

__all__ = ["all_channels", "baseline_jobs", "evaluate_baseline", "method_names"]


def method_names() -> list[str]:
    """The baselines evaluate.py knows: the names of configs/method/*.yaml."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))


def baseline_jobs(methods: Mapping, reference: EvaluationVolume) -> list[dict]:
    """One job per (baseline, channel group): a method's ``inputs`` list entries are ``all``
    (every channel of the dataset together), ``each`` (every channel alone, one row each, as the
    k-means rows of Table 3) or a list of channels (``[se2_1kV, inlens_1kV]``)."""
    if not methods:
        return []
    # a dataset folder's stacks; a folder of slices as the microscope wrote them: its series, all read
    channels = available_channels(reference.path) or reference.dataset.voltages
    jobs = []
    for key, spec in methods.items():
        if not isinstance(spec, Mapping) or "segmenter" not in spec:
            raise ValueError(f"method.{key} needs a 'segmenter' (a _target_ with its options): see configs/method/")
        groups = []
        for entry in as_list(spec.get("inputs") or ["all"]):
            if entry == "all":
                groups.append(list(channels))
            elif entry == "each":
                groups += [[c] for c in channels]
            else:
                group = [channel_key(c) for c in as_list(entry)]
                missing = [c for c in group if c not in channels]
                if missing:
                    raise ValueError(
                        f"method.{key}.inputs names {', '.join(map(channel_label, missing))}, which "
                        f"{reference.path} does not hold (found: {', '.join(map(channel_label, channels))})"
                    )
                groups.append(group)
        for group in groups:
            jobs.append({"key": key, "name": f"{spec.get('name', key)}, {channels_text(group)}", "channels": group,
                         "segmenter": spec["segmenter"]})
    return jobs


def all_channels(reference: EvaluationVolume):
    """The reference dataset with every channel of its folder: the one already read when it holds them all."""
    if set(available_channels(reference.path)) <= set(reference.dataset.images):
        return reference.dataset
    return read_dataset(reference.path)


def evaluate_baseline(job: Mapping, reference: EvaluationVolume, raw, training: Mapping, out_dir: Path,
                      save_predictions: bool, print_table: bool, curves: dict, morphology: Mapping | None = None):
    """Fit (on sparse labels of the training block, if the baseline learns) and apply one
    baseline to the scored slices of the reference volume; its row, prediction and files."""
    z, split = reference.z, reference.split
    n_phases = reference.n_phases
    segmenter = _instantiate_baseline(job["segmenter"], n_phases, job["channels"])
    images = raw.stack(job["channels"])
    extra = {}
    if segmenter.needs_labels:
        train_images, train_labels = _baseline_training_data(job, reference, raw, training)
        segmenter.fit(train_images, train_labels)
        extra = _baseline_report(segmenter, train_images, train_labels, out_dir, job["name"],
                                 reference.phase_names(n_phases))
    # local baselines (filters across slices) see the neighbours of the block, as the networks do
    halo = int(getattr(segmenter, "halo", 0) or 0)
    z0, z1 = max(0, z.start - halo), min(images.shape[1], z.stop + halo)
    prediction = segmenter.predict(images[:, z0:z1])[z.start - z0 : z.stop - z0]
    row = score_row(job["name"], split, z, prediction, reference.truth, n_phases, reference.voxel_size_nm, curves,
                    phases=reference.phase_names(n_phases), morphology=morphology)
    row |= extra
    method_curves = {key: curves[key] for key in ("ground truth", job["name"]) if key in curves}
    write_method(out_dir, row, prediction, reference, save_predictions, print_table, method_curves)
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


def _baseline_training_data(job: Mapping, reference: EvaluationVolume, raw, training: Mapping):
    """(images, sparse labels) a learning baseline is fitted on: ``n_slices`` evenly spaced slices
    of the training block (or of all of training.data_dir), ``pixels_per_class`` random labelled
    pixels per phase on each, as a user would label a few slices."""
    if training.get("data_dir"):
        dataset = read_dataset(training["data_dir"], job["channels"], require_labels=True)
        labels, block = dataset.labels, range(dataset.labels.shape[0])
    else:
        if reference.labels is None:
            raise ValueError(
                f"{job['name']} learns from labelled slices, and {reference.path} has no {LABELS}: "
                f"name a labelled dataset with baseline_training.data_dir=<folder>"
            )
        if reference.split == "all":
            raise ValueError(
                f"{job['name']} learns from labelled slices, and split=all scores every slice of "
                f"{reference.path}: name another labelled dataset with baseline_training.data_dir=<folder>"
            )
        dataset, labels, block = raw, reference.labels, reference.train_z
    sparse = sparse_labels(labels, block, n_slices=int(training.get("n_slices", 4)),
                           pixels_per_class=training.get("pixels_per_class", 2000), seed=int(training.get("seed", 0)))
    return dataset.stack(job["channels"]), sparse


def _baseline_report(segmenter, images, labels, out_dir: Path, name: str, phases: list[str]) -> dict:
    """What a fitted baseline can tell about itself: the thresholds it found (a column of its
    row), the random forest's feature importances per filter group (tables, Fig. 3)."""
    extra = {}
    if isinstance(segmenter, StatesRule):
        extra["rule"] = segmenter.describe()
    if isinstance(segmenter, RanksFeatures):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_table(segmenter.feature_importances(by=("group",)), out_dir / "feature_importances")
        write_table(segmenter.feature_importances(by=("group", "channel")), out_dir / "feature_importances_per_channel")
        per_class = segmenter.class_importances(images, labels)
        write_table(per_class, out_dir / "feature_importances_per_class")
        save_importances(out_dir / "feature_importances.png", per_class, phases, title=f"{name}: importance per filter group")
    return extra
