"""Scores of several models over several held-out volumes: mean, spread and paired differences.

    python benchmarks/volume_spread.py --data-dirs <seed 1> <seed 3> ... --runs <1 kV> <2 kV> <4 kV> <late> \
        [--reference 0] [--measures "MP %" "MGP %" MDS] [--work <folder>] [--out spread.md] [--figure spread.png] \
        [--evaluate-args inference.sw_batch_size=64 ...]

One held-out volume gives one number per model. Whether a gap of a few hundredths of a percent
between two models (the paper's Table 3: late fusion MGP 0.944 against 0.963 for 1 kV) belongs
to the models or to that volume needs several volumes. For each data dir this runs
``python evaluate.py data_dir=<dir> split=all 'ckpt_path=[<runs>]' save_predictions=false``
(the real command, in ``<work>/<dir name>``), reads its comparison.csv and prints as Markdown:

- per model and measure, the mean and sample standard deviation over the volumes;
- per model against ``--reference`` (an index into ``--runs``), the mean paired difference,
  its standard error, on how many volumes the model is better and the two-sided p of a paired
  t-test. Better means closer to the ground truth's value in the same table: lower MP / MGP /
  awe, higher MDS / IoU, a solid fraction or an anisotropy error nearer the truth's.

``--figure`` draws the paired differences, one panel per measure and one point per volume
(``--plot`` picks the runs to draw, as indices into ``--runs``; default all).

A volume whose folder already holds a comparison of the same runs is read, not scored again,
so a killed run resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def score_volume(data_dir: Path, runs: list[Path], folder: Path, extra: list[str]) -> dict[str, dict[str, float]]:
    """evaluate.py on one volume (or its earlier result): {method: {measure: value}}."""
    stamp = folder / "volume_spread.json"
    request = {"data_dir": str(data_dir.resolve()), "runs": [str(r.resolve()) for r in runs], "evaluate_args": extra}
    table = folder / "comparison.csv"
    if not (table.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == request):
        if not (data_dir / "labels.tif").is_file():
            raise FileNotFoundError(f"{data_dir}: no labels.tif; the spread needs volumes with ground truth")
        command = [
            sys.executable, str(ROOT / "evaluate.py"), f"data_dir={data_dir.resolve()}", "split=all",
            f"ckpt_path=[{','.join(request['runs'])}]", "save_predictions=false", f"hydra.run.dir={folder.resolve()}",
            *extra,
        ]
        print(f"scoring {data_dir} ...", flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        stamp.write_text(json.dumps(request, indent=1))
    return read_comparison(table)


def read_comparison(path: Path) -> dict[str, dict[str, float]]:
    """comparison.csv (measures as rows, methods as columns) as {method: {measure: value}}."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    methods = rows[0][1:]
    scores: dict[str, dict[str, float]] = {m: {} for m in methods}
    for row in rows[1:]:
        for method, value in zip(methods, row[1:]):
            try:
                scores[method][row[0]] = float(value)
            except ValueError:
                pass  # empty cells (a measure a method has not)
    return scores


def series(volumes: list[dict[str, dict[str, float]]], method: str, measure: str) -> np.ndarray:
    """One method's value of one measure on every volume."""
    return np.array([v[method][measure] for v in volumes])


def better(volumes: list[dict[str, dict[str, float]]], model: str, reference: str, measure: str) -> np.ndarray:
    """Per volume: whether the model is closer than the reference to the ground truth's value."""
    truth = series(volumes, "ground truth", measure)
    return np.abs(series(volumes, model, measure) - truth) < np.abs(series(volumes, reference, measure) - truth)


