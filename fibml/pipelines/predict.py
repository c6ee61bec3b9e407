"""`python predict.py`: segment whole stacks of any size, chunked and resumable, with optional
registration and reconstruction of slices of varying thickness; prediction.json and a report."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fibml.channels import channel_key, channel_label
from fibml.checkpoints import load_model, resolve_checkpoint, training_voxel_size
from fibml.data.registration import ShiftedStack, read_shifts_csv, registration_shifts, write_shifts_csv
from fibml.data.transforms import stack_percentiles
from fibml.inference import (
    SEGMENTATION as SEGMENTATION_FILE,
)
from fibml.inference import (
    InferenceSettings,
    NormalizedStack,
    PredictorFactory,
    ResampledStack,
    predict_to_disk,
    resolve_device,
)
from fibml.io import (
    SliceSeries,
    atomic_path,
    available_channels,
    create_stack_file,
    is_acquisition_folder,
    open_acquisition,
    open_dataset_stacks,
    open_stack,
    read_stack,
    shape_mismatch,
    stack_name,
    write_json,
    write_ome_zarr,
    write_stack,
)
from fibml.pipelines.common import data_settings
from fibml.pipelines.ingest import acquisition_settings
from fibml.pipelines.translate import translate
from fibml.protocols import INPAINTING, SEGMENTATION, task_of
from fibml.reconstruct.inpainting import inpaint_volume
from fibml.reconstruct.pipeline import reconstruct_stack, thicknesses_from
from fibml.report import prediction_report

__all__ = ["RESOLUTION_TOLERANCE", "CheckpointPredictor", "ReconstructSettings", "load_inpainter", "predict", "resolution_warnings"]


def predict(cfg: DictConfig) -> Path:
    """Segment whole stacks of any size: python predict.py ckpt_path=<ckpt or run> input=<dataset
    folder, .tif, or a list of .tif per voltage> output=<folder> (task=translate: translate a
    dataset with a CycleGAN instead, see translate).

    Steps: check everything (inputs against the checkpoint, output folder) -> registration
    (registration.*, optional: shifts.csv) -> chunked sliding-window segmentation straight to
    disk (fibml.inference.predict_to_disk: bounded memory, resumable, several GPUs) ->
    segmentation.tif (+ probability_class<c>.tif) -> optional reconstruction of slices of
    varying thickness -> prediction.json, report.md and sections.png. The inputs are read lazily
    (fibml.io.LazyStack), registered and normalised slice by slice, so a stack larger than
    memory is never held whole; only reconstruct.enabled=true loads the segmentation."""
    if cfg.get("task", "segment") == "translate":
        return translate(cfg)
    if cfg.get("task", "segment") != "segment":
        raise ValueError(f"task must be 'segment' or 'translate', got {cfg.task!r}")

    checkpoint = resolve_checkpoint(cfg.ckpt_path)
    model, run_cfg = load_model(checkpoint)
    if task_of(model) != SEGMENTATION:
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}: predict.py segments with a segmentation "
                         "model (task=translate runs a CycleGAN)")
    settings = data_settings(run_cfg.data)
    voltages = [channel_key(v) for v in run_cfg.data.voltages]
    stacks, voxel, source = _open_inputs(cfg.input, voltages, checkpoint, cfg.get("acquisition") or {})
    voxel = tuple(float(v) for v in cfg.voxel_size_nm) if cfg.get("voxel_size_nm") else voxel
    inference = InferenceSettings.from_config(cfg.inference)
    trained = training_voxel_size(run_cfg)
    resample = _resample_size(inference.resample, voxel, trained, next(iter(stacks.values())).shape, checkpoint)
    warnings = [] if resample else resolution_warnings(voxel, trained, checkpoint, source)
    for line in warnings:
        print(f"warning: {line}")
    reconstruct = ReconstructSettings.from_config(cfg.get("reconstruct"))
    output_format = str(cfg.get("output_format", "tiff"))
    if output_format not in ("tiff", "zarr"):
        raise ValueError(f"output_format must be tiff or zarr, got {output_format!r}")
    out = Path(cfg.output)
    started = time.perf_counter()

    # registration.*: enabled and shifts_csv, the rest are registration_shifts' own keyword arguments
    registration = _settings(cfg.get("registration"))
    shifts_csv, enabled = registration.pop("shifts_csv", None), registration.pop("enabled", False)
    table = None
    if shifts_csv:
        table = read_shifts_csv(shifts_csv)
    elif enabled:
        table = registration_shifts(stacks, **registration)
    sources = {c: stack if table is None else ShiftedStack(stack, _channel_shifts(table, c, stack))
               for c, stack in stacks.items()}
    normalize = dict(run_cfg.data.get("normalize") or {})
    channels = [NormalizedStack(sources[c], *stack_percentiles(stacks[c], **normalize)) for c in voltages]
    z = _z_range(cfg.get("z_range"), len(stacks[voltages[0]]))
    if z != range(len(stacks[voltages[0]])):
        channels = [_SliceRange(c, z) for c in channels]
    shown = channels[0]  # the report's image: on the input's grid
    if resample:  # the net sees the input at its training voxel size
        channels = [ResampledStack(c, resample) for c in channels]

    devices = inference.device_list()
    device = resolve_device(devices[0] if devices else inference.device)
    devices = devices if devices and len(devices) > 1 else None
    fingerprint = {
        "checkpoint": _file_identity(checkpoint),
        "input": [_source_identity(stack) for stack in stacks.values()],
        "voxel_size_nm": list(voxel) if voxel else None,
        "normalize": normalize,
        "registration": None if table is None else {str(c): np.round(t, 4).tolist() for c, t in table.items()},
        "z_range": [z.start, z.stop],
        "precision": inference.precision,
        "resample": list(resample) if resample else None,
    }
    predictor = CheckpointPredictor(checkpoint, inference.precision)
    summary = predict_to_disk(
        predictor if devices else predictor.bind(model, device), channels, out / RESAMPLED if resample else out,
        **settings, overlap=inference.overlap, chunk_slices=inference.chunk_slices, block=inference.block,
        slices_per_batch=inference.slices_per_batch, sw_batch_size=inference.sw_batch_size, device=device,
        devices=devices, n_classes=int(run_cfg.model.n_classes),
        save_probabilities=bool(cfg.get("save_probabilities", False)),
        voxel_size_nm=(voxel[0], *trained[1:]) if resample else voxel, fingerprint=fingerprint,
        overwrite=bool(cfg.get("overwrite", False)), reuse_memory=inference.reuse_memory,
    )
    if resample:
        summary = _back_to_input_grid(summary, out, shown.shape, voxel)
    if table is not None:
        write_shifts_csv(out / "shifts.csv", table)
    if output_format == "zarr":
        with open_stack(out / "segmentation.tif") as segmentation:
            write_ome_zarr(out / OME_ZARR, segmentation, voxel, overwrite=True)

    reconstruction = None
    if reconstruct.enabled:
        segmentation, _ = read_stack(out / "segmentation.tif")
        raw = np.stack([sources[voltages[0]][i] for i in z])
        reconstruction = _reconstruct(reconstruct, segmentation, raw, voxel, source, inference)
        write_stack(out / "reconstruction.tif", reconstruction["volume"], reconstruction["voxel_size_nm"])
        del segmentation, raw

    info = {
        "checkpoint": str(checkpoint),
        "input": [str(stack.path) for stack in stacks.values()],
        "voltages_kV": voltages,
        "voxel_size_nm": list(voxel) if voxel else None,
        "shape": list(summary["shape"]),
        "z_range": [z.start, z.stop],
        "class_fractions": summary["class_fractions"],
        "chunks": summary["n_chunks"],
        "chunks_computed": summary["chunks_computed"],
        "slices_per_second": _earlier_speed(out, summary),
        "registration": None if table is None else {
            "shifts_csv": str(out / "shifts.csv"),
            "max_shift_px": float(max(np.abs(t).max() for t in table.values())),
        },
        "seconds": round(time.perf_counter() - started, 3),
        "warnings": warnings,
        "ome_zarr": str(out / OME_ZARR) if output_format == "zarr" else None,
        "resampled": None if not resample else {
            "from_nm": list(voxel[1:]), "to_nm": list(trained[1:]), "model_grid_yx": list(resample),
        },
    } | ({} if reconstruction is None else {"reconstruction": reconstruction["info"]
                                             | {"ruler_band_rows": reconstruction["band_rows"]}})
    info |= prediction_report(out, out / "segmentation.tif", shown, voxel, info,
                              crop=int(cfg.get("report_crop", 256)))
    write_json(out / "prediction.json", info)
    fractions = summary["class_fractions"]
    print(f"wrote {out / 'segmentation.tif'} ({summary['shape'][0]} slices, solid fraction "
          f"{fractions[1] if len(fractions) > 1 else float('nan'):.4f}, {summary['slices_per_second']:.2f} slices/s)")
    return out


class CheckpointPredictor(PredictorFactory):
    """The class probabilities of a checkpoint's model on a device, for predict_to_disk: built in
    each worker process from the checkpoint path (several devices), or bound to a model already
    loaded (one device). precision "bf16" runs the net under CUDA autocast in bfloat16."""

    def __init__(self, checkpoint: str | Path, precision: str = "32"):
        if precision not in ("32", "bf16"):
            raise ValueError(f"inference.precision must be 32 or bf16, got {precision!r}")
        self.checkpoint, self.precision = str(checkpoint), precision

    def __call__(self, device) -> Callable:
        return self.bind(load_model(self.checkpoint)[0], device)

    def bind(self, model, device) -> Callable:
        device = torch.device(device)
        model = model.eval().to(device)
        if self.precision == "32":
            return model.probabilities
        if device.type != "cuda":
            raise ValueError("inference.precision=bf16 needs a CUDA device")

        def probabilities(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model.probabilities(x).float()

        return probabilities


class _SliceRange:
    """Slices z of a slice source (predict.py z_range=[start, stop]): a sub-volume."""

    def __init__(self, source, z: range):
        self.source, self.z = source, z
        self.shape = (len(z), *source.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source[self.z[i]]


def _open_inputs(spec, voltages: list, checkpoint: Path, acquisition: Mapping) -> tuple[dict, tuple | None, Path]:
    """The model's input stacks, opened lazily and checked: {channel: slice source}, voxel size
    and the input path (a dataset folder, a folder of slices as the microscope wrote them, one
    TIFF, or a list of TIFFs in the model's voltage order)."""
    wanted = ", ".join(map(channel_label, voltages))
    if isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec):
        paths = [Path(p) for p in spec]
        if len(paths) != len(voltages):
            raise ValueError(f"input lists {len(paths)} TIFF files, but {checkpoint} was trained on {wanted}: "
                             f"give one stack per voltage, in that order")
        stacks = {c: open_stack(p) for c, p in zip(voltages, paths)}
        first = stacks[voltages[0]]
        for stack in stacks.values():
            if stack.shape != first.shape:
                raise ValueError(shape_mismatch(stack.path, stack.shape, first.path, first.shape))
        voxel = next((s.voxel_size_nm for s in stacks.values() if s.voxel_size_nm), None)
        return stacks, voxel, paths[0].parent
    source = Path(spec)
    if is_acquisition_folder(source):
        return _open_acquisition(source, voltages, checkpoint, acquisition)
    if source.is_dir():
        missing = [c for c in voltages if not (source / stack_name(c)).is_file()]
        if missing:  # the checkpoint's model needs other voltages (or channels) than the folder holds
            raise FileNotFoundError(
                f"{source} has no {', '.join(stack_name(c) for c in missing)}, but {checkpoint} was trained on "
                f"{wanted} (found: {', '.join(map(stack_name, available_channels(source))) or 'no stack'})"
            )
        stacks, voxel = open_dataset_stacks(source, voltages)
        return {c: stacks[c] for c in voltages}, voxel, source
    if source.is_file():
        if len(voltages) != 1:
            raise ValueError(
                f"{source}: this model needs BSE stacks at {voltages} kV; give a dataset folder "
                f"holding bse_<V>kV.tif for each, not a single TIFF"
            )
        stack = open_stack(source)
        return {voltages[0]: stack}, stack.voxel_size_nm, source
    raise FileNotFoundError(f"input {source} is neither a dataset folder nor a TIFF file")


