"""How well slice_thickness_nm=auto recovers the slice spacing (fibml.metrics.spacing).

    python benchmarks/thickness_estimate.py [--factors 0.6 0.8 1.0 1.2 1.4 1.6] [--seeds 0 1 2]
        [--shape 64 128 128] [--wavelength 60] [--noise 12] [--out benchmarks/results/thickness_estimate]

Leveled-wave structures (solid fraction 0.35) are generated with a true slice spacing of factor x
the in-plane pixel (5 nm), imaged as grey values with Gaussian noise, segmented by Otsu as
ingest does, and the spacing estimated from the structure alone. Prints a Markdown table (true,
estimated, error, uncertainty, seconds) and writes it with a CSV beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from fibml.metrics.spacing import estimate_slice_spacing
from fibml.report import write_table
from fibml.synth.microstructure import leveled_wave

PIXEL_NM = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--wavelength", type=float, default=60.0)
    parser.add_argument("--noise", type=float, default=12.0, help="grey-value noise (solid 170, pore 70)")
    parser.add_argument("--out", default="benchmarks/results/thickness_estimate")
    args = parser.parse_args()

    rows = []
    for factor in args.factors:
        for seed in args.seeds:
            true = factor * PIXEL_NM
            structure = leveled_wave(args.shape, args.wavelength, 0.35, voxel_size_nm=(true, PIXEL_NM, PIXEL_NM),
                                     seed=seed)
            rng = np.random.default_rng(seed)
            image = np.where(structure, 170.0, 70.0) + rng.normal(0.0, args.noise, structure.shape)
            labels = (image > threshold_otsu(image)).astype(np.uint8)
            started = time.perf_counter()
            estimate = estimate_slice_spacing(labels, PIXEL_NM)
            seconds = time.perf_counter() - started
            rows.append({"factor": factor, "seed": seed, "true nm": true, "estimate nm": estimate.spacing_nm,
                         "error %": 100.0 * (estimate.spacing_nm / true - 1.0),
                         "uncertainty nm": estimate.uncertainty_nm, "seconds": seconds})
            print(f"factor {factor:g} seed {seed}: true {true:.3g} nm, estimate {estimate.spacing_nm:.4g} nm "
                  f"({rows[-1]['error %']:+.2f} %), {seconds:.2f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table = write_table(rows, args.out)
    errors = np.abs([r["error %"] for r in rows])
    print(f"\n{table}\n\nlargest |error| {errors.max():.2f} %, mean |error| {errors.mean():.2f} % over {len(rows)} stacks")


if __name__ == "__main__":
    main()
