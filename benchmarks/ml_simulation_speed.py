"""ML simulation against the Monte Carlo simulator: seconds for the same stack.

    python benchmarks/ml_simulation_speed.py [--size 128] [--slices 16] [--voltage 2]
                                             [--electrons-per-pixel 20] [--ckpt <cyclegan run>] [--device cpu|cuda]

Both image the same hierarchical nanoporous-gold structure (2.5 nm voxels): the voxel Monte Carlo
(fibml.synth.montecarlo) at --electrons-per-pixel, and the ML simulation of
cyclegan-simulation-domain-adaptation.txt (2.3): depth-weighted preprocessing (12 slices, the
Hunger-Kuchler eta model; the ANN costs the same, it is evaluated on a 2 x 12 grid only) followed
by the CycleGAN generator (the paper's architecture, Gaussian-blended 128 x 128 sliding window, as
`predict.py task=translate` runs it). Without --ckpt the generator has fresh weights: the time is
the same, the images are not meaningful. Target (issue 8): the ML simulation >= 100x faster.
The Monte Carlo time grows linearly with the electrons per pixel; the ML time does not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synth_speed import structure_arguments  # noqa: E402  (benchmarks share the structure choice)

from fibml.data.unpaired import to_unit  # noqa: E402
from fibml.inference import predict_volume, resolve_device  # noqa: E402
from fibml.nets.gan import UNetGenerator  # noqa: E402
from fibml.synth.microstructure import hierarchical_leveled_wave  # noqa: E402
from fibml.synth.montecarlo import simulate_bse_stack  # noqa: E402
from fibml.synth.preprocess import depth_weighted_stack, depth_weights, formula_eta  # noqa: E402

VOXEL_NM = 2.5


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="slice edge, pixels (default 128)")
    parser.add_argument("--slices", type=int, default=16, help="milled slices imaged (default 16)")
    parser.add_argument("--voltage", type=float, default=2.0)
    parser.add_argument("--electrons-per-pixel", type=int, default=20)
    parser.add_argument("--ckpt", default=None, help="a cyclegan_sim run: its trained generator a -> b")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    depth = max(args.slices + 12, args.size)  # a cube: the coarse wavelength must fit along z too
    labels = hierarchical_leveled_wave((depth, args.size, args.size), voxel_size_nm=VOXEL_NM, seed=0,
                                       **structure_arguments(args.size)).astype(np.uint8)
    print(f"ml_simulation_speed: {args.slices} slices of {args.size}^2 pixels at {args.voltage:g} kV, "
          f"device {device} ({hardware}), torch threads {torch.get_num_threads()}")

    started = time.perf_counter()
    simulate_bse_stack(labels, args.voltage, VOXEL_NM, electrons_per_pixel=args.electrons_per_pixel,
                       slices=range(args.slices), device=device, progress=False)
    monte_carlo = time.perf_counter() - started
    print(f"  Monte Carlo, {args.electrons_per_pixel} e/pixel: {monte_carlo:8.2f} s")

    generator = _generator(args.ckpt).to(device).eval()
    started = time.perf_counter()
    weights = depth_weights(formula_eta, ["epoxy", "Au"], args.voltage, 12, VOXEL_NM)
    preprocessed = depth_weighted_stack(labels, weights)[: args.slices]
    preprocessing = time.perf_counter() - started
    with torch.no_grad():
        predict_volume(generator, to_unit(preprocessed, 0.0, 1.0)[None], dims="2d", patch_size=128, overlap=0.5,
                       device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ml = time.perf_counter() - started
    print(f"  ML simulation: {ml:8.2f} s (preprocessing {preprocessing:.2f} s, CycleGAN {ml - preprocessing:.2f} s)")
    print(f"  ML simulation is {monte_carlo / ml:.0f}x faster than the Monte Carlo "
          f"({monte_carlo / args.slices:.2f} against {ml / args.slices:.3f} s per slice)")
    return monte_carlo / ml


def _generator(checkpoint: str | None) -> torch.nn.Module:
    if checkpoint is None:
        return UNetGenerator(features=(32, 64, 128, 256))
    from fibml.checkpoints import load_model, resolve_checkpoint

    model, _ = load_model(resolve_checkpoint(checkpoint))
    return model.generator_ab


if __name__ == "__main__":
    main()
