"""predict_to_disk: a stack of any size segmented chunk by chunk straight to disk, resumable, on
one or several devices (see fibml.inference)."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fibml.data.patches import DIMS, patch_shape
from fibml.inference.chunks import Chunk, plan_chunks
from fibml.inference.ledger import (
    SEGMENTATION,
    DoneFile,
    ResumeLedger,
    canonical,
    probability_name,
    summary_paths,
)
from fibml.inference.windows import (
    BATCH_BYTES,
    Predictor,
    PredictorFactory,
    SliceReader,
    first_argmax,
    read_block,
    resolve_device,
    reuse_host_memory,
    slice_batches,
    window_runner,
)
from fibml.io import open_stack_file, shape_mismatch

__all__ = ["DiskPlan", "plan_prediction", "predict_to_disk"]


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
    devices = [device] if devices is None else list(devices)
    plan = plan_prediction(
        channels, dims=dims, patch_size=patch_size, n_adjacent=n_adjacent, overlap=overlap,
        chunk_slices=chunk_slices, block=block, slices_per_batch=slices_per_batch, sw_batch_size=sw_batch_size,
        n_classes=n_classes, save_probabilities=save_probabilities, voxel_size_nm=voxel_size_nm,
    )
    _check_run(predictor, devices, fingerprint, Path(out_dir))
    ledger = ResumeLedger(out_dir, canonical({"settings": fingerprint, "layout": plan.layout}), plan.files)
    finished = ledger.open(plan.shape, plan.voxel, len(plan.chunks), overwrite)
    if finished is not None:
        return summary_paths(
            {**finished, "chunks_computed": 0, "chunks_resumed": finished["n_chunks"],
             "seconds": time.perf_counter() - started, "slices_per_second": 0.0},
            ledger.out_dir, plan.files,
        )
    done = ledger.committed()
    todo = [c for c in plan.chunks if c.index not in done]
    _predict_chunks(_Job(list(channels), plan, ledger.work, bool(reuse_memory)), predictor, devices, todo, ledger,
                    set(done), progress, on_chunk)
    return ledger.finalise(_summary(plan, ledger.committed(), todo, len(done), ledger.work, started))


@dataclass(frozen=True)
class DiskPlan:
    """What predict_to_disk settles before it writes anything: the checked settings, the chunks,
    the output files and the layout that goes into the fingerprint."""

    shape: tuple[int, int, int]
    dims: str
    roi: tuple[int, ...]
    k: int  # slices per net input: n_adjacent for 2.5D, else 1
    overlap: float
    sw_batch_size: int
    slices_per_batch: int
    n_classes: int
    save_probabilities: bool
    voxel: list[float] | None
    chunks: list[Chunk]
    chunking: list
    files: list[str]  # probability_class<c>.tif first, segmentation.tif last

    @property
    def plane(self) -> int:
        return self.shape[1] * self.shape[2]

    @property
    def layout(self) -> dict:
        """The settings that decide the output files' content and layout (part of the fingerprint)."""
        return {
            "shape": list(self.shape), "dims": self.dims, "patch": list(self.roi), "overlap": self.overlap,
            "n_adjacent": self.k, "chunking": self.chunking, "n_classes": self.n_classes,
            "save_probabilities": self.save_probabilities, "voxel_size_nm": self.voxel,
        }


