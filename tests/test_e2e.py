"""End to end: synthesise, train a few steps, evaluate, predict - via the functions and the scripts."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from fibml.io import read_dataset, read_stack, write_dataset, write_stack
from fibml.metrics.confusion import segmentation_scores
from fibml.pipelines.evaluate import evaluate
from fibml.pipelines.predict import predict
from fibml.pipelines.train import train
from fibml.synth.microstructure import leveled_wave
from tests.conftest import FAST_TRAIN, LossHistory, compose_config, small_net

REPO = Path(__file__).resolve().parent.parent
# segmentation and inpainting experiments; the CycleGAN and backscatter-ANN ones are run in
# test_translate.py and test_backscatter_ann.py
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("[!_]*.yaml")
                     if not p.stem.startswith(("cyclegan", "backscatter")))
INPAINTING = ["inpainting"]  # trains on planes of labels.tif; no slice-by-slice test evaluation


def _read_metrics(run: Path) -> dict:
    with open(run / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    return row


def test_train_evaluate_predict(tiny_dataset, tmp_path):
    cfg = compose_config("train", FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "data.voltages=[1,2,4]"], tmp_path)
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    for name in ("metrics.csv", "metrics.md", "slices.png", "tpcf.png", "prediction.tif"):
        assert (run / name).is_file(), name
    row = _read_metrics(run)
    assert all(key in row for key in ("e_TPCF", "e_LPF", "e_D"))  # anisotropy of the prediction
    mp, mgp, mds = float(row["MP %"]), float(row["MGP %"]), float(row["MDS"])
    assert all(math.isfinite(v) for v in (mp, mgp, mds))
    assert 0 <= mp <= 100 and 0 <= mgp <= 100 and 0 <= mds <= 1
    assert mp == pytest.approx(metrics["test/MP %"])
    assert float(row["solid fraction (GT)"]) == pytest.approx(0.3, abs=0.1)
    assert "| ResidualUNet 2d, 1+2+4 kV |" in (run / "metrics.md").read_text()
    prediction, voxel = read_stack(run / "prediction.tif")
    assert prediction.shape[1:] == (48, 48) and voxel == (2.5, 2.5, 2.5)
    # the table holds fibml.metrics' scores of the saved prediction against the truth it was cut from
    z0, z1 = (int(v) for v in row["split"].split("z ")[1].rstrip(")").split("-"))
    assert z1 - z0 + 1 == len(prediction)
    scores = segmentation_scores(prediction, read_dataset(tiny_dataset).labels[z0 : z1 + 1])
    assert [mp, mgp, mds] == pytest.approx([scores["mp"], scores["mgp"], scores["mds"]], rel=1e-9)
    assert float(row["solid fraction"]) == pytest.approx((prediction == 1).mean(), rel=1e-9)

    # evaluate.py rebuilds the model from the checkpoint's own config: the same numbers
    ecfg = compose_config("evaluate", [f"ckpt_path={run}", "inference.device=cpu"], tmp_path / "eval")
    again = evaluate(ecfg)
    assert again["MP %"] == pytest.approx(mp) and again["MDS"] == pytest.approx(mds)
    assert (tmp_path / "eval" / "run" / "metrics.md").is_file()

    out = tmp_path / "segmented"
    pcfg = compose_config(
        "predict",
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"input={tiny_dataset}", f"output={out}",
         "save_probabilities=true", "inference.device=cpu"],
        tmp_path / "pred",
    )
    predict(pcfg)
    segmentation, voxel = read_stack(out / "segmentation.tif")
    assert segmentation.shape == (40, 48, 48) and voxel == (2.5, 2.5, 2.5)
    assert set(np.unique(segmentation)) <= {0, 1}
    solid_probability, _ = read_stack(out / "probability_class1.tif")
    np.testing.assert_array_equal(segmentation, (solid_probability > 0.5).astype(np.uint8))
    # the test block of the full prediction is what train.py evaluated
    test_block = prediction.shape[0]
    np.testing.assert_array_equal(segmentation[-4 - test_block : -4], prediction)

    # a three-voltage model cannot segment one TIFF: the error says what it needs
    single = tmp_path / "one.tif"
    write_stack(single, np.zeros((4, 48, 48), np.float32) + np.arange(48, dtype=np.float32), 2.5)
    pcfg.input = str(single)
    with pytest.raises(ValueError, match=r"one.tif: this model needs BSE stacks at \[1.0, 2.0, 4.0\] kV"):
        predict(pcfg)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_learns_a_batch_and_evaluates(experiment, request, tmp_path):
    """Each experiment's model, built from its config, overfits one batch - the training loss of
    8 steps on the same batch falls by a third at least (a net whose gradients, labels or inputs
    are miswired does not) - and its trained model scores the test block."""
    dataset = request.getfixturevalue("tiny_electrode" if experiment == "three_phase" else "tiny_dataset")
    fast = [o for o in small_net(FAST_TRAIN, experiment) if not o.startswith(("trainer.max_epochs", "trainer.limit"))]
    overrides = [f"experiment={experiment}", f"data.data_dir={dataset}", "callbacks=none", "+trainer.overfit_batches=1",
                 "trainer.max_epochs=8", "trainer.limit_val_batches=0", "data.augmentation=null",
                 "model.optimizer.lr=1e-2", *fast]
    if "3d" in experiment:
        overrides += ["data.patch_size=[4,32,32]", "data.stride=[4,16,16]", "data.batch_size=2"]
    if experiment in INPAINTING:  # random planes of labels.tif: no stride; validated, not evaluated on slices
        overrides = [o for o in overrides if not o.startswith("data.stride=")] + ["data.val_size=8"]
    cfg = compose_config("train", overrides, tmp_path)
    with open_dict(cfg):
        cfg.callbacks = {"losses": {"_target_": "tests.conftest.LossHistory"}}
    metrics, objects = train(cfg)
    (history,) = [c for c in objects["trainer"].callbacks if isinstance(c, LossHistory)]
    assert len(history.losses) == 8 and all(math.isfinite(v) for v in history.losses)
    assert history.losses[-1] < 0.67 * history.losses[0], history.losses
    if experiment not in INPAINTING:
        assert 0 <= metrics["test/MDS"] <= 1  # scored (the scores' values: test_train_evaluate_predict)


def test_a_short_training_segments_a_separable_volume_far_better_than_chance(tmp_path):
    """Solid bright, pore dark, with noise: after 30 steps the evaluated test block is segmented far
    better than chance (guessing with the solid fraction misplaces 2 f (1 - f) = 42 % of voxels),
    and better than 1 %: a threshold at the midpoint misplaces the 0.3 % of voxels whose noise
    crosses it (2.75 sigma), and the net also sees the neighbours (it scored MP 0.16 %)."""
    rng = np.random.default_rng(0)
    labels = (leveled_wave((40, 48, 48), wavelength_nm=30.0, solid_fraction=0.3, voxel_size_nm=2.5, seed=1)
              ).astype(np.uint8)
    image = 0.25 + 0.5 * labels + rng.normal(0.0, 0.25 / 2.75, labels.shape)
    data = write_dataset(tmp_path / "separable", {2.0: image.astype(np.float32)}, 2.5, labels=labels)
    fast = [o for o in FAST_TRAIN if not o.startswith(("trainer.max_epochs", "trainer.limit_train"))]
    cfg = compose_config("train", fast + [f"data.data_dir={data}", "data.voltages=[2]", "trainer.max_epochs=3",
                                          "trainer.limit_train_batches=10", "model.optimizer.lr=1e-2"], tmp_path)
    metrics, _ = train(cfg)
    assert metrics["test/MP %"] < 1.0 and metrics["test/MDS"] > 0.98, metrics


@pytest.mark.slow
@pytest.mark.smoke
@pytest.mark.subprocess
def test_scripts_as_a_user_runs_them(tmp_path):
    """The README path: python -m fibml.synth, train.py, evaluate.py, predict.py (a smoke test:
    the scripts start and write their files; the numbers are checked through the functions)."""
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    synth = run("-m", "fibml.synth", "out=data/tiny", "shape=[40,48,48]", "voltages=[2]",
                "structure.coarse_wavelength_nm=50", "structure.fine_wavelength_nm=20")
    assert synth.returncode == 0, synth.stderr
    assert (tmp_path / "data" / "tiny" / "bse_2kV.tif").is_file()

    fast = [o for o in FAST_TRAIN if not o.startswith("inference")] + ["data.data_dir=data/tiny", "hydra.run.dir=run"]
    trained = run(str(REPO / "train.py"), "experiment=single_voltage", *fast)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "| ResidualUNet 2d, 2 kV |" in trained.stdout

    evaluated = run(str(REPO / "evaluate.py"), "ckpt_path=run", "hydra.run.dir=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "MP %" in evaluated.stdout and (tmp_path / "eval" / "metrics.csv").is_file()

    predicted = run(str(REPO / "predict.py"), "ckpt_path=run", "input=data/tiny/bse_2kV.tif", "output=seg",
                    "hydra.run.dir=pred")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    segmentation, voxel = read_stack(tmp_path / "seg" / "segmentation.tif")
    assert segmentation.shape == (40, 48, 48) and voxel == (2.5, 2.5, 2.5)

    missing = run(str(REPO / "predict.py"), "ckpt_path=run", "input=nowhere.tif", "output=x", "hydra.run.dir=p2")
    assert missing.returncode != 0 and "nowhere.tif is neither a dataset folder nor a TIFF file" in missing.stderr


def test_seeded_training_is_reproducible(tiny_dataset, tmp_path):
    # seed: 0 is a seed: the same config trains to the same weights, augmentation included
    overrides = FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "evaluate=false", "trainer.max_epochs=1"]
    weights = []
    for run in ("a", "b"):
        _, objects = train(compose_config("train", overrides, tmp_path / run))
        weights.append(torch.cat([p.detach().flatten() for p in objects["model"].parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    _, objects = train(compose_config("train", overrides + ["seed=1"], tmp_path / "c"))
    other = torch.cat([p.detach().flatten() for p in objects["model"].parameters()])
    assert not torch.equal(weights[0], other)
