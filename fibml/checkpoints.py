"""Checkpoints of fibml's training runs: find them, rebuild their models, resume and adopt them.

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

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fibml.channels import channel_key, channel_label
from fibml.config import register_resolvers

__all__ = [
    "CONFIG_KEY",
    "LOGGERS_KEY",
    "adopt_branch_checkpoints",
    "build_model",
    "load_branches",
    "load_model",
    "prepare_resume",
    "resolve_checkpoint",
]

CONFIG_KEY = "fibml_config"
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
    model = build_model(run_cfg.model)
    model.load_state_dict(state["state_dict"])
    return model.eval(), run_cfg


def build_model(model_cfg: DictConfig):
    """Instantiate a model config. ``branch_ckpts`` (late fusion) is not a constructor argument:
    train() loads those weights after building; everywhere else the checkpoint holds them."""
    node = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    node.pop("branch_ckpts", None)
    return instantiate(node)


def adopt_branch_checkpoints(cfg: DictConfig) -> list[dict]:
    """Check model.branch_ckpts against the data (one single-voltage model per voltage, same input
    layout, same architecture), put their net config into cfg.model.net.branch so the run's own
    config describes the model it trains, and return their branch state dicts."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    voltages = [channel_key(v) for v in data["voltages"]]
    paths = [resolve_checkpoint(p) for p in cfg.model.branch_ckpts]
    if len(paths) != len(voltages):
        raise ValueError(
            f"model.branch_ckpts names {len(paths)} checkpoints for the {len(voltages)} voltages {voltages} kV "
            f"of data.voltages: give one single-voltage checkpoint per voltage, in that order"
        )
    nets, states = [], []
    for path, voltage in zip(paths, voltages):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if CONFIG_KEY not in state:
            raise ValueError(f"{path} holds no fibml config: it was not written by fibml's train.py")
        run = state[CONFIG_KEY]
        trained = [channel_key(v) for v in run["data"]["voltages"]]
        if trained != [voltage]:
            raise ValueError(
                f"{path} was trained on {'+'.join(map(channel_label, trained))}; this branch needs a "
                f"single-channel model of {channel_label(voltage)}"
            )
        for key in ("dims", "normalize") + (("n_adjacent",) if data["dims"] == "2.5d" else ()):
            if run["data"].get(key) != data.get(key):
                raise ValueError(f"{path} was trained with data.{key}={run['data'].get(key)}, this run has {data.get(key)}")
        net = dict(run["model"]["net"])
        if not str(net.get("_target_", "")).endswith("ResidualUNet"):
            raise ValueError(f"{path} is a {net.get('_target_')} model; late-fusion branches are single-voltage U-Nets")
        nets.append(net)
        states.append({k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")})
    if any(net != nets[0] for net in nets[1:]):
        raise ValueError(f"the branch checkpoints {[str(p) for p in paths]} have different architectures: {nets}")
    with open_dict(cfg):
        cfg.model.net.branch = {**nets[0], "_partial_": True}
    log.info("late-fusion branches from %s", ", ".join(str(p) for p in paths))
    return states


def load_branches(model, states: list[dict]) -> None:
    for branch, state in zip(model.net.branches, states):
        branch.load_state_dict(state)


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
            kind = str(node._target_).rsplit(".", 1)[-1]
            if kind == "WandbLogger" and ids.get(kind):
                node.id, node.resume = ids[kind], "allow"
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