RESOLUTION_TOLERANCE = 0.2  # a pixel size this much (relative) off the training voxel size is warned about
OME_ZARR = "segmentation.ome.zarr"  # output_format=zarr
RESAMPLED = ".resampled"  # inference.resample=true: the prediction on the model's grid, removed once mapped back


def _resample_size(enabled: bool, voxel, trained, shape, checkpoint) -> tuple[int, int] | None:
    """inference.resample=true: the (rows, columns) of the input's slices at the training voxel
    size, or None when the sizes already agree (within 0.1 %) or resampling is off."""
    if not enabled:
        return None
    if trained is None or voxel is None:
        raise ValueError(
            f"inference.resample=true needs the input's pixel size and the voxel size {checkpoint} was trained on "
            f"({'input: give voxel_size_nm=[z,y,x]' if voxel is None else 'the checkpoint does not record it'})"
        )
    if np.allclose(voxel[1:], trained[1:], rtol=1e-3):
        return None
    return tuple(max(1, int(round(n * v / t))) for n, v, t in zip(shape[1:], voxel[1:], trained[1:]))


def _back_to_input_grid(summary: Mapping, out: Path, shape, voxel) -> dict:
    """The prediction made on the model's grid (out/.resampled) mapped back onto the input's:
    segmentation by nearest neighbour, probabilities bilinearly, slice by slice, each file
    written beside its place and renamed into it; the class fractions counted again."""
    from skimage.transform import resize  # scikit-image's resize, as ResampledStack's

    work = out / RESAMPLED
    n_classes = int(summary["n_classes"])
    counts = np.zeros(n_classes, dtype=np.int64)
    for name in summary["files"]:  # probabilities first, segmentation.tif last
        labels = name == SEGMENTATION_FILE
        source = open_stack(work / name)
        with atomic_path(out / name) as tmp:
            with create_stack_file(tmp, shape, np.uint8 if labels else np.float32, voxel) as target:
                for z in range(shape[0]):
                    values = resize(source[z], shape[1:], order=0 if labels else 1, anti_aliasing=False,
                                    preserve_range=True).astype(np.uint8 if labels else np.float32)
                    target[z] = values
                    if labels:
                        counts += np.bincount(values.ravel(), minlength=n_classes)[:n_classes]
                target.flush()
        source.close()
    shutil.rmtree(work)
    return {**summary, "shape": list(shape), "class_counts": counts.tolist(),
            "class_fractions": (counts / max(1, counts.sum())).tolist()}


