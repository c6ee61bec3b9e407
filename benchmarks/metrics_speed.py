"""Speed of the anisotropy report (eq. 4 and 5) on a hierarchical leveled-wave volume, against porespy.

    python benchmarks/metrics_speed.py [--size 256] [--repeat 1] [--no-porespy] [--porespy-method dt] [--porespy-s2]

Generates a size^3 hierarchical nanoporous-gold structure (2.5 nm voxels, as benchmarks/synth_speed.py)
and times each part of fibml.metrics.anisotropy.anisotropy_report (directional two-point correlation,
lineal path, ligament diameters) and the whole report; then the same quantities with porespy where it
has them, and prints a Markdown table with both times (the best of --repeat runs) and their ratio.
Writes no files.
Target: the whole report < 10 s on 2 CPU cores for 256^3.

porespy counterparts: lineal path = filters.distance_transform_lin (forward run length along each axis)
counted into L(r), the same numbers; ligament diameters = filters.local_thickness on every 2-D plane of
the three families (integer radii, so values differ slightly); two-point correlation only with
--porespy-s2: metrics.two_point_correlation is a radial average over all directions of a 3-D FFT on
the volume padded to (2 size)^3 (about 70 s and 12 GB at 256^3), a different and costlier quantity.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fibml.metrics.anisotropy import (
    PLANES,
    anisotropy_report,
    ligament_diameters,
    lineal_path,
    two_point_correlation,
)
from fibml.synth.microstructure import hierarchical_leveled_wave

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_speed import VOXEL_NM, structure_arguments  # noqa: E402  (the same structure as there)

TARGET_S = 10.0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic volume, voxels (default 256)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every timing, the best is shown (default 1)")
    parser.add_argument("--no-porespy", action="store_true", help="time fibml only")
    parser.add_argument(
        "--porespy-method", default="dt", help="porespy local_thickness method (default dt, its fastest on 2-D planes)"
    )
    parser.add_argument(
        "--porespy-s2", action="store_true", help="also time porespy's radial 3-D two-point correlation"
    )
    args = parser.parse_args(argv)

    shape = (args.size,) * 3
    kwargs = structure_arguments(args.size)
    solid = hierarchical_leveled_wave(shape, VOXEL_NM, seed=0, **kwargs)
    print(
        f"metrics_speed: {args.size}^3 voxels of {VOXEL_NM} nm, structure {kwargs or 'defaults'}, "
        f"solid fraction {solid.mean():.3f}"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}), load average {os.getloadavg()[0]:.2f} at start, "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )

    fibml_s, fibml_value = {}, {}
    timed = functools.partial(_timed, repeat=args.repeat)
    s2, fibml_s["s2"] = timed(two_point_correlation, solid)
    fibml_value["s2"] = f"S2(10 vx) x/y/z {s2['x'][10]:.4f}/{s2['y'][10]:.4f}/{s2['z'][10]:.4f}"
    lp, fibml_s["lp"] = timed(lineal_path, solid)
    fibml_value["lp"] = f"L(10 vx) x/y/z {lp['x'][10]:.4f}/{lp['y'][10]:.4f}/{lp['z'][10]:.4f}"
    diameters, fibml_s["d"] = timed(ligament_diameters, solid)
    fibml_value["d"] = "D xy/xz/yz " + "/".join(f"{diameters[k]:.2f}" for k in PLANES) + " vx"
    report, fibml_s["report"] = timed(anisotropy_report, solid, VOXEL_NM)
    fibml_value["report"] = f"e_tpcf {report['e_tpcf']:.4f}, e_lpf {report['e_lpf']:.4f}, e_d {report['e_d']:.4f}"

    porespy_s, porespy_value = {}, {}
    if not args.no_porespy:
        porespy_s, porespy_value = _porespy_timings(solid, lp, args)

    rows = [
        ("s2", "two-point correlation S2 along x, y, z"),
        ("lp", "lineal path L along x, y, z"),
        ("d", "ligament diameters xy, xz, yz (2-D local thickness)"),
        ("report", "anisotropy_report, total"),
    ]
    print()
    print("| part | fibml (s) | porespy (s) | porespy / fibml | fibml value | porespy value |")
    print("|---|---:|---:|---:|---|---|")
    for key, label in rows:
        theirs = porespy_s.get(key)
        ratio = f"{theirs / fibml_s[key]:.1f}x" if theirs else "-"
        theirs_text = f"{theirs:.2f}" if theirs else "-"
        print(
            f"| {label} | {fibml_s[key]:.2f} | {theirs_text} | {ratio} | {fibml_value[key]} | "
            f"{porespy_value.get(key, '-')} |"
        )
    total = fibml_s["report"]
    verdict = "met" if total < TARGET_S else "MISSED"
    print(f"\nanisotropy_report: {total:.2f} s (target < {TARGET_S:g} s on 2 CPU cores: {verdict})")
    return total


def _porespy_timings(solid: np.ndarray, lp_fibml: dict, args) -> tuple[dict, dict]:
    try:
        import porespy as ps
    except ImportError:
        print("porespy is not installed: fibml timings only (pip install porespy)")
        return {}, {}
    ps.settings.tqdm["disable"] = True
    ps.settings.ncores = os.cpu_count()
    seconds, value = {}, {}

    # lineal path: forward run length along each axis, counted into L(r) as fibml defines it
    rmax = lp_fibml["x"].size - 1

    def porespy_lineal_path():
        lp = {}
        for name, axis in (("x", 2), ("y", 1), ("z", 0)):
            run = ps.filters.distance_transform_lin(solid, axis=axis, mode="forward")
            counts = np.bincount(run[solid].astype(np.int64), minlength=rmax + 2)
            at_least = np.cumsum(counts[::-1])[::-1]  # [k] = voxels ending a run of >= k
            n = solid.shape[axis]
            r = np.arange(rmax + 1)
            lp[name] = at_least[r + 1] / (solid.size // n * (n - r))
        return lp

    lp, seconds["lp"] = _timed(porespy_lineal_path, repeat=args.repeat)
    deviation = max(np.abs(lp[k] - lp_fibml[k]).max() for k in lp)
    value["lp"] = f"L(10 vx) x/y/z {lp['x'][10]:.4f}/{lp['y'][10]:.4f}/{lp['z'][10]:.4f} (max diff {deviation:.1e})"

    # ligament diameters: porespy's local thickness (a radius) on every plane of each family
    ps.filters.local_thickness(solid[0, :32, :32], method=args.porespy_method)  # numba compilation, untimed

    def porespy_diameters():
        diameters = {}
        for name, axis in PLANES.items():
            radii = []
            for plane in np.moveaxis(solid, axis, 0):
                if plane.any():
                    radii.append(ps.filters.local_thickness(plane, method=args.porespy_method)[plane])
            diameters[name] = 2.0 * np.concatenate(radii).mean()
        return diameters

    diameters, seconds["d"] = _timed(porespy_diameters, repeat=args.repeat)
    value["d"] = (
        "2 x mean radius xy/xz/yz "
        + "/".join(f"{diameters[k]:.2f}" for k in PLANES)
        + f" vx (method {args.porespy_method})"
    )

    if args.porespy_s2:
        tpcf, seconds["s2"] = _timed(ps.metrics.two_point_correlation, solid, repeat=args.repeat)
        at = int(np.argmin(np.abs(tpcf.distance - 10)))
        value["s2"] = f"radial S2({tpcf.distance[at]:g} vx) {tpcf.probability_scaled[at]:.4f} (all directions)"
    return seconds, value


def _timed(function, *args, repeat: int = 1):
    """(result, best wall time in s over ``repeat`` runs)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


if __name__ == "__main__":
    main()
