"""The interfaces fibml's layers meet at, declared once.

Slice sources: a (z, y, x) stack read one slice at a time, so that stacks larger than memory
are never held whole. fibml.io.LazyStack, fibml.inference.NormalizedStack,
fibml.data.registration.ShiftedStack, the z range of predict.py and numpy arrays all are one;
those that can read a crop of a slice without the rest are region sources too, and
``read_region`` is the one place that uses that.

Trained models: every task declares what it is for in a class attribute ``task`` (one of
TASKS), so a pipeline asks a checkpoint's model for its task instead of its class name; the
methods each task offers are the protocols below, as are the optional reports of a fusion net
(its voltage weights) and of a classical baseline (its rule, its feature ranking).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from torch import Tensor

__all__ = [
    "BACKSCATTER",
    "INPAINTING",
    "SEGMENTATION",
    "TASKS",
    "TRANSLATION",
    "EtaModel",
    "RanksFeatures",
    "RegionSource",
    "Segmenter",
    "SliceSource",
    "StatesRule",
    "Translator",
    "WeighsVoltages",
    "read_region",
    "task_of",
]

SEGMENTATION, INPAINTING, TRANSLATION, BACKSCATTER = "segmentation", "inpainting", "translation", "backscatter"
TASKS = (SEGMENTATION, INPAINTING, TRANSLATION, BACKSCATTER)


@runtime_checkable
class SliceSource(Protocol):
    """A (z, y, x) stack: ``shape``, ``len()`` and ``[z]`` -> slice z as a (y, x) array."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, z: int) -> np.ndarray: ...


@runtime_checkable
class RegionSource(SliceSource, Protocol):
    """A slice source that reads rows ys and columns xs of slice z without the rest of it."""

    def region(self, z: int, ys: slice, xs: slice) -> np.ndarray: ...


def read_region(source: SliceSource, z: int, ys: slice, xs: slice) -> np.ndarray:
    """Rows ys, columns xs of slice z: only those where the source is a RegionSource."""
    if isinstance(source, RegionSource):
        return np.asarray(source.region(z, ys, xs))
    return np.asarray(source[z])[ys, xs]


class Segmenter(Protocol):
    """A segmentation (or inpainting) task: class probabilities (B, n_classes, *spatial)."""

    task: ClassVar[str]

    def probabilities(self, x: Tensor) -> Tensor: ...


class Translator(Protocol):
    """A CycleGAN task: images (B, C, y, x) in [-1, 1] translated "ab" or "ba"."""

    task: ClassVar[str]

    def translate(self, x: Tensor, direction: str = "ab") -> Tensor: ...


@runtime_checkable
class WeighsVoltages(Protocol):
    """A fusion net that learns a weight per voltage (the late-fusion vote): reported with its results."""

    n_voltages: int

    def voltage_weights(self) -> list[float]: ...


@runtime_checkable
class StatesRule(Protocol):
    """A fitted classical baseline that states its rule in one line (the thresholds it found)."""

    def describe(self) -> str: ...


@runtime_checkable
class RanksFeatures(Protocol):
    """A fitted classical baseline that ranks its input features (the random forest, Fig. 3 of
    random-forest-multi-detector.txt): importances per filter group, and per phase."""

    def feature_importances(self, by=("group",)) -> list[dict]: ...

    def class_importances(self, images, labels, n_repeats: int = 3, max_samples: int = 5000) -> list[dict]: ...


class EtaModel(Protocol):
    """The backscatter coefficient of atomic number Z (mean), beam energy E_keV (keV) under
    depth_nm (nm) of matrix; broadcasting numpy arrays in, float64 out."""

    def __call__(self, Z, E_keV, depth_nm) -> np.ndarray: ...


def task_of(model) -> str | None:
    """The task a trained model declares (one of TASKS), or None for a model of another kind."""
    task = getattr(type(model), "task", None)  # a model built from a foreign _target_ declares none
    return task if task in TASKS else None
