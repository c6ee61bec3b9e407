"""Training data for ML inpainting in z (slice-thickness-repositioning-inpainting.txt, 2.2.3).

After repositioning (fibml.reconstruct.repositioning), the segmented slices sit on a 2.5 nm grid
in z and the grid rows between them are missing. The network learns to fill them from xz and yz
planes of an isotropic ground truth (labels.tif), in which the rows a random slice-thickness
draw would not have imaged are masked: sample_thicknesses -> slice_positions -> known rows.

A sample is a (z, w) crop of one plane (w = x for xz planes, y for yz planes):
input (2, z, w) float32 = [the plane with masked rows set to 0.5, the known-row mask 0 / 1],
target (z, w) int64 = the full plane (0 = pore, 1 = solid).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from fibml.data.datamodules import per_device_batch_size
from fibml.data.patches import split_z_blocks
from fibml.data.transforms import Augmentation
from fibml.geometry import slice_positions
from fibml.io import LABELS, read_manifest, read_stack
from fibml.synth.dataset import cached_dataset
from fibml.synth.thickness import sample_thicknesses

__all__ = ["FILL_VALUE", "PLANES", "InpaintingDataModule", "PlaneDataset", "PlaneSample", "inpainting_input", "plane_patch"]

log = logging.getLogger(__name__)

PLANES = ("xz", "yz")
FILL_VALUE = 0.5  # what a masked row holds in the input: halfway between pore (0) and solid (1)


class InpaintingDataModule(pl.LightningDataModule):
    """Masked xz / yz planes of a ground-truth label volume, split into blocks along y.

    data_dir: a dataset folder holding labels.tif (isotropic, binary), or a labels TIFF itself;
        None = the embedded default, generated once from `generator` (keyword arguments of
        fibml.synth.dataset.generate_dataset) into `cache_dir`, shared with FIBSEMDataModule.
    patch_size: int or (z, w): the crop of a plane, in voxels.
    batch_size: the global batch; each of the trainer's devices gets batch_size / world_size.
    num_workers: DataLoader workers.
    split: fractions train / val / test of the y axis and the gap (voxels) between blocks. An xz
        plane belongs to the block holding its y; a yz crop's whole y-range lies inside its block
        (blocks narrower than the crop give xz planes only).
    epoch_size: random training samples per epoch. val_size / test_size: the fixed, seeded lists.
    planes: which plane orientations to sample ("xz", "yz").
    thickness: keyword arguments of fibml.synth.thickness.sample_thicknesses (target_nm, shape,
        bin_nm); the slices are repositioned on the ground truth's z voxel grid.
    augmentation: an albumentations transform for training samples, applied to input and
        target alike; use flips only (rotations would turn masked rows into columns).
    seed: seed of the validation and test lists. Training samples follow torch's seed of the
        process (or DataLoader worker), which seed_everything sets, so training is reproducible.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        patch_size: int | Sequence[int] = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        split: Mapping | None = None,
        epoch_size: int = 4096,
        val_size: int = 512,
        test_size: int = 512,
        planes: Sequence[str] = PLANES,
        thickness: Mapping | None = None,
        augmentation=None,
        cache_dir: str | Path = "data",
        generator: Mapping | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if data_dir is None and generator is None:
            raise ValueError("give data.data_dir (a dataset folder with labels.tif) or data.generator (to synthesise one)")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.patch = plane_patch(patch_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.split = dict(split or {})
        self.sizes = {"train": int(epoch_size), "val": int(val_size), "test": int(test_size)}
        if min(self.sizes.values()) < 1:
            raise ValueError(f"epoch_size, val_size and test_size must be >= 1, got {self.sizes}")
        self.planes = tuple(str(p) for p in planes)
        unknown = [p for p in self.planes if p not in PLANES]
        if unknown or not self.planes:
            raise ValueError(f"planes must name some of {PLANES}, got {list(planes)}")
        self.thickness = dict(thickness or {})
        self.augmentation = None if augmentation is None else Augmentation(augmentation)
        self.cache_dir, self.generator = Path(cache_dir), generator
        self.seed = int(seed)
        self.batch_size_per_device = self.batch_size
        self.labels: np.ndarray | None = None
        self.voxel_size_nm: tuple[float, float, float] | None = None
        self.blocks: dict[str, range] = {}
        self.datasets: dict[str, PlaneDataset] = {}

    @property
    def labels_path(self) -> Path:
        """The ground-truth TIFF (the embedded default's, generated on first use, when data_dir is None)."""
        folder = self.data_dir if self.data_dir is not None else cached_dataset(self.cache_dir, self.generator)
        return folder if folder.suffix.lower() in (".tif", ".tiff") else folder / LABELS

    @property
    def grid_nm(self) -> float:
        """The repositioning grid: the ground truth's z voxel size (bin_nm when it has none)."""
        if self.voxel_size_nm is not None:
            return float(self.voxel_size_nm[0])
        return float(self.thickness.get("bin_nm", 2.5))

    def prepare_data(self) -> None:
        # runs on one process per node: generate the embedded default once
        if self.data_dir is None:
            cached_dataset(self.cache_dir, self.generator)

    def setup(self, stage: str | None = None) -> None:
        self.batch_size_per_device = per_device_batch_size(self.batch_size, self.trainer)
        if self.labels is None:
            self._read()
        if self.datasets:
            return
        for i, (name, y_range) in enumerate(self.blocks.items()):
            planes = tuple(p for p in self.planes if p == "xz" or len(y_range) >= self.patch[1])
            if not planes:
                raise ValueError(
                    f"the {name} block (y {y_range.start}-{y_range.stop - 1}) is narrower than the "
                    f"{self.patch[1]}-voxel crop of a yz plane: add 'xz' to data.planes or use a smaller patch_size"
                )
            if planes != self.planes:
                log.info("%s block: %d rows in y, narrower than the crop: xz planes only", name, len(y_range))
            random = name == "train"
            self.datasets[name] = PlaneDataset(
                self.labels, y_range, self.patch, planes, self.thickness, self.grid_nm, self.sizes[name],
                seed=None if random else self.seed * 3 + i, transform=self.augmentation if random else None,
            )

    def _read(self) -> None:
        path = self.labels_path
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: inpainting trains on a ground-truth {LABELS}")
        labels, tiff_voxel = read_stack(path)
        values = np.unique(labels)
        if not np.isin(values, (0, 1)).all():
            shown = ", ".join(f"{v:g}" for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise ValueError(
                f"{path}: inpainting needs binary labels (0 = pore, 1 = solid), found the values {shown}"
            )
        self.labels = labels.astype(np.uint8, copy=False)
        manifest = read_manifest(path.parent) if path.name == LABELS else {}
        voxel = manifest.get("voxel_size_nm") or tiff_voxel
        if voxel is not None:
            self.voxel_size_nm = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel, dtype=float), (3,)))
        n_z, n_y, n_x = self.labels.shape
        pz, pw = self.patch
        if n_z < pz or ("xz" in self.planes and n_x < pw):
            raise ValueError(f"{path}: a {pz} x {pw} crop (z, x) does not fit the volume of shape {self.labels.shape}")
        periodic = bool(manifest.get("periodic", False))
        self.blocks = split_z_blocks(n_y, periodic=periodic, **self.split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str) -> DataLoader:
        # no shuffling: training samples are drawn at random anyway, validation ones are a fixed list
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size_per_device,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies
            drop_last=False,
        )


