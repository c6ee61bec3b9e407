"""Sliding-window prediction over whole slices and volumes, with Gaussian blending: in memory
(predict_volume) or chunk by chunk straight to disk (predict_to_disk).

Overlapping patches are stitched with Gaussian weights, so there are no seams at patch borders:
2D and 2.5D slices by fibml.sliding_window (MONAI's windows and weights, vectorised over the
windows), 3D blocks by MONAI's sliding_window_inference itself. fibml only arranges the
(channel, z, y, x) stack into the inputs each kind of net expects (2D slices, 2.5D slices with
k neighbours, 3D blocks). The argmax and the class counts are computed on the net's device, so
only the uint8 labels (and the probabilities, when asked for) come back to the CPU.

Chunked prediction to disk (predict_to_disk)
--------------------------------------------
A real acquisition (3 voltages x 316 slices x 3072 x 2048 pixels) is 6-12 GB as stored, four
times that as normalised float32, and its class probabilities as much again. predict_to_disk
holds one chunk at a time and resumes after a crash or a kill:

Input. `channels`: one slice source per channel, anything with `.shape` (z, y, x) whose `[z]`
is a normalised float32 (y, x) slice: a NormalizedStack over a fibml.io.LazyStack, a
registration wrapper, an in-memory array. A chunk reads only the slices it needs.

2D / 2.5D. Slices go in chunks of `chunk_slices`; each slice is predicted over its whole
(y, x) extent exactly as predict_volume does, and a 2.5D input takes its k neighbours from the
whole stack (mirrored at its ends), so chunk borders change nothing. Within a chunk,
`slices_per_batch` slices go through the net together.

3D, blocks with a halo. MONAI places windows along each axis at multiples of the stride
s = int(p * (1 - overlap)) (p the patch size), the last one moved back flush with the end
(start N - p). The volume is cut into blocks whose cores [a, b) start and end on that grid
(core sizes are multiples of s). In the whole-volume run a core voxel x is covered by the grid
windows starting in (x - p, x], and by the end window N - p when N - p <= x. The block around
a core is read from A = a - s * floor((p - 1) / s), the first grid point whose window reaches
the core (or the last grid point <= N - p if that is smaller, so the block holds a patch), to
B = b - s + p, the end of the last grid window starting in the core (or to N when b + p > N,
where the volume's end window may reach the core). Run on [A, B) alone, MONAI starts windows
at the grid points from A (A is one) and moves its last one back to B - p, which is itself a
grid window (b - s) or the volume's end window N - p: over the core it places exactly the
whole-volume run's windows, with the same Gaussian weights, summed in the same order, so the
chunked probabilities equal the whole-volume ones (only the net's own batch-size dependent
rounding differs). axis_blocks checks this for every block of every run against MONAI's own
window placement (monai.data.utils.dense_patch_slices), and the tests compare the results.
The halos are shorter than a patch: p - s after the core, s * floor((p - 1) / s) before it
(a little more before a last core that is shorter than a patch).

Output, all in out_dir. segmentation.tif (uint8 argmax) and, with save_probabilities,
probability_class<c>.tif (float32): ImageJ TIFFs with the voxel size, like fibml.io.write_stack
writes them. They are created at the start, pixels zero and contiguous, in the work folder
out_dir/.partial/ (fibml.io.create_stack_file); each chunk writes its slices (or its block's
core) into them with positioned writes (fibml.io.StackFile: os.pwrite, no memory map, so
the files' pages never count in the process's resident memory) and flushes them (fsync)
before it is recorded; only when every chunk is done are they renamed into out_dir
(segmentation.tif last), so out_dir never holds a half-written segmentation.tif. The inputs
are read the same way (fibml.io.LazyStack: positioned reads of the rows a chunk needs), so
the process's peak memory is one chunk's worth, not the size of the files.

Ledger and resume. .partial/ledger.json holds the fingerprint: the caller's dict (checkpoint,
input files with size and mtime, inference settings) with the output layout (shape, classes,
patch, overlap, chunking, voxel size). Each process records the chunks it has finished and
flushed, with their class counts, in its own .partial/done-<run>-<rank>.json, rewritten
atomically after every chunk. A rerun with the same fingerprint skips every recorded chunk; a
work folder with another fingerprint is refused unless overwrite=True, which discards it.
Once finished, out_dir/prediction_fingerprint.json keeps the fingerprint and the summary
(class fractions of the whole stack included): a rerun with the same fingerprint returns it at
once, another fingerprint is refused unless overwrite=True (which removes the old results
first). overwrite never discards finished work of the same fingerprint: the same inputs,
checkpoint and settings give the same files.

Several devices. One spawned worker process per device takes every n-th remaining chunk,
builds its own predictor from a PredictorFactory, writes its chunks into the shared
output files (chunks never overlap, nor do the bytes their writes touch) and its own done
file; the parent follows the done files (progress bar, on_chunk) and finalises.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

import fibml
from fibml.data.patches import DIMS, context_indices, patch_shape
from fibml.data.transforms import scale_to_unit
from fibml.io import (
    create_stack_file,
    json_default,
    open_stack_file,
    shape_mismatch,
    write_json,
)
from fibml.protocols import read_region
from fibml.sliding_window import scan_interval, sliding_window, window_starts

__all__ = [
    "FINGERPRINT",
    "SEGMENTATION",
    "WORK_DIR",
    "NormalizedStack",
    "PredictorFactory",
    "axis_blocks",
    "finished_chunks",
    "plan_chunks",
    "predict_to_disk",
    "predict_volume",
    "probability_name",
    "resolve_device",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]

WORK_DIR = ".partial"  # work folder inside out_dir: temporary outputs, ledger, done files
SEGMENTATION = "segmentation.tif"
FINGERPRINT = "prediction_fingerprint.json"  # fingerprint and summary of a finished prediction
LEDGER = "ledger.json"
BATCH_BYTES = 256 * 2**20  # slices_per_batch=None: the float32 input batch stays under this
DEFAULT_BLOCK = (64, 512, 512)  # 3D core block (z, y, x), rounded up to the window stride


def probability_name(class_index: int) -> str:
    """File name of one class's probabilities: 'probability_class1.tif'."""
    return f"probability_class{class_index}.tif"


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
    run = _window_runner(predictor, patch_shape(patch_size, dims), overlap, sw_batch_size, device, dims)
    if dims == "3d":  # the array as it is (no copy when contiguous), not _read_block's copy
        return run(np.ascontiguousarray(images[None, :, z_range.start : z_range.stop], dtype=np.float32))[0].cpu().numpy()

    reader = _SliceReader(list(images), n_adjacent if dims == "2.5d" else 1, device)
    zs = list(z_range)
    out = None
    with tqdm(total=len(zs), desc="predict", unit="slice", disable=not progress, leave=False) as bar:
        for start, probs in _slice_batches(run, reader, zs, slices_per_batch):
            if out is None:
                out = np.empty((probs.shape[1], len(zs), *images.shape[2:]), dtype=np.float32)
            out[:, start : start + len(probs)] = probs.cpu().numpy().transpose(1, 0, 2, 3)
            bar.update(len(probs))
    return out


