"""Training throughput of the late-fusion experiments: the data loader against the training step.

    python benchmarks/train_throughput.py [--experiments late_fusion late_fusion_25d late_fusion_3d]
        [--device auto|cpu|cuda] [--steps N] [--max-seconds S] [--batches N] [--num-workers N]
        [--precision 32|bf16-mixed] [--data-dir DIR | --cache-dir ./data] [--overrides data.batch_size=32 ...]

For each experiment, the config is composed as train.py composes it (configs/train.yaml with
experiment=<name> and the --overrides), then two figures are measured in patches per second:

- loader: the train DataLoader of the experiment's FIBSEMDataModule, with its augmentation and
  num_workers, iterated for --batches batches after a warm-up (cycling over epochs; CPU tensors,
  no copy to the device);
- step: forward + backward + optimizer step of the experiment's model on a few batches taken once
  from that loader and kept on the device, so the loader is not in it. The step is the module's
  own training_step (for late fusion: LateFusionTask.forward_loss, i.e. every branch, the ensemble
  on the detached branch probabilities, the ensemble's and the branches' Dice losses, plus the
  train metrics' update), then objective.backward() and the optimizer of configure_optimizers()
  (Adam with the branch / ensemble parameter groups). The module is not attached to a Trainer:
  Lightning's self.log() is then a documented no-op ("to support testing the *_step methods
  without a Trainer"), so this is the computation of a real training step minus Lightning's
  logging bookkeeping and the host-to-device copy. --precision bf16-mixed wraps the forward and
  the loss in torch.autocast(cuda, bfloat16), as Lightning's bf16-mixed does; CUDA only. Where
  the experiment augments whole batches on the device (data.batch_augmentation, the 2.5D ones),
  that augmentation is timed as part of the step, and the loader figure has none.
  Warm-up steps run first (on CUDA full batches, with torch.cuda.synchronize around the timing;
  on CPU on the first 2 patches of a batch: that primes oneDNN, the thread pool and Adam's state,
  after which the first full step is as fast as the next, without costing a full 3D step, about
  a minute on 2 cores). On CPU the timed steps stop after --max-seconds (at least one is timed).

The table's verdict is "OK" when the loader delivers at least 3x the patches the step consumes,
else "loader-bound". Step peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the peak
RSS of the process sampled during the steps (it includes the dataset and the libraries).

The default dataset is each experiment's embedded synthetic default, generated once into
--cache-dir (the 3D experiments' 256 x 160 x 160 volume takes ~10-20 s); nothing else is written.
Paste the output into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import resource
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from fibml.checkpoints import build_model
from fibml.config import CONFIG_DIR, register_resolvers

EXPERIMENTS = ["late_fusion", "late_fusion_25d", "late_fusion_3d"]
TARGET_RATIO = 3.0  # the loader should deliver at least this many times the patches the step consumes
STEP_BATCHES = 4  # distinct batches kept on the device for the step
PRECISIONS = ("32", "32-true", "bf16-mixed")
CPU_WARMUP_PATCHES = 2  # the CPU warm-up steps' batch (see the docstring)


def compose_experiment(experiment: str, overrides: list[str], cache_dir: Path) -> DictConfig:
    """configs/train.yaml with experiment=<experiment> and the overrides; the dataset cache in cache_dir."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.data_dir = str(cache_dir)
    return cfg


def machine(device: torch.device) -> str:
    """One line naming the machine, in the style of RESULTS.md's headings."""
    parts = [f"{os.cpu_count()} CPU cores ({platform.machine()})"]
    try:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM")
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
    elif torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)} not used")
    else:
        parts.append("no GPU")
    return ", ".join(parts) + f"; torch {torch.__version__}, Python {platform.python_version()}"


def batches_forever(loader):
    """The loader's batches, epoch after epoch (persistent workers are reused)."""
    while True:
        yield from loader