def plan_prediction(channels: Sequence, *, dims: str, patch_size, n_adjacent: int = 7, overlap: float = 0.5,
                    chunk_slices: int = 16, block=None, slices_per_batch: int | None = None, sw_batch_size: int = 32,
                    n_classes: int, save_probabilities: bool = False, voxel_size_nm=None) -> DiskPlan:
    """Check predict_to_disk's settings against the channels and plan the chunks (arguments as
    for predict_to_disk); raises ValueError naming the setting before anything is written."""
    shape = _check_channels(list(channels))
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
    roi = patch_shape(patch_size, dims)
    k = n_adjacent if dims == "2.5d" else 1
    n_classes, chunk_slices = int(n_classes), int(chunk_slices)
    chunks, chunking = plan_chunks(shape, dims, roi, overlap, chunk_slices, block)
    if slices_per_batch is None:
        per_slice = len(channels) * k * shape[1] * shape[2] * 4
        slices_per_batch = max(1, min(chunk_slices, BATCH_BYTES // per_slice))
    files = ([probability_name(c) for c in range(n_classes)] if save_probabilities else []) + [SEGMENTATION]
    voxel = None if voxel_size_nm is None else [float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, float), (3,))]
    return DiskPlan(shape, dims, roi, k, float(overlap), int(sw_batch_size), int(slices_per_batch), n_classes,
                    bool(save_probabilities), voxel, chunks, chunking, files)


def _check_run(predictor, devices: list, fingerprint, out_dir: Path) -> None:
    """The devices, predictor, fingerprint and output folder of a run, checked before anything is written."""
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


def _summary(plan: DiskPlan, done: dict[int, dict], todo: Sequence[Chunk], resumed: int, work: Path,
             started: float) -> dict:
    """The summary of a prediction whose chunks are all committed (class counts of the whole
    stack, resumed chunks included); raises when a chunk is missing."""
    missing = [c.index for c in plan.chunks if c.index not in done]
    if missing:
        raise RuntimeError(f"{work}: chunks {missing} were not finished; run again to complete them")
    counts = np.sum([done[c.index]["class_counts"] for c in plan.chunks], axis=0, dtype=np.int64)
    seconds = time.perf_counter() - started
    computed_slices = sum(c.slices(plan.plane) for c in todo)
    return {
        "shape": list(plan.shape), "dims": plan.dims, "n_classes": plan.n_classes, "n_chunks": len(plan.chunks),
        "chunks_computed": len(plan.chunks) - resumed, "chunks_resumed": resumed, "seconds": seconds,
        "slices_per_second": computed_slices / seconds if seconds > 0 else 0.0,
        "class_counts": counts.tolist(), "class_fractions": (counts / max(1, counts.sum())).tolist(),
        "files": plan.files,
    }


@dataclass
class _Job:
    """What a process needs to predict chunks (picklable for worker processes)."""

    channels: list
    plan: DiskPlan
    work: Path
    reuse_memory: bool = False


def _predict_chunks(job: _Job, predictor, devices: list, todo: list[Chunk], ledger: ResumeLedger, known: set[int],
                    progress: bool, on_chunk: Callable[[int, int], None] | None) -> None:
    """Predict the chunks not yet committed: in this process on one device, or in one worker
    process per device; a progress bar in slices."""
    plan = job.plan
    bar = tqdm(total=plan.shape[0], initial=sum(c.slices(plan.plane) for c in plan.chunks if c.index in known),
               desc="predict", unit="slice", disable=not progress, dynamic_ncols=True)
    try:
        if todo and len(devices) == 1:
            dev = resolve_device(devices[0])
            if job.reuse_memory:
                reuse_host_memory()
            net = predictor(dev) if isinstance(predictor, PredictorFactory) else predictor

            def committed(chunk: Chunk) -> None:
                bar.update(chunk.slices(plan.plane))
                if on_chunk is not None:
                    on_chunk(chunk.index, len(plan.chunks))

            _run_chunks(job, net, dev, todo, ledger.done_file(0, dev), committed)
        elif todo:
            _run_workers(job, predictor, devices, todo, ledger, bar, on_chunk, known)
    finally:
        bar.close()


