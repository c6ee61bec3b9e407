"""Speed of the synthetic-data path: a hierarchical leveled-wave volume and its BSE stacks.

    python benchmarks/synth_speed.py [--size 256] [--voltages 1 2 4]

Generates a size^3 hierarchical nanoporous-gold structure (2.5 nm voxels) and renders it with
render_bse at every voltage; prints the seconds of each stage and the total.
Target: < 30 s on 2 CPU cores for 256^3 at 1, 2 and 4 kV.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time

import numpy as np

from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import hierarchical_leveled_wave

VOXEL_NM = 2.5
TARGET_S = 30.0


def structure_arguments(size: int, voxel_nm: float = VOXEL_NM) -> dict:
    """hierarchical_leveled_wave's default wavelengths when the coarse one fits the box twice,
    else shorter ones (200 / 60 nm, or half the box for very small boxes)."""
    defaults = inspect.signature(hierarchical_leveled_wave).parameters
    coarse = defaults["coarse_wavelength_nm"].default
    box = size * voxel_nm
    if 2 * coarse <= box:
        return {}
    coarse = min(200.0, box / 2)
    return {"coarse_wavelength_nm": coarse, "fine_wavelength_nm": max(coarse * 0.3, 4 * voxel_nm)}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic volume, voxels (default 256)")
    parser.add_argument(
        "--voltages", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="beam voltages, kV (default 1 2 4)"
    )
    args = parser.parse_args(argv)
    shape = (args.size,) * 3
    kwargs = structure_arguments(args.size)
    print(
        f"synth_speed: {args.size}^3 voxels of {VOXEL_NM} nm ({args.size * VOXEL_NM:g} nm box), "
        f"{os.cpu_count()} CPU cores, structure {kwargs or 'defaults'}"
    )

    timings = {}
    start = time.perf_counter()
    solid = hierarchical_leveled_wave(shape, VOXEL_NM, seed=0, **kwargs)
    timings["structure"] = time.perf_counter() - start
    labels = solid.astype(np.uint8)
    print(f"  {'structure (hierarchical_leveled_wave)':<40s}{timings['structure']:7.2f} s  solid fraction {solid.mean():.3f}")

    for voltage in args.voltages:
        start = time.perf_counter()
        image = render_bse(labels, voltage, VOXEL_NM, seed=0)
        timings[f"{voltage:g} kV"] = time.perf_counter() - start
        print(
            f"  {f'render_bse {voltage:g} kV':<40s}{timings[f'{voltage:g} kV']:7.2f} s  "
            f"mean {image.mean():.3f}, solid {image[solid].mean():.3f}, pore {image[~solid].mean():.3f}"
        )

    total = sum(timings.values())
    verdict = "met" if total < TARGET_S else "MISSED"
    print(f"  {'total':<40s}{total:7.2f} s  (target < {TARGET_S:g} s on 2 CPU cores: {verdict})")
    return total


if __name__ == "__main__":
    main()