def resolution_warnings(voxel, trained, checkpoint, source) -> list[str]:
    """Warnings when the input's in-plane pixel size differs from the voxel size the model was
    trained on by more than RESOLUTION_TOLERANCE (the net sees its features at another scale)."""
    if trained is None:
        return []
    if voxel is None:
        return [f"{source} carries no pixel size, so it cannot be checked against the {trained[2]:g} nm voxels "
                f"{checkpoint} was trained on: give voxel_size_nm=[z,y,x]"]
    lines = []
    for axis, here, there in (("y", voxel[1], trained[1]), ("x", voxel[2], trained[2])):
        if abs(here / there - 1.0) > RESOLUTION_TOLERANCE:
            lines.append(
                f"the input's pixel size along {axis} is {here:.4g} nm, {checkpoint} was trained on {there:.4g} nm "
                f"voxels ({here / there:.2f}x): its structures appear {'smaller' if here > there else 'larger'} "
                "in pixels than in training: set inference.resample=true, or train on data at this pixel size"
            )
    return lines


def _open_acquisition(folder: Path, voltages: list, checkpoint: Path,
                      settings: Mapping) -> tuple[dict, tuple | None, Path]:
    """A folder of per-slice TIFFs (fibml.io.open_acquisition, predict.yaml's acquisition.*): its
    series as the model's channels; a single series feeds a single-channel model whatever its name."""
    acquisition = open_acquisition(folder, **acquisition_settings(settings),
                                   default_channel=voltages[0] if len(voltages) == 1 else None)
    found = list(acquisition.channels)
    if len(voltages) == 1 and len(found) == 1:
        if found[0] != voltages[0]:
            print(f"note: {folder} holds {channel_label(found[0])}, the model was trained on "
                  f"{channel_label(voltages[0])}: predicting with it anyway")
        stacks = {voltages[0]: acquisition.channels[found[0]]}
    else:
        missing = [c for c in voltages if c not in acquisition.channels]
        if missing:
            raise FileNotFoundError(
                f"{folder} holds the series {', '.join(map(channel_label, found))}, but {checkpoint} was trained on "
                f"{', '.join(map(channel_label, voltages))}: name the series with acquisition.channels="
                "{<channel>: '<file pattern>'}"
            )
        stacks = {c: acquisition.channels[c] for c in voltages}
    for key, line in acquisition.provenance.items():
        print(f"{folder}: {key.replace('_', ' ')}: {line}")
    z, y, x = acquisition.voxel_size_nm
    return stacks, None if z is None else (z, y, x), folder


