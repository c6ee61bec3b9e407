"""Checkpoints of fibml's training runs: find them, rebuild their models, resume a run.

Every checkpoint train.py writes carries the run's resolved config (CONFIG_KEY, stored by
fibml.callbacks.EmbedRunConfig) and its loggers' run ids (LOGGERS_KEY), so a model is rebuilt
from the checkpoint alone, wherever the file goes. The model classes are named by the config's
``_target_`` and instantiated by Hydra, so this module imports no task or network: every layer
above the core may load a trained model (the ML simulation loads its backscatter ANN here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger

from fibml.config import register_resolvers

__all__ = [
    "CONFIG_KEY",
    "DATA_KEY",
    "LOGGERS_KEY",
    "build_model",
    "load_model",
    "prepare_resume",
    "resolve_checkpoint",
    "training_voxel_size",
]

CONFIG_KEY = "fibml_config"
DATA_KEY = "fibml_training_data"  # what the model was trained on: {"voxel_size_nm": [z, y, x], "dataset": path}
LOGGERS_KEY = "fibml_loggers"  # logger class name -> run id / version (a resumed run continues the wandb one)

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> Path:
    """A checkpoint file, or a training run folder (its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in prefer:
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
    if DATA_KEY in state:  # beside the config: what the data turned out to be (voxel size)
        with open_dict(run_cfg):
            run_cfg.training_data = state[DATA_KEY]
    model = build_model(run_cfg.model)
    model.load_state_dict(state["state_dict"])
    return model.eval(), run_cfg


def training_voxel_size(run_cfg: DictConfig) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) nm of the data a checkpoint's model was trained on: as stored in
    the checkpoint, else (older checkpoints) the embedded default generator's; None if unknown."""
    stored = (run_cfg.get("training_data") or {}).get("voxel_size_nm")
    if stored:
        return tuple(float(v) for v in stored)
    data = run_cfg.get("data") or {}
    voxel = None if data.get("data_dir") else (data.get("generator") or {}).get("voxel_size_nm")
    if voxel is None:
        return None
    return tuple(float(v) for v in np.broadcast_to(np.asarray(voxel, dtype=float), (3,)))


def build_model(model_cfg: DictConfig):
    """Instantiate a model config. ``branch_ckpts`` (late fusion) is not a constructor argument:
    train() loads those weights after building; everywhere else the checkpoint holds them."""
    node = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    node.pop("branch_ckpts", None)
    return instantiate(node)


def prepare_resume(cfg: DictConfig) -> str:
    """For ckpt_path = 'last', a run folder or a .ckpt: continue that run in its own folder, with
    the same wandb run id (CSV: each launch its own csv/version_<n>, the earlier ones kept).
    Returns the checkpoint for Trainer.fit."""
    spec = str(cfg.ckpt_path)
    if spec == "last":
        runs = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
        found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"ckpt_path=last: no run under {runs} has checkpoints/last.ckpt")
        checkpoint = found[-1]
    else:
        checkpoint = resolve_checkpoint(spec, prefer=("last.ckpt", "best.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    trained_model = (state.get(CONFIG_KEY) or {}).get("model")
    if trained_model is not None:
        trained = _networks(trained_model)
        current = _networks(OmegaConf.to_container(cfg.model, resolve=True))
        if trained != current:
            changed = sorted(k for k in trained.keys() | current.keys() if trained.get(k) != current.get(k))
            raise ValueError(
                f"{checkpoint} was trained with another network (model.{', model.'.join(changed)} differ; "
                f"tags {state[CONFIG_KEY].get('tags')}); resume with the same experiment and model settings"
            )
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    ids = state.get(LOGGERS_KEY, {})
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        for node in (cfg.get("logger") or {}).values():
            if not isinstance(node, DictConfig) or "_target_" not in node:
                continue
            if issubclass(get_class(str(node._target_)), WandbLogger) and ids.get(WandbLogger.__name__):
                node.id, node.resume = ids[WandbLogger.__name__], "allow"  # the ids are kept by class name
            # CSVLogger: no version given, so it writes the next one (csv/version_<n+1>) beside the
            # earlier launches': pinned to the old version it would delete that launch's metrics.csv
    log.info("resuming %s from %s (this launch's own folder keeps only its log)", run_dir, checkpoint)
    return str(checkpoint)


def _networks(model: Mapping) -> dict:
    """The networks of a model config, which a resumed run must keep: ``net`` of a segmentation
    model, ``generator_ab`` ... ``discriminator_b`` of a CycleGAN; the loss, optimizer and
    scheduler may change between launches."""
    return {k: v for k, v in model.items()
            if isinstance(v, Mapping) and "_target_" in v and k not in ("loss", "optimizer", "scheduler")}
