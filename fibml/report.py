"""Results a user can read and look at: metric tables (CSV + Markdown) and section figures (PNG)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fibml.io import atomic_path  # noqa: E402
from fibml.protocols import read_region  # noqa: E402

__all__ = [
    "backscatter_report", "markdown_table", "prediction_report", "save_comparison", "save_importances",
    "save_sections", "save_spacing_scan", "save_tpcf", "write_table",
]


def write_table(rows: Sequence[Mapping], stem: str | Path) -> str:
    """Write rows (one dict per method) to <stem>.csv and <stem>.md; return the Markdown."""
    stem = Path(stem)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    markdown = markdown_table(rows, columns)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown + "\n")
    return markdown


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; floats with 4 significant digits."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_sections(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray | Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Path:
    """PNG of xy, xz and yz sections through the centre of (z, y, x) stacks.

    One prediction: columns image, prediction and (with ground truth) its errors. Several
    (a mapping method -> prediction): columns image, ground truth, then one per method - its
    errors with ground truth, else the prediction itself. Errors: false solid red, missed blue."""
    several = isinstance(prediction, Mapping)
    shape = next(iter(prediction.values())).shape if several else prediction.shape
    columns: list[tuple[str, Callable]] = [("image", lambda cut: (image[cut], "gray"))]
    if not several:
        columns.append(("prediction", lambda cut: (prediction[cut], "gray")))
        if labels is not None:
            columns.append(("errors", lambda cut: (_error_map(prediction[cut], labels[cut]), None)))
    else:
        if labels is not None:
            columns.append(("ground truth", lambda cut: (labels[cut], "gray")))
        for name, p in prediction.items():
            show = (lambda cut, p=p: (_error_map(p[cut], labels[cut]), None)) if labels is not None else (
                lambda cut, p=p: (p[cut], "gray"))
            columns.append((name, show))
    z, y, x = (n // 2 for n in shape)
    dz, dy, dx = voxel_size_nm
    cuts = {
        f"xy (z={z})": (np.s_[z, :, :], dy / dx),
        f"xz (y={y})": (np.s_[:, y, :], dz / dx),
        f"yz (x={x})": (np.s_[:, :, x], dz / dy),
    }
    heights = [shape[1] * dy, shape[0] * dz, shape[0] * dz]
    width = max(shape[2] * dx, shape[1] * dy)
    fig, axes = plt.subplots(
        3, len(columns), squeeze=False, gridspec_kw={"height_ratios": heights},
        figsize=(3.2 * len(columns), 3.2 * sum(heights) / width + 1.0),
    )
    for row, (cut_name, (cut, aspect)) in enumerate(cuts.items()):
        for col, (key, show) in enumerate(columns):
            data, cmap = show(cut)
            ax = axes[row, col]
            ax.imshow(data, cmap=cmap, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{key}, {cut_name}", fontsize=9 if not several else 7)
            ax.set_axis_off()
    if labels is not None:
        title = f"{title}   ({_ERROR_LEGEND}{_MULTI_PHASE_LEGEND if labels.max(initial=0) > 1 else ''})".strip()
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def save_comparison(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    z: int | None = None,
    title: str = "",
    columns: int = 4,
) -> Path:
    """PNG of one xy slice (default: the middle one) of (z, y, x) stacks: the image, the ground
    truth, and every method's prediction with its errors coloured (solid white, pore black,
    false solid red, missed solid blue), so methods can be compared pixel by pixel."""
    z = labels.shape[0] // 2 if z is None else z
    panels = [("image", image[z], "gray"), ("ground truth", labels[z], "gray")]
    panels += [(name, _error_map(p[z], labels[z]), None) for name, p in predictions.items()]
    rows = -(-len(panels) // columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.2 * cols, 3.4 * rows + 0.6))
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, data, cmap) in zip(axes.flat, panels):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        if name not in ("image", "ground truth"):
            wrong = float((predictions[name][z] != labels[z]).mean()) * 100
            name = f"{name}\n{wrong:.2f} % wrong in this slice"
        ax.set_title(name, fontsize=8)
    legend = _ERROR_LEGEND + (_MULTI_PHASE_LEGEND if labels.max(initial=0) > 1 else "")
    fig.suptitle(f"{title}   z = {z}   ({legend})".strip(), fontsize=9)
    return _save_figure(fig, path)


def save_tpcf(path: str | Path, curves: Mapping[str, Mapping], columns: int = 4) -> Path:
    """PNG of the two-point correlation S2(r) of the solid along x, y and z, one panel per method
    (``curves[name]`` as fibml.metrics.anisotropy.anisotropy_report returns them): an isotropic
    reconstruction has three coinciding curves; a z curve apart from x and y is anisotropy."""
    names = list(curves)
    cols = min(columns, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, sharey=True, figsize=(3.4 * cols, 2.8 * rows + 0.4))
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        ax.set_visible(True)
        r = np.asarray(curves[name]["distance_nm"])
        for axis, style in (("x", "-"), ("y", "--"), ("z", ":")):
            ax.plot(r, curves[name]["tpcf"][axis], style, label=axis)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("distance (nm)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("S2 of the solid", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return _save_figure(fig, path)


def save_spacing_scan(path: str | Path, scan: Mapping, title: str = "") -> Path:
    """PNG of a slice-spacing estimate (fibml.metrics.spacing.SpacingEstimate.as_dict()): the
    anisotropy error against the candidate spacing, the estimate and its uncertainty marked."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.plot(scan["scan"]["candidates_nm"], scan["scan"]["errors"], ".-", label="e_TPCF + e_LPF")
    estimate, sigma = float(scan["spacing_nm"]), float(scan["uncertainty_nm"])
    ax.axvline(estimate, color="C3", label=f"estimate {estimate:.3g} nm" + (f" ± {sigma:.2g}" if np.isfinite(sigma) else ""))
    if np.isfinite(sigma):
        ax.axvspan(estimate - sigma, estimate + sigma, color="C3", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("slice spacing (nm)")
    ax.set_ylabel("anisotropy error")
    ax.set_title(title or "slice spacing at which the structure is most isotropic", fontsize=9)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def save_importances(path: str | Path, rows: Sequence[Mapping], phases: Sequence[str] | None = None,
                     title: str = "") -> Path:
    """PNG of a classifier's feature importance per filter group and phase, as Fig. 3 of
    random-forest-multi-detector.txt: ``rows`` as RandomForestSegmenter.class_importances gives
    them ({"class", "group", "importance"}: the drop of that phase's recall when the group's
    features are permuted); one group of bars per filter group, one bar per phase."""
    classes = list(dict.fromkeys(int(r["class"]) for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    value = {(int(r["class"]), r["group"]): float(r["importance"]) for r in rows}
    names = [phases[c] if phases is not None and c < len(phases) else f"phase {c}" for c in classes]
    width = 0.8 / max(1, len(classes))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 3.2))
    for i, (c, name) in enumerate(zip(classes, names)):
        x = np.arange(len(groups)) + (i - (len(classes) - 1) / 2) * width
        ax.bar(x, [value.get((c, g), 0.0) for g in groups], width, label=name)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("recall drop when permuted", fontsize=8)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.legend(fontsize=7)
    ax.set_title(title or "feature importance per filter group", fontsize=9)
    return _save_figure(fig, path)


_ERROR_LEGEND = "errors: red = false solid, blue = missed solid"
_MULTI_PHASE_LEGEND = ", orange = wrong solid phase"


def _save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG atomically (complete or not at all), and free the figure."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _error_map(prediction: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB: correct pixels grey by phase (pore black, solid white, further phases grey), false
    solid red, missed solid blue, and (more than two phases) one solid phase taken for another orange."""
    top = max(int(labels.max(initial=0)), int(prediction.max(initial=0)), 1)
    rgb = np.repeat((labels.astype(np.float32) / top)[..., None], 3, axis=-1)
    rgb[(prediction > 0) & (labels == 0)] = (1.0, 0.1, 0.1)
    rgb[(prediction == 0) & (labels > 0)] = (0.2, 0.4, 1.0)
    rgb[(prediction > 0) & (labels > 0) & (prediction != labels)] = (1.0, 0.65, 0.0)
    return rgb


# --------------------------------------------------------------------------- backscatter ANN


def backscatter_report(model, datamodule, out_dir: str | Path, element: str | int = "Au",
                       voltage_kV: float = 2.0) -> dict[str, float]:
    """Score a trained backscatter ANN (fibml.tasks.backscatter.BackscatterTask) on the rows of its
    table (fibml.data.backscatter.BackscatterDataModule), as appendix C.1 of
    cyclegan-simulation-domain-adaptation.txt does.

    Writes to out_dir: backscatter_metrics.csv / .md (R^2 and RMSE of eta on the train, val and
    test rows and on all of them), backscatter_predictions.csv (every row with the ANN's eta and
    its split) and backscatter.png: (A) eta against epoxy thickness (nm) for one element and beam
    voltage, the simulated rows with their eta_std error bars and the ANN on a fine thickness grid,
    like Fig. C1(B); (B) predicted against simulated eta of all rows. A (element, voltage) missing
    from the table is replaced by its heaviest element at the nearest voltage.
    Returns {"r2", "rmse" (test rows), "r2_all", "rmse_all" (all rows)}.
    """
    import periodictable

    out = Path(out_dir)
    if getattr(datamodule, "table", None) is None:
        datamodule.setup("test")
    table, split = datamodule.table, datamodule.split
    Z, voltage, thickness, eta = (np.asarray(table[k], dtype=np.float64)
                                  for k in ("Z", "voltage_kV", "epoxy_thickness_nm", "eta"))
    predicted = np.asarray(model.predict_eta(Z, voltage, thickness), dtype=np.float64)
    split_of = np.full(len(eta), "", dtype=object)
    for name, rows in split.items():
        split_of[rows] = name

    scores = []
    for name, rows in [*split.items(), ("all", np.arange(len(eta)))]:
        if len(rows):
            scores.append({"rows": name, "n": len(rows), "R2": _r2(eta[rows], predicted[rows]),
                           "RMSE": float(np.sqrt(np.mean((predicted[rows] - eta[rows]) ** 2)))})
    write_table(scores, out / "backscatter_metrics")
    by_name = {row["rows"]: row for row in scores}
    held_out = by_name.get("test", by_name["all"])

    columns = {"Z": Z, "element": table.get("element", Z.astype(int)), "voltage_kV": voltage,
               "epoxy_thickness_nm": thickness, "eta": eta, "eta_ann": predicted, "split": split_of}
    with atomic_path(out / "backscatter_predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*(list(c) for c in columns.values())))

    z = int(element) if isinstance(element, (int, np.integer)) else periodictable.elements.symbol(str(element)).number
    if not np.any(Z == z):
        z = int(Z.max())
    shown = float(voltage[Z == z][np.argmin(np.abs(voltage[Z == z] - float(voltage_kV)))])
    symbol = periodictable.elements[z].symbol
    std = np.asarray(table["eta_std"], dtype=np.float64) if "eta_std" in table else np.zeros_like(eta)
    _save_backscatter_figure(out / "backscatter.png", model, Z, voltage, thickness, eta, predicted, std, split_of,
                             z, symbol, shown, held_out)
    return {"r2": held_out["R2"], "rmse": held_out["RMSE"], "r2_all": by_name["all"]["R2"],
            "rmse_all": by_name["all"]["RMSE"]}


def _r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as sklearn.metrics.r2_score); NaN for constant truth."""
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - float(np.sum((truth - prediction) ** 2)) / total if total > 0 else float("nan")


def _save_backscatter_figure(path, model, Z, voltage, thickness, eta, predicted, std, split_of, z: int, symbol: str,
                             shown_kV: float, held_out: Mapping) -> Path:
    """Panel A: eta against epoxy thickness for element z at shown_kV; panel B: predicted against simulated."""
    colours = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    here = (Z == z) & (voltage == shown_kV)
    for name, colour in colours.items():
        rows = here & (split_of == name)
        if rows.any():
            left.errorbar(thickness[rows], eta[rows], yerr=std[rows], fmt="o", ms=4, color=colour, capsize=2,
                          label=f"simulated ({name})")
    grid = np.linspace(0.0, float(thickness[here].max()), 200)
    left.plot(grid, model.predict_eta(z, shown_kV, grid), "k-", label="ANN")
    left.set_xlabel("epoxy thickness over the bulk = depth (nm)", fontsize=8)
    left.set_ylabel("backscatter coefficient eta", fontsize=8)
    left.set_title(f"(A) {symbol} at {shown_kV:g} kV", fontsize=9)
    left.legend(fontsize=7)
    for name, colour in colours.items():
        rows = split_of == name
        if rows.any():
            right.scatter(eta[rows], predicted[rows], s=9, color=colour, label=name, alpha=0.8)
    low, high = float(min(eta.min(), predicted.min())), float(max(eta.max(), predicted.max()))
    right.plot([low, high], [low, high], "k--", linewidth=0.8)
    right.set_xlabel("simulated eta", fontsize=8)
    right.set_ylabel("ANN eta", fontsize=8)
    right.set_title(f"(B) all rows; {held_out['rows']}: R² {held_out['R2']:.4f}, RMSE {held_out['RMSE']:.4f}",
                    fontsize=9)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    return _save_figure(fig, path)


def prediction_report(out_dir: str | Path, segmentation_path: str | Path, image, voxel_size_nm, info: Mapping,
                      crop: int = 256) -> dict:
    """predict.py's report of a segmented stack of any size, in out_dir: sections.png (xy, xz,
    yz through the centre: the first input channel as the net saw it, and the segmentation) and
    report.md (what was predicted, phase fractions, speed, and the anisotropy errors e_TPCF,
    e_LPF, e_D of the solid in a central crop of at most `crop` voxels per axis, since they need
    no ground truth). Reads only the sections and the crop, never the whole stack.
    image: a slice source of the input ((z, y, x) .shape and [z]); info: prediction.json's
    fields so far. Returns the fields to add to it."""
    from fibml.io import open_stack
    from fibml.metrics.table import anisotropy_columns

    out_dir = Path(out_dir)
    voxel = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm else (1.0, 1.0, 1.0)
    segmentation = open_stack(segmentation_path)
    try:
        save_sections(out_dir / "sections.png", _CentralSections(image), _CentralSections(segmentation),
                      voxel_size_nm=voxel, title=f"{Path(segmentation_path).name}, {segmentation.shape} voxels")
        window = [_centred(n, crop) for n in segmentation.shape]
        block = np.stack([read_region(segmentation, z, window[1], window[2]) for z in range(window[0].start, window[0].stop)])
    finally:
        segmentation.close()
    anisotropy = {k: v for k, v in anisotropy_columns(block, voxel_size_nm).items() if k != "curves"}
    fractions = list(info.get("class_fractions") or [])
    rows = [
        ("checkpoint", info.get("checkpoint")),
        ("input", ", ".join(map(str, info.get("input") or []))),
        ("voltages", ", ".join(f"{v:g} kV" if isinstance(v, float) else str(v) for v in info.get("voltages_kV", []))),
        ("shape (z, y, x)", " x ".join(map(str, info.get("shape", [])))),
        ("voxel size (nm)", " x ".join(f"{v:g}" for v in voxel) if voxel_size_nm else "not stored"),
        ("registration", "none" if not info.get("registration") else
         f"max shift {info['registration']['max_shift_px']:.2f} px (shifts.csv)"),
        *((f"fraction of class {c}" + (" (solid)" if c == 1 else ""), f"{f:.4f}") for c, f in enumerate(fractions)),
        (f"anisotropy errors of the solid, central crop {' x '.join(map(str, block.shape))}",
         ", ".join(f"{k} {v:.4f}" for k, v in anisotropy.items())),
        ("speed", f"{info.get('slices_per_second', float('nan')):.3g} slices/s "
                  + (f"({info.get('chunks_computed')} of {info.get('chunks')} chunks computed in this run)"
                     if info.get("chunks_computed") else "(an earlier run: this one found the result finished)")),
    ]
    text = "# Prediction report\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    text += "\n![sections](sections.png)\n"
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(text)
    return {"anisotropy": anisotropy, "anisotropy_crop": list(block.shape), "report": str(out_dir / "report.md"),
            "sections": str(out_dir / "sections.png")}


class _CentralSections:
    """The xy, xz and yz sections through the centre of a (z, y, x) slice source, read once,
    indexed like the array (save_sections asks for [z, :, :], [:, y, :] and [:, :, x])."""

    def __init__(self, source):
        self.shape = tuple(int(n) for n in source.shape)
        z, y, x = (n // 2 for n in self.shape)
        self.xy = np.asarray(source[z])
        full = slice(None)
        self.xz = np.stack([read_region(source, i, slice(y, y + 1), full)[0] for i in range(self.shape[0])])
        self.yz = np.stack([read_region(source, i, full, slice(x, x + 1))[:, 0] for i in range(self.shape[0])])

    def __getitem__(self, cut) -> np.ndarray:
        if isinstance(cut[0], int):
            return self.xy
        return self.xz if isinstance(cut[1], int) else self.yz


def _centred(n: int, size: int) -> slice:
    start = max(0, (n - size) // 2)
    return slice(start, min(n, start + size))