def _run_chunks(job: _Job, predictor: Predictor, device: torch.device, chunks: Sequence[Chunk], done: DoneFile,
                committed: Callable[[Chunk], None] | None = None) -> None:
    """Predict chunks into the work folder's output files; after each, flush them and commit
    the chunk (with its class counts) to the done file."""
    plan = job.plan
    run = window_runner(predictor, plan.roi, plan.overlap, plan.sw_batch_size, device, plan.dims)
    reader = SliceReader(job.channels, plan.k, device)
    with ExitStack() as opened:
        outputs = {name: opened.enter_context(open_stack_file(job.work / name, plan.shape)) for name in plan.files}
        for chunk in chunks:
            t0 = time.perf_counter()
            counts = np.zeros(plan.n_classes, dtype=np.int64)
            if plan.dims == "3d":
                probs = run(read_block(job.channels, chunk.region))[0]
                inner = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(chunk.core, chunk.region))
                _write(outputs, plan, tuple(slice(a, b) for a, b in chunk.core), probs[(slice(None), *inner)], counts)
            else:
                (z0, z1), _, _ = chunk.core
                for start, probs in slice_batches(run, reader, list(range(z0, z1)), plan.slices_per_batch):
                    _write(outputs, plan, (slice(z0 + start, z0 + start + len(probs)),), probs.movedim(1, 0), counts)
            for output in outputs.values():
                output.flush()  # on disk before the done file records the chunk
            done.commit(chunk.index, counts, time.perf_counter() - t0)
            if committed is not None:
                committed(chunk)


def _write(outputs: dict, plan: DiskPlan, target: tuple, probs: torch.Tensor, counts: np.ndarray) -> None:
    """Write probabilities (n_classes, *target shape), a tensor on the net's device, and their
    argmax at `target`; add the label counts to `counts`."""
    if probs.shape[0] != plan.n_classes:
        raise ValueError(f"the predictor returned {probs.shape[0]} classes, n_classes is {plan.n_classes}")
    labels = first_argmax(probs)
    counts += torch.bincount(labels.flatten(), minlength=plan.n_classes)[: plan.n_classes].cpu().numpy()
    outputs[SEGMENTATION][target] = labels.cpu().numpy()
    if plan.save_probabilities:
        for c in range(plan.n_classes):
            outputs[probability_name(c)][target] = probs[c].cpu().numpy()


def _run_workers(job: _Job, factory: PredictorFactory, devices: Sequence, todo: Sequence[Chunk],
                 ledger: ResumeLedger, bar, on_chunk, known: set[int]) -> None:
    """One spawned process per device, each taking every n-th chunk; follow their done files."""
    context = torch.multiprocessing.get_context("spawn")
    n_cpu = sum(torch.device(str(d)).type == "cpu" for d in devices if str(d) != "auto")
    threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu else None
    sizes = {c.index: c.slices(job.plan.plane) for c in todo}
    workers = []
    for rank, dev in enumerate(devices):
        mine = list(todo[rank :: len(devices)])
        if mine:
            args = (job, factory, str(dev), mine, ledger.done_file(rank, dev), ledger.error_file(rank), threads)
            process = context.Process(target=_worker, args=args, name=f"fibml-predict-{dev}")
            process.start()
            workers.append((rank, str(dev), process))
    seen = set(known)
    try:
        while True:
            alive = [p for _, _, p in workers if p.is_alive()]
            for index in sorted(set(ledger.committed()) - seen):
                seen.add(index)
                bar.update(sizes.get(index, 0.0))
                if on_chunk is not None:
                    on_chunk(index, len(job.plan.chunks))
            failed = [(rank, dev, p) for rank, dev, p in workers if p.exitcode not in (None, 0)]
            if failed:
                rank, dev, p = failed[0]
                error = ledger.error_file(rank)
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


def _worker(job: _Job, factory: PredictorFactory, device: str, chunks, done: DoneFile, error_path: Path,
            threads: int | None) -> None:
    """Entry point of a worker process."""
    try:
        dev = resolve_device(device)
        if threads and dev.type == "cpu":
            torch.set_num_threads(threads)
        if job.reuse_memory:
            reuse_host_memory()
        _run_chunks(job, factory(dev), dev, chunks, done)
    except BaseException:
        error_path.write_text(traceback.format_exc())
        raise


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
