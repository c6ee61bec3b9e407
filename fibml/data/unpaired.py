"""Unpaired 2-D patches of two image domains for CycleGAN (cyclegan-simulation-domain-adaptation.txt, 2.3-2.6).

Domain a is the source (e.g. preprocessed synthetic images), domain b the target (Monte Carlo or
real images). Each domain is a fibml dataset folder (manifest.json + bse_2kV.tif ..., one channel
picked), a folder of .tif / .tiff files (each a 2-D image or a (z, y, x) stack), or one such file.
Every 2-D slice is cut into patches with a sliding window (Table 1: 128 x 128, stride 64) and
scaled to [-1, 1] with the domain's 0.5 / 99.5 percentiles; `scaling` keeps them so translated
images can be mapped back to the domain's grey values. Items are {"a": (1, py, px), "b": (1, py, px)}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fibml.channels import channel_key, channel_label
from fibml.data.datamodules import per_device_batch_size
from fibml.data.patches import patch_shape, patch_starts
from fibml.io import (
    LABELS,
    MANIFEST,
    available_channels,
    read_dataset,
    read_stack,
    stack_name,
)

__all__ = [
    "DOMAINS",
    "UnpairedDataModule",
    "UnpairedPatchDataset",
    "domain_scaling",
    "from_unit",
    "read_domain",
    "to_unit",
]

DOMAINS = ("a", "b")  # a = source, b = target, as the CycleGAN batches name them
_ALIASES = {"a": "a", "b": "b", "source": "a", "target": "b"}
_NORMALIZE = ("percentile", None)
_MAX_PERCENTILE_SAMPLES = 10_000_000  # percentiles of a strided subsample: exact enough, bounded memory


class UnpairedDataModule(pl.LightningDataModule):
    """Unpaired patches of a source (a) and a target (b) domain for CycleGAN training.

    source / target: a fibml dataset folder, a folder of .tif / .tiff images or stacks, or one TIFF;
        None = the dataset that source_generator / target_generator (keyword arguments of
        fibml.synth.dataset.generate_dataset) describe, synthesised once into cache_dir.
    source_channel / target_channel: the channel of a dataset folder (2, "bse_2kV", "se2_1kV");
        None = its only channel.
    patch_size / stride: pixels, an int or (y, x). batch_size: the global batch, divided over devices.
    val_fraction: the last slices of each domain (files in natural order, then z) held out for validation.
    seed: seeds the shuffling and the random pairing of training patches.
    normalize: "percentile" scales each domain so its `percentiles` map to -1 and 1 (clipped);
        None takes the images as already scaled to [-1, 1].
    After setup, scaling[domain] = (low, high) grey values (domain "a" / "source" or "b" / "target").
    """

    def __init__(
        self,
        source: str | Path | None = None,
        target: str | Path | None = None,
        source_channel: float | str | None = None,
        target_channel: float | str | None = None,
        patch_size: int | Sequence[int] = 128,
        stride: int | Sequence[int] = 64,
        batch_size: int = 1,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        normalize: str | None = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        source_generator: Mapping | None = None,
        target_generator: Mapping | None = None,
        cache_dir: str | Path = "data",
    ):
        super().__init__()
        if normalize not in _NORMALIZE:
            raise ValueError(f"data.normalize must be one of {_NORMALIZE}, got {normalize!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        low, high = (float(p) for p in percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"data.percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}")
        self.generators = {"a": source_generator, "b": target_generator}
        for domain, path, name in (("a", source, "source"), ("b", target, "target")):
            if path is None and self.generators[domain] is None:
                raise ValueError(f"give data.{name} (a folder of images) or data.{name}_generator (to synthesise one)")
        self.cache_dir = Path(cache_dir)
        self.paths = {"a": None if source is None else Path(source), "b": None if target is None else Path(target)}
        self.channels = {"a": source_channel, "b": target_channel}
        self.patch = patch_shape(patch_size, "2d")
        self.stride = patch_shape(stride, "2d")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self.normalize, self.percentiles = normalize, (low, high)
        self.batch_size_per_device = self.batch_size
        self.scaling: dict[str, tuple[float, float]] = {}
        self.datasets: dict[str, UnpairedPatchDataset] = {}

    def domain_path(self, domain: str) -> Path:
        """The folder of a domain ("a" / "source", "b" / "target"): the given one, or the dataset its
        generator synthesises (fibml.synth.dataset.cached_dataset, generated once into cache_dir)."""
        domain = _domain(domain)
        if self.paths[domain] is not None:
            return self.paths[domain]
        from fibml.synth.dataset import cached_dataset

        return cached_dataset(self.cache_dir, self.generators[domain])

    def prepare_data(self) -> None:
        # one process per node synthesises the missing domains
        for domain in DOMAINS:
            self.domain_path(domain)

    def setup(self, stage: str | None = None) -> None:
        self.batch_size_per_device = per_device_batch_size(self.batch_size, self.trainer)
        if self.datasets:
            return
        stacks, index = {}, {}
        for domain in DOMAINS:
            folder = self.domain_path(domain)
            named = read_domain(folder, self.channels[domain])
            if self.normalize == "percentile":
                self.scaling[domain] = _percentiles(folder, [s for _, s in named], self.percentiles)
            else:
                self.scaling[domain] = (-1.0, 1.0)
            stacks[domain] = [to_unit(s, *self.scaling[domain], clip=self.normalize is not None) for _, s in named]
            index[domain] = _split_patches(folder, named, self.patch, self.stride, self.val_fraction)
        self.datasets["train"] = UnpairedPatchDataset(
            stacks["a"], index["a"]["train"], stacks["b"], index["b"]["train"], self.patch, random_pairs=True,
            seed=self.seed,
        )
        if self.val_fraction > 0:
            self.datasets["val"] = UnpairedPatchDataset(
                stacks["a"], index["a"]["val"], stacks["b"], index["b"]["val"], self.patch, random_pairs=False
            )

    def state_dict(self) -> dict:
        # Lightning stores this in every checkpoint: translation maps outputs back to these grey values
        return {"scaling": {d: list(v) for d, v in self.scaling.items()}, "channels": dict(self.channels)}

    def load_state_dict(self, state: dict) -> None:
        self.scaling = {d: tuple(v) for d, v in state.get("scaling", {}).items()}

    def to_unit(self, x: np.ndarray, domain: str) -> np.ndarray:
        """Grey values of a domain ("a" / "source", "b" / "target") scaled to [-1, 1], as the training patches."""
        return to_unit(x, *self.scaling[_domain(domain)], clip=self.normalize is not None)

    def from_unit(self, y: np.ndarray, domain: str) -> np.ndarray:
        """[-1, 1] images (e.g. translated a -> b) mapped back to the grey values of `domain`."""
        return from_unit(y, *self.scaling[_domain(domain)])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # val_fraction=0: no validation batches (Lightning accepts an empty list)
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size_per_device,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies
        )


class UnpairedPatchDataset(Dataset):
    """Patch pairs {"a": float32 (1, py, px), "b": float32 (1, py, px)} of two lists of (z, y, x) stacks.

    index_a / index_b: int arrays (n, 4) of patch origins (stack, z, y, x).
    random_pairs: item i is source patch i with a random target patch (training; length = source
        patches), drawn from a generator seeded by `seed` (per worker: the worker's seed); else
        patches i % n_a and i % n_b (validation; length = the larger count, so both are covered).
    """

    def __init__(
        self,
        stacks_a: Sequence[np.ndarray],
        index_a: np.ndarray,
        stacks_b: Sequence[np.ndarray],
        index_b: np.ndarray,
        patch: Sequence[int],
        random_pairs: bool,
        seed: int = 0,
    ):
        if len(index_a) == 0 or len(index_b) == 0:
            raise ValueError(f"both domains need patches, got {len(index_a)} source and {len(index_b)} target patches")
        self.stacks = {"a": list(stacks_a), "b": list(stacks_b)}
        self.index = {"a": np.asarray(index_a), "b": np.asarray(index_b)}
        self.patch = tuple(int(p) for p in patch)
        self.random_pairs, self.seed = bool(random_pairs), int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._worker: int | None = None

    def __len__(self) -> int:
        n_a, n_b = len(self.index["a"]), len(self.index["b"])
        return n_a if self.random_pairs else max(n_a, n_b)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n_a, n_b = len(self.index["a"]), len(self.index["b"])
        j = int(torch.randint(n_b, (), generator=self._rng())) if self.random_pairs else i % n_b
        return {"a": self._patch("a", i % n_a), "b": self._patch("b", j)}

    def _patch(self, domain: str, i: int) -> torch.Tensor:
        s, z, y, x = (int(v) for v in self.index[domain][i])
        py, px = self.patch
        patch = self.stacks[domain][s][z, y : y + py, x : x + px]
        return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None]

    def _rng(self) -> torch.Generator:
        # each DataLoader worker holds a copy of this generator: reseed it from the worker's own seed
        info = get_worker_info()
        worker = None if info is None else info.id
        if worker != self._worker:
            self._generator.manual_seed(info.seed if info is not None else self.seed)
            self._worker = worker
        return self._generator


def read_domain(path: str | Path, channel: float | str | None = None) -> list[tuple[str, np.ndarray]]:
    """The images of one domain as (file name, (z, y, x) stack) pairs, files in natural order.

    path: a fibml dataset folder (one channel stack: `channel`, or the only one), a folder of
    .tif / .tiff files (2-D images or stacks; labels.tif is skipped) or a single TIFF file.
    """
    path = Path(path)
    if path.is_file():
        return [(path.name, read_stack(path)[0])]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder or TIFF file")
    channels = available_channels(path)
    if channels:
        key = _pick_channel(path, channels, channel)
        if (path / MANIFEST).is_file():
            return [(stack_name(key), read_dataset(path, [key]).images[key])]
        return [(stack_name(key), read_stack(path / stack_name(key))[0])]  # stacks without manifest or voxel size
    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")
         and p.name != LABELS),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise FileNotFoundError(
            f"{path} holds no images: expected a fibml dataset folder ({MANIFEST} and stacks like bse_2kV.tif) "
            "or .tif / .tiff images"
        )
    if channel is not None:
        raise ValueError(
            f"{path} holds plain TIFF images, no channel stacks like bse_2kV.tif: drop the channel {channel!r}"
        )
    return [(p.name, read_stack(p)[0]) for p in files]


def to_unit(x: np.ndarray, low: float, high: float, clip: bool = True) -> np.ndarray:
    """Grey values scaled linearly so low -> -1 and high -> 1 (float32), clipped to [-1, 1] by default."""
    y = (np.asarray(x, dtype=np.float32) - np.float32(low)) * np.float32(2.0 / (high - low)) - np.float32(1.0)
    return np.clip(y, -1.0, 1.0, out=y) if clip else y


def from_unit(y: np.ndarray, low: float, high: float) -> np.ndarray:
    """The inverse of to_unit (float32): -1 -> low, 1 -> high."""
    y = np.asarray(y, dtype=np.float32)
    return (y + np.float32(1.0)) * np.float32((high - low) / 2.0) + np.float32(low)


def _pick_channel(folder: Path, channels: list, channel) -> float | str:
    found = ", ".join(channel_label(c) for c in channels)
    if channel is None:
        if len(channels) > 1:
            raise ValueError(
                f"{folder} holds {len(channels)} channels ({found}): choose one with data.source_channel / "
                "data.target_channel"
            )
        return channels[0]
    key = channel_key(channel)
    if key not in channels:
        raise FileNotFoundError(f"{folder} has no {stack_name(key)} (channels found: {found})")
    return key


def domain_scaling(folder: Path, stacks: Sequence[np.ndarray], q: Sequence[float] = (0.5, 99.5)) -> tuple[float, float]:
    """The grey values (low, high) that a domain's q percentiles take: what to_unit maps to -1 and 1."""
    return _percentiles(Path(folder), stacks, tuple(q))


def _percentiles(folder: Path, stacks: Sequence[np.ndarray], q: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) percentiles of a domain's grey values; an error if the images are constant."""
    step = max(1, sum(s.size for s in stacks) // _MAX_PERCENTILE_SAMPLES)
    sample = np.concatenate([np.asarray(s).ravel()[::step] for s in stacks])
    low, high = (float(v) for v in np.percentile(sample, q))
    if not high > low:
        raise ValueError(
            f"{folder}: the {q[0]:g} and {q[1]:g} percentiles of the images are both {low:g} (constant images?): "
            "nothing to scale to [-1, 1]"
        )
    return low, high


def _split_patches(
    folder: Path,
    named: Sequence[tuple[str, np.ndarray]],
    patch: tuple[int, int],
    stride: tuple[int, int],
    val_fraction: float,
) -> dict[str, np.ndarray]:
    """Patch origins (stack, z, y, x) of the training slices and of the last (validation) slices."""
    slices = [(s, z) for s, (_, stack) in enumerate(named) for z in range(stack.shape[0])]
    n_val = max(1, round(val_fraction * len(slices))) if val_fraction > 0 else 0
    if n_val >= len(slices):
        raise ValueError(
            f"{folder} has {len(slices)} slice(s): too few to hold out val_fraction={val_fraction:g} for "
            "validation and keep some for training"
        )
    origins = []
    for name, stack in named:
        n_y, n_x = stack.shape[1:]
        if patch[0] > n_y or patch[1] > n_x:
            raise ValueError(
                f"{folder}: {name} has {n_y} x {n_x} pixel slices, smaller than the {patch[0]} x {patch[1]} patch: "
                "use a smaller data.patch_size"
            )
        y0 = patch_starts(n_y, patch[0], stride[0], "rows")
        x0 = patch_starts(n_x, patch[1], stride[1], "columns")
        origins.append(np.stack([g.ravel() for g in np.meshgrid(y0, x0, indexing="ij")], axis=1))
    split = {"train": slices[: len(slices) - n_val], "val": slices[len(slices) - n_val:]}
    index = {}
    for name, chosen in split.items():
        rows = [np.column_stack([np.full((len(origins[s]), 2), (s, z)), origins[s]]) for s, z in chosen]
        index[name] = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), dtype=np.int64)
    return index


def _domain(domain: str) -> str:
    if domain not in _ALIASES:
        raise ValueError(f"unknown domain {domain!r}: expected 'a' / 'source' or 'b' / 'target'")
    return _ALIASES[domain]


def _natural_key(name: str) -> list:
    # slice_2.tif before slice_10.tif: digit runs compare as numbers
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
