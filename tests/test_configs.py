"""Every experiment and script config composes and instantiates, so no config rots."""

import pytest
from hydra.utils import instantiate

from fibml.config import CONFIG_DIR
from fibml.data.datamodules import FIBSEMDataModule
from fibml.tasks.segmentation import SegmentationTask
from tests.conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
EXPECTED_INPUT = {"2d": (2, 1), "2.5d": (2, 7), "3d": (3, 1)}  # spatial dims, slices per voltage


def test_there_are_experiments():
    assert {"single_voltage", "single_voltage_25d", "single_voltage_3d"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    assert isinstance(datamodule, FIBSEMDataModule) and isinstance(model, SegmentationTask)
    spatial, slices = EXPECTED_INPUT[cfg.data.dims]
    assert model.net.spatial_dims == spatial
    assert model.net.encoder[0][0].conv1.in_channels == len(cfg.data.voltages) * slices
    assert cfg.trainer.max_epochs == 100 and cfg.callbacks.early_stopping.patience == 25


def test_paper_training_settings_are_the_defaults(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert cfg.data.patch_size == 64 and cfg.data.stride == 32 and cfg.data.batch_size == 64
    assert cfg.model.optimizer.lr == 1e-4
    assert cfg.model.scheduler.patience == 10 and cfg.model.scheduler.factor == 0.1
    assert cfg.model.loss._target_ == "monai.losses.DiceLoss"
    assert cfg.data.n_adjacent == 7
    assert cfg.logger.wandb.offline is True


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit"])
def test_debug_configs_compose(debug, tmp_path):
    cfg = compose_config("train", [f"debug={debug}"], tmp_path)
    assert cfg.data.num_workers == 0


@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_script_configs_compose(name, tmp_path):
    cfg = compose_config(name, ["ckpt_path=x.ckpt"] + (["input=a", "output=b"] if name == "predict" else []), tmp_path)
    assert cfg.inference.overlap == 0.5


@pytest.mark.parametrize("generator", sorted(p.stem for p in (CONFIG_DIR / "generator").glob("*.yaml")))
def test_generator_configs_compose(generator, tmp_path):
    synth = compose_config("synth", [f"generator={generator}", "seed=5"], tmp_path)
    assert synth.seed == 5 and len(synth.shape) == 3 and "function" in synth.structure


def test_embedded_default_is_the_synth_default(tmp_path):
    train = compose_config("train", [], tmp_path).data.generator
    synth = compose_config("synth", [], tmp_path)
    assert train == {key: synth[key] for key in train}
