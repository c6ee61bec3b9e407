"""How well the fast BSE forward model (fibml.synth.imaging.render_bse) agrees with fibml's own
voxel Monte Carlo (fibml.synth.montecarlo), per voltage: the measurement issue 27's calibration
starts from and is judged by.

    python benchmarks/forward_model_vs_montecarlo.py [--quick] [--voltages 1 2 4] [--seeds 10 11]
        [--electrons 100] [--out benchmarks/results/forward_vs_mc]

Structures: hierarchical leveled waves (40 x 48 x 48 voxels of 2.5 nm, coarse / fine wavelength
60 / 20 nm, solid fraction 0.12), faces 0, 8, 16, 24 of each. Per voltage and structure: two
Monte Carlo runs with different seeds at --electrons per pixel, the noiseless fast image, and
the fast image with shot noise at the same dose. Printed and written (<out>.md / .csv):

- images: mean pore and solid levels and contrast (solid - pore) / solid of Monte Carlo and the
  fast model, the pixel correlation of the noiseless fast image with one Monte Carlo run against
  that run's noise ceiling sqrt(r(MC seed a, MC seed b)), SSIM, and the Wasserstein distance of
  the histograms and the power-spectrum distance (fibml.metrics.domain) of the noisy fast images
  against Monte Carlo; the fast model's and the Monte Carlo's seconds;
- depth response: eta of an epoxy layer over gold (0 ... 70 nm) from Monte Carlo
  (simulate_layers) and from the fast model (shine_through_profile);
- <out>.png: one face of the first structure, Monte Carlo and fast, at each voltage.

--quick: 24 x 32 x 32 voxels, faces 0 and 8, 30 electrons per pixel, one structure, 1 and 2 kV,
3000 electrons per layer thickness (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fibml.metrics.domain import histogram_distance, image_agreement, spectrum_distance  # noqa: E402
from fibml.report import markdown_table, write_table  # noqa: E402
from fibml.synth.imaging import render_bse, shine_through_profile  # noqa: E402
from fibml.synth.microstructure import hierarchical_leveled_wave  # noqa: E402
from fibml.synth.montecarlo import simulate_bse_stack, simulate_layers  # noqa: E402

VOXEL_NM = 2.5
LAYERS_NM = [0, 10, 20, 30, 40, 50, 70]


def settings(args) -> dict:
    if args.quick:
        return {"shape": (24, 32, 32), "faces": [0, 8], "electrons": args.electrons or 30, "seeds": args.seeds or [10],
                "voltages": args.voltages or [1, 2], "layer_electrons": 3000}
    return {"shape": (40, 48, 48), "faces": [0, 8, 16, 24], "electrons": args.electrons or 100,
            "seeds": args.seeds or [10, 11], "voltages": args.voltages or [1, 2, 4], "layer_electrons": 20000}


def structure(shape, seed: int) -> np.ndarray:
    return hierarchical_leveled_wave(shape, VOXEL_NM, coarse_wavelength_nm=60.0, fine_wavelength_nm=20.0,
                                     solid_fraction=0.12, seed=seed).astype(np.uint8)


def compare(labels: np.ndarray, faces: list[int], voltage: float, electrons: int, seed: int) -> tuple[dict, dict]:
    """One structure at one voltage: the agreement row and the images (for the figure)."""
    started = time.perf_counter()
    mc = [simulate_bse_stack(labels, voltage, VOXEL_NM, electrons_per_pixel=electrons, slices=faces,
                             seed=seed * 1000 + run, progress=False) for run in (0, 1)]
    mc_seconds = (time.perf_counter() - started) / 2
    started = time.perf_counter()
    fast = render_bse(labels, voltage, VOXEL_NM, electrons_per_pixel=None, seed=seed)[faces]
    fast_seconds = time.perf_counter() - started
    noisy = render_bse(labels, voltage, VOXEL_NM, electrons_per_pixel=float(electrons), seed=seed)[faces]
    row = {"kV": voltage, "structure": seed} | image_agreement(fast, mc[0], labels[faces], repeat=mc[1])
    row |= {"wasserstein": histogram_distance(noisy, mc[0]), "spectrum": spectrum_distance(noisy, mc[0]),
            "fast s": fast_seconds, "Monte Carlo s": mc_seconds}
    return row, {"mc": mc[0][0], "fast": fast[0], "labels": labels[faces[0]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--voltages", type=float, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", help="structures (held out of any fit)")
    parser.add_argument("--electrons", type=int, help="Monte Carlo electrons per pixel (and the fast model's dose)")
    parser.add_argument("--out", default="benchmarks/results/forward_vs_mc")
    args = parser.parse_args()
    s = settings(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    rows, shown = [], {}
    for seed in s["seeds"]:
        labels = structure(s["shape"], seed)
        for voltage in s["voltages"]:
            row, images = compare(labels, s["faces"], voltage, s["electrons"], seed)
            rows.append(row)
            shown.setdefault(voltage, images)
            print(f"{voltage:g} kV, structure {seed}: pore {row['reference pore']:.3f} / {row['model pore']:.3f}, solid "
                  f"{row['reference solid']:.3f} / {row['model solid']:.3f} (Monte Carlo / fast), r {row['correlation']:.3f} "
                  f"of ceiling {row['noise ceiling']:.3f}", flush=True)
    table = write_table(rows, out)

    depth = []
    for voltage in s["voltages"]:
        mc = simulate_layers("Au", voltage, LAYERS_NM, electrons=s["layer_electrons"], seed=0)
        fast = shine_through_profile(voltage, LAYERS_NM)
        depth.append({"kV": voltage, "source": "Monte Carlo"} | {f"{t} nm": r.eta for t, r in zip(LAYERS_NM, mc)})
        depth.append({"kV": voltage, "source": "fast"} | {f"{t} nm": float(e) for t, e in zip(LAYERS_NM, fast)})
    depth_table = write_table(depth, out.with_name(out.name + "_depth"))

    fig, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 6.4), squeeze=False)
    for column, (voltage, images) in enumerate(shown.items()):
        for row_index, key in enumerate(("mc", "fast")):
            ax = axes[row_index, column]
            ax.imshow(images[key], cmap="gray")
            ax.set_title(f"{'Monte Carlo' if key == 'mc' else 'fast model'}, {voltage:g} kV", fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    summary = [{"kV": v} | {k: float(np.mean([r[k] for r in rows if r["kV"] == v]))
                            for k in ("reference pore", "model pore", "reference solid", "model solid",
                                      "reference contrast", "model contrast", "correlation", "noise ceiling", "ssim")}
               for v in s["voltages"]]
    ratio = np.mean([r["Monte Carlo s"] for r in rows]) / max(np.mean([r["fast s"] for r in rows]), 1e-9)
    print(f"\n{table}\n\nmeans per voltage:\n\n{markdown_table(summary)}\n\ndepth response (eta of epoxy over gold):\n\n"
          f"{depth_table}\n\nthe fast model was {ratio:.0f}x faster than one Monte Carlo run on these faces\n"
          f"written: {out}.md, {out}_depth.md, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
