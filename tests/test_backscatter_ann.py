"""The backscatter ANN: MLP, its table (datamodule), the Lightning task, the report, the experiment config."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import r2_score

from fibml.data.backscatter import (
    BackscatterDataModule,
    hunger_kuchler_table,
    read_backscatter_csv,
)
from fibml.nets.mlp import MLP
from fibml.pipelines.train import train
from fibml.report import backscatter_report
from fibml.synth.imaging import shine_through_profile
from fibml.synth.montecarlo import backscatter_dataset, write_backscatter_csv
from fibml.synth.preprocess import resolve_eta_model
from fibml.tasks.backscatter import BackscatterTask
from tests.conftest import compose_config

torch.set_num_threads(1)  # 2 shared CPU cores


def test_mlp_is_the_papers_ann():
    net = MLP()
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(3, 16), (16, 32), (32, 32), (32, 32), (32, 1)]
    assert net(torch.zeros(5, 3)).shape == (5, 1)
    assert MLP(in_features=2, hidden=[4], out_features=3, activation="tanh")(torch.zeros(7, 2)).shape == (7, 3)
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="sigmoidish")


def test_hunger_kuchler_rows_are_the_shine_through_model():
    rows = hunger_kuchler_table([79], [2.0], [0.0, 30.0, 190.0])
    assert [r["source"] for r in rows] == ["hunger_kuchler_approximation"] * 3
    np.testing.assert_allclose([r["eta"] for r in rows], shine_through_profile(2.0, [0, 30, 190], substrate="Au"))
    assert rows[0]["eta"] == pytest.approx(rows[0]["eta_hunger_kuchler"])  # bare gold


def test_datamodule_split_batches_and_reproducibility():
    dm = BackscatterDataModule(source="hunger_kuchler", batch_size=16, seed=3)
    dm.setup("fit")
    sizes = {name: len(rows) for name, rows in dm.split.items()}
    assert sizes == {"train": 210, "val": 45, "test": 45}  # 5 Z x 3 kV x 20 thicknesses
    every = np.sort(np.concatenate(list(dm.split.values())))
    np.testing.assert_array_equal(every, np.arange(300))  # disjoint and complete
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3) and y.shape == (16, 1) and x.dtype == y.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 2  # scaled features
    again = BackscatterDataModule(source="hunger_kuchler", seed=3)
    again.setup("fit")
    other = BackscatterDataModule(source="hunger_kuchler", seed=4)
    other.setup("fit")
    assert all(np.array_equal(dm.split[k], again.split[k]) for k in dm.split)
    assert not np.array_equal(dm.split["test"], other.split["test"])
    with pytest.raises(ValueError, match="source must be one of"):
        BackscatterDataModule(source="guess")


def test_table_csv_and_its_errors(tmp_path):
    rows = backscatter_dataset([79], [2.0], [0.0, 40.0, 80.0], electrons=200, progress=False, device="cpu")
    path = write_backscatter_csv(rows, tmp_path / "bs.csv")
    table = read_backscatter_csv(path)
    assert table["eta"].shape == (3,) and table["element"][0] == "Au"
    assert table["eta"][0] > table["eta"][2]  # epoxy over gold darkens it
    dm = BackscatterDataModule(table=path, val_fraction=0.34, test_fraction=0.0, batch_size=4)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.split.items()} == {"train": 2, "val": 1, "test": 0}

    bad = tmp_path / "bad.csv"
    bad.write_text("Z,voltage_kV,eta\n79,2,0.4\n")
    with pytest.raises(ValueError, match=r"bad\.csv lacks the columns epoxy_thickness_nm"):
        BackscatterDataModule(table=bad).setup("fit")
    text = tmp_path / "text.csv"
    text.write_text("Z,voltage_kV,epoxy_thickness_nm,eta\n79,2,0,high\n")
    with pytest.raises(ValueError, match=r"text\.csv, row 2: column eta holds 'high'"):
        read_backscatter_csv(text)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_backscatter_csv(tmp_path / "nowhere.csv")


def test_montecarlo_table_is_cached(tmp_path):
    settings = {"source": "montecarlo", "atomic_numbers": [79], "voltages_kV": [2.0], "epoxy_thickness_nm": [0, 100],
                "electrons": 100, "cache_dir": tmp_path, "simulator": {"device": "cpu", "progress": False}}
    dm = BackscatterDataModule(**settings)
    dm.prepare_data()
    (path,) = tmp_path.glob("backscatter-*.csv")
    stamp = path.stat().st_mtime_ns
    table = read_backscatter_csv(BackscatterDataModule(**settings).table_path)
    assert path.stat().st_mtime_ns == stamp and list(table["source"]) == ["montecarlo"] * 2
    assert BackscatterDataModule(**{**settings, "electrons": 101}).table_path != path


@pytest.fixture(scope="module")
def trained():
    """The ANN trained for a few seconds on the Hunger-Kuchler table."""
    pl.seed_everything(0)
    dm = BackscatterDataModule(source="hunger_kuchler", batch_size=32)
    model = BackscatterTask(MLP(), partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(max_epochs=120, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return model.eval(), dm, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_ann_learns_eta(trained):
    model, _, metrics = trained
    assert metrics["val/r2"] > 0.9 and math.isfinite(metrics["train/loss"])
    thickness = np.arange(0.0, 200.0, 10.0)
    eta = model.predict_eta(79, 2.0, thickness)
    assert eta.shape == (20,) and np.all((eta >= 0) & (eta <= 1))
    assert np.all(np.diff(eta[:7]) < 0)  # the fall over the first 60 nm of epoxy
    assert np.all(np.diff(eta) < 0.01) and eta[0] - eta[-1] > 0.25
    assert model.predict_eta(np.array([[79], [6]]), 2.0, 0.0).shape == (2, 1)  # broadcasts like numpy
    assert model.predict_eta(79, 2.0, 0.0) > model.predict_eta(6, 2.0, 0.0)  # gold brighter than carbon


def test_report_files_and_r2(trained, tmp_path):
    model, dm, _ = trained
    found = backscatter_report(model, dm, tmp_path)
    for name in ("backscatter.png", "backscatter_metrics.csv", "backscatter_metrics.md", "backscatter_predictions.csv"):
        assert (tmp_path / name).is_file(), name
    table, test = dm.table, dm.split["test"]
    predicted = model.predict_eta(table["Z"], table["voltage_kV"], table["epoxy_thickness_nm"])
    assert found["r2"] == pytest.approx(r2_score(table["eta"][test], predicted[test]), abs=1e-9)
    assert found["r2_all"] == pytest.approx(r2_score(table["eta"], predicted), abs=1e-9)
    assert found["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted[test] - table["eta"][test]) ** 2))))
    with open(tmp_path / "backscatter_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and sum(r["split"] == "test" for r in rows) == 45
    assert "| test | 45 |" in (tmp_path / "backscatter_metrics.md").read_text()


@pytest.mark.smoke
def test_experiment_trains_and_reports(tmp_path):
    """experiment=backscatter_ann composes, trains and writes its report (the ANN's accuracy:
    test_ann_learns_eta)."""
    cfg = compose_config("train", ["experiment=backscatter_ann", "logger=csv", "data.source=hunger_kuchler",
                                   "trainer.max_epochs=2", "trainer.accelerator=cpu"], tmp_path)
    assert cfg.model.feature_scale == cfg.data.feature_scale and cfg.evaluate is False
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.early_stopping.monitor == "val/loss"
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "backscatter.png").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert math.isfinite(metrics["test/r2"]) and math.isfinite(metrics["val/loss"])
    predict_eta, name = resolve_eta_model(run)  # the preprocessing takes the trained ANN from its run folder
    assert name.endswith("best.ckpt") and np.isfinite(predict_eta(79, 2.0, np.array([0.0, 50.0]))).all()

    cfg = compose_config("train", ["experiment=backscatter_ann", "model.feature_scale=[100,30,200]",
                                   "data.source=hunger_kuchler", "trainer.max_epochs=1", "logger=none"], tmp_path / "b")
    with pytest.raises(ValueError, match="model.feature_scale"):
        train(cfg)