def loader_throughput(loader, warmup: int, batches: int) -> tuple[float, list]:
    """Patches/s of iterating the loader for `batches` batches after `warmup` ones, and the
    first STEP_BATCHES full batches (for the step)."""
    stream = batches_forever(loader)
    kept = []
    try:
        for _ in range(warmup):
            batch = next(stream)
            if len(kept) < STEP_BATCHES and len(batch[0]) == loader.batch_size:
                kept.append(batch)
        patches = 0
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(stream)
            patches += len(batch[0])
        seconds = time.perf_counter() - start
        for _ in range(len(loader) + STEP_BATCHES):  # small warm-ups: the rest after the timing
            if len(kept) >= STEP_BATCHES:
                break
            batch = next(stream)
            if len(batch[0]) == loader.batch_size or not kept:  # a short batch only if no full one
                kept.append(batch)
    finally:
        stream.close()
    return patches / seconds, kept


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 10 ms from
    /proc/self/statm (falls back to getrusage's process peak where there is no /proc)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").is_file()

    def _sample(self) -> None:
        if self._proc:
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.peak = max(self.peak, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def step_throughput(
    module: pl.LightningModule,
    batches: list,
    device: torch.device,
    precision: str,
    warmup: int,
    steps: int,
    max_seconds: float = 0.0,
    augment=None,
) -> tuple[float, float, int]:
    """Patches/s of forward + backward + optimizer step on batches already on the device, the
    peak memory of the steps in bytes (CUDA: allocated by torch; CPU: process RSS), and the number
    of steps timed (fewer than `steps` when they took more than max_seconds > 0)."""
    module.to(device).train()
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    )
    cuda = device.type == "cuda"

    def step(i: int, patches: int | None = None) -> None:
        x, y = batches[i % len(batches)]
        x, y = x[:patches], y[:patches]
        if augment is not None:  # the datamodule's batch augmentation on the device is part of the step
            x, y = augment(x, y)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            objective = module.training_step((x, y), i)
        objective.backward()
        optimizer.step()

    with warnings.catch_warnings():
        # no Trainer: self.log() inside training_step / forward_loss warns and does nothing
        warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() if not cuda else nullcontext() as rss:
            for i in range(warmup):
                step(i, None if cuda else CPU_WARMUP_PATCHES)
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            done = patches = 0
            while done < steps:
                step(warmup + done)
                patches += len(batches[(warmup + done) % len(batches)][0])
                done += 1
                if max_seconds > 0 and time.perf_counter() - start >= max_seconds:
                    break
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak
    return patches / seconds, peak, done


def measure(experiment: str, args, device: torch.device) -> dict:
    cfg = compose_experiment(experiment, args.overrides, args.cache_dir)
    with open_dict(cfg):
        if args.data_dir is not None:
            cfg.data.data_dir = str(args.data_dir)
        if args.num_workers is not None:
            cfg.data.num_workers = args.num_workers
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    warmup = args.loader_warmup if args.loader_warmup is not None else max(2, 2 * datamodule.num_workers)
    progress(
        f"{experiment}: {datamodule.dims}, {len(datamodule.voltages)} voltage(s), {len(loader.dataset)} train patches "
        f"of {tuple(loader.dataset[0][0].shape)}, batch {loader.batch_size}, {datamodule.num_workers} workers; "
        f"loader: {warmup} + {args.batches} batches"
    )
    loader_rate, kept = loader_throughput(loader, warmup, args.batches)
    augment = datamodule.batch_augmentation
    del loader, datamodule  # stops persistent workers before the step is timed
    gc.collect()

    batches = [(x.to(device), y.to(device)) for x, y in kept]
    module = build_model(cfg.model)
    n_params = sum(p.numel() for p in module.parameters())
    progress(
        f"{experiment}: step: {args.step_warmup} + {args.steps} steps"
        + (f" (at most ~{args.max_seconds:g} s)" if args.max_seconds > 0 else "")
        + f", {n_params / 1e6:.2f} M parameters"
    )
    step_rate, peak, steps = step_throughput(
        module, batches, device, args.precision, args.step_warmup, args.steps, args.max_seconds, augment
    )
    del module, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "experiment": experiment,
        "device": device_name(device, args.precision),
        "batch": len(kept[0][0]),
        "loader": loader_rate,
        "step": step_rate,
        "peak": peak,
        "steps": steps,
    }


