"""Speed and memory of the classical reconstruction: repositioning, nearest neighbour, cubic spline.

    python benchmarks/reconstruction_speed.py [--quick] [--slices 200] [--size 512]

Builds a binary stack of --slices milled slices of --size x --size pixels (a leveled-wave
structure, 60 nm wavelength, solid fraction 0.3, voxels 10 x 2.5 x 2.5 nm, seed 0) with gamma
slice thicknesses (fibml.synth.thickness.sample_thicknesses, target 10 nm, seed 0), then times
accurate repositioning on the 2.5 nm grid and the interpolations of the RNN and RCS cases
(fibml.baselines.interpolation: nearest neighbour; cubic spline without and with the hole repair).
Prints, per step, wall-clock seconds, the process's CPU seconds (all threads: on a shared
machine the wall time depends on the other jobs, the CPU time far less) and the peak of numpy
memory allocated during the step (tracemalloc) beside the step's output size, then the peak
RSS of the whole script. Writes no files. --quick: 50 slices of 256 x 256.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time
import tracemalloc

import numpy as np

from fibml.baselines.interpolation import interpolate_nearest, interpolate_spline
from fibml.reconstruct.repositioning import reposition
from fibml.synth.microstructure import leveled_wave
from fibml.synth.thickness import sample_thicknesses

GRID_NM = 2.5
TARGET_NM = 10.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 slices of 256 x 256 instead of 200 of 512 x 512")
    parser.add_argument("--slices", type=int, default=None, help="milled slices (default 200, 50 with --quick)")
    parser.add_argument("--size", type=int, default=None, help="y and x edge of a slice, pixels (default 512, 256 with --quick)")
    args = parser.parse_args(argv)
    n_slices = args.slices or (50 if args.quick else 200)
    size = args.size or (256 if args.quick else 512)

    start = time.perf_counter()
    voxel = (TARGET_NM, GRID_NM, GRID_NM)
    slices = leveled_wave((n_slices, size, size), 60.0, 0.3, voxel_size_nm=voxel, seed=0).astype(np.uint8)
    thicknesses = sample_thicknesses(n_slices, target_nm=TARGET_NM, seed=0)
    print(
        f"reconstruction_speed: {n_slices} slices of {size} x {size} pixels, solid fraction {slices.mean():.3f}, "
        f"thicknesses {thicknesses.mean():.2f} +- {thicknesses.std():.2f} nm "
        f"({time.perf_counter() - start:.1f} s to build)"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}), load average {os.getloadavg()[0]:.2f} at start, "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )

    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak of each step alone
    results = {}
    repositioned, results["reposition"] = _timed(lambda: reposition(slices, thicknesses, GRID_NM))
    print(f"grid: {repositioned.n_grid} rows of {GRID_NM} nm ({repositioned.n_grid / n_slices:.2f} per slice)")
    _, results["nearest"] = _timed(lambda: interpolate_nearest(repositioned))
    _, results["spline"] = _timed(lambda: interpolate_spline(repositioned, fix_holes=False))
    _, results["spline + fix_holes"] = _timed(lambda: interpolate_spline(repositioned, fix_holes=True))
    tracemalloc.stop()
    output_mb = np.prod(repositioned.shape) / 1e6  # uint8
    for step, (wall, cpu, peak_mb) in results.items():
        print(f"{step:20s} {wall:7.2f} s ({cpu:7.2f} CPU s), peak numpy memory {peak_mb:8.1f} MB (output {output_mb:.1f} MB)")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    print(f"peak RSS (ru_maxrss, whole script, structure generation included): {peak_gb:.2f} GB")
    return results


def _timed(step):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    result = step()
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak_mb = (tracemalloc.get_traced_memory()[1] - base) / 1e6
    return result, (wall, cpu, peak_mb)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
