"""Every experiment and script config composes and instantiates, so no config rots."""

import pytest
import torch
from hydra.utils import instantiate

from fibml.checkpoints import build_model
from fibml.config import CONFIG_DIR
from fibml.data.datamodules import FIBSEMDataModule
from fibml.data.inpainting import InpaintingDataModule
from fibml.nets.unet import ResidualUNet
from fibml.tasks.fusion import LateFusionTask
from fibml.tasks.inpainting import InpaintingTask
from fibml.tasks.segmentation import SegmentationTask
from tests.conftest import compose_config

# files starting with "_" are fragments the experiments include (e.g. the 3D data settings)
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("[!_]*.yaml"))
INPAINTING = ["inpainting"]  # planes of label volumes, not image slices: checked on their own below
CYCLEGAN = ["cyclegan_da", "cyclegan_sim"]  # unpaired image translation
BACKSCATTER = ["backscatter_ann"]  # a regression of eta on (Z, E, depth)
SEGMENTATION = [e for e in EXPERIMENTS if e not in INPAINTING + CYCLEGAN + BACKSCATTER]
EXPECTED_INPUT = {"2d": (2, 1), "2.5d": (2, 7), "3d": (3, 1)}  # spatial dims, slices per voltage


def test_there_are_experiments():
    methods = ("single_voltage", "early_fusion", "intermediate_fusion", "late_fusion")
    assert {f"{m}{v}" for m in methods for v in ("", "_25d", "_3d")} <= set(EXPERIMENTS)


def _first_convs(net) -> list:
    """The first convolution of every input branch (one for a plain U-Net)."""
    if isinstance(net, ResidualUNet):
        return [net.encoder[0][0].conv1]
    return [conv for branch in net.branches for conv in _first_convs(branch)]


@pytest.mark.parametrize("experiment", SEGMENTATION)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model)
    assert isinstance(datamodule, FIBSEMDataModule) and isinstance(model, SegmentationTask)
    spatial, slices = EXPECTED_INPUT[cfg.data.dims]
    assert cfg.data.dims == ("3d" if experiment.endswith("_3d") else "2.5d" if experiment.endswith("_25d") else "2d")
    voltages = len(cfg.data.voltages)
    assert voltages == (1 if experiment.startswith("single") else 2 if experiment == "three_phase" else 3)
    assert cfg.model.n_classes == (3 if experiment == "three_phase" else 2)
    convs = _first_convs(model.net)
    assert all(conv.in_channels * len(convs) == voltages * slices for conv in convs)
    assert all(isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)[spatial - 2]) for conv in convs)
    assert len(convs) == (voltages if "intermediate" in experiment or "late" in experiment else 1)
    assert isinstance(model, LateFusionTask) == experiment.startswith("late_fusion")
    assert cfg.trainer.max_epochs == 100 and cfg.callbacks.early_stopping.patience == 25
    assert cfg.model.optimizer.lr == 1e-4 and cfg.data.batch_size == (16 if spatial == 3 else 64)


