"""The LightningDataModule every supervised fibml task reuses: aligned voltage stacks -> patches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fibml.channels import channel_key
from fibml.data.patches import DIMS, PatchDataset, split_z_blocks
from fibml.data.transforms import Augmentation, normalize_channels
from fibml.data.volume import EvaluationVolume
from fibml.io import read_dataset
from fibml.synth.dataset import cached_dataset

__all__ = ["FIBSEMDataModule", "per_device_batch_size"]


def per_device_batch_size(batch_size: int, trainer) -> int:
    """The global batch of the config divided over the trainer's devices (all of it without a trainer)."""
    if trainer is None:
        return batch_size
    if batch_size % trainer.world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {trainer.world_size} devices")
    return batch_size // trainer.world_size


class FIBSEMDataModule(pl.LightningDataModule):
    """Patches of a dataset folder (bse_<V>kV.tif + labels.tif), split into z-blocks.

    data_dir: a dataset folder; None = the embedded default, generated once from `generator`
        (keyword arguments of fibml.synth.dataset.generate_dataset) into `cache_dir`.
    voltages: the input channels: BSE voltages (kV) or detector stack names (se2_1kV); None =
        every channel in the folder. dims: "2d", "2.5d" or "3d".
    n_adjacent: slices per 2.5D input (odd). patch_size / stride: int or (z, y, x) for 3D.
    batch_size: the global batch; each of the trainer's devices gets batch_size / world_size.
    split: fractions train / val / test and the gap (slices) between blocks.
    normalize: percentiles (low, high) mapped to 0 and 1, per stack.
    augmentation: an albumentations transform for training patches (None = no augmentation).
    batch_augmentation: a fibml.data.batch_augment.BatchAugmentation applied to whole training
        batches on the device instead (cheaper for many channels: the 2.5D experiments use it).
    n_classes: the phases the model predicts; labels outside [0, n_classes) are refused at setup.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        voltages: Sequence[float | str] | None = (2,),
        dims: str = "2d",
        n_adjacent: int = 7,
        patch_size: int | Sequence[int] = 64,
        stride: int | Sequence[int] = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        split: Mapping | None = None,
        normalize: Mapping | None = None,
        augmentation=None,
        batch_augmentation=None,
        cache_dir: str | Path = "data",
        generator: Mapping | None = None,
        n_classes: int | None = None,
    ):
        super().__init__()
        if dims not in DIMS:
            raise ValueError(f"data.dims must be one of {DIMS}, got {dims!r}")
        if data_dir is None and generator is None:
            raise ValueError("give data.data_dir (a dataset folder) or data.generator (to synthesise one)")
        self.data_dir = None if data_dir is None else Path(data_dir)
        # None = every channel of the dataset folder, known once setup() has read it
        self.voltages = None if voltages is None else [channel_key(v) for v in voltages]
        self.dims, self.n_adjacent = dims, int(n_adjacent)
        self.patch_size, self.stride = patch_size, stride
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.split = dict(split or {})
        self.normalize = dict(normalize or {})
        self.augmentation = None if augmentation is None else Augmentation(augmentation)
        self.batch_augmentation = batch_augmentation
        self.cache_dir, self.generator = Path(cache_dir), generator
        self.n_classes = None if n_classes is None else int(n_classes)
        self.batch_size_per_device = self.batch_size
        self.images = self.labels = self.blocks = self.dataset = None
        self.datasets: dict[str, PatchDataset] = {}

    @property
    def dataset_path(self) -> Path:
        """The dataset folder (the embedded default's cache folder when data_dir is None)."""
        if self.data_dir is not None:
            return self.data_dir
        return cached_dataset(self.cache_dir, self.generator)

    def prepare_data(self) -> None:
        # runs on one process per node: generate the embedded default once
        if self.data_dir is None:
            cached_dataset(self.cache_dir, self.generator)

    def setup(self, stage: str | None = None) -> None:
        self.batch_size_per_device = per_device_batch_size(self.batch_size, self.trainer)
        if self.images is None:
            self._read()
        if stage != "test" and not self.datasets:  # evaluation reads whole slices, no patches
            for name, z_range in self.blocks.items():
                self.datasets[name] = PatchDataset(
                    self.images, self.labels, z_range, self.dims, self.patch_size, self.stride, self.n_adjacent,
                    transform=self.augmentation if name == "train" else None,
                )

    def _read(self) -> None:
        self.dataset = read_dataset(self.dataset_path, self.voltages, require_labels=True)
        self.voltages = self.dataset.voltages if self.voltages is None else self.voltages
        self.images = normalize_channels([self.dataset.images[v] for v in self.voltages], **self.normalize)
        self.labels = self.dataset.labels
        top = int(self.labels.max(initial=0))
        if self.n_classes is not None and top >= self.n_classes:
            raise ValueError(
                f"{self.dataset_path / 'labels.tif'} holds phase labels 0..{top}, but the model predicts "
                f"n_classes={self.n_classes}: set model.n_classes={top + 1}"
            )
        periodic = bool(self.dataset.manifest.get("periodic", False))
        self.blocks = split_z_blocks(self.labels.shape[0], periodic=periodic, **self.split)

    def z_range(self, split: str) -> range:
        """Slices of a split ("train", "val", "test") or of the whole stack ("all")."""
        if split == "all":
            return range(self.labels.shape[0])
        if split not in self.blocks:
            raise ValueError(f"unknown split {split!r}: expected 'train', 'val', 'test' or 'all'")
        return self.blocks[split]

    def evaluation_volume(self, split: str) -> EvaluationVolume:
        """What evaluation scores on this datamodule's dataset: the slices of `split` ("train",
        "val", "test", or "all"), with the images, labels and training block (after setup)."""
        if self.images is None:
            raise RuntimeError("call setup() before evaluation_volume(): the dataset is read there")
        return EvaluationVolume(Path(self.dataset_path), self.dataset, list(self.voltages), self.images, self.labels,
                                split, self.z_range(split), self.blocks["train"])

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # training batches only, on the device they were just copied to
        if self.batch_augmentation is not None and self.trainer is not None and self.trainer.training:
            batch = self.batch_augmentation(*batch)
        return batch

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size_per_device,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies
            drop_last=False,
        )