def device_name(device: torch.device, precision: str) -> str:
    name = "cuda" if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return f"{name}, bf16-mixed" if precision == "bf16-mixed" else name


def rate(value: float) -> str:
    """One decimal, or three significant digits below 10 (a 3D step on CPU: 0.2 patches/s)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def table(rows: list[dict], device: torch.device) -> str:
    memory = "step peak GPU memory" if device.type == "cuda" else "step peak RSS"
    head = [
        "experiment", "device", "batch size", "loader patches/s", "step patches/s", "loader / step", "verdict", memory,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r["loader"] / r["step"]
        verdict = "OK" if ratio >= TARGET_RATIO else "loader-bound"
        cells = [
            r["experiment"], r["device"], str(r["batch"]), rate(r["loader"]), rate(r["step"]),
            rate(ratio), verdict, f"{r['peak'] / 2**30:.2f} GiB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    capped = [f"{r['experiment']} {r['steps']}" for r in rows if r["steps"] < r["steps_asked"]]
    if capped:
        lines.append(f"\nSteps timed, where --max-seconds cut them short: {', '.join(capped)}.")
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiments", nargs="+", default=EXPERIMENTS, metavar="NAME",
        help=f"experiment configs (configs/experiment/<NAME>.yaml); default {' '.join(EXPERIMENTS)}",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 5 on CPU, 50 on CUDA)")
    parser.add_argument(
        "--step-warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 5 on CUDA)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None,
        help="stop the timed steps after this many seconds, at least one step timed "
        "(default 60 on CPU, where a 3D step takes about a minute; 0 = no limit, the default on CUDA)",
    )
    parser.add_argument("--batches", type=int, default=50, help="timed loader batches (default 50)")
    parser.add_argument(
        "--loader-warmup", type=int, default=None, help="untimed loader batches first (default max(2, 2 x workers))"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="a dataset folder (default: the experiment's embedded default)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("data"),
        help="where the embedded default datasets are generated once and cached (default ./data)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="32", help="32 or bf16-mixed (CUDA only)")
    parser.add_argument(
        "--overrides", nargs="*", default=[], metavar="KEY=VALUE",
        help="extra Hydra overrides for every experiment, e.g. data.batch_size=32",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    if args.precision == "32-true":
        args.precision = "32"
    if args.precision == "bf16-mixed" and not cuda:
        parser.error("--precision bf16-mixed is measured with CUDA autocast only; use --device cuda or --precision 32")
    if args.steps is None:
        args.steps = 50 if cuda else 5
    if args.step_warmup is None:
        args.step_warmup = 5 if cuda else 1
    if args.max_seconds is None:
        args.max_seconds = 0.0 if cuda else 60.0
    for name in ("steps", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.cache_dir = args.cache_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = args.device
    now = datetime.datetime.now().astimezone()
    print(f"## {now:%Y-%m-%d %H:%M %Z} — {machine(device)}\n")
    command = " ".join(["python benchmarks/train_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"### Training throughput: `{command}`\n")
    data = str(args.data_dir) if args.data_dir else f"embedded defaults (cache {args.cache_dir})"
    print(
        f"Loader: {args.batches} batches after a warm-up; step: {args.steps} timed steps after {args.step_warmup}"
        + (f" (at most ~{args.max_seconds:g} s)" if args.max_seconds > 0 else "")
        + f", precision {args.precision}; data: {data}"
        + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else "")
        + "\n",
        flush=True,
    )
    start = time.perf_counter()
    rows = [{**measure(experiment, args, device), "steps_asked": args.steps} for experiment in args.experiments]
    print(table(rows, device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(
        f"\nverdict OK = loader >= {TARGET_RATIO:g} x step; {sum(r['loader'] < TARGET_RATIO * r['step'] for r in rows)} of "
        f"{len(rows)} loader-bound. Process peak RSS {peak / 2**30:.2f} GiB; "
        f"{time.perf_counter() - start:.0f} s in all."
    )
    return rows


if __name__ == "__main__":
    main()