def _earlier_speed(out: Path, summary: Mapping) -> float:
    """Slices/s of the prediction: of this run, or, when it found everything finished, of the
    run that computed it (prediction.json)."""
    if summary["chunks_computed"] or not (out / "prediction.json").is_file():
        return summary["slices_per_second"]
    try:
        return float(json.loads((out / "prediction.json").read_text()).get("slices_per_second"))
    except (ValueError, TypeError):
        return summary["slices_per_second"]


def _channel_shifts(table, channel, stack) -> np.ndarray:
    key = channel_key(channel)
    shifts = {channel_key(c): t for c, t in table.items()}.get(key)
    if shifts is None:
        raise ValueError(f"the shift table has no shifts for {channel_label(key)}")
    if len(shifts) != len(stack):
        raise ValueError(f"{stack.path} has {len(stack)} slices, the shift table has {len(shifts)} for it")
    return shifts


def _z_range(value, n_slices: int) -> range:
    if value is None:
        return range(n_slices)
    start, stop = (int(v) for v in value)
    if not 0 <= start < stop <= n_slices:
        raise ValueError(f"z_range={[start, stop]} must satisfy 0 <= start < stop <= {n_slices} (the stack's slices)")
    return range(start, stop)


def _file_identity(path) -> dict:
    """What identifies a file's content for resuming: path, size, modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _source_identity(stack) -> dict:
    """What identifies an input's content: its file's, or for a series of slices the folder,
    the number of files, their total size, the latest modification and the crop."""
    if not isinstance(stack, SliceSeries):
        return _file_identity(stack.path)
    stats = [f.stat() for f in stack.files]
    return {"path": str(stack.path.resolve()), "files": len(stats), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max(s.st_mtime_ns for s in stats), "crop": list(stack.crop)}


@dataclass(frozen=True)
class ReconstructSettings:
    """predict.py's reconstruct.* (configs/predict.yaml holds their defaults and meaning)."""

    enabled: bool = False
    thickness: str = "csv"
    repositioning: str = "accurate"
    method: str = "spline"
    grid_nm: float | None = None
    target_nm: float = 10.0
    inpainting_ckpt: str | None = None
    ruler: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, node) -> ReconstructSettings:
        values = _settings(node)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"reconstruct.{unknown[0]} is not a setting of reconstruct (configs/predict.yaml): "
                             f"expected {', '.join(f.name for f in fields(cls))}")
        settings = cls(**values)
        if settings.enabled and settings.method == "ml" and not settings.inpainting_ckpt:
            raise ValueError("reconstruct.method=ml needs reconstruct.inpainting_ckpt=<run of experiment=inpainting>")
        return settings