@pytest.mark.parametrize("experiment", INPAINTING)
def test_inpainting_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model)
    assert isinstance(datamodule, InpaintingDataModule) and isinstance(model, InpaintingTask)
    conv = _first_convs(model.net)[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == 2  # the masked plane and the known-row mask
    assert model.net.head.out_channels == 2 and model.net.features == (16, 32, 64, 128)
    assert datamodule.patch == (64, 64) and datamodule.thickness == {"target_nm": 10.0, "shape": 4.0, "bin_nm": 2.5}
    assert cfg.data.generator == compose_config("train", [], tmp_path).data.generator  # the shared embedded default
    assert cfg.evaluate is False  # train.py's slice-by-slice test evaluation is for segmentation models
    assert cfg.trainer.max_epochs == 100 and cfg.callbacks.early_stopping.patience == 25
    assert cfg.model.optimizer.lr == 1e-4 and cfg.data.batch_size == 64


@pytest.mark.parametrize("experiment", [e for e in CYCLEGAN if e in EXPERIMENTS])
def test_cyclegan_experiment_composes_with_the_papers_settings(experiment, tmp_path):
    from fibml.data.unpaired import UnpairedDataModule
    from fibml.nets.gan import receptive_field
    from fibml.tasks.cyclegan import CycleGANTask

    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model)
    assert isinstance(datamodule, UnpairedDataModule) and isinstance(model, CycleGANTask)
    assert model.generator_ab is not model.generator_ba and model.discriminator_a is not model.discriminator_b
    # Table 1: patches 128, stride 64, batch 1, Adam 1e-4 reduced x0.1 after 10 of the paper's epochs of
    # 25,088 iterations (appendix C); CycleGAN's losses; no early stopping (25 such epochs is beyond any run)
    assert datamodule.patch == (128, 128) and datamodule.stride == (64, 64) and cfg.data.batch_size == 1
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.scheduler.patience == 10 and cfg.model.scheduler.factor == 0.1
    assert model.hparams.scheduler_epoch_steps == 25088
    assert cfg.model.lambda_cycle == 10 and cfg.model.pool_size == 50
    assert receptive_field(cfg.model.discriminator_a.n_layers) == 70
    assert cfg.evaluate is False and cfg.callbacks.early_stopping is None
    assert {"model_checkpoint", "last_checkpoint"} <= set(cfg.callbacks)
    if experiment == "cyclegan_da":  # the target: an unseen structure with real-FIB-SEM artefacts
        assert cfg.data.target_generator.seed != cfg.data.source_generator.seed
        assert cfg.data.target_generator.artefacts.curtaining.amplitude > 0
        assert "artefacts" not in cfg.data.source_generator


def test_cyclegan_length_in_steps_and_residual_generators(tmp_path):
    # a CycleGAN's length is counted in optimizer steps (the paper's epochs are 25,088 iterations)
    cfg = compose_config("train", ["experiment=cyclegan_sim", "trainer.max_steps=50000",
                                   "model.generator_ab.residual=true"], tmp_path)
    assert instantiate(cfg.trainer, logger=False, enable_checkpointing=False).max_steps == 50000
    model = build_model(cfg.model)
    assert model.generator_ab.residual and model.generator_ba.residual  # generator_ba follows generator_ab
    assert not build_model(compose_config("train", ["experiment=cyclegan_sim"], tmp_path).model).generator_ab.residual


def test_late_fusion_branch_stage_follows_the_epochs(tmp_path):
    cfg = compose_config("train", ["experiment=late_fusion"], tmp_path)
    assert cfg.model.branch_epochs == 70
    cfg = compose_config("train", ["experiment=late_fusion", "trainer.max_epochs=20"], tmp_path)
    assert cfg.model.branch_epochs == 14
    cfg = compose_config("train", ["experiment=late_fusion", "model.branch_ckpts=[a,b,c]"], tmp_path)
    assert cfg.model.branch_epochs == 0  # trained branches: only the ensemble learns


@pytest.mark.parametrize("experiment", ["late_fusion_voting", "late_fusion_voting_25d", "late_fusion_voting_3d"])
def test_voting_late_fusion_keeps_the_checkpoint_of_lowest_validation_mp(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.model.net.ensemble == "voting" and cfg.callbacks.model_checkpoint.monitor == "val/mp"
    assert cfg.callbacks.model_checkpoint.mode == "min" and cfg.callbacks.early_stopping.monitor == "val/loss"
    assert cfg.data.dims == {"": "2d", "25d": "2.5d", "3d": "3d"}[experiment.removeprefix("late_fusion_voting").lstrip("_")]
    conv = compose_config("train", ["experiment=late_fusion"], tmp_path)  # the paper's conv ensemble is unchanged
    assert conv.model.net.ensemble == "conv" and conv.callbacks.model_checkpoint.monitor == "val/loss"


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