@dataclass(frozen=True)
class PlaneSample:
    """Where a sample comes from: plane "xz" (index = y) or "yz" (index = x); the crop starts at
    z0 and w0 (x for xz, y for yz); the known rows come from sample_thicknesses(seed=
    thickness_seed) repositioned by slice_positions and shifted up by `offset` rows."""

    plane: str
    index: int
    z0: int
    w0: int
    thickness_seed: int
    offset: int
    known: np.ndarray  # bool (pz,): the rows of the crop that hold a repositioned slice


class PlaneDataset(Dataset):
    """`size` masked plane crops of `labels` (z, y, x) from the block `y_range`.

    seed None: every item is a fresh random sample (drawn from torch's RNG of the process, so
    seed_everything makes it reproducible and each DataLoader worker draws differently);
    seed int: a fixed list of samples, the same for every call and every instance.
    Items: (float32 (2, pz, pw) input, int64 (pz, pw) target).
    """

    def __init__(
        self,
        labels: np.ndarray,
        y_range: range,
        patch: tuple[int, int],
        planes: Sequence[str],
        thickness: Mapping,
        grid_nm: float,
        size: int,
        seed: int | None = None,
        transform=None,
    ):
        self.labels, self.y_range, self.patch = labels, y_range, tuple(int(p) for p in patch)
        self.planes, self.thickness, self.grid_nm = tuple(planes), dict(thickness), float(grid_nm)
        self.size, self.transform = int(size), transform
        rng = None if seed is None else np.random.default_rng(seed)
        self.samples = None if rng is None else [self.draw(rng) for _ in range(self.size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if self.samples is not None:
            sample = self.samples[i]
        else:
            # the item index keeps DDP ranks apart (their processes share torch's seed), the torch
            # draw keeps epochs and DataLoader workers apart
            draw = int(torch.randint(0, 2**62, (1,)).item())
            sample = self.draw(np.random.default_rng([draw, int(i)]))
        image, target = inpainting_input(self.plane(sample), sample.known), self.plane(sample)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)),
        )

    def draw(self, rng: np.random.Generator) -> PlaneSample:
        """A random plane, crop and known-row pattern."""
        n_z, _, n_x = self.labels.shape
        pz, pw = self.patch
        plane = self.planes[rng.integers(len(self.planes))]
        if plane == "xz":
            index = int(rng.integers(self.y_range.start, self.y_range.stop))
            w0 = int(rng.integers(0, n_x - pw + 1))
        else:
            index = int(rng.integers(0, n_x))
            w0 = int(rng.integers(self.y_range.start, self.y_range.stop - pw + 1))
        z0 = int(rng.integers(0, n_z - pz + 1))
        thickness_seed = int(rng.integers(2**62))
        # pz slices of >= 1 grid row each reach past the crop; a random offset gives the pattern a random phase
        positions, n_grid = slice_positions(sample_thicknesses(pz, seed=thickness_seed, **self.thickness), self.grid_nm)
        offset = int(rng.integers(0, max(n_grid - pz, 0) + 1))
        rows = positions - offset
        known = np.zeros(pz, dtype=bool)
        known[rows[(rows >= 0) & (rows < pz)]] = True
        return PlaneSample(plane, index, z0, w0, thickness_seed, offset, known)

    def plane(self, sample: PlaneSample) -> np.ndarray:
        """The ground-truth crop (pz, pw) of a sample."""
        pz, pw = self.patch
        zs, ws = slice(sample.z0, sample.z0 + pz), slice(sample.w0, sample.w0 + pw)
        if sample.plane == "xz":
            return self.labels[zs, sample.index, ws]
        return self.labels[zs, ws, sample.index]


def inpainting_input(plane: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The network input (2, z, w) float32 of a label plane (z, w) whose rows `known` (bool (z,))
    were imaged: channel 0 the plane with the other rows set to FILL_VALUE, channel 1 the mask."""
    mask = np.broadcast_to(np.asarray(known, dtype=bool)[:, None], plane.shape)
    return np.stack([np.where(mask, plane, FILL_VALUE), mask]).astype(np.float32)


def plane_patch(patch_size) -> tuple[int, int]:
    """(z, w) crop size of a plane from an int or a pair."""
    patch = (int(patch_size),) * 2 if isinstance(patch_size, (int, np.integer)) else tuple(int(p) for p in patch_size)
    if len(patch) != 2 or min(patch) < 1:
        raise ValueError(f"patch_size must be an int or (z, w) of positive ints, got {patch_size}")
    return patch
