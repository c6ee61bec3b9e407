"""What train.py, evaluate.py and predict.py do, as plain functions of a Hydra config.

The scripts only compose the config and call these; tests call them directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fibml.callbacks import CONFIG_KEY, EmbedRunConfig
from fibml.config import register_resolvers
from fibml.data.transforms import normalize_channels
from fibml.inference import predict_volume, resolve_device
from fibml.io import read_dataset, read_stack, write_json, write_stack
from fibml.metrics.confusion import segmentation_scores
from fibml.report import save_sections, write_table

__all__ = ["evaluate", "evaluate_model", "load_model", "predict", "resolve_checkpoint", "train"]

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit the configured model on the configured data; then, if cfg.evaluate, predict the
    held-out test block with the best checkpoint and write metrics.csv / metrics.md there."""
    register_resolvers()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config.pop("hydra", None)
    callbacks = _instantiate_group(cfg.get("callbacks")) + [EmbedRunConfig(run_config)]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("evaluate", False) and trainer.is_global_zero:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if best:
            log.info("evaluating the best checkpoint %s", best)
            model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
        datamodule.setup("test")
        row = evaluate_model(model, datamodule, Path(cfg.paths.output_dir), method_name(run_config), cfg.inference)
        metrics.update({f"test/{k}": v for k, v in row.items() if isinstance(v, float)})
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


def evaluate(cfg: DictConfig) -> dict:
    """Rebuild a trained model from its checkpoint's own config and score it on ground truth."""
    checkpoint = resolve_checkpoint(cfg.ckpt_path)
    model, run_cfg = load_model(checkpoint)
    data_cfg = run_cfg.data
    data_cfg.augmentation = None
    if cfg.get("data_dir"):
        data_cfg.data_dir = str(cfg.data_dir)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    return evaluate_model(
        model, datamodule, Path(cfg.paths.output_dir), method_name(run_cfg), cfg.inference,
        split=cfg.get("split", "test"), save_predictions=cfg.get("save_predictions", True),
    )


def evaluate_model(
    model,
    datamodule,
    out_dir: Path,
    name: str,
    inference: Mapping,
    split: str = "test",
    save_predictions: bool = True,
) -> dict:
    """Predict a split of the datamodule's volume slice by slice (sliding window over whole
    slices), compare with the labels, write metrics.csv / metrics.md / slices.png, print the table."""
    z = datamodule.z_range(split)
    probabilities = _predict(model, datamodule.images, _data_settings(datamodule), inference, z)
    prediction = probabilities.argmax(0).astype(np.uint8)
    truth = datamodule.labels[z.start : z.stop]
    scores = segmentation_scores(prediction, truth, n_classes=probabilities.shape[0])
    row = {
        "method": name,
        "split": f"{split} (z {z.start}-{z.stop - 1})",
        "MP %": scores["mp"],
        "MGP %": scores["mgp"],
        "MDS": scores["mds"],
        "solid fraction": float((prediction == 1).mean()),
        "solid fraction (GT)": float((truth == 1).mean()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table([row], out_dir / "metrics")
    voxel = datamodule.dataset.voxel_size_nm
    save_sections(out_dir / "slices.png", datamodule.images[0, z.start : z.stop], prediction, truth, voxel, title=name)
    if save_predictions:
        write_stack(out_dir / "prediction.tif", prediction, voxel)
    print(f"\n{table}\n\nwritten to {out_dir}")
    return row


def predict(cfg: DictConfig) -> Path:
    """Segment a whole stack (dataset folder or TIFF) and write segmentation.tif with its voxel size."""
    checkpoint = resolve_checkpoint(cfg.ckpt_path)
    model, run_cfg = load_model(checkpoint)
    settings = _data_settings(run_cfg.data)
    voltages = [float(v) for v in run_cfg.data.voltages]
    source = Path(cfg.input)
    if source.is_dir():
        dataset = read_dataset(source, voltages)
        stacks, voxel = [dataset.images[v] for v in voltages], dataset.voxel_size_nm
    elif source.is_file():
        if len(voltages) != 1:
            raise ValueError(
                f"{source}: this model needs BSE stacks at {voltages} kV; give a dataset folder "
                f"holding bse_<V>kV.tif for each, not a single TIFF"
            )
        stack, voxel = read_stack(source)
        stacks = [stack]
    else:
        raise FileNotFoundError(f"input {source} is neither a dataset folder nor a TIFF file")
    voxel = cfg.get("voxel_size_nm") or voxel
    images = normalize_channels(stacks, **run_cfg.data.get("normalize", {}))
    probabilities = _predict(model, images, settings, cfg.inference)
    segmentation = probabilities.argmax(0).astype(np.uint8)

    out = Path(cfg.output)
    write_stack(out / "segmentation.tif", segmentation, voxel)
    if cfg.get("save_probabilities", False):
        for c in range(probabilities.shape[0]):
            write_stack(out / f"probability_class{c}.tif", probabilities[c], voxel)
    write_json(
        out / "prediction.json",
        {
            "checkpoint": str(checkpoint),
            "input": str(source),
            "voltages_kV": voltages,
            "voxel_size_nm": list(voxel) if voxel else None,
            "shape": list(segmentation.shape),
            "class_fractions": np.bincount(segmentation.ravel(), minlength=probabilities.shape[0]).astype(float)
            / segmentation.size,
        },
    )
    print(f"wrote {out / 'segmentation.tif'} ({segmentation.shape[0]} slices, solid fraction {(segmentation == 1).mean():.4f})")
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training run folder (its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(f"{path} holds no checkpoints/best.ckpt or checkpoints/last.ckpt")
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def load_model(checkpoint: str | Path):
    """The trained model, rebuilt from the config embedded in its checkpoint, and that config."""
    register_resolvers()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in state:
        raise ValueError(f"{checkpoint} holds no fibml config: it was not written by fibml's train.py")
    run_cfg = OmegaConf.create(state[CONFIG_KEY])
    model = instantiate(run_cfg.model)
    model.load_state_dict(state["state_dict"])
    return model.eval(), run_cfg


def method_name(run_cfg: Mapping) -> str:
    """A short name for tables: net, input kind and voltages, e.g. 'ResidualUNet 2.5d, 1+2+4 kV'."""
    net = str(run_cfg["model"]["net"]["_target_"]).rsplit(".", 1)[-1]
    voltages = "+".join(f"{float(v):g}" for v in run_cfg["data"]["voltages"])
    return f"{net} {run_cfg['data']['dims']}, {voltages} kV"


def _predict(model, images: np.ndarray, settings: dict, inference: Mapping, z_range: range | None = None) -> np.ndarray:
    device = resolve_device(inference.get("device", "auto"))
    model = model.eval().to(device)
    return predict_volume(
        model.probabilities, images, z_range=z_range, device=device,
        overlap=inference.get("overlap", 0.5),
        slices_per_batch=inference.get("slices_per_batch", 8),
        sw_batch_size=inference.get("sw_batch_size", 32),
        **settings,
    )


def _data_settings(data) -> dict:
    """The input layout a model was trained with, from its data config or its datamodule."""
    keys = ("dims", "patch_size", "n_adjacent")
    return {k: data[k] if isinstance(data, Mapping) else getattr(data, k) for k in keys}


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks / logger group that has a _target_."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]
