"""CycleGAN through train.py and predict.py task=translate: a translated dataset keeps shapes,
voxel size and labels, and its grey values are the target domain's."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fibml.io import read_dataset, write_dataset
from fibml.pipelines.predict import predict
from fibml.pipelines.train import train
from tests.conftest import compose_config

TINY_GAN = [
    "logger=csv", "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1", "data.patch_size=32", "data.stride=16", "data.num_workers=0",
    "model.generator_ab.features=[8,16]", "model.discriminator_a.ndf=8", "model.discriminator_a.n_layers=2",
    "inference.device=cpu",
]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Domain a: a dark grey-value range; domain b: brighter, of another range."""
    root = tmp_path_factory.mktemp("domains")
    rng = np.random.default_rng(0)
    labels = (rng.random((6, 40, 40)) > 0.7).astype(np.uint8)
    a = write_dataset(root / "a", {2.0: (0.1 + 0.3 * labels + 0.02 * rng.random(labels.shape)).astype(np.float32)},
                      2.5, labels=labels)
    b_labels = (rng.random((6, 40, 40)) > 0.6).astype(np.uint8)
    b = write_dataset(root / "b", {2.0: (50 + 100 * b_labels + 5 * rng.random(b_labels.shape)).astype(np.float32)},
                      2.5, labels=b_labels)
    return a, b


def test_train_cyclegan_then_translate_a_dataset(domains, tmp_path):
    a, b = domains
    cfg = compose_config("train", ["experiment=cyclegan_da", f"data.source={a}", f"data.target={b}", *TINY_GAN],
                         tmp_path / "train")
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["train/loss_g_epoch"]) and np.isfinite(metrics["val/loss"])
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    low, high = objects["datamodule"].scaling["b"]
    assert 45 < low < 60 and 140 < high < 160  # the target domain's 0.5 / 99.5 percentiles

    # a CycleGAN run continues (it has generators and discriminators, no model.net) ...
    overrides = ["experiment=cyclegan_da", f"data.source={a}", f"data.target={b}", *TINY_GAN]
    again = compose_config("train", [*overrides[:-1], "trainer.max_epochs=2", f"ckpt_path={run}"], tmp_path / "again")
    _, resumed = train(again)
    assert resumed["trainer"].current_epoch == 2 and again.paths.output_dir == str(run)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 * 2 * 2  # 2 epochs x 2 batches x (generator + discriminator step)
    # the first launch's CSV metrics are kept (Lightning deletes metrics.csv of a version it reuses)
    first, second = (run / "csv" / f"version_{v}" / "metrics.csv" for v in (0, 1))
    epochs = [{row["epoch"] for row in csv.DictReader(f.open()) if row["epoch"]} for f in (first, second)]
    assert epochs == [{"0"}, {"1"}]
    # ... but not with other networks
    wider = compose_config("train", [*overrides, "model.generator_ab.features=[8,32]", f"ckpt_path={run}"],
                           tmp_path / "wider")
    with pytest.raises(ValueError, match=r"model\.generator_ab, model\.generator_ba differ"):
        train(wider)

    out = tmp_path / "adapted"
    pcfg = compose_config("predict", [f"ckpt_path={run}", "task=translate", f"input={a}", f"output={out}",
                                      "inference.device=cpu"], tmp_path / "pred")
    predict(pcfg)
    source, adapted = read_dataset(a), read_dataset(out)
    assert adapted.images[2.0].shape == source.images[2.0].shape and adapted.voxel_size_nm == source.voxel_size_nm
    np.testing.assert_array_equal(adapted.labels, source.labels)
    assert low - 1e-3 <= adapted.images[2.0].min() and adapted.images[2.0].max() <= high + 1e-3  # b's grey values
    assert adapted.manifest["translated"]["direction"] == "ab"

    with pytest.raises(FileExistsError):
        predict(pcfg)  # an existing output is not replaced without overwrite=true


def test_translate_refuses_a_segmentation_checkpoint(tiny_dataset, tmp_path):
    from tests.conftest import FAST_TRAIN

    cfg = compose_config("train", FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "evaluate=false",
                                                "trainer.max_epochs=1"], tmp_path / "seg")
    train(cfg)
    pcfg = compose_config("predict", [f"ckpt_path={cfg.paths.output_dir}", "task=translate",
                                      f"input={tiny_dataset}", f"output={tmp_path / 'x'}"], tmp_path / "p")
    with pytest.raises(ValueError, match="needs a CycleGAN run"):
        predict(pcfg)


@pytest.mark.slow
def test_cyclegan_sim_synthesises_both_domains_and_trains(tmp_path):
    """experiment=cyclegan_sim from scratch: the depth-weighted source and the Monte Carlo target of
    one (tiny) structure are generated and cached, then a training step runs."""
    structure = ["shape=[8,40,40]", "structure.coarse_wavelength_nm=20", "structure.fine_wavelength_nm=10"]
    overrides = ["experiment=cyclegan_sim", *TINY_GAN, "data.target_generator.simulator.electrons_per_pixel=2"]
    overrides += [f"data.{side}_generator.{s}" for side in ("source", "target") for s in structure]
    cfg = compose_config("train", overrides, tmp_path)
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["train/loss_g_epoch"])
    datamodule = objects["datamodule"]
    source, target = (read_dataset(datamodule.domain_path(d)) for d in ("a", "b"))
    assert source.manifest["parameters"]["simulator"]["name"] == "depth_weighted"
    assert target.manifest["parameters"]["simulator"]["name"] == "montecarlo"
    np.testing.assert_array_equal(source.labels, target.labels)  # one structure, two imaging models
    pre, mc, solid = source.images[2.0], target.images[2.0], source.labels == 1
    assert 0 <= pre.min() and pre.max() <= 1 and pre[solid].mean() > pre[~solid].mean() + 0.2
    assert mc[solid].mean() > mc[~solid].mean()  # gold brighter than epoxy in the Monte Carlo images too
