"""Missed solid against false solid: MP and MGP of two-phase models over the threshold on P(solid).

    python benchmarks/solid_threshold_tradeoff.py --data-dir <labelled dataset> --runs <run or .ckpt> ...
        [--thresholds 0.05 0.95 0.025] [--device auto] [--out tradeoff.png]

MGP counts only missed solid (the paper: "one should be careful while using this metric alone, as
FP is not considered"), so a model that segments slightly more solid scores a lower MGP at a
higher MP. Comparing two models at their own argmax mixes their quality with where their
training put the decision. This script predicts P(solid) of every voxel of the dataset once per
model (the sliding window of evaluate.py, every slice), then thresholds it at each value and
prints MP, MGP, false solid (% of all voxels) and the solid fraction as Markdown. The curve of
MP over MGP shows which model misplaces fewer voxels *at the same missed-solid rate*; the 0.5
point is what evaluate.py reports. --out writes the curves as a PNG.

This is an analysis, not a way to choose a threshold: a threshold picked on the scored volume
would be fitted to the test data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fibml.channels import channel_key
from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.data.transforms import normalize_channels
from fibml.inference import resolve_device
from fibml.io import read_dataset
from fibml.metrics.confusion import confusion_matrix, misplaced_pixels, misplaced_solid_pixels
from fibml.pipelines.common import data_settings, predict_probabilities


def solid_probability(run: Path, dataset, device, sw_batch_size: int) -> tuple[np.ndarray, str]:
    model, cfg = load_model(resolve_checkpoint(run))
    if int(cfg.model.n_classes) != 2:
        raise ValueError(f"{run}: a {cfg.model.n_classes}-class model; the trade-off is for solid / pore models")
    voltages = [channel_key(v) for v in cfg.data.voltages]
    missing = [v for v in voltages if v not in dataset.images]
    if missing:
        raise ValueError(f"{run} needs the channels {missing}, which the dataset does not have")
    images = normalize_channels([dataset.images[v] for v in voltages], **dict(cfg.data.get("normalize") or {}))
    # evaluate.py's own prediction (sliding window, the model's input layout), not a copy of it
    inference = {"device": device, "sw_batch_size": sw_batch_size, "reuse_memory": True}
    probs = predict_probabilities(model, images, data_settings(cfg.data), inference)
    return probs[int(cfg.model.solid_class)], f"{Path(run).name} ({cfg.data.dims}, {'+'.join(map(str, cfg.data.voltages))} kV)"


def sweep(p_solid: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> list[dict]:
    rows = []
    for t in thresholds:
        c = confusion_matrix((p_solid > t).astype(np.uint8), labels, 2)
        rows.append({
            "threshold": float(t), "mp": float(misplaced_pixels(c)), "mgp": float(misplaced_solid_pixels(c)),
            "false_solid": 100.0 * float(c[0, 1]) / float(c.sum()), "solid_fraction": float(c[:, 1].sum() / c.sum()),
        })
    return rows


def table(name: str, rows: list[dict]) -> str:
    lines = [f"**{name}**", "", "| threshold | MP % | MGP % | false solid % | solid fraction |", "|---|---|---|---|---|"]
    best = min(range(len(rows)), key=lambda i: rows[i]["mp"])
    for i, r in enumerate(rows):
        mark = " (lowest MP)" if i == best else ""
        lines.append(f"| {r['threshold']:.3f}{mark} | {r['mp']:.4f} | {r['mgp']:.4f} | {r['false_solid']:.4f} | "
                     f"{r['solid_fraction']:.4f} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], points: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, rows in curves.items():
        line, = ax.plot([r["mgp"] for r in rows], [r["mp"] for r in rows], label=name)
        ax.plot(points[name]["mgp"], points[name]["mp"], "o", color=line.get_color())
    ax.set_xlabel("MGP % (missed solid)")
    ax.set_ylabel("MP % (misplaced voxels)")
    ax.set_title("threshold on P(solid); dots: 0.5 (what evaluate.py reports)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a labelled dataset folder (labels.tif)")
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="training run folders or .ckpt files")
    parser.add_argument("--thresholds", nargs=3, type=float, default=[0.05, 0.95, 0.025], metavar=("FROM", "TO", "STEP"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sw-batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="PNG of MP over MGP")
    args = parser.parse_args(argv)

    dataset = read_dataset(args.data_dir, require_labels=True)
    labels = np.asarray(dataset.labels)
    if labels.max() > 1:
        parser.error(f"{args.data_dir}: labels up to {labels.max()}; the trade-off is for solid / pore data")
    lo, hi, step = args.thresholds
    thresholds = np.round(np.arange(lo, hi + step / 2, step), 6)
    thresholds = np.union1d(thresholds, [0.5])
    device = resolve_device(args.device)
    curves, points = {}, {}
    for run in args.runs:
        p_solid, name = solid_probability(run, dataset, device, args.sw_batch_size)
        curves[name] = sweep(p_solid, labels, thresholds)
        points[name] = next(r for r in curves[name] if r["threshold"] == 0.5)
        print(table(name, curves[name]), "\n", flush=True)
    if args.out is not None:
        plot(curves, points, args.out)
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