def predict_to_disk(
    predictor: Predictor | PredictorFactory,
    channels: Sequence,
    out_dir: str | Path,
    *,
    dims: str,
    patch_size: int | Sequence[int],
    n_adjacent: int = 7,
    overlap: float = 0.5,
    chunk_slices: int = 16,
    block: int | Sequence[int] | None = None,
    slices_per_batch: int | None = None,
    sw_batch_size: int = 32,
    device: str | torch.device = "cpu",
    devices: Sequence[str | torch.device] | None = None,
    n_classes: int,
    save_probabilities: bool = False,
    voxel_size_nm: Sequence[float] | float | None = None,
    fingerprint: dict,
    overwrite: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    reuse_memory: bool = False,
) -> dict:
    """Predict a stack chunk by chunk into out_dir, in bounded memory, resumably (see the
    module docstring for chunking, the 3D block halo, the ledger and the file layout).

    predictor: a callable (B, C', *patch) tensor -> probabilities (B, n_classes, *patch), or
        a PredictorFactory (needed for more than one device: each worker builds its own).
    channels: slice sources, each with .shape (z, y, x) and [z] -> normalised float32 slice
        (NormalizedStack, arrays); all of the same shape.
    dims, patch_size, n_adjacent, overlap, sw_batch_size: as for predict_volume.
    chunk_slices: slices per chunk (2D / 2.5D). block: 3D core block (z, y, x) or one size,
        rounded up to a multiple of the window stride (default DEFAULT_BLOCK).
    slices_per_batch: slices per forward pass (2D / 2.5D); None: as many as keep the float32
        input batch under BATCH_BYTES (at least 1, at most chunk_slices).
    device: where the net runs (one process); devices: several, one worker process each.
    n_classes: classes the predictor returns; save_probabilities: also write
        probability_class<c>.tif. voxel_size_nm: stored in the TIFFs.
    fingerprint: identifies the result (checkpoint, input files with size and mtime,
        settings): a finished or half-done prediction is reused only when it matches.
    overwrite: discard a work folder or finished result of another fingerprint.
    on_chunk(index, n_chunks): called after each chunk is committed (flushed and recorded).
    reuse_memory: call reuse_host_memory() in every process that predicts (1.5-2x faster on
        2 CPU cores; changes this process's malloc for good).

    Returns a summary: shape, n_chunks, chunks_computed (this call), chunks_resumed,
    seconds, slices_per_second, class_counts, class_fractions (of the whole stack, resumed
    chunks included), paths ({"segmentation", "probabilities", "fingerprint"}).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    channels = list(channels)

    # --- validate everything before anything is written
    shape = _check_channels(channels)
    if dims not in DIMS:
        raise ValueError(f"dims must be one of {DIMS}, got {dims!r}")
    if dims == "2.5d" and (n_adjacent < 1 or n_adjacent % 2 == 0):
        raise ValueError(f"n_adjacent must be a positive odd number, got {n_adjacent}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    if int(chunk_slices) < 1:
        raise ValueError(f"chunk_slices must be >= 1, got {chunk_slices}")
    if not 1 <= int(n_classes) <= 256:
        raise ValueError(f"n_classes must be 1 .. 256 (the segmentation is uint8), got {n_classes}")
    if slices_per_batch is not None and int(slices_per_batch) < 1:
        raise ValueError(f"slices_per_batch must be >= 1, got {slices_per_batch}")
    devices = [device] if devices is None else list(devices)
    if not devices:
        raise ValueError("devices is empty: give at least one device, e.g. ['cuda:0']")
    if len(devices) > 1 and not isinstance(predictor, PredictorFactory):
        raise TypeError(
            f"predicting on {len(devices)} devices needs a PredictorFactory (a picklable object that builds "
            f"the predictor in each worker), got {type(predictor).__name__}"
        )
    if not isinstance(fingerprint, dict):
        raise TypeError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder: choose another output folder")
    roi = patch_shape(patch_size, dims)
    k = n_adjacent if dims == "2.5d" else 1
    n_classes, chunk_slices = int(n_classes), int(chunk_slices)
    chunks, chunking = plan_chunks(shape, dims, roi, overlap, chunk_slices, block)
    if slices_per_batch is None:
        per_slice = len(channels) * k * shape[1] * shape[2] * 4
        slices_per_batch = max(1, min(chunk_slices, BATCH_BYTES // per_slice))
    names = ([probability_name(c) for c in range(n_classes)] if save_probabilities else []) + [SEGMENTATION]
    voxel = None if voxel_size_nm is None else [float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, float), (3,))]
    layout = {
        "shape": list(shape), "dims": dims, "patch": list(roi), "overlap": float(overlap), "n_adjacent": k,
        "chunking": chunking, "n_classes": n_classes, "save_probabilities": bool(save_probabilities),
        "voxel_size_nm": voxel,
    }
    fp = _canonical({"settings": fingerprint, "layout": layout})
    work = out_dir / WORK_DIR

    # --- what is there already: a finished result, a work folder to resume, something foreign
    finished = _read_json(out_dir / FINGERPRINT)
    ledger = _read_json(work / LEDGER)
    if finished is not None and finished.get("fingerprint") == fp and all((out_dir / n).is_file() for n in names):
        if work.exists() and ledger is not None and ledger.get("fingerprint") == fp:
            shutil.rmtree(work)  # a finalisation stopped just before its last step
        return _summary_paths(
            {**finished["summary"], "chunks_computed": 0, "chunks_resumed": finished["summary"]["n_chunks"],
             "seconds": time.perf_counter() - started, "slices_per_second": 0.0},
            out_dir, names,
        )
    resume = False
    if work.exists():
        if not (work / LEDGER).exists():
            shutil.rmtree(work)  # stopped while being set up: holds no finished chunk
        elif ledger is not None and ledger.get("fingerprint") == fp:
            resume = True
        elif overwrite:
            shutil.rmtree(work)
        else:
            raise ValueError(
                f"{work} holds an unfinished prediction with other settings (differing: "
                f"{_differences(ledger, fp)}): set overwrite=true to discard it, or choose another output folder"
            )
    if resume and not all((work / n).is_file() or (out_dir / n).is_file() for n in names):
        shutil.rmtree(work)  # its output files are gone: start again
        resume = False
    if not resume:
        _clear_finished(out_dir, fp, finished, overwrite)
        _start_work(work, shape, names, voxel, {"fibml_version": fibml.__version__, "fingerprint": fp,
                                               "n_chunks": len(chunks), "files": names})

    # --- predict the chunks not yet done
    done = _records(work)
    resumed = len(done)
    todo = [c for c in chunks if c.index not in done]
    plane = shape[1] * shape[2]
    job = _Job(channels, dims, roi, k, float(overlap), int(sw_batch_size), int(slices_per_batch), n_classes,
               work, names, shape, bool(reuse_memory))
    run_id = f"{os.getpid()}-{time.time_ns()}"
    bar = tqdm(total=shape[0], initial=sum(c.slices(plane) for c in chunks if c.index in done),
               desc="predict", unit="slice", disable=not progress, dynamic_ncols=True)
    try:
        if todo and len(devices) == 1:
            dev = resolve_device(devices[0])
            if reuse_memory:
                reuse_host_memory()
            net = predictor(dev) if isinstance(predictor, PredictorFactory) else predictor

            def committed(chunk: _Chunk) -> None:
                bar.update(chunk.slices(plane))
                if on_chunk is not None:
                    on_chunk(chunk.index, len(chunks))

            _run_chunks(job, net, dev, todo, work / f"done-{run_id}-0.json", committed)
        elif todo:
            _run_workers(job, predictor, devices, todo, run_id, bar, on_chunk, len(chunks), set(done))
    finally:
        bar.close()

    # --- every chunk done: rename the files into place
    done = _records(work)
    missing = [c.index for c in chunks if c.index not in done]
    if missing:
        raise RuntimeError(f"{work}: chunks {missing} were not finished; run again to complete them")
    counts = np.sum([done[c.index]["class_counts"] for c in chunks], axis=0, dtype=np.int64)
    seconds = time.perf_counter() - started
    computed_slices = sum(c.slices(plane) for c in todo)
    summary = {
        "shape": list(shape), "dims": dims, "n_classes": n_classes, "n_chunks": len(chunks),
        "chunks_computed": len(chunks) - resumed, "chunks_resumed": resumed, "seconds": seconds,
        "slices_per_second": computed_slices / seconds if seconds > 0 else 0.0,
        "class_counts": counts.tolist(), "class_fractions": (counts / max(1, counts.sum())).tolist(),
        "files": names,
    }
    for name in names:  # probabilities first, segmentation.tif last
        if (work / name).exists():
            os.replace(work / name, out_dir / name)
        elif not (out_dir / name).is_file():
            raise RuntimeError(f"{work / name} is missing: delete {work} and run again")
    write_json(out_dir / FINGERPRINT, {"fibml_version": fibml.__version__, "fingerprint": fp, "summary": summary})
    shutil.rmtree(work)
    return _summary_paths(summary, out_dir, names)


def finished_chunks(out_dir: str | Path) -> list[int]:
    """Indices of the chunks an unfinished predict_to_disk into out_dir has committed."""
    return sorted(_records(Path(out_dir) / WORK_DIR))


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


# --- shared by predict_volume and predict_to_disk ------------------------------------------


def _window_runner(predictor: Predictor, roi, overlap: float, sw_batch_size: int, device: torch.device, dims: str):
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


class _SliceReader:
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


def _slice_batches(run, reader: _SliceReader, zs: Sequence[int], slices_per_batch: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset into zs, probabilities (n, n_classes, y, x)) per batch of slices."""
    for start in range(0, len(zs), slices_per_batch):
        yield start, run(reader(zs[start : start + slices_per_batch]))


