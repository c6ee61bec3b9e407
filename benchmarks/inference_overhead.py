"""Per-slice cost of fibml's chunked prediction around the net (issue 9): reading, normalising,
window extraction and Gaussian blending, argmax, class counts and writing.

    python benchmarks/inference_overhead.py [--shape 8 3072 2048] [--voltages 3] [--dims 2d|2.5d]
        [--device cpu] [--sw-batch-size 256] [--threads 1] [--default-malloc] [--profile]

The "net" is a sigmoid of each pixel's mean grey value, so what is timed is everything
predict_to_disk does besides the net: on a GPU the real net is fast and this work, done on the
CPU between forward passes, decides the rate (on one H100, late fusion ran at 0.76 s per
3072 x 2048 slice with 32-bit and 16-bit nets alike). Input: --voltages uint8 stacks of
--shape written to a temporary folder and read lazily (fibml.io.open_stack), normalised like
predict.py does (NormalizedStack), in the 2D late-fusion layout (one channel per voltage) or
with --dims 2.5d the 2.5D one (7 adjacent slices per voltage), patch 64, overlap 0.5, as
configs/inference/default.yaml. --threads sets torch's and the process's
thread count (1: the single thread predict.py's loop runs on). Like predict.py it keeps freed host
memory for the next batch (inference.reuse_memory, fibml.inference.reuse_host_memory);
--default-malloc leaves glibc's malloc as it comes, for comparison. Prints seconds per slice;
with --profile the functions that take the time.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 3072, 2048], metavar=("Z", "Y", "X"))
    parser.add_argument("--voltages", type=int, default=3)
    parser.add_argument("--dims", default="2d", choices=("2d", "2.5d"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sw-batch-size", type=int, default=256)
    parser.add_argument("--chunk-slices", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true", help="do not call reuse_host_memory()")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fibml.data.transforms import stack_percentiles
    from fibml.inference import NormalizedStack, predict_to_disk
    from fibml.io import open_stack, write_stack

    def predictor(x: torch.Tensor) -> torch.Tensor:  # two classes from the mean grey value
        solid = torch.sigmoid(8 * (x.mean(1, keepdim=True) - 0.5))
        return torch.cat([1 - solid, solid], dim=1)

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        channels = []
        for v in range(args.voltages):
            path = write_stack(Path(tmp) / f"bse_{v}.tif", rng.integers(0, 256, args.shape, dtype=np.uint8))
            stack = open_stack(path)
            channels.append(NormalizedStack(stack, *stack_percentiles(stack)))
        kwargs = dict(dims=args.dims, patch_size=64, n_adjacent=7, overlap=0.5, chunk_slices=args.chunk_slices,  # noqa: C408
                      sw_batch_size=args.sw_batch_size, device=args.device, n_classes=2,
                      fingerprint={"benchmark": "inference_overhead"}, overwrite=True, progress=False,
                      reuse_memory=not args.default_malloc)
        # warm-up (allocator, first kernels) on two slices, untimed
        predict_to_disk(predictor, [_First(c, 2) for c in channels],
                        Path(tmp) / "warm", **kwargs)
        profiler = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        summary = predict_to_disk(predictor, channels, Path(tmp) / "out", **kwargs)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - start
    per_slice = seconds / args.shape[0]
    malloc = "default malloc" if args.default_malloc else "reuse_memory"
    print(f"machine: {platform.machine()}, torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
          f"{malloc}")
    print(f"{args.dims}, {args.voltages} x {args.shape[0]} x {args.shape[1]} x {args.shape[2]}, sw_batch_size {args.sw_batch_size}: "
          f"{seconds:.2f} s, {per_slice:.3f} s per slice ({1 / per_slice:.2f} slices/s); "
          f"solid fraction {summary['class_fractions'][1]:.3f}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return {"seconds_per_slice": per_slice}


class _First:
    """The first n slices of a slice source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    @property
    def shape(self):
        return (self.n, *self.source.shape[1:])

    def __getitem__(self, z: int):
        return self.source[z]


if __name__ == "__main__":
    main()
