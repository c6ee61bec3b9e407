"""How well slice_thickness_nm=auto recovers the slice spacing (fibml.metrics.spacing).

    python benchmarks/thickness_estimate.py [--factors 0.6 0.8 1.0 1.2 1.4 1.6] [--seeds 0 1 2]
        [--shape 64 128 128] [--wavelength 60] [--images grey|bse] [--kv 2] [--noise 12]
        [--out benchmarks/results/thickness_estimate]

Leveled-wave structures (solid fraction 0.35) are generated with a true slice spacing of factor x
the in-plane pixel (5 nm), imaged, segmented by Otsu as ingest does, and the spacing estimated
from the structure alone. --images grey: solid 170, pore 70 and Gaussian noise (a segmentation
as fair along z as along x and y); bse: fibml's BSE forward model at --kv, shine-through
included (solid behind a pore brightens it, so Otsu's solid reaches deeper along z than it is).
The row "labels" gives the estimate from the true labels. Prints a Markdown table (true,
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
from fibml.synth.imaging import render_bse
from fibml.synth.microstructure import leveled_wave

PIXEL_NM = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--wavelength", type=float, default=60.0)
    parser.add_argument("--images", choices=["grey", "bse"], default="grey")
    parser.add_argument("--kv", type=float, default=2.0, help="--images bse: the beam voltage")
    parser.add_argument("--noise", type=float, default=12.0, help="--images grey: noise (solid 170, pore 70)")
    parser.add_argument("--out", default="benchmarks/results/thickness_estimate")
    args = parser.parse_args()

    rows = []
    for factor in args.factors:
        for seed in args.seeds:
            true = factor * PIXEL_NM
            structure = leveled_wave(args.shape, args.wavelength, 0.35, voxel_size_nm=(true, PIXEL_NM, PIXEL_NM),
                                     seed=seed)
            if args.images == "grey":
                rng = np.random.default_rng(seed)
                image = np.where(structure, 170.0, 70.0) + rng.normal(0.0, args.noise, structure.shape)
            else:
                image = render_bse(structure, args.kv, (true, PIXEL_NM, PIXEL_NM), seed=seed)
            labels = (image > threshold_otsu(image)).astype(np.uint8)
            started = time.perf_counter()
            estimate = estimate_slice_spacing(labels, PIXEL_NM)
            seconds = time.perf_counter() - started
            from_truth = estimate_slice_spacing(structure.astype(np.uint8), PIXEL_NM).spacing_nm
            rows.append({"factor": factor, "seed": seed, "true nm": true, "estimate nm": estimate.spacing_nm,
                         "error %": 100.0 * (estimate.spacing_nm / true - 1.0),
                         "uncertainty nm": estimate.uncertainty_nm, "from labels nm": from_truth,
                         "Otsu accuracy": float(np.mean(labels == structure)), "seconds": seconds})
            print(f"factor {factor:g} seed {seed}: true {true:.3g} nm, estimate {estimate.spacing_nm:.4g} nm "
                  f"({rows[-1]['error %']:+.2f} %), {seconds:.2f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table = write_table(rows, args.out)
    errors = np.abs([r["error %"] for r in rows])
    signed = [r["error %"] for r in rows]
    print(f"\n{table}\n\n{args.images} images: largest |error| {errors.max():.2f} %, mean |error| {errors.mean():.2f} %, "
          f"mean error {np.mean(signed):+.2f} % over {len(rows)} stacks")


if __name__ == "__main__":
    main()
