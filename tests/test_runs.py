"""Training runs beyond one model: late fusion from single-voltage checkpoints, and resuming."""

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from fibml.checkpoints import load_model
from fibml.io import read_stack
from fibml.metrics.anisotropy import anisotropy_report
from fibml.pipelines.train import TrainingStopped, train
from tests.conftest import FAST_TRAIN, compose_config, small_net


def _single(tiny_dataset, tmp_path, voltage: float, extra=()) -> Path:
    overrides = FAST_TRAIN + [
        "experiment=single_voltage", f"data.data_dir={tiny_dataset}", f"data.voltages=[{voltage}]",
        "trainer.max_epochs=1", "evaluate=false", *extra,
    ]
    cfg = compose_config("train", overrides, tmp_path / f"{voltage}kV")
    train(cfg)
    return Path(cfg.paths.output_dir)


@pytest.fixture(scope="module")
def single_runs(tiny_dataset, tmp_path_factory) -> dict[float, Path]:
    root = tmp_path_factory.mktemp("singles")
    return {v: _single(tiny_dataset, root, v) for v in (1, 2, 4)}


def test_late_fusion_from_single_voltage_checkpoints(single_runs, tiny_dataset, tmp_path):
    ckpts = ",".join(str(single_runs[v]) for v in (1, 2, 4))
    overrides = small_net(FAST_TRAIN, "late_fusion") + [
        "experiment=late_fusion", f"data.data_dir={tiny_dataset}", f"model.branch_ckpts=[{ckpts}]",
        "model.net.branch.features=[4,4]",  # overridden by the checkpoints' own architecture
        # best.ckpt = the first of the two epochs, so it differs from last.ckpt
        "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    metrics, objects = train(cfg)
    model = objects["model"]
    assert model.branch_epochs == 0 and cfg.model.net.branch.features == [8, 16]
    for v, branch in zip((1, 2, 4), model.net.branches):  # the trained single-voltage nets, untouched
        single, _ = load_model(single_runs[v] / "checkpoints" / "best.ckpt")
        for (name, a), b in zip(single.net.state_dict().items(), branch.state_dict().values()):
            assert torch.equal(a, b), (v, name)
    run = Path(cfg.paths.output_dir)
    weights = json.loads((run / "voltage_weights.json").read_text())
    assert list(weights) == ["1kV", "2kV", "4kV"] and sum(weights.values()) == pytest.approx(1.0)
    assert weights["1kV"] != pytest.approx(1 / 3)  # the ensemble learned (it starts at 1/3 each)
    assert "voltage weights" in (run / "metrics.md").read_text()
    # the checkpoint alone rebuilds the whole late-fusion model, branch files not needed
    rebuilt, run_cfg = load_model(run / "checkpoints" / "best.ckpt")
    assert run_cfg.model.branch_ckpts is not None and type(rebuilt.net).__name__ == "LateFusion"
    # the weights reported are those of best.ckpt, the model evaluate.py scores, not of the last epoch
    last, _ = load_model(run / "checkpoints" / "last.ckpt")
    assert list(weights.values()) == pytest.approx(rebuilt.net.voltage_weights(), abs=1e-9)
    assert list(weights.values()) != pytest.approx(last.net.voltage_weights(), abs=1e-6)


def test_voting_late_fusion_reports_the_checkpoint_of_lowest_validation_mp(single_runs, tiny_dataset, tmp_path):
    ckpts = ",".join(str(single_runs[v]) for v in (1, 2, 4))
    overrides = small_net(FAST_TRAIN, "late_fusion") + [
        "experiment=late_fusion_voting", f"data.data_dir={tiny_dataset}", f"model.branch_ckpts=[{ckpts}]",
        "trainer.max_epochs=3", "evaluate=false",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = csv.DictReader(next(run.rglob("metrics.csv")).read_text().splitlines())
    mp = [float(r["val/mp"]) for r in rows if r.get("val/mp")]
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    # val/mp is logged every validation (ModelCheckpoint fails on a missing key) and picks best.ckpt
    assert len(mp) == 3 and state["epoch"] == int(np.argmin(mp))
    best, _ = load_model(run / "checkpoints" / "best.ckpt")
    weights = json.loads((run / "voltage_weights.json").read_text())
    assert type(best.net.ensemble).__name__ == "_Voting"
    assert list(weights.values()) == pytest.approx(best.net.voltage_weights(), abs=1e-9)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("branches", ["checkpoints", "two_stages"])
def test_late_fusion_trains_under_ddp(branches, single_runs, tiny_dataset, tmp_path):
    # frozen branches: without a graph when they come from checkpoints (frozen before DDP wraps
    # them), with a weight-0 graph in stage 2 when they trained in stage 1 (DDP registered them)
    overrides = small_net(FAST_TRAIN, "late_fusion") + [
        "experiment=late_fusion", f"data.data_dir={tiny_dataset}", "trainer=ddp_cpu", "data.num_workers=0",
        "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "evaluate=false",
    ]
    if branches == "checkpoints":
        overrides.append("model.branch_ckpts=[" + ",".join(str(single_runs[v]) for v in (1, 2, 4)) + "]")
    cfg = compose_config("train", overrides, tmp_path)
    _, objects = train(cfg)
    assert objects["trainer"].world_size == 2 and objects["trainer"].state.finished
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 4
    model, _ = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    if branches == "checkpoints":  # the single-voltage nets, untouched by the ensemble's training
        single, _ = load_model(single_runs[1] / "checkpoints" / "best.ckpt")
        for a, b in zip(single.net.state_dict().values(), model.net.branches[0].state_dict().values()):
            assert torch.equal(a, b)
    weights = json.loads((Path(cfg.paths.output_dir) / "voltage_weights.json").read_text())
    assert weights["1kV"] != pytest.approx(1 / 3)  # the ensemble learned in both


def test_branch_checkpoints_must_match_the_voltages(single_runs, tiny_dataset, tmp_path):
    base = small_net(FAST_TRAIN, "late_fusion") + ["experiment=late_fusion", f"data.data_dir={tiny_dataset}"]
    swapped = f"model.branch_ckpts=[{single_runs[2]},{single_runs[1]},{single_runs[4]}]"
    with pytest.raises(ValueError, match=r"was trained on 2kV; this branch needs a single-channel model of 1kV"):
        train(compose_config("train", base + [swapped], tmp_path / "a"))
    two = f"model.branch_ckpts=[{single_runs[1]},{single_runs[2]}]"
    with pytest.raises(ValueError, match=r"names 2 checkpoints for the 3 voltages"):
        train(compose_config("train", base + [two], tmp_path / "b"))


@pytest.mark.slow
def test_resume_continues_the_same_run(tiny_dataset, tmp_path):
    overrides = FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "evaluate=false", "logger=wandb",
                              "trainer.max_epochs=1"]
    first = compose_config("train", overrides, tmp_path / "first")
    _, objects = train(first)
    run = Path(first.paths.output_dir)
    wandb_id = objects["trainer"].logger.version
    assert objects["trainer"].current_epoch == 1
    steps = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert steps == 3  # limit_train_batches=3, one epoch

    again = compose_config("train", overrides[:-1] + ["trainer.max_epochs=3", f"ckpt_path={run}"], tmp_path / "again")
    _, objects = train(again)
    assert objects["trainer"].current_epoch == 3  # went on from epoch 1, not from 0
    assert again.paths.output_dir == str(run)  # in the same folder
    assert objects["trainer"].logger.version == wandb_id  # and the same wandb run
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 9 and state["fibml_loggers"]["WandbLogger"] == wandb_id  # 3 epochs x 3 steps

    # ckpt_path=last finds the newest run of this task under paths.log_dir
    last = compose_config("train", overrides[:-1] + ["trainer.max_epochs=4", "ckpt_path=last"], tmp_path / "last")
    last.paths.log_dir = str(tmp_path / "logs")
    (tmp_path / "logs" / "train" / "runs").mkdir(parents=True)
    (tmp_path / "logs" / "train" / "runs" / "r1").symlink_to(run)
    _, objects = train(last)
    assert objects["trainer"].current_epoch == 4 and last.paths.output_dir == str(tmp_path / "logs/train/runs/r1")

    other = compose_config("train", overrides + ["model.net.features=[4,8]", f"ckpt_path={run}"], tmp_path / "o")
    with pytest.raises(ValueError, match="resume with the same experiment"):
        train(other)


def test_last_checkpoint_follows_epochs_that_did_not_improve(tiny_dataset, tmp_path):
    # lr 0: the second epoch's validation loss equals the first's, so best.ckpt stays at epoch 0;
    # last.ckpt must still hold epoch 1 (Lightning's save_last=true alone would leave it at epoch 0)
    overrides = FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "evaluate=false", "model.optimizer.lr=0.0"]
    cfg = compose_config("train", overrides, tmp_path)
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    state = {name: torch.load(checkpoints / f"{name}.ckpt", map_location="cpu", weights_only=False)
             for name in ("best", "last")}
    assert (state["best"]["epoch"], state["best"]["global_step"]) == (0, 3)
    assert (state["last"]["epoch"], state["last"]["global_step"]) == (1, 6)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


