"""Speed and peak memory of `python predict.py` on a real-size multi-voltage stack (issue 9).

    python benchmarks/predict_speed.py [--data-dir DIR] [--shape 316 3072 2048] [--slices N | --all]
        [--device auto|cpu|cuda] [--precision 32|bf16] [--ckpt RUN_OR_CKPT] [--net-override KEY=VALUE]
        [--overlap 0.5] [--sw-batch-size 32] [--chunk-slices 16] [--default-malloc] [--keep]

1. The stack: bse_1kV.tif, bse_2kV.tif and bse_4kV.tif of --shape (default the paper's real
   acquisition, 316 x 3072 x 2048 pixels per voltage, uint8: 6.0 GB on disk) in --data-dir (default
   a temporary folder; an existing stack of that shape is reused). Each is written slice by slice
   from a 96 x 256 x 256 fast-forward-model dataset, tiled: the grey values and shine-through of
   real data, without a structure generator of 6 billion voxels.
2. The model: --ckpt, or a fresh (untrained) net of experiment=late_fusion saved as a fibml
   checkpoint: only the time and memory mean anything then, not the segmentation. --net-override
   shrinks it (e.g. 'model.net.branch.features=[4]'); --ckpt of a tiny trained net (two phases in
   the output, so the report computes everything) lets the whole stack run end to end on a CPU.
3. `python predict.py ckpt_path=... input=<data-dir> output=<tmp> z_range=[0, N]` in a child
   process, as a user runs it. Measured: wall time of the child; the prediction's own slices/s
   (prediction.json, the chunked prediction alone); the child's peak resident memory
   (getrusage RUSAGE_CHILDREN ru_maxrss, i.e. VmHWM: every page it ever held, the Python
   interpreter and torch included). --slices N predicts the first N slices of the whole stack
   (default 4 on a CPU, where the whole stack would take hours; all slices on a GPU): the stack
   is opened, normalised (percentiles of sampled slices of all 316) and reported as a whole either
   way, so memory is that of the full-size run. The projected time for the whole stack scales
   the prediction's slices/s. --default-malloc runs predict.py with inference.reuse_memory=false
   (glibc's malloc as it comes: 1.5-2x slower on 2 CPU cores, see fibml.inference.reuse_host_memory).
Targets (issue 9): peak RAM under 4 GB on the CPU; on one GPU the whole stack in under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]
VOLTAGES = (1, 2, 4)
VOXEL_NM = (2.5, 2.5, 2.5)  # the embedded default data's voxels (configs/generator/hnpg_small.yaml)
TILE = (96, 256, 256)  # fits two coarse HNPG periods in z
RSS_TARGET_GB = 4.0
GPU_TARGET_S = 600.0


def write_stacks(folder: Path, shape: tuple[int, int, int]) -> float:
    """bse_<V>kV.tif of `shape` (uint8, ImageJ, voxel size) written slice by slice; returns seconds.
    An existing stack of the same shape is kept."""
    from omegaconf import OmegaConf

    from fibml.config import CONFIG_DIR
    from fibml.synth.dataset import generate_dataset

    folder.mkdir(parents=True, exist_ok=True)
    paths = {v: folder / f"bse_{v}kV.tif" for v in VOLTAGES}
    if all(p.is_file() and tifffile.TiffFile(p).series[0].shape == shape for p in paths.values()):
        print(f"reusing the stacks in {folder}")
        return 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        default = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "generator" / "hnpg_small.yaml"))
        tile = generate_dataset(Path(tmp) / "tile", shape=TILE, voxel_size_nm=VOXEL_NM[1], voltages=list(VOLTAGES),
                                structure=default["structure"], imaging=default["imaging"], seed=0, progress=False)
        for v, path in paths.items():
            images = tifffile.imread(tile / f"bse_{v}kV.tif").astype(np.float32)
            lo, hi = np.percentile(images, [0.1, 99.9])
            images = np.clip((images - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
            reps = (-(-shape[1] // TILE[1]), -(-shape[2] // TILE[2]))
            out = tifffile.memmap(path, shape=shape, dtype=np.uint8, imagej=True,
                                  resolution=(1 / VOXEL_NM[2], 1 / VOXEL_NM[1]),
                                  metadata={"axes": "ZYX", "spacing": VOXEL_NM[0], "unit": "nm"})
            for z in range(shape[0]):
                out[z] = np.tile(images[z % TILE[0]], reps)[: shape[1], : shape[2]]
                if z % 16 == 15:
                    out.flush()
            out.flush()
            del out
            print(f"  wrote {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return time.perf_counter() - started


def fresh_checkpoint(path: Path, overrides: Sequence[str] = ()) -> Path:
    """A late-fusion net of experiment=late_fusion (plus Hydra `overrides`) with fresh weights, as a
    fibml checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fibml.checkpoints import CONFIG_KEY, build_model
    from fibml.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=late_fusion", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    config = OmegaConf.to_container(cfg, resolve=False)
    config["model"] = OmegaConf.to_container(cfg.model, resolve=True)
    config["data"] = OmegaConf.to_container(cfg.data, resolve=True)
    torch.save({"state_dict": model.state_dict(), CONFIG_KEY: {"model": config["model"], "data": config["data"]}}, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="where the stacks are (written if absent)")
    parser.add_argument("--shape", type=int, nargs=3, default=[316, 3072, 2048], metavar=("Z", "Y", "X"))
    parser.add_argument("--slices", type=int, default=None, help="predict the first N slices (default: 4 on CPU, all on GPU)")
    parser.add_argument("--all", action="store_true", help="predict every slice")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="32", choices=("32", "bf16"))
    parser.add_argument("--ckpt", default=None, help="a trained run or checkpoint (default: a fresh late-fusion net)")
    parser.add_argument("--net-override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override of the fresh net, e.g. 'model.net.branch.features=[4]' for a "
                             "net small enough to run the whole stack through the pipeline on a CPU")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=32)
    parser.add_argument("--chunk-slices", type=int, default=16)
    parser.add_argument("--default-malloc", action="store_true",
                        help="inference.reuse_memory=false: leave glibc's malloc as it is (for comparison)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stacks and output")
    args = parser.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    shape = tuple(args.shape)
    n = shape[0] if args.all or (args.slices is None and device == "cuda") else min(args.slices or 4, shape[0])

    work = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    data = args.data_dir or work / "stack"
    try:
        print(f"predict_speed: 3 x {shape[0]} x {shape[1]} x {shape[2]} uint8 "
              f"({3 * np.prod(shape) / 1e9:.1f} GB), {n} slices predicted on {device}", flush=True)
        write_s = write_stacks(data, shape)
        ckpt = args.ckpt or fresh_checkpoint(work / "late_fusion_fresh.ckpt", args.net_override)
        out = work / "out"
        command = [
            sys.executable, str(REPO / "predict.py"), f"ckpt_path={ckpt}", f"input={data}", f"output={out}",
            f"z_range=[0,{n}]", f"inference.device={device}", f"inference.precision={args.precision}",
            f"inference.overlap={args.overlap}", f"inference.sw_batch_size={args.sw_batch_size}",
            f"inference.chunk_slices={args.chunk_slices}", f"inference.reuse_memory={not args.default_malloc}",
            f"hydra.run.dir={work / 'hydra'}",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        info = json.loads((out / "prediction.json").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    per_slice = 1.0 / info["slices_per_second"]
    voxels_per_s = info["slices_per_second"] * shape[1] * shape[2]
    whole = per_slice * shape[0]
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"\n{time.strftime('%Y-%m-%d')}, {hardware}, torch {torch.__version__}, Python {platform.python_version()}")
    print("| stack | device | precision | malloc | slices | prediction slices/s | voxels/s (per voltage) | "
          "whole stack (projected) | predict.py wall | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    malloc = "default" if args.default_malloc else "reuse"
    print(f"| 3 x {' x '.join(map(str, shape))} uint8 | {device} | {args.precision} | {malloc} | {n} | "
          f"{info['slices_per_second']:.3g} | {voxels_per_s:.3g} | {whole / 60:.1f} min | {wall:.1f} s | "
          f"{peak_gb:.2f} GB |")
    verdicts = []
    if device == "cpu":
        verdicts.append(f"peak RSS {peak_gb:.2f} GB {'<' if peak_gb < RSS_TARGET_GB else '>='} {RSS_TARGET_GB:g} GB target")
    else:
        verdicts.append(f"whole stack {whole:.0f} s {'<' if whole < GPU_TARGET_S else '>='} {GPU_TARGET_S:g} s target")
    print("; ".join(verdicts) + (f"; stacks written in {write_s:.0f} s" if write_s else ""))
    return {"slices_per_second": info["slices_per_second"], "peak_rss_gb": peak_gb, "wall_s": wall, "whole_s": whole}


if __name__ == "__main__":
    main()
