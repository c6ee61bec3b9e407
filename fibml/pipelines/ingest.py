"""`python -m fibml.ingest`: an acquisition as the microscope wrote it -> a dataset folder.

Steps: open the acquisition (fibml.io.open_acquisition: files in slice order, channels,
metadata, data bar, tilt, pixel size) -> the slice thickness (the config's, the files', or
estimated: the spacing at which a quick segmentation is most isotropic,
fibml.metrics.spacing) -> one stack per channel written slice by slice into a folder beside
the output, which is renamed into place when complete -> a summary table of every value and
where it came from."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fibml.channels import channel_key, channel_label
from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.data.transforms import normalize_channels
from fibml.io import (
    MANIFEST,
    THICKNESS,
    Acquisition,
    atomic_folder,
    create_stack_file,
    dataset_manifest,
    open_acquisition,
    read_stack,
    stack_name,
    write_json,
    write_thickness_csv,
)
from fibml.metrics.spacing import SpacingEstimate, estimate_slice_spacing
from fibml.pipelines.common import data_settings, predict_probabilities
from fibml.reconstruct.pipeline import thicknesses_from
from fibml.report import markdown_table, save_spacing_scan

__all__ = ["SPACING_FIGURE", "acquisition_settings", "estimate_thickness", "ingest"]


SPACING_FIGURE = "slice_thickness_estimate.png"  # written into the dataset folder with slice_thickness_nm=auto


def acquisition_settings(cfg: Mapping) -> dict:
    """open_acquisition's keyword arguments from a config (ingest.yaml's keys; predict.py's
    acquisition node has the same ones)."""
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    thickness = cfg.get("slice_thickness_nm")
    return {
        "channels": plain(cfg.get("channels")),
        "allow_gaps": bool(cfg.get("allow_gaps", False)),
        "crop": plain(cfg.get("crop")),
        "tilt_deg": cfg.get("tilt_deg"),
        "pixel_size_nm": plain(cfg.get("pixel_size_nm")),
        "slice_thickness_nm": None if thickness in (None, "auto", "ruler") else float(thickness),
    }


def ingest(cfg: DictConfig) -> Path:
    """Write the dataset folder cfg.out from the acquisition cfg.input (see the module docstring)."""
    out = Path(cfg.out)
    if out.exists() and not cfg.get("overwrite", False):
        raise FileExistsError(f"{out} exists: choose another output folder or set overwrite=true")
    inputs = OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    acquisition = open_acquisition(inputs, **acquisition_settings(cfg))
    estimate, thicknesses = None, None
    _, y_nm, x_nm = acquisition.voxel_size_nm
    how = cfg.get("slice_thickness_nm")
    if how == "auto":
        estimate = estimate_thickness(acquisition, cfg.get("thickness_estimate") or {})
        z_nm = estimate.spacing_nm
        acquisition.provenance["slice_thickness"] = (
            f"estimated: the spacing at which the structure is most isotropic, {estimate.spacing_nm:.3g} ± "
            f"{estimate.uncertainty_nm:.2g} nm (assumes a statistically isotropic material; {SPACING_FIGURE})"
        )
    elif how == "ruler":
        acquisition, thicknesses = _ruler_thicknesses(acquisition, cfg.get("ruler") or {})
        z_nm = float(np.mean(thicknesses))
    else:
        z_nm = acquisition.voxel_size_nm[0]
    if z_nm is None:
        raise ValueError(
            f"{inputs}: the slice thickness is in none of the files: set slice_thickness_nm=<nm> (the FIB step), "
            "slice_thickness_nm=auto to estimate it from the structure, or slice_thickness_nm=ruler (marks above "
            "the sample)"
        )
    voxel = (float(z_nm), y_nm, x_nm)
    manifest = acquisition.manifest()
    if estimate is not None:
        manifest["acquisition"]["slice_thickness_estimate"] = estimate.as_dict()
    folder = write_acquisition(acquisition, out, voxel, manifest, figure=estimate, thicknesses=thicknesses)
    rows = summary_rows(acquisition, voxel)
    print(f"\n{markdown_table(rows)}\n")
    for line in acquisition.skipped:
        print(f"note: {line}")
    print(f"wrote {folder} ({', '.join(stack_name(c) for c in acquisition.channels)}, {MANIFEST})")
    return folder


def estimate_thickness(acquisition: Acquisition, settings: Mapping) -> SpacingEstimate:
    """The slice spacing at which a quick segmentation of a central crop is most isotropic:
    Otsu on the first channel (settings.segmentation=otsu) or a given segmentation TIFF."""
    crop = int(settings.get("crop", 256))
    source = next(iter(acquisition.channels.values()))
    n, ny, nx = source.shape
    ys, xs = _centred(ny, crop), _centred(nx, crop)
    segmentation = settings.get("segmentation", "otsu")
    if segmentation != "otsu" and (Path(segmentation).is_dir() or Path(segmentation).suffix == ".ckpt"):
        labels = _model_segmentation(acquisition, segmentation, ys, xs, settings.get("device", "auto"))
    elif segmentation == "otsu":
        from skimage.filters import threshold_otsu  # scikit-image's Otsu: the classical quick segmentation

        stack = np.stack([source.region(z, ys, xs) for z in _progress(range(n), "read for the estimate", "slice")])
        labels = (stack > threshold_otsu(stack)).astype(np.uint8)
    else:
        labels, _ = read_stack(segmentation)
        if labels.shape != source.shape:
            raise ValueError(f"{segmentation}: a {labels.shape} segmentation, the acquisition is {source.shape}")
        labels = labels[:, ys, xs]
    _, y_nm, x_nm = acquisition.voxel_size_nm
    bounds = tuple(float(b) for b in settings.get("bounds", (0.25, 4.0)))
    return estimate_slice_spacing(labels, (y_nm, x_nm), phase=int(settings.get("phase", 1)), bounds=bounds)


def write_acquisition(acquisition: Acquisition, out: Path, voxel, manifest: Mapping,
                      figure: SpacingEstimate | None = None, thicknesses=None) -> Path:
    """One stack per channel, written slice by slice (the acquisition never sits in memory)
    into a folder beside `out`, renamed into place when complete; thickness.csv when the slices'
    own thicknesses are known."""
    with atomic_folder(out) as tmp:
        files = []
        total = sum(len(s) for s in acquisition.channels.values())
        with _progress(None, f"ingest {out.name}", "slice", total=total) as bar:
            for channel, series in acquisition.channels.items():
                name = stack_name(channel)
                with create_stack_file(tmp / name, series.shape, series.dtype, voxel) as stack:
                    for z in range(len(series)):
                        stack[z] = series[z]
                        bar.update(1)
                    stack.flush()
                files.append(name)
        if thicknesses is not None:
            write_thickness_csv(tmp / THICKNESS, thicknesses)
            files.append(THICKNESS)
        if figure is not None:
            save_spacing_scan(tmp / SPACING_FIGURE, figure.as_dict(), title=f"{out.name}: slice thickness estimate")
            files.append(SPACING_FIGURE)
        write_json(tmp / MANIFEST, dataset_manifest(list(acquisition.channels), acquisition.shape, voxel, files,
                                                    manifest))
    return out


def _ruler_thicknesses(acquisition: Acquisition, settings: Mapping) -> tuple[Acquisition, np.ndarray]:
    """Per-slice thicknesses from the ruler marks in the top band_rows of every slice (of the
    first channel), and the acquisition without that band."""
    ruler = dict(settings)
    band_rows = int(ruler.pop("band_rows", 24))
    series = next(iter(acquisition.channels.values()))
    band = np.stack([series.region(z, slice(0, band_rows), slice(None)) for z in range(len(series))]).astype(np.float32)
    thicknesses, info = thicknesses_from("ruler", len(series), band=band, pixel_nm=acquisition.voxel_size_nm[2],
                                         ruler=ruler)
    dropped = info.get("ruler_dropped_slices") or []
    acquisition = acquisition.without_top_rows(band_rows)
    acquisition.provenance["slice_thickness"] = (
        f"ruler marks in the top {band_rows} rows (cut off the stacks): mean {np.mean(thicknesses):.3g} nm, "
        f"{np.min(thicknesses):.3g}-{np.max(thicknesses):.3g} nm per slice in {THICKNESS}"
        + (f"; slices {dropped} were outliers, replaced by the mean of the others" if dropped else "")
    )
    return acquisition, thicknesses


def _model_segmentation(acquisition: Acquisition, checkpoint, ys: slice, xs: slice, device: str) -> np.ndarray:
    """A trained model's segmentation of the central crop (ys, xs) of every slice, for the
    thickness estimate: fairer along z than Otsu where solid shines through pores."""
    model, run_cfg = load_model(resolve_checkpoint(checkpoint))
    voltages = [channel_key(v) for v in run_cfg.data.voltages]
    found = list(acquisition.channels)
    if len(voltages) == 1 and len(found) == 1:
        sources = [acquisition.channels[found[0]]]
    else:
        missing = [channel_label(v) for v in voltages if v not in acquisition.channels]
        if missing:
            raise ValueError(f"{checkpoint} needs {', '.join(missing)}, the acquisition holds "
                             f"{', '.join(map(channel_label, found))}")
        sources = [acquisition.channels[v] for v in voltages]
    crops = [np.stack([s.region(z, ys, xs) for z in range(len(s))]) for s in sources]
    images = normalize_channels(crops, **dict(run_cfg.data.get("normalize") or {}))
    probabilities = predict_probabilities(model, images, data_settings(run_cfg.data), {"device": device})
    return probabilities.argmax(0).astype(np.uint8)


def summary_rows(acquisition: Acquisition, voxel) -> list[dict]:
    """The summary table: one row per channel (slices, size, pixel, voltage, detector), then
    where the crop, tilt, pixel size and slice thickness came from."""
    rows = []
    for channel, series in acquisition.channels.items():
        metadata = acquisition.metadata[channel]
        rows.append({
            "channel": channel_label(channel), "file": stack_name(channel), "slices": len(series),
            "y x": f"{series.shape[1]} x {series.shape[2]}", "dtype": str(series.dtype),
            "voxel z y x (nm)": " x ".join(f"{v:.4g}" for v in voxel),
            "kV": "" if metadata.voltage_kv is None else f"{metadata.voltage_kv:g}",
            "detector": metadata.detector or "", "vendor": metadata.vendor or "",
        })
    notes = [{"channel": key.replace("_", " "), "file": value} for key, value in acquisition.provenance.items()]
    return rows + notes


def _centred(n: int, size: int) -> slice:
    start = max(0, (n - size) // 2)
    return slice(start, min(n, start + size))


class _Lines:
    """Progress as plain lines (about every 10 %), for output that is not a terminal."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.done, self.shown = total, desc, unit, 0, 0
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done * 10 // max(1, self.total) > self.shown or self.done == self.total:
            self.shown = self.done * 10 // max(1, self.total)
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s, {time.perf_counter() - self.started:.0f} s",
                  flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _progress(iterable, desc: str, unit: str, total: int | None = None):
    """A tqdm bar on a terminal, plain lines otherwise; over `iterable`, or to update by hand."""
    total = len(iterable) if total is None else total
    if sys.stderr.isatty():
        bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return bar
    lines = _Lines(total, desc, unit)
    if iterable is None:
        return lines

    def generate():
        for item in iterable:
            yield item
            lines.update(1)

    return generate()