def _settings(node) -> dict:
    """A config node as a plain dict (an absent node: empty)."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def _reconstruct(settings: ReconstructSettings, segmentation: np.ndarray, raw: np.ndarray, voxel, source: Path,
                 inference: InferenceSettings) -> dict:
    """Slices of varying thickness -> isotropic volume (predict.py reconstruct.*): thicknesses
    from the input's thickness.csv, a CSV or ruler marks, repositioning, interpolation."""
    if voxel is None:
        raise ValueError(f"{source} carries no voxel size: give voxel_size_nm=[z,y,x] to reconstruct in nm")
    pixel_nm = float(voxel[2])
    grid_nm = float(settings.grid_nm or pixel_nm)
    ruler = dict(settings.ruler or {})
    band_rows = int(ruler.pop("band_rows", 0)) if settings.thickness == "ruler" else 0
    thicknesses, info = thicknesses_from(
        settings.thickness, segmentation.shape[0], folder=source if source.is_dir() else None,
        band=raw[:, :band_rows] if band_rows else None, pixel_nm=pixel_nm, ruler=ruler,
    )
    inpainter = None
    if settings.method == "ml":
        inpainter = load_inpainter(settings.inpainting_ckpt, inference)
    volume = reconstruct_stack(
        segmentation[:, band_rows:], thicknesses, method=settings.method, repositioning=settings.repositioning,
        grid_nm=grid_nm, target_nm=float(settings.target_nm), inpainter=inpainter,
    )
    info |= {"method": settings.method, "repositioning": settings.repositioning, "grid_nm": grid_nm,
             "slices": int(segmentation.shape[0]), "grid_rows": int(volume.shape[0]),
             "mean_thickness_nm": float(np.mean(thicknesses))}
    print(f"reconstructed {segmentation.shape[0]} slices onto {volume.shape[0]} rows of {grid_nm:g} nm "
          f"({settings.repositioning} repositioning, {settings.method})")
    return {"volume": volume, "voxel_size_nm": (grid_nm, float(voxel[1]), float(voxel[2])), "band_rows": band_rows,
            "info": info}


def load_inpainter(checkpoint, inference: Mapping | InferenceSettings):
    """inpaint_volume with the trained inpainting net of a run of experiment=inpainting."""
    if not checkpoint:
        raise ValueError("reconstruct.method=ml needs reconstruct.inpainting_ckpt=<run of experiment=inpainting>")
    model, run_cfg = load_model(resolve_checkpoint(checkpoint))
    if task_of(model) != INPAINTING:
        raise ValueError(f"{checkpoint} is a {type(model).__name__}, not an inpainting model (experiment=inpainting)")
    inference = InferenceSettings.from_config(inference)
    device = resolve_device(inference.device)
    model = model.eval().to(device)
    return partial(inpaint_volume, predictor=model.probabilities, patch_size=run_cfg.data.patch_size,
                   overlap=inference.overlap, device=device, progress=True)