def spread_tables(volumes: list[dict[str, dict[str, float]]], methods: list[str], reference: str,
                  measures: list[str]) -> str:
    """The two Markdown tables: mean ± sd per model, and paired differences against the reference."""
    n = len(volumes)
    values = {(m, q): series(volumes, m, q) for m in methods for q in measures}
    lines = [f"Over {n} volumes: mean ± sample standard deviation.", "",
             "| model | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    for m in methods:
        cells = [f"{values[m, q].mean():.4g} ± {values[m, q].std(ddof=1) if n > 1 else math.nan:.2g}" for q in measures]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired against {reference}: mean difference ± standard error, volumes where the model is "
              "better, two-sided p of a paired t-test.", "",
              "| model | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    for m in methods:
        if m == reference:
            continue
        cells = []
        for q in measures:
            d = values[m, q] - values[reference, q]
            se = d.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
            p = stats.ttest_rel(values[m, q], values[reference, q]).pvalue if n > 1 and se > 0 else math.nan
            cells.append(f"{d.mean():+.3g} ± {se:.2g}, {int(better(volumes, m, reference, q).sum())}/{n}, p {p:.2g}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_differences(volumes: list[dict[str, dict[str, float]]], methods: list[str], reference: str,
                     measures: list[str], out: Path) -> None:
    """One panel per measure: each model's difference to the reference on every volume (dots) and its
    mean (bar), for the models in ``methods`` other than the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [m for m in methods if m != reference]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 3.2 + 0.12 * max(map(len, others))),
                             squeeze=False)
    for ax, q in zip(axes[0], measures):
        for i, m in enumerate(others):
            d = series(volumes, m, q) - series(volumes, reference, q)
            colours = np.where(better(volumes, m, reference, q), "tab:green", "tab:red")
            ax.scatter(np.full(d.size, i), d, s=14, color=colours, zorder=3)
            ax.hlines(d.mean(), i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xticks(range(len(others)), others, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{q} minus reference", fontsize=9)
    fig.suptitle(f"paired against {reference} over {len(volumes)} volumes (green: better)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dirs", type=Path, nargs="+", required=True,
                        help="labelled volumes, none used in training")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders or .ckpt files")
    parser.add_argument("--reference", type=int, default=0, help="index into --runs of the model to compare against")
    parser.add_argument("--measures", nargs="+", default=["MP %", "MGP %", "MDS", "solid fraction"])
    parser.add_argument("--work", type=Path, default=Path("volume_spread"), help="one evaluate.py folder per volume")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--figure", type=Path, default=None, help="a PNG of the paired differences")
    parser.add_argument("--plot", type=int, nargs="+", default=None, help="indices into --runs to draw (default all)")
    parser.add_argument("--evaluate-args", nargs="*", default=[], help="more evaluate.py overrides")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("--runs needs at least two models: the reference and one to compare with it")
    if not 0 <= args.reference < len(args.runs):
        parser.error(f"--reference {args.reference}: there are {len(args.runs)} runs")
    if args.plot is not None and not all(0 <= i < len(args.runs) for i in args.plot):
        parser.error(f"--plot {args.plot}: there are {len(args.runs)} runs")
    names = [d.name for d in args.data_dirs]
    if len(set(names)) != len(names):
        parser.error(f"--data-dirs need distinct folder names (they name the work folders): {names}")

    volumes = [score_volume(d, args.runs, args.work / d.name, args.evaluate_args) for d in args.data_dirs]
    methods = [m for m in volumes[0] if m != "ground truth"]
    if len(methods) != len(args.runs) or any(list(v) != list(volumes[0]) for v in volumes):
        raise RuntimeError(f"the volumes' comparisons do not have the same {len(args.runs)} methods: "
                           f"{[list(v) for v in volumes]}")
    missing = [q for q in args.measures if any(q not in v[m] for v in volumes for m in ["ground truth", *methods])]
    if missing:
        parser.error(f"--measures {missing} are not in comparison.csv with a ground-truth value; "
                     f"it has {sorted(volumes[0]['ground truth'])}")
    text = spread_tables(volumes, methods, methods[args.reference], args.measures)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Volumes: {', '.join(str(d) for d in args.data_dirs)}\n\n{text}")
        print(f"wrote {args.out}")
    if args.figure:
        drawn = [methods[i] for i in (range(len(methods)) if args.plot is None else args.plot)]
        plot_differences(volumes, drawn, methods[args.reference], args.measures, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