class SigtermAfterFirstBatch(pl.Callback):
    """Sends this process a SIGTERM (a scheduler's time limit, say) after the first training batch."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_training_stopped_by_sigterm_is_not_taken_for_finished(tiny_dataset, tmp_path):
    # Lightning ends fit quietly on SIGTERM; train must neither evaluate nor return as if done
    overrides = FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "evaluate=true",
                              "+callbacks.sigterm._target_=tests.test_runs.SigtermAfterFirstBatch"]
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(TrainingStopped, match=r"stopped by SIGTERM in epoch 0: .* continue it with ckpt_path="):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.md").exists()


@pytest.mark.slow
def test_evaluate_compares_several_methods_on_the_same_slices(single_runs, tiny_dataset, tmp_path):
    from fibml.pipelines.evaluate import evaluate

    ckpts = ",".join(str(single_runs[v]) for v in (1, 2, 4))
    cfg = compose_config(
        "evaluate", [f"ckpt_path=[{ckpts}]", "method=kmeans", "method.kmeans.inputs=[[1],[4]]", "inference.device=cpu"], tmp_path
    )
    rows = evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    names = [r["method"] for r in rows]
    assert names == ["ResidualUNet 2d, 1 kV", "ResidualUNet 2d, 2 kV", "ResidualUNet 2d, 4 kV",
                     "k-means (k=3), 1 kV", "k-means (k=3), 4 kV"]
    assert len({r["split"] for r in rows}) == 1  # all scored on the same slices
    kmeans = {r["method"]: r["MP %"] for r in rows if r["method"].startswith("k-means")}
    assert kmeans["k-means (k=3), 4 kV"] > kmeans["k-means (k=3), 1 kV"]  # shine-through grows with voltage
    for name in ("metrics.csv", "metrics.md", "comparison.md", "comparison.png", "tpcf.png", "slices.png"):
        assert (out / name).is_file(), name
    comparison = (out / "comparison.md").read_text().splitlines()
    assert comparison[0].startswith("| measure | ground truth | ResidualUNet 2d, 1 kV |")
    measures = [line.split("|")[1].strip() for line in comparison[2:]]
    assert measures == ["MP %", "MGP %", "MDS", "awe %", "IoU pore", "IoU solid", "solid fraction",
                        "e_TPCF", "e_LPF", "e_D"]
    assert (out / "tpcf.png").is_file()
    for row in rows:  # anisotropy errors of each prediction, no ground truth needed
        assert all(0 <= row[key] <= 2 for key in ("e_TPCF", "e_LPF", "e_D")), row
    # each model's row is what evaluating it alone gives
    alone = evaluate(compose_config("evaluate", [f"ckpt_path={single_runs[2]}", "inference.device=cpu"], tmp_path / "one"))
    assert alone["MP %"] == pytest.approx(rows[1]["MP %"]) and alone["MDS"] == pytest.approx(rows[1]["MDS"])
    assert (out / "ResidualUNet_2d_2_kV" / "prediction.tif").is_file()


def test_evaluate_refuses_methods_scored_on_different_slices(single_runs, tiny_dataset, tmp_path):
    from fibml.pipelines.evaluate import evaluate

    other = _single(tiny_dataset, tmp_path, 2, extra=["data.split.gap=2"])  # another test block
    cfg = compose_config("evaluate", [f"ckpt_path=[{single_runs[2]},{other}]", "inference.device=cpu"], tmp_path)
    with pytest.raises(ValueError, match="pass data_dir=<dataset>"):
        evaluate(cfg)


@pytest.mark.slow
def test_evaluate_a_stack_without_labels(single_runs, tiny_dataset, tmp_path):
    """A real acquisition has no labels.tif: every slice is predicted and the measures that need
    no ground truth are reported (solid fraction, anisotropy errors), alone or compared."""
    import shutil

    from fibml.pipelines.evaluate import evaluate

    real = tmp_path / "real"
    shutil.copytree(tiny_dataset, real)
    (real / "labels.tif").unlink()
    cfg = compose_config("evaluate", [f"ckpt_path={single_runs[1]}", f"data_dir={real}", "split=all",
                                      "inference.device=cpu"], tmp_path / "one")
    row = evaluate(cfg)
    assert "MP %" not in row and row["split"] == "all (z 0-39)"
    assert 0 < row["solid fraction"] < 1
    out = Path(cfg.paths.output_dir)
    # the columns are the measures of the saved prediction's solid (label 1), computed by fibml.metrics
    prediction, voxel = read_stack(out / "prediction.tif")
    assert prediction.shape == (40, 48, 48) and row["solid fraction"] == pytest.approx((prediction == 1).mean())
    report = anisotropy_report(prediction, voxel, phase=1)
    assert [row[k] for k in ("e_TPCF", "e_LPF", "e_D")] == pytest.approx(
        [report["e_tpcf"], report["e_lpf"], report["e_d"]], rel=1e-9)
    for name in ("metrics.md", "slices.png", "tpcf.png", "prediction.tif"):
        assert (out / name).is_file(), name

    both = compose_config("evaluate", [f"ckpt_path=[{single_runs[1]},{single_runs[4]}]", f"data_dir={real}",
                                       "split=all", "method=kmeans", "method.kmeans.inputs=[[4]]",
                                       "inference.device=cpu"],
                          tmp_path / "two")
    rows = evaluate(both)
    assert [r["method"] for r in rows][-1] == "k-means (k=3), 4 kV" and all("MP %" not in r for r in rows)
    out = Path(both.paths.output_dir)
    kmeans, _ = read_stack(out / "k-means_k_3_4_kV" / "prediction.tif")  # one folder per method
    assert rows[-1]["e_TPCF"] == pytest.approx(anisotropy_report(kmeans, voxel, phase=1)["e_tpcf"], rel=1e-9)
    header = (out / "comparison.md").read_text().splitlines()[0]
    assert header.startswith("| measure | ResidualUNet 2d, 1 kV |")  # no ground-truth column
    assert (out / "tpcf.png").is_file() and (out / "slices.png").is_file() and not (out / "comparison.png").exists()

    with pytest.raises(ValueError, match="evaluate it with split=all"):
        evaluate(compose_config("evaluate", [f"ckpt_path={single_runs[1]}", f"data_dir={real}"], tmp_path / "t"))