def _read_block(channels: Sequence, region) -> np.ndarray:
    """The 3D net input (1, C, z, y, x) of region ((z0, z1), (y0, y1), (x0, x1))."""
    (z0, z1), (y0, y1), (x0, x1) = region
    out = np.empty((1, len(channels), z1 - z0, y1 - y0, x1 - x0), dtype=np.float32)
    for c, channel in enumerate(channels):
        for i, z in enumerate(range(z0, z1)):
            out[0, c, i] = read_region(channel, z, slice(y0, y1), slice(x0, x1))
    return out


# --- chunk layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    """A chunk writes `core` ((z0, z1), (y0, y1), (x0, x1)) and reads `region` (3D: core plus
    halo; 2D / 2.5D: the core, the reader adds the neighbours)."""

    index: int
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]

    @property
    def n_voxels(self) -> int:
        return int(np.prod([b - a for a, b in self.core]))

    def slices(self, plane: int) -> int | float:
        """How many whole slices the core is worth (progress in slices; a 3D block is a fraction)."""
        slices = self.n_voxels / plane
        return int(slices) if slices.is_integer() else slices


def plan_chunks(shape, dims: str, roi, overlap: float, chunk_slices: int, block) -> tuple[list[_Chunk], list]:
    """The chunks, and the chunking as stored in the fingerprint."""
    n_z, n_y, n_x = shape
    if dims != "3d":
        cores = [((z, min(z + chunk_slices, n_z)), (0, n_y), (0, n_x)) for z in range(0, n_z, chunk_slices)]
        return [_Chunk(i, core, core) for i, core in enumerate(cores)], [chunk_slices]
    block = DEFAULT_BLOCK if block is None else block
    block = (int(block),) * 3 if isinstance(block, (int, np.integer)) else tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"block must be one size or three (z, y, x) sizes >= 1, got {block}")
    axes = [axis_blocks(n, p, overlap, b) for n, p, b in zip(shape, roi, block)]
    chunks = [
        _Chunk(i, tuple((a, b) for a, b, _, _ in blocks), tuple((lo, hi) for _, _, lo, hi in blocks))
        for i, blocks in enumerate(product(*axes))
    ]
    return chunks, [axis[0][1] - axis[0][0] for axis in axes]


def axis_blocks(size: int, patch: int, overlap: float, core: int) -> list[tuple[int, int, int, int]]:
    """Blocks (a, b, A, B) along one axis: core [a, b), read [A, B) (see the module docstring).

    Checks each block against MONAI's window placement: the windows MONAI places on [A, B)
    that reach the core must be exactly the whole-axis run's windows that reach it.
    """
    stride = scan_interval(size, patch, overlap)
    core = max(stride, -(-core // stride) * stride)  # whole strides: cores start on the window grid
    if size <= patch or core >= size:
        return [(0, size, 0, size)]
    reach = stride * ((patch - 1) // stride)  # the first grid window reaching a core starts this far before it
    last_grid = (size - patch) // stride * stride  # a block must hold a whole patch
    blocks = []
    for a in range(0, size, core):
        b = min(a + core, size)
        lo = max(0, min(a - reach, last_grid))
        hi = b - stride + patch if b + patch <= size else size
        blocks.append((a, b, lo, hi))

    whole = window_starts(size, patch, overlap)
    for a, b, lo, hi in blocks:
        local = [lo + w for w in window_starts(hi - lo, patch, overlap)]
        if hi - lo < patch or _reaching(whole, a, b, patch) != _reaching(local, a, b, patch):
            raise RuntimeError(
                f"internal error: the block [{lo}, {hi}) of an axis of {size} would not be covered by the "
                f"whole-volume windows over its core [{a}, {b}) (patch {patch}, overlap {overlap})"
            )
    return blocks


def _reaching(starts: Sequence[int], a: int, b: int, patch: int) -> list[int]:
    return sorted({s for s in starts if s < b and s + patch > a})


# --- running chunks ------------------------------------------------------------------------


@dataclass
class _Job:
    """What a process needs to predict chunks (picklable for worker processes)."""

    channels: list
    dims: str
    roi: tuple[int, ...]
    k: int
    overlap: float
    sw_batch_size: int
    slices_per_batch: int
    n_classes: int
    work: Path
    names: list[str]
    shape: tuple[int, int, int]
    reuse_memory: bool = False


def _run_chunks(job: _Job, predictor: Predictor, device: torch.device, chunks: Sequence[_Chunk], done_path: Path,
                committed: Callable[[_Chunk], None] | None = None) -> None:
    """Predict chunks into the work folder's output files; after each, flush them and record
    the chunk (with its class counts) in done_path."""
    run = _window_runner(predictor, job.roi, job.overlap, job.sw_batch_size, device, job.dims)
    reader = _SliceReader(job.channels, job.k, device)
    records: dict[str, dict] = {}
    with ExitStack() as opened:
        outputs = {name: opened.enter_context(open_stack_file(job.work / name, job.shape)) for name in job.names}
        for chunk in chunks:
            t0 = time.perf_counter()
            counts = np.zeros(job.n_classes, dtype=np.int64)
            if job.dims == "3d":
                probs = run(_read_block(job.channels, chunk.region))[0]
                inner = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(chunk.core, chunk.region))
                _write(outputs, job, tuple(slice(a, b) for a, b in chunk.core), probs[(slice(None), *inner)], counts)
            else:
                (z0, z1), _, _ = chunk.core
                for start, probs in _slice_batches(run, reader, list(range(z0, z1)), job.slices_per_batch):
                    _write(outputs, job, (slice(z0 + start, z0 + start + len(probs)),), probs.movedim(1, 0), counts)
            for output in outputs.values():
                output.flush()  # on disk before the done file records the chunk
            records[str(chunk.index)] = {"class_counts": counts.tolist(), "seconds": round(time.perf_counter() - t0, 3)}
            write_json(done_path, {"device": str(device), "chunks": records})
            if committed is not None:
                committed(chunk)


def _write(outputs: dict, job: _Job, target: tuple, probs: torch.Tensor, counts: np.ndarray) -> None:
    """Write probabilities (n_classes, *target shape), a tensor on the net's device, and their
    argmax at `target`; add the label counts to `counts`."""
    if probs.shape[0] != job.n_classes:
        raise ValueError(f"the predictor returned {probs.shape[0]} classes, n_classes is {job.n_classes}")
    labels = first_argmax(probs)
    counts += torch.bincount(labels.flatten(), minlength=job.n_classes)[: job.n_classes].cpu().numpy()
    outputs[SEGMENTATION][target] = labels.cpu().numpy()
    if probability_name(0) in outputs:  # save_probabilities
        for c in range(job.n_classes):
            outputs[probability_name(c)][target] = probs[c].cpu().numpy()


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


def _run_workers(job: _Job, factory: PredictorFactory, devices: Sequence, todo: Sequence[_Chunk], run_id: str,
                 bar, on_chunk, n_chunks: int, known: set[int]) -> None:
    """One spawned process per device, each taking every n-th chunk; follow their done files."""
    context = torch.multiprocessing.get_context("spawn")
    n_cpu = sum(torch.device(str(d)).type == "cpu" for d in devices if str(d) != "auto")
    threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu else None
    plane = job.shape[1] * job.shape[2]
    sizes = {c.index: c.slices(plane) for c in todo}
    workers = []
    for rank, dev in enumerate(devices):
        mine = list(todo[rank :: len(devices)])
        if mine:
            args = (job, factory, str(dev), mine, job.work / f"done-{run_id}-{rank}.json",
                    job.work / f"error-{run_id}-{rank}.txt", threads)
            process = context.Process(target=_worker, args=args, name=f"fibml-predict-{dev}")
            process.start()
            workers.append((rank, str(dev), process))
    seen = set(known)
    try:
        while True:
            alive = [p for _, _, p in workers if p.is_alive()]
            for index in sorted(set(_records(job.work)) - seen):
                seen.add(index)
                bar.update(sizes.get(index, 0.0))
                if on_chunk is not None:
                    on_chunk(index, n_chunks)
            failed = [(rank, dev, p) for rank, dev, p in workers if p.exitcode not in (None, 0)]
            if failed:
                rank, dev, p = failed[0]
                error = job.work / f"error-{run_id}-{rank}.txt"
                detail = error.read_text() if error.exists() else "no traceback (killed?)"
                raise RuntimeError(f"prediction on {dev} failed (exit code {p.exitcode}):\n{detail}")
            if not alive:
                return
            alive[0].join(0.2)
    finally:
        for _, _, p in workers:
            if p.is_alive():
                p.terminate()
            p.join()


def _worker(job: _Job, factory: PredictorFactory, device: str, chunks, done_path: Path, error_path: Path,
            threads: int | None) -> None:
    """Entry point of a worker process."""
    try:
        dev = resolve_device(device)
        if threads and dev.type == "cpu":
            torch.set_num_threads(threads)
        if job.reuse_memory:
            reuse_host_memory()
        _run_chunks(job, factory(dev), dev, chunks, done_path)
    except BaseException:
        error_path.write_text(traceback.format_exc())
        raise


# --- work folder, ledger, fingerprint ------------------------------------------------------


def _check_channels(channels: Sequence) -> tuple[int, int, int]:
    if not channels:
        raise ValueError("no input channels: give one slice source per channel")
    shapes = []
    for i, channel in enumerate(channels):
        shape = tuple(int(n) for n in getattr(channel, "shape", ()))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{_channel_name(channel, i)}: expected a (z, y, x) slice source, got shape {shape}")
        shapes.append(shape)
    for i, shape in enumerate(shapes[1:], 1):
        if shape != shapes[0]:
            raise ValueError(
                f"input channels differ in shape: "
                f"{shape_mismatch(_channel_name(channels[i], i), shape, _channel_name(channels[0], 0), shapes[0])}"
            )
    return shapes[0]


def _channel_name(channel, index: int) -> str:
    path = getattr(channel, "path", None) or getattr(getattr(channel, "stack", None), "path", None)
    return str(path) if path is not None else f"channel {index}"


def _start_work(work: Path, shape, names: Sequence[str], voxel, ledger: dict) -> None:
    """Create the work folder's output files, then its ledger (a folder without one holds
    nothing finished and is discarded by the next run)."""
    work.mkdir(parents=True)
    for name in names:
        create_stack_file(work / name, shape, np.uint8 if name == SEGMENTATION else np.float32, voxel).close()
    write_json(work / LEDGER, ledger)


def _clear_finished(out_dir: Path, fp: dict, finished: dict | None, overwrite: bool) -> None:
    """Remove a finished result of another fingerprint (only with overwrite) or the remains of
    one of this fingerprint (files deleted since)."""
    old = [p for p in [out_dir / FINGERPRINT, *sorted(out_dir.glob("probability_class*.tif")), out_dir / SEGMENTATION]
           if p.is_file()]
    if not old:
        return
    same = finished is not None and finished.get("fingerprint") == fp
    if not same and not overwrite:
        raise ValueError(
            f"{out_dir} already holds a prediction ({', '.join(p.name for p in old)}) made with other settings "
            f"(differing: {_differences(finished, fp)}): set overwrite=true to replace it, or choose another "
            "output folder"
        )
    for path in old:  # the fingerprint first: no finished-claim outlives its files
        path.unlink()


def _records(work: Path) -> dict[int, dict]:
    """Committed chunks {index: record} from every done file of the work folder."""
    records: dict[int, dict] = {}
    for path in sorted(work.glob("done-*.json")) if work.is_dir() else []:
        content = _read_json(path) or {}
        records.update({int(i): r for i, r in content.get("chunks", {}).items()})
    return records


def _read_json(path: Path) -> dict | None:
    """A JSON file's content; None when missing or unreadable (then treated as foreign)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _canonical(value) -> dict:
    """value as it reads back from JSON (tuples -> lists, keys -> str), to compare with a stored one."""
    return json.loads(json.dumps(value, default=json_default, sort_keys=True))


def _differences(stored: dict | None, fp: dict) -> str:
    """The fingerprint keys in which a stored prediction differs from this one."""
    stored = (stored or {}).get("fingerprint")
    if not isinstance(stored, dict):
        return "no readable fingerprint"
    keys = []
    for part in ("settings", "layout"):
        old, new = stored.get(part), fp.get(part)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += [f"{part}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            keys.append(part)
    return ", ".join(keys) or "none"


def _summary_paths(summary: dict, out_dir: Path, names: Sequence[str]) -> dict:
    probabilities = [out_dir / n for n in names if n != SEGMENTATION]
    paths = {"segmentation": out_dir / SEGMENTATION, "probabilities": probabilities, "fingerprint": out_dir / FINGERPRINT}
    return {**summary, "out_dir": out_dir, "paths": paths}
