"""`python train.py`: fit the configured model on the configured data (one or many GPUs, resumable),
then score the held-out test block with the best checkpoint."""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fibml.callbacks import EmbedRunConfig
from fibml.channels import channel_key, channel_label
from fibml.checkpoints import CONFIG_KEY, build_model, prepare_resume, resolve_checkpoint
from fibml.config import register_resolvers
from fibml.io import write_json
from fibml.nets.unet import ResidualUNet
from fibml.pipelines.common import data_settings, format_weights, method_name, voltage_weights
from fibml.pipelines.evaluate import evaluate_model
from fibml.protocols import SEGMENTATION, WeighsVoltages, task_of

__all__ = ["TrainingStopped", "train", "train_objective"]

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """A training stopped from outside (SIGTERM: a scheduler's time limit, a kill) before its end."""


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit the configured model on the configured data; then, if cfg.evaluate, predict the
    held-out test block with the best checkpoint and write metrics.csv / metrics.md there."""
    register_resolvers()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    resume = prepare_resume(cfg) if cfg.get("ckpt_path") else None
    branches = _adopt_branch_checkpoints(cfg) if cfg.model.get("branch_ckpts") else None
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model)
    if branches:
        _load_branches(model, branches)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config.pop("hydra", None)
    callbacks = _instantiate_group(cfg.get("callbacks")) + [EmbedRunConfig(run_config)]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if cfg.get("train", True):
        try:
            # weights_only=False: fibml's checkpoints carry their run config and the optimizer
            # partials in hparams, which the safe unpickler refuses; they are the user's own files.
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False if resume else None)
        except SIGTERMException:
            pass  # a SystemExit without a code: the process would exit with status 0, as if it had finished
        finally:
            _finish_loggers(loggers)
        if trainer.received_sigterm:  # a scheduler's time limit, a kill: not a finished run
            raise TrainingStopped(
                f"training was stopped by SIGTERM in epoch {trainer.current_epoch}: {cfg.paths.output_dir} is not "
                f"finished and was not evaluated; continue it with ckpt_path={cfg.paths.output_dir}"
            )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    evaluate, report = cfg.get("evaluate", False), cfg.get("report")
    has_weights = task_of(model) == SEGMENTATION and isinstance(model.net, WeighsVoltages)
    if (evaluate or report or has_weights) and trainer.is_global_zero:
        # the checkpoint that monitors a metric (the other one keeps last.ckpt): what evaluate.py
        # scores, so the report, the test metrics and voltage_weights.json all describe it
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
        if best:
            log.info("the best checkpoint: %s", best)
            model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    weights = voltage_weights(model, cfg.data.get("voltages"))
    if weights and trainer.is_global_zero:
        metrics.update({f"ensemble/weight_{v}": w for v, w in weights.items()})
        write_json(Path(cfg.paths.output_dir) / "voltage_weights.json", weights)
        log.info("learned weight of each voltage (best checkpoint): %s", format_weights(weights))
    if evaluate and trainer.is_global_zero:
        datamodule.setup("test")
        row = evaluate_model(model, datamodule.evaluation_volume("test"), data_settings(cfg.data),
                             Path(cfg.paths.output_dir), method_name(run_config), cfg.inference)
        metrics.update({f"test/{k}": v for k, v in row.items() if isinstance(v, float)})
    if report and trainer.is_global_zero:
        # a task's own report (tables, figures): a function (model, datamodule, out_dir) -> {metric: value}
        found = instantiate(report)(model=model, datamodule=datamodule, out_dir=Path(cfg.paths.output_dir))
        metrics.update({f"test/{k}": float(v) for k, v in (found or {}).items()})
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


def train_objective(cfg: DictConfig) -> float | None:
    """What train.py returns to a sweeper: the value of cfg.optimized_metric (NaN when the run
    did not log it, which Optuna records as a failed trial). When training raises, the
    traceback goes to error.txt in the run folder before the error propagates: Hydra marks the
    job failed, and the Optuna sweeper records the trial as FAIL and goes on (max_failure_rate)."""
    try:
        metrics, _ = train(cfg)
    except Exception:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(traceback.format_exc())
        log.exception("training failed; traceback in %s", out / "error.txt")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory trial must not starve the next one
        raise
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    value = metrics.get(metric, float("nan"))
    if not math.isfinite(value):
        log.warning("optimized_metric %s is %s (logged: %s)", metric, value, sorted(metrics))
    return value


def _finish_loggers(loggers: list) -> None:
    """Close the wandb run, so the next run in this process (a sweep trial, a test) gets its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb  # imported only when a wandb logger is configured: it is slow to import

            if wandb.run is not None:  # the logger's run, once it was started (WandbLogger.experiment)
                wandb.finish()


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks / logger group that has a _target_."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _adopt_branch_checkpoints(cfg: DictConfig) -> list[dict]:
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
        if not _is_unet(net.get("_target_")):
            raise ValueError(f"{path} is a {net.get('_target_')} model; late-fusion branches are single-voltage U-Nets")
        nets.append(net)
        states.append({k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")})
    if any(net != nets[0] for net in nets[1:]):
        raise ValueError(f"the branch checkpoints {[str(p) for p in paths]} have different architectures: {nets}")
    with open_dict(cfg):
        cfg.model.net.branch = {**nets[0], "_partial_": True}
    log.info("late-fusion branches from %s", ", ".join(str(p) for p in paths))
    return states


def _load_branches(model, states: list[dict]) -> None:
    for branch, state in zip(model.net.branches, states):
        branch.load_state_dict(state)


def _is_unet(target) -> bool:
    try:
        return issubclass(get_class(str(target)), ResidualUNet)
    except (ImportError, ValueError, AttributeError):  # a target this fibml does not know
        return False
