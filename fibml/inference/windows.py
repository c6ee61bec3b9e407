"""Prediction in memory: predict_volume over whole slices and volumes, the slice sources it
reads (NormalizedStack), the net inputs of each kind (2D, 2.5D, 3D) and the device settings."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from fibml.data.patches import context_indices, patch_shape
from fibml.data.transforms import scale_to_unit
from fibml.protocols import read_region
from fibml.sliding_window import sliding_window

__all__ = ["BATCH_BYTES", "NormalizedStack", "ResampledStack", "Predictor", "PredictorFactory", "SliceReader", "first_argmax",
           "predict_volume", "read_block", "resolve_device", "reuse_host_memory", "slice_batches", "window_runner"]


Predictor = Callable[[torch.Tensor], torch.Tensor]


BATCH_BYTES = 256 * 2**20  # slices_per_batch=None: the float32 input batch stays under this


class PredictorFactory:
    """Builds the predictor on a device: `factory(device) -> predictor`.

    predict_to_disk with several devices needs one: every worker process (spawned: a fresh
    interpreter) unpickles the factory and calls it with its device. Subclass it at module
    level, so the workers can import it, and keep only picklable state (a checkpoint path,
    settings), not a loaded net. With one device the factory is called once, in the caller's
    process.
    """

    def __call__(self, device: torch.device) -> Predictor:
        raise NotImplementedError


class NormalizedStack:
    """A slice source scaled like normalize_stack: `[z]` is slice z as float32 with lo..hi
    mapped to 0..1, clipped.

    stack: a (z, y, x) LazyStack or array. lo, hi: as fibml.data.transforms.stack_percentiles returns them;
    then every slice equals the same slice of normalize_stack(whole stack) exactly. Picklable
    when the stack is (a LazyStack is), so it can be sent to worker processes.
    """

    def __init__(self, stack, lo, hi):
        if not hi > lo:
            raise ValueError(f"{getattr(stack, 'path', 'stack')}: normalisation range {lo} .. {hi} is empty")
        self.stack, self.lo, self.hi = stack, lo, hi

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.stack.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        return scale_to_unit(self.stack[z], self.lo, self.hi)

    def region(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        """Rows ys and columns xs of slice z, normalised (reads only those rows when it can)."""
        return scale_to_unit(read_region(self.stack, z, ys, xs), self.lo, self.hi)

    def __repr__(self) -> str:
        return f"NormalizedStack({self.stack!r}, lo={self.lo}, hi={self.hi})"


class ResampledStack:
    """A slice source whose slices are resized in-plane to `size` (rows, columns): bilinear,
    with Gaussian anti-aliasing when shrinking (scikit-image's resize, the field's standard),
    float32. predict.py inference.resample=true presents an input to a model at the voxel size
    it was trained on. Picklable when the source is."""

    def __init__(self, stack, size: tuple[int, int]):
        rows, cols = (int(n) for n in size)
        if rows < 1 or cols < 1:
            raise ValueError(f"resampled slices need at least one row and column, got {size}")
        self.stack, self.size = stack, (rows, cols)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.stack.shape[0]), *self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        from skimage.transform import resize  # imported here: scikit-image is slow to import, and rarely needed

        image = np.asarray(self.stack[z], dtype=np.float32)
        shrinking = self.size[0] < image.shape[0] or self.size[1] < image.shape[1]
        return resize(image, self.size, order=1, anti_aliasing=shrinking, preserve_range=True).astype(np.float32)

    def __repr__(self) -> str:
        return f"ResampledStack({self.stack!r}, size={self.size})"


def predict_volume(
    predictor: Predictor,
    images: np.ndarray,
    dims: str = "2d",
    patch_size: int | Sequence[int] = 64,
    n_adjacent: int = 7,
    overlap: float = 0.5,
    z_range: range | None = None,
    slices_per_batch: int = 8,
    sw_batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    reuse_memory: bool = False,
) -> np.ndarray:
    """Class probabilities (n_classes, z, y, x) float32 for the slices `z_range` of `images`.

    predictor: maps a (B, C', *patch) tensor to probabilities (B, n_classes, *patch), e.g.
        SegmentationTask.probabilities. images: normalised (channel, z, y, x) stack.
    2.5D inputs take their k neighbours from the whole stack (mirrored at its ends), so the
    slices just outside z_range still serve as context. For stacks too large for memory use
    predict_to_disk, which gives the same probabilities. reuse_memory: call reuse_host_memory()
    first (faster on a CPU; changes this process's malloc for good).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (channel, z, y, x), got shape {images.shape}")
    z_range = range(images.shape[1]) if z_range is None else z_range
    device = resolve_device(device)
    if reuse_memory:
        reuse_host_memory()
    run = window_runner(predictor, patch_shape(patch_size, dims), overlap, sw_batch_size, device, dims)
    if dims == "3d":  # the array as it is (no copy when contiguous), not read_block's copy
        return run(np.ascontiguousarray(images[None, :, z_range.start : z_range.stop], dtype=np.float32))[0].cpu().numpy()

    reader = SliceReader(list(images), n_adjacent if dims == "2.5d" else 1, device)
    zs = list(z_range)
    out = None
    with tqdm(total=len(zs), desc="predict", unit="slice", disable=not progress, leave=False) as bar:
        for start, probs in slice_batches(run, reader, zs, slices_per_batch):
            if out is None:
                out = np.empty((probs.shape[1], len(zs), *images.shape[2:]), dtype=np.float32)
            out[:, start : start + len(probs)] = probs.cpu().numpy().transpose(1, 0, 2, 3)
            bar.update(len(probs))
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc malloc.h


def reuse_host_memory(trim_threshold: int = 2**30) -> bool:
    """Let this process's malloc (glibc) keep freed memory for the next allocation; returns
    whether it could (False elsewhere: musl, macOS, Windows).

    Every batch of windows allocates the same large tensors again (the batch, the net's
    activations, the weighted probabilities). glibc serves blocks above its mmap threshold (128
    kB at first, raised as blocks are freed, but never above 32 MB) with a fresh mmap and unmaps
    them when freed, so each batch maps, page-faults and zeroes them anew: with a tiny net,
    predicting a 3 x 3072 x 2048 slice on 2 CPU cores took 3.4 million page faults and a third
    of the CPU time in the kernel (1.5-2x slower than with this setting). Here no block is mmapped
    (M_MMAP_MAX 0: from the heap, reused once freed) and the heap is given back to the system
    only when more than `trim_threshold` bytes at its top are free, which bounds what it keeps.
    It is what LD_PRELOAD of jemalloc or tcmalloc (PyTorch's CPU performance guide) does for
    this pattern, without a library to install. Process-wide and permanent: for processes that
    end after predicting (predict.py, evaluate.py, the evaluation after training); up to
    trim_threshold more resident memory. Figures in benchmarks/RESULTS.md.
    """
    libc = _glibc()
    if libc is None:
        return False
    threshold = int(min(max(trim_threshold, 0), 2**31 - 1))  # mallopt takes an int
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


@functools.cache
def _glibc():
    """glibc as a ctypes library, or None on another C library (looked up once: platform.libc_ver
    reads the interpreter's binary)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)  # the C library this interpreter runs on


def window_runner(predictor: Predictor, roi, overlap: float, sw_batch_size: int, device: torch.device, dims: str):
    """(B, C', *spatial) float32 array or tensor -> (B, n_classes, *spatial) float32 probabilities, a
    tensor on `device` (blended there: on a GPU, adding thousands of windows on the CPU was the
    bottleneck)."""

    def run(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        inputs = (batch if torch.is_tensor(batch) else torch.from_numpy(batch)).to(device)
        with torch.no_grad():
            if dims == "3d":  # MONAI's own summation order, which the 3D blocks' equality rests on
                out = sliding_window_inference(
                    inputs, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
                    padding_mode="reflect", sw_device=device, device=device, progress=False,
                )
            else:  # the same windows and weights, a few operations per batch instead of per window
                out = sliding_window(inputs, roi, predictor, sw_batch_size, overlap, padding_mode="reflect")
        return out.float()

    return run


class SliceReader:
    """2D / 2.5D net inputs (n, C * k, y, x), voltage-major like PatchDataset's, for given
    slices, as a tensor on `device`. Keeps the source slices the next batch shares (2.5D
    neighbours) on the device, so each slice is read and sent there about once and the k
    neighbours are put together there (a 2.5D input is 7 times its slices: 525 MB per
    3 x 3072 x 2048 slice); holds at most (batch + k - 1) slices per channel."""

    def __init__(self, channels: Sequence, k: int, device: torch.device):
        self.channels, self.k, self.device = channels, k, device
        self.n_slices = channels[0].shape[0]
        self.cache: dict[int, list[torch.Tensor]] = {}

    def __call__(self, zs: Sequence[int]) -> torch.Tensor:
        context = [context_indices(z, self.k, self.n_slices) for z in zs]
        needed = {int(i) for ctx in context for i in ctx}
        self.cache = {z: s for z, s in self.cache.items() if z in needed}
        for z in sorted(needed - self.cache.keys()):
            self.cache[z] = [torch.from_numpy(np.asarray(channel[z], dtype=np.float32)).to(self.device)
                             for channel in self.channels]
        n_y, n_x = self.channels[0].shape[1:]
        out = torch.empty((len(zs), len(self.channels) * self.k, n_y, n_x), dtype=torch.float32, device=self.device)
        for i, ctx in enumerate(context):
            for v in range(len(self.channels)):
                for j, z in enumerate(ctx):
                    out[i, v * self.k + j] = self.cache[int(z)][v]  # voltage v, neighbour j
        return out


def slice_batches(run, reader: SliceReader, zs: Sequence[int], slices_per_batch: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset into zs, probabilities (n, n_classes, y, x)) per batch of slices."""
    for start in range(0, len(zs), slices_per_batch):
        yield start, run(reader(zs[start : start + slices_per_batch]))


def read_block(channels: Sequence, region) -> np.ndarray:
    """The 3D net input (1, C, z, y, x) of region ((z0, z1), (y0, y1), (x0, x1))."""
    (z0, z1), (y0, y1), (x0, x1) = region
    out = np.empty((1, len(channels), z1 - z0, y1 - y0, x1 - x0), dtype=np.float32)
    for c, channel in enumerate(channels):
        for i, z in enumerate(range(z0, z1)):
            out[0, c, i] = read_region(channel, z, slice(y0, y1), slice(x0, x1))
    return out


def first_argmax(probs: torch.Tensor) -> torch.Tensor:
    """argmax over the first axis as uint8, ties to the lower class like numpy's argmax, in
    n_classes - 1 element-wise passes (torch's argmax over a leading axis took 1.75 s for a
    2 x 3072 x 2048 slice on one CPU thread, numpy's 0.16 s, this 0.01 s)."""
    if probs.shape[0] == 1:
        return torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    labels = (probs[1] > probs[0]).to(torch.uint8)
    best = probs[0]
    for c in range(2, probs.shape[0]):
        best = torch.maximum(best, probs[c - 1])
        labels.masked_fill_(probs[c] > best, c)
    return labels
