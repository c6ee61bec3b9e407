"""Multi-process training: trainer=ddp_cpu really trains in two processes (ddp_spawn, gloo),
splits the global batch over them, and only rank 0 writes checkpoints and evaluation files."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from fibml.checkpoints import load_model
from fibml.pipelines.train import train
from tests.conftest import FAST_TRAIN, compose_config

GLOBAL_BATCH = 8


class RankProbe(pl.Callback):
    """Each process writes what it sees at its first training batch to <out_dir>/rank<global rank>.json.

    Defined here (importable as tests.test_ddp.RankProbe) so that ddp_spawn can pickle it."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != 0 or trainer.current_epoch != 0:
            return
        record = {
            "pid": os.getpid(),
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "batch_size_per_device": trainer.datamodule.batch_size_per_device,
            "batch_len": len(batch[0]),
        }
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.subprocess
def test_ddp_cpu_trains_in_two_processes(tiny_dataset, tmp_path):
    overrides = FAST_TRAIN + [
        f"data.data_dir={tiny_dataset}",
        "trainer=ddp_cpu",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        f"data.batch_size={GLOBAL_BATCH}",
        "data.num_workers=0",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    probe_dir = tmp_path / "probe"
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": "tests.test_ddp.RankProbe", "out_dir": str(probe_dir)}
    assert cfg.trainer.strategy == "ddp_spawn" and cfg.trainer.devices == 2

    metrics, objects = train(cfg)

    # two processes, spawned (not this one), each fed half of the global batch
    trainer = objects["trainer"]
    assert trainer.world_size == 2 and trainer.num_devices == 2 and trainer.state.finished
    records = sorted((json.loads(p.read_text()) for p in probe_dir.glob("rank*.json")), key=lambda r: r["global_rank"])
    assert [r["global_rank"] for r in records] == [0, 1]
    pids = {r["pid"] for r in records}
    assert len(pids) == 2 and os.getpid() not in pids
    for r in records:
        assert r["world_size"] == 2
        assert r["batch_size_per_device"] == GLOBAL_BATCH // 2
        assert r["batch_len"] == GLOBAL_BATCH // 2

    # rank 0 saved the checkpoints; they load and predict
    run = Path(cfg.paths.output_dir)
    for name in ("best.ckpt", "last.ckpt"):
        assert (run / "checkpoints" / name).is_file(), name
    model, run_cfg = load_model(run / "checkpoints" / "best.ckpt")
    assert run_cfg.trainer.strategy == "ddp_spawn"
    x = torch.rand(2, int(run_cfg.model.net.in_channels), 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()

    # evaluation ran once (rank 0 only): one metrics.csv with one row, one CSV-logger version
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("metrics.csv")) == [
        "csv/version_0/metrics.csv",
        "metrics.csv",
    ]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    with open(run / "csv" / "version_0" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(logged) == 1  # one epoch, logged by one process
    for name in ("metrics.md", "slices.png", "prediction.tif"):
        assert (run / name).is_file(), name

    assert math.isfinite(metrics["val/loss"]) and 0 <= metrics["val/mds"] <= 1
    assert 0 <= metrics["test/MDS"] <= 1
    assert float(rows[0]["MDS"]) == pytest.approx(metrics["test/MDS"])
