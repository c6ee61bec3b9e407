"""Speed of the classical baselines on a two-voltage stack: random-forest prediction and k-means.

    python benchmarks/baselines_speed.py [--quick] [--size 256] [--depth D] [--dims 2d] [--train-slices 4]

Builds a leveled-wave nanoporous structure (60 nm wavelength, solid fraction 0.3, 2.5 nm voxels,
seed 0) of depth x size x size voxels and renders it with render_bse at 1 and 4 kV (the 4 kV stack
shows strong shine-through). Trains fibml.baselines.forest.RandomForestSegmenter (its defaults
unless overridden) on sparse labels of --train-slices slices of the first half of the stack, then
times the prediction of the whole stack, and fibml.baselines.clustering.kmeans_segmentation on
the same two channels. Prints one line per figure with its target, and the accuracy of both
methods on the slices of the second half (never labelled). Times are wall-clock seconds, with the process's CPU seconds (all threads) beside them: on a
shared machine the wall time depends on the other jobs, the CPU time far less. Writes no files.
Targets on 2 CPU cores for 256^3: forest prediction < 120 s, k-means < 10 s.
--quick: a 64 x 256 x 256 stack (under a minute in all).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time

import numpy as np

from fibml.baselines.clustering import kmeans_segmentation
from fibml.baselines.common import sparse_labels
from fibml.baselines.forest import RandomForestSegmenter
from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import leveled_wave

VOXEL_NM = 2.5
VOLTAGES_KV = (1.0, 4.0)
FOREST_TARGET_S = 120.0
KMEANS_TARGET_S = 10.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64 x 256 x 256 stack instead of 256^3")
    parser.add_argument("--size", type=int, default=256, help="y and x edge of the stack, voxels (default 256)")
    parser.add_argument("--depth", type=int, default=None, help="slices (default: --size, 64 with --quick)")
    parser.add_argument("--dims", default="2d", choices=("2d", "3d"), help="forest feature filters (default 2d)")
    parser.add_argument("--train-slices", type=int, default=4, help="labelled slices (default 4)")
    parser.add_argument("--pixels-per-class", type=int, default=2000, help="labels per phase and slice (default 2000)")
    parser.add_argument("--n-estimators", type=int, default=None, help="trees (default: the segmenter's)")
    parser.add_argument("--max-depth", type=int, default=None, help="tree depth (default: the segmenter's)")
    parser.add_argument("--n-jobs", type=int, default=-1, help="threads (default -1 = all cores)")
    args = parser.parse_args(argv)

    depth = args.depth or (64 if args.quick else args.size)
    shape = (depth, args.size, args.size)
    start = time.perf_counter()
    truth = leveled_wave(shape, wavelength_nm=60.0, solid_fraction=0.3, voxel_size_nm=VOXEL_NM, seed=0).astype(np.uint8)
    images = np.stack([render_bse(truth, voltage, VOXEL_NM) for voltage in VOLTAGES_KV])
    print(
        f"baselines_speed: {depth} x {args.size} x {args.size} voxels of {VOXEL_NM} nm, leveled wave 60 nm, "
        f"solid fraction {truth.mean():.3f}, BSE at {'/'.join(f'{v:g}' for v in VOLTAGES_KV)} kV "
        f"({time.perf_counter() - start:.1f} s to build)"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}), load average {os.getloadavg()[0]:.2f} at start, "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )

    train_z = range(depth // 2)
    test_z = slice(depth // 2, depth)
    labels = sparse_labels(truth, z_range=train_z, n_slices=args.train_slices, pixels_per_class=args.pixels_per_class)
    overrides = {
        key: value
        for key, value in (("n_estimators", args.n_estimators), ("max_depth", args.max_depth))
        if value is not None
    }
    forest = RandomForestSegmenter(
        dims=args.dims, n_jobs=args.n_jobs, channel_names=[f"{v:g}kV" for v in VOLTAGES_KV], **overrides
    )
    start = time.perf_counter()
    forest.fit(images, labels)
    fit_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    predicted = forest.predict(images)
    forest_s, forest_cpu_s = time.perf_counter() - start, _cpu_seconds() - cpu_start
    forest_accuracy = (predicted[test_z] == truth[test_z]).mean()

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    clustered = kmeans_segmentation(images, n_clusters=3, solid_clusters=1)
    kmeans_s, kmeans_cpu_s = time.perf_counter() - start, _cpu_seconds() - cpu_start
    kmeans_accuracy = (clustered[test_z] == truth[test_z]).mean()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB

    scale = np.prod(shape) / 256**3
    print(
        f"forest: {len(forest.feature_names_)} features ({args.dims}), {forest.n_estimators} trees of depth <= "
        f"{forest.max_depth}, trained on {int((labels != 255).sum())} labels of {args.train_slices} slices in "
        f"{fit_s:.1f} s; top groups "
        + ", ".join(f"{row['group']} {row['importance']:.2f}" for row in forest.feature_importances())
    )
    print(
        f"random-forest prediction, {depth} x {args.size} x {args.size} x 2 channels: {forest_s:.1f} s "
        f"({forest_cpu_s:.1f} CPU s) "
        f"(target < {FOREST_TARGET_S * scale:.0f} s{_scaled(scale)}: {_verdict(forest_s, FOREST_TARGET_S * scale)})"
    )
    print(
        f"k-means (k = 3), same stack: {kmeans_s:.1f} s ({kmeans_cpu_s:.1f} CPU s) "
        f"(target < {KMEANS_TARGET_S * scale:.1f} s{_scaled(scale)}: {_verdict(kmeans_s, KMEANS_TARGET_S * scale)})"
    )
    print(f"peak memory (ru_maxrss, whole script): {peak_gb:.2f} GB")
    print(
        f"accuracy on the {depth - depth // 2} unlabelled slices z >= {depth // 2}: random forest "
        f"{forest_accuracy:.4f}, k-means {kmeans_accuracy:.4f}"
    )
    return {"forest_s": forest_s, "kmeans_s": kmeans_s, "peak_gb": peak_gb, "forest_accuracy": forest_accuracy}


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: with other jobs on the machine the wall
    time grows, the CPU time hardly."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _scaled(scale: float) -> str:
    return "" if scale == 1 else f", the 256^3 target scaled by volume x{scale:.3g}"


def _verdict(seconds: float, target: float) -> str:
    return "met" if seconds < target else "MISSED"


if __name__ == "__main__":
    main()
