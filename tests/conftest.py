"""Shared fixtures: a tiny synthetic dataset and the real Hydra configs, composed."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from fibml.config import CONFIG_DIR, register_resolvers
from fibml.synth.dataset import generate_dataset

register_resolvers()

# a 40 x 48 x 48 leveled-wave volume with ~8 nm ligaments: big enough for 32-pixel patches
TINY_STRUCTURE = {"function": "fibml.synth.microstructure.leveled_wave", "wavelength_nm": 30.0, "solid_fraction": 0.3}

# settings that make a training run take seconds on 2 CPU cores
FAST_TRAIN = [
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "data.patch_size=32",
    "data.stride=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.split.gap=4",
    "model.net.features=[8,16]",
    "inference.device=cpu",
]


def small_net(overrides: list[str], experiment: str) -> list[str]:
    """FAST_TRAIN-style overrides with the U-Net width set where the experiment's model keeps
    it: model.net for single U-Nets and early fusion, model.net.branch for the branched nets."""
    if "intermediate_fusion" in experiment or "late_fusion" in experiment:
        return [o.replace("model.net.features", "model.net.branch.features") for o in overrides]
    return list(overrides)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "tiny"
    return generate_dataset(
        folder, shape=(40, 48, 48), voxel_size_nm=2.5, voltages=[1, 2, 4], structure=TINY_STRUCTURE,
        imaging={}, seed=0, progress=False,
    )


# a 32 x 48 x 48 three-phase electrode (10 nm voxels) with small particles, imaged by two detectors
TINY_ELECTRODE = {
    "function": "fibml.synth.electrode.electrode_structure", "particle_radius_nm": [90, 150],
    "internal_wavelength_nm": 60, "binder_wavelength_nm": 40, "binder_reach_nm": 50, "roughness_wavelength_nm": 150,
}


@pytest.fixture(scope="session")
def tiny_electrode(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "electrode"
    return generate_dataset(
        folder, shape=(32, 48, 48), voxel_size_nm=10.0, voltages=[1], structure=TINY_ELECTRODE, imaging={},
        seed=0, progress=False, detectors=["se2", "inlens"], phases=["pore", "active material", "carbon binder"],
    )


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The real config `name` with overrides, its paths pointed into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    if "paths" not in cfg:
        return cfg
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.data_dir = str(output_dir / "data")
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.output_dir = str(output_dir / "run")
    return cfg


class LossHistory(pl.Callback):
    """The training loss of every step, for tests that check a model learns (a callback that a
    config names: ``callbacks.losses._target_=tests.conftest.LossHistory``)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
