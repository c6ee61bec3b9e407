"""Tables 2 and 3 of slice-thickness-repositioning-inpainting.txt on fibml's own synthetic data.

    python benchmarks/thickness_comparison.py --inpainting-ckpt logs/train/runs/<inpainting run> [--quick]

For every structure (hierarchical nanoporous gold of the embedded generator, 2.5 nm voxels, seeds
never used for training) and every thickness draw (gamma, mean 10 nm, 2.5 nm bins), the
"mimicking" stack is milled (each slice the ground truth at its true depth) and reconstructed
onto the 2.5 nm grid by the paper's five cases:

    RNN / RCS / RML: accurate repositioning + nearest neighbour / cubic spline / ML inpainting (Table 2)
    DNN / SRCS / RML: no repositioning + nearest / standard 10 nm repositioning + spline / RML (Table 3)

Each reconstruction is scored against the ground truth: MP, MGP, MDS (mean +- std over all
volumes) and the anisotropy errors e_TPCF, e_LPF, e_D of the reconstruction. Without
--inpainting-ckpt the RML rows are left out. Prints a Markdown table; --out writes it too.
--quick: 2 structures x 1 draw of 96 x 96 x 96 voxels (about a minute on 2 CPU cores without RML).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np

from fibml.metrics.confusion import segmentation_scores
from fibml.metrics.table import anisotropy_columns
from fibml.reconstruct.pipeline import CASES, reconstruct_stack
from fibml.synth.microstructure import hierarchical_leveled_wave
from fibml.synth.thickness import mimic_stack, sample_thicknesses, slices_that_fit

# the embedded generator's structure (configs/generator/hnpg_small.yaml)
STRUCTURE = {"coarse_wavelength_nm": 200.0, "fine_wavelength_nm": 60.0, "coarse_solid_fraction": 0.35,
             "solid_fraction": 0.12, "n_waves": 1000}
FIRST_SEED = 100  # the inpainting net trained on seed 0's volume: score on others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inpainting-ckpt", default=None, help="a run of experiment=inpainting (RML); none = no RML rows")
    parser.add_argument("--structures", type=int, default=5)
    parser.add_argument("--draws", type=int, default=2, help="thickness draws per structure")
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 128, 128))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    args = parser.parse_args()
    if args.quick:
        args.structures, args.draws, args.shape = 2, 1, (96, 96, 96)

    inpainter = _inpainter(args.inpainting_ckpt, args.device) if args.inpainting_ckpt else None
    cases = [c for c in ("RNN", "RCS", "RML", "DNN", "SRCS") if c != "RML" or inpainter is not None]
    scores = {case: [] for case in cases}
    seconds = {case: 0.0 for case in cases}
    start = time.perf_counter()
    for s in range(args.structures):
        truth = hierarchical_leveled_wave(tuple(args.shape), 2.5, seed=FIRST_SEED + s, **STRUCTURE).astype(np.uint8)
        for d in range(args.draws):
            t = sample_thicknesses(truth.shape[0], target_nm=10.0, shape=4.0, bin_nm=2.5, seed=1000 * s + d)
            t = t[: slices_that_fit(t, truth.shape[0])]
            slices, _ = mimic_stack(truth, t)
            for case in cases:
                repositioning, method = CASES[case]
                tic = time.perf_counter()
                volume = reconstruct_stack(slices, t, method=method, repositioning=repositioning, inpainter=inpainter)
                seconds[case] += time.perf_counter() - tic
                n = min(len(volume), len(truth))
                row = segmentation_scores(volume[:n], truth[:n])
                aniso = anisotropy_columns(volume[:n], (2.5, 2.5, 2.5))
                scores[case].append([row["mp"], row["mgp"], row["mds"], aniso["e_TPCF"], aniso["e_LPF"], aniso["e_D"]])
            print(f"structure {s}, draw {d}: {len(t)} slices -> {n} rows; "
                  + ", ".join(f"{c} MP {scores[c][-1][0]:.2f}" for c in cases), flush=True)
    truth_aniso = anisotropy_columns(truth, (2.5, 2.5, 2.5))
    table = _table(scores, seconds, truth_aniso)
    header = (f"thickness_comparison: {args.structures} structures x {args.draws} draws of {tuple(args.shape)} voxels "
              f"(2.5 nm), gamma thicknesses mean 10 nm; {os.cpu_count()} CPU cores ({platform.machine()}), "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}, {time.perf_counter() - start:.0f} s")
    print(f"\n{header}\n\n{table}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{table}\n")


def _table(scores: dict, seconds: dict, truth_aniso: dict) -> str:
    lines = ["| case | MP % | MGP % | MDS | e_TPCF | e_LPF | e_D | s per volume |", "|---|---|---|---|---|---|---|---|"]
    lines.append("| ground truth (last structure) | 0 | 0 | 1 | " + " | ".join(
        f"{truth_aniso[k]:.4f}" for k in ("e_TPCF", "e_LPF", "e_D")) + " | |")
    for case, rows in scores.items():
        values = np.asarray(rows)
        mean, std = values.mean(0), values.std(0)
        cells = [f"{mean[0]:.2f} ± {std[0]:.2f}", f"{mean[1]:.2f} ± {std[1]:.2f}", f"{mean[2]:.4f} ± {std[2]:.4f}"]
        cells += [f"{m:.4f}" for m in mean[3:]]
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {seconds[case] / len(rows):.1f} |")
    return "\n".join(lines)


def _inpainter(checkpoint: str, device: str):
    """inpaint_volume with the trained net (as predict.py reconstruct.method=ml uses it)."""
    from fibml.pipelines.predict import load_inpainter as build

    return partial(build(checkpoint, {"device": device}), progress=False)


if __name__ == "__main__":
    main()
