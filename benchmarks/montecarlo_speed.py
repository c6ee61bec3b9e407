"""Speed of the voxel Monte Carlo BSE simulator, and the time it projects for the papers' data.

    python benchmarks/montecarlo_speed.py [--quick] [--size 64] [--slices 4] [--device cpu|cuda]
                                          [--electrons-per-pixel 20] [--paper-electrons-per-pixel 100]
                                          [--table] [--compile]

Simulates `slices` milled faces of a size^2 hierarchical nanoporous-gold structure (2.5 nm voxels,
epoxy-filled pores) at 1, 2 and 4 kV and prints electrons per second for each voltage. From that:
the time for a 64^3 dataset at the given electrons per pixel (target: minutes on 2 CPU cores), and
the projected time for the papers' 512 slices of 512 x 512 pixels at --paper-electrons-per-pixel
(MCXray took about seven days on a CPU for that; target on one GPU: at least 100x faster).
The papers do not say how many electrons per pixel MCXray used; 100 is an assumption, and the
projection scales linearly with it. --table also prints bulk eta of C, Al, Cu, Ag, Au at 5, 10,
20 kV against Hunger & Kuchler for both cross sections. --quick: one slice of 48^2, under a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from synth_speed import structure_arguments

from fibml.synth.microstructure import hierarchical_leveled_wave
from fibml.synth.montecarlo import bulk_backscatter, simulate_bse_stack
from fibml.synth.physics import get_material

VOXEL_NM = 2.5
MCXRAY_S = 7 * 24 * 3600.0  # seven days for 512 slices of 512 x 512 (cyclegan-simulation-domain-adaptation.txt)
PAPER_PIXELS = 512 * 512 * 512


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 48 x 48 slice per voltage (under a minute)")
    parser.add_argument("--size", type=int, default=64, help="edge of the structure, voxels (default 64)")
    parser.add_argument("--slices", type=int, default=4, help="milled faces simulated per voltage (default 4)")
    parser.add_argument("--voltages", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--electrons-per-pixel", type=int, default=20)
    parser.add_argument("--paper-electrons-per-pixel", type=int, default=100)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-electrons", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the electron step")
    parser.add_argument("--table", action="store_true", help="also print bulk eta against Hunger & Kuchler")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.slices = 48, 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    shape = (max(args.size, args.slices),) + (args.size,) * 2
    kwargs = structure_arguments(args.size)
    labels = hierarchical_leveled_wave(shape, voxel_size_nm=VOXEL_NM, seed=0, **kwargs).astype("uint8")
    print(f"montecarlo_speed: {args.slices} slices of {args.size}^2 pixels ({VOXEL_NM} nm), hierarchical NPG "
          f"{kwargs or 'defaults'}, solid fraction {labels.mean():.3f}, {args.electrons_per_pixel} e/pixel, "
          f"device {device} ({hardware}), torch threads {torch.get_num_threads()}")

    rates = {}
    if device.type == "cuda" or args.compile:
        # untimed first run per voltage: CUDA context, allocator, and torch.compile's compilation
        started = time.perf_counter()
        for voltage in args.voltages:
            simulate_bse_stack(labels, voltage, VOXEL_NM, electrons_per_pixel=1, slices=[0], device=device,
                               batch_electrons=args.batch_electrons, compile=args.compile, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"  warm-up (not timed{', compilation included' if args.compile else ''}): "
              f"{time.perf_counter() - started:.1f} s")
    for voltage in args.voltages:
        started = time.perf_counter()
        image = simulate_bse_stack(labels, voltage, VOXEL_NM, electrons_per_pixel=args.electrons_per_pixel,
                                   slices=range(args.slices), device=device, batch_electrons=args.batch_electrons,
                                   compile=args.compile, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        electrons = args.slices * args.size**2 * args.electrons_per_pixel
        rates[voltage] = electrons / seconds
        faces = labels[: args.slices]
        print(f"  {voltage:g} kV: {seconds:7.1f} s, {rates[voltage]:9.3g} electrons/s; mean eta pore "
              f"{image[faces == 0].mean():.3f}, solid {image[faces == 1].mean():.3f}")

    dataset = sum(64**3 * args.electrons_per_pixel / r for r in rates.values())
    print(f"64^3 dataset at {', '.join(f'{v:g}' for v in rates)} kV, {args.electrons_per_pixel} e/pixel: "
          f"{dataset / 60:.1f} min")
    for voltage, rate in rates.items():
        projected = PAPER_PIXELS * args.paper_electrons_per_pixel / rate
        print(f"512 slices x 512^2 at {voltage:g} kV, {args.paper_electrons_per_pixel} e/pixel: {projected / 3600:.1f} h "
              f"= {MCXRAY_S / projected:.2f}x faster than MCXray's seven days")
    if args.table:
        print_table(device)
    return rates


def print_table(device) -> None:
    print("\nbulk eta, 4000 electrons each (seed 1): Monte Carlo / Hunger & Kuchler")
    print("| element | kV | Hunger-Kuchler | Browning | ratio | screened Rutherford | ratio |")
    print("|---|---|---|---|---|---|---|")
    for element in ("C", "Al", "Cu", "Ag", "Au"):
        for voltage in (5.0, 10.0, 20.0):
            reference = get_material(element).backscatter_coefficient(voltage)
            runs = [bulk_backscatter(element, voltage, electrons=4000, seed=1, cross_section=c, device=device)
                    for c in ("browning", "rutherford")]
            cells = " | ".join(f"{r.eta:.3f} ± {r.eta_std:.3f} | {r.eta / reference:.2f}" for r in runs)
            print(f"| {element} | {voltage:g} | {reference:.3f} | {cells} |")


if __name__ == "__main__":
    main()
