"""What an evaluation scores: one dataset's normalised images, its labels (when it has ground
truth), the slices scored and the training block, its voxel size and phase names. A datamodule
produces it (FIBSEMDataModule.evaluation_volume), and so does a dataset folder without labels
(a real acquisition: unlabelled_volume), so evaluation never reads a datamodule's attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fibml.channels import Channel, channel_key
from fibml.data.transforms import normalize_channels
from fibml.io import LABELS, Dataset, is_acquisition_folder, open_acquisition, read_dataset

__all__ = ["EvaluationVolume", "unlabelled_volume"]


@dataclass(frozen=True)
class EvaluationVolume:
    """The slices `z` of a dataset, scored under the name of `split`.

    images: (channel, z, y, x) normalised float32, the whole stack (nets and local baselines
    see the neighbours of the scored block). labels: (z, y, x) phase labels of the whole stack,
    None without ground truth. train_z: the training block (where learning baselines take
    their sparse labels), None when the dataset has none. dataset: the folder as read (raw
    images of the channels read, manifest)."""

    path: Path
    dataset: Dataset
    voltages: list[Channel]
    images: np.ndarray
    labels: np.ndarray | None
    split: str
    z: range
    train_z: range | None

    @property
    def voxel_size_nm(self) -> tuple[float, float, float] | None:
        return self.dataset.voxel_size_nm

    @property
    def truth(self) -> np.ndarray | None:
        """The labels of the scored slices, or None without ground truth."""
        return None if self.labels is None else self.labels[self.z.start : self.z.stop]

    @property
    def n_phases(self) -> int:
        """The manifest's number of phases, else the labels' largest value + 1, at least 2."""
        phases = (self.dataset.manifest or {}).get("phases")
        if phases:
            return len(phases)
        return max(2, int(self.labels.max(initial=0)) + 1) if self.labels is not None else 2

    def phase_names(self, n: int) -> list[str]:
        """Names of n phases: the manifest's, then 'phase <i>'."""
        names = list((self.dataset.manifest or {}).get("phases") or ["pore", "solid"])
        return [names[i] if i < len(names) else f"phase {i}" for i in range(n)]

    def title(self) -> str:
        """'<dataset folder>, <split> slices', the caption of its figures."""
        return f"{Path(self.path).name}, {self.split} slices"


def unlabelled_volume(folder: str | Path, voltages: Sequence | None, normalize: Mapping | None,
                      split: str = "all", acquisition: Mapping | None = None) -> EvaluationVolume:
    """Every slice of a dataset folder without labels.tif, or of a folder of slices as the
    microscope wrote them (read with open_acquisition's `acquisition` settings), normalised as
    the model's training data was: scored only by the measures that need no ground truth."""
    folder = Path(folder)
    if split != "all":
        raise ValueError(
            f"{folder} has no {LABELS}, so it has no held-out {split!r} block: "
            f"evaluate it with split=all (every slice; solid fraction and anisotropy errors)"
        )
    wanted = None if voltages is None else [channel_key(v) for v in voltages]
    if is_acquisition_folder(folder):
        dataset = _read_acquisition(folder, wanted, dict(acquisition or {}))
    else:
        dataset = read_dataset(folder, wanted)
    channels = dataset.voltages if wanted is None else wanted
    images = normalize_channels([dataset.images[v] for v in channels], **dict(normalize or {}))
    return EvaluationVolume(folder, dataset, list(channels), images, None, split, range(images.shape[1]), None)


def _read_acquisition(folder: Path, wanted: list | None, settings: dict) -> Dataset:
    """A folder of per-slice TIFFs read whole into a Dataset (evaluation works in memory): its
    series as the wanted channels (a single series as a single wanted channel)."""
    default = wanted[0] if wanted and len(wanted) == 1 else None
    acquisition = open_acquisition(folder, default_channel=default, **settings)
    series = dict(acquisition.channels)
    if wanted and len(wanted) == 1 and len(series) == 1:
        series = {wanted[0]: next(iter(series.values()))}
    missing = [c for c in wanted or [] if c not in series]
    if missing:
        raise FileNotFoundError(f"{folder} holds the series {', '.join(map(str, acquisition.channels))}, not "
                                f"{', '.join(map(str, missing))}: name them with acquisition.channels={{<channel>: '<pattern>'}}")
    z, y, x = acquisition.voxel_size_nm
    if z is None:
        raise ValueError(
            f"{folder}: the slice thickness is in none of the files, and the anisotropy errors need it: set "
            "acquisition.slice_thickness_nm=<nm>, or ingest the folder first with python -m fibml.ingest "
            "slice_thickness_nm=auto"
        )
    images = {c: s[:] for c, s in series.items() if wanted is None or c in wanted}
    return Dataset(folder, images, (z, y, x), None, acquisition.manifest())
