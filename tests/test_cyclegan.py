"""Tests for the CycleGAN nets, image pool, task and unpaired data (32-pixel patches, a few channels, CPU)."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import tifffile
import torch

from fibml.data.unpaired import UnpairedDataModule, from_unit, to_unit
from fibml.io import write_dataset
from fibml.nets.gan import (
    ImagePool,
    PatchDiscriminator,
    UNetGenerator,
    init_weights,
    receptive_field,
)
from fibml.tasks.cyclegan import CycleGANTask, linear_decay

PATCH = 32


def make_nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "generator_ab": UNetGenerator(features=(8, 16)),
        "generator_ba": UNetGenerator(features=(8, 16)),
        "discriminator_a": PatchDiscriminator(ndf=8),
        "discriminator_b": PatchDiscriminator(ndf=8),
    }


def make_task(**kwargs) -> CycleGANTask:
    optimizer = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    return CycleGANTask(**make_nets(), optimizer=optimizer, **kwargs)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two tiny dataset folders: a source with one channel (6 x 40 x 40), a target with two (5 x 36 x 36)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("unpaired")
    source = write_dataset(root / "source", {2.0: rng.random((6, 40, 40)) * 100}, voxel_size_nm=5.0)
    # write_dataset wants float voltage keys (an int key fails in fibml.io._voltage_of)
    target_images = {1.0: rng.normal(500, 50, (5, 36, 36)), 2.0: rng.normal(900, 80, (5, 36, 36))}
    target = write_dataset(root / "target", target_images, voxel_size_nm=5.0)
    return source, target


def make_datamodule(domains, **kwargs) -> UnpairedDataModule:
    source, target = domains
    options = {"target_channel": "bse_2kV", "patch_size": PATCH, "stride": 16, "batch_size": 2, "val_fraction": 0.2}
    return UnpairedDataModule(source, target, **{**options, **kwargs})


# ---- nets


def test_generator_shape_and_range():
    generator = UNetGenerator(features=(8, 16))
    y = generator(torch.randn(2, 1, PATCH, PATCH))
    assert y.shape == (2, 1, PATCH, PATCH) and y.abs().max() > 0
    with torch.no_grad():
        generator.unet.head.weight.mul_(1e4)  # huge logits: without the tanh the output would leave [-1, 1]
    y = generator(torch.randn(2, 1, PATCH, PATCH))
    assert y.min() >= -1 and y.max() <= 1 and y.abs().max() > 0.99


def test_residual_generator_starts_near_the_identity():
    torch.manual_seed(0)
    x = torch.rand(2, 1, PATCH, PATCH) * 2 - 1
    residual, plain = UNetGenerator(features=(8, 16), residual=True), UNetGenerator(features=(8, 16))
    with torch.no_grad():
        near = (residual(x) - x).abs().mean()
        far = (plain(x) - x).abs().mean()
        assert near < 0.1 < far  # the plain generator starts near a constant, so about |x| away
        residual.unet.head.bias.fill_(0.5)  # the U-Net's output is added to atanh(x): brighter everywhere
        assert (residual(x) > torch.tanh(torch.atanh(x.clamp(-0.999, 0.999)) + 0.3)).float().mean() > 0.9
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        UNetGenerator(in_channels=2, out_channels=1, residual=True)


def test_discriminator_patch_map_and_receptive_field():
    discriminator = PatchDiscriminator(ndf=8, n_layers=3)
    # 64 -> 32 -> 16 -> 8 (stride 2), 7, 6 (stride 1, 4x4 kernels)
    assert discriminator(torch.randn(2, 1, 64, 64)).shape == (2, 1, 6, 6)
    assert receptive_field(3) == 70
    assert [receptive_field(n) for n in (1, 2)] == [16, 34]


def test_receptive_field_matches_the_gradient_support():
    discriminator = PatchDiscriminator(ndf=4, n_layers=2, norm="none")
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    out = discriminator(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = torch.nonzero(x.grad[0, 0]).unbind(1)
    assert int(rows.max() - rows.min() + 1) == int(cols.max() - cols.min() + 1) == receptive_field(2)


def test_init_weights_normal():
    conv = init_weights(torch.nn.Conv2d(64, 64, 4), gain=0.02)
    assert abs(float(conv.weight.detach().std()) - 0.02) < 0.002 and float(conv.bias.detach().abs().max()) == 0


# ---- image pool


def test_pool_size_zero_returns_input():
    pool = ImagePool(0)
    images = torch.randn(3, 1, 4, 4)
    assert pool.query(images) is images and len(pool) == 0


def test_pool_fills_up_to_pool_size():
    pool = ImagePool(5, seed=0)
    first = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(pool.query(first), first)  # while filling, the images come back as they are
    assert len(pool) == 3
    pool.query(torch.randn(4, 1, 4, 4))
    assert len(pool) == 5
    pool.query(torch.randn(4, 1, 4, 4))
    assert len(pool) == 5


def _queries(pool: ImagePool, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(42)
    return [pool.query(torch.randn(2, 1, 4, 4, generator=generator)) for _ in range(n)]


def test_pool_is_reproducible_and_mixes_history():
    runs = [_queries(ImagePool(3, seed=7), 20) for _ in range(2)]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)
    inputs = torch.Generator().manual_seed(42)
    fresh = [torch.randn(2, 1, 4, 4, generator=inputs) for _ in range(20)]
    # once full, some returned images are older ones from the pool, not the query's own
    assert any(not torch.equal(out, new) for out, new in zip(runs[0][2:], fresh[2:]))


def test_pool_state_dict_round_trip():
    pool = ImagePool(3, seed=1)
    _queries(pool, 5)
    state = pool.state_dict()
    assert all(image.device.type == "cpu" for image in state["images"]) and len(state["images"]) == 3
    restored = ImagePool(3, seed=99)
    restored.load_state_dict(state)
    images = torch.randn(4, 1, 4, 4)
    for _ in range(3):
        torch.testing.assert_close(restored.query(images), pool.query(images))
        images = images + 1


# ---- task


@pytest.fixture(scope="module")
def fitted(domains, tmp_path_factory):
    """One training step and one validation step of a tiny CycleGAN on the tiny domains."""
    task = make_task(pool_size=4)
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in task.named_children()}
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path_factory.mktemp("run"),
    )
    datamodule = make_datamodule(domains)
    trainer.fit(task, datamodule=datamodule)
    return task, trainer, before


def test_one_step_updates_both_generators_and_discriminators(fitted):
    task, trainer, before = fitted
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1
    for name in ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b"):
        after = list(getattr(task, name).parameters())
        changed = [not torch.equal(a, b) for a, b in zip(before[name], after)]
        assert sum(changed) > len(changed) // 2, f"{name}: {sum(changed)} of {len(changed)} tensors changed"
    assert len(task.pool_a) == len(task.pool_b) == 2  # one batch of 2 generated images per domain
    metrics = trainer.callback_metrics
    for key in ("train/loss_g", "train/loss_d", "train/loss_cycle", "train/loss_identity", "train/loss_gan"):
        assert torch.isfinite(metrics[key]), key
    assert float(metrics["val/loss"]) == pytest.approx(float(metrics["val/cycle"]))
    assert float(metrics["val/cycle"]) > 0


def test_optimizers_split_generators_and_discriminators():
    task = make_task()
    optimizer_g, optimizer_d = task.configure_optimizers()
    ids = lambda *modules: {id(p) for m in modules for p in m.parameters()}
    assert {id(p) for g in optimizer_g.param_groups for p in g["params"]} == ids(task.generator_ab, task.generator_ba)
    assert {id(p) for g in optimizer_d.param_groups for p in g["params"]} == ids(
        task.discriminator_a, task.discriminator_b
    )
    assert optimizer_g.defaults["betas"] == (0.5, 0.999)


def test_checkpoint_reloads_weights_and_pools(fitted, tmp_path):
    task, trainer, _ = fitted
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = CycleGANTask.load_from_checkpoint(path, **make_nets(), weights_only=False)
    assert loaded.hparams.pool_size == 4 and loaded.hparams.lambda_cycle == 10.0
    for a, b in zip(task.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    for pool, restored in ((task.pool_a, loaded.pool_a), (task.pool_b, loaded.pool_b)):
        assert len(restored) == len(pool) == 2
        for a, b in zip(pool.images, restored.images):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(restored.generator.get_state(), pool.generator.get_state())
    x = torch.zeros(1, 1, PATCH, PATCH)
    torch.testing.assert_close(loaded.translate(x, "ba"), task.translate(x, "ba"))


def test_translate_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        make_task().translate(torch.zeros(1, 1, PATCH, PATCH), "ac")


def test_linear_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_decay(optimizer, n_constant=2, n_decay=3)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


@pytest.mark.parametrize("epoch_steps, expected", [(None, 4), (4, 2), (5, 1)])
def test_scheduler_epoch_counts_iterations(domains, tmp_path, epoch_steps, expected):
    # 4 data epochs of 2 batches: stepped every data epoch, or only in the epochs that cross a
    # multiple of epoch_steps iterations (4: after batches 4 and 8; 5: after batch 6)
    scheduler = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    task = make_task(pool_size=0, scheduler=scheduler, scheduler_epoch_steps=epoch_steps)
    trainer = pl.Trainer(
        max_epochs=4, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=make_datamodule(domains))
    assert [config.scheduler.last_epoch for config in trainer.lr_scheduler_configs] == [expected, expected]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**expected)
    with pytest.raises(ValueError, match="scheduler_epoch_steps"):
        make_task(scheduler=scheduler, scheduler_epoch_steps=0)


# ---- unpaired data


def test_datamodule_patches_and_scaling(domains):
    datamodule = make_datamodule(domains)
    datamodule.setup("fit")
    # 2 x 2 windows a slice (40 or 36 px, stride 16: start 0 and one flush with the end); 1 of 6 / 5 slices for val
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    assert len(train) == 5 * 2 * 2 and len(val) == 1 * 2 * 2
    assert len(train.index["b"]) == 4 * 2 * 2
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"a", "b"}
    assert batch["a"].shape == batch["b"].shape == (2, 1, PATCH, PATCH)
    for item in (batch, val[0], val[len(val) - 1]):
        for x in item.values():
            assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    low, high = datamodule.scaling["b"]
    assert 650 < low < 900 < high < 1150  # the 2 kV target channel (mean 900), not the 1 kV one
    x = np.array([low, high, (low + high) / 2])
    np.testing.assert_allclose(datamodule.to_unit(x, "target"), [-1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(from_unit(to_unit(x, low, high), low, high), x, rtol=1e-5)
    np.testing.assert_allclose(datamodule.from_unit(np.array([-1.0, 1.0]), "b"), [low, high], rtol=1e-5)


def test_datamodule_pairs_are_reproducible(domains):
    batches = []
    for _ in range(2):
        datamodule = make_datamodule(domains, seed=3)
        datamodule.setup("fit")
        batches.append(next(iter(datamodule.train_dataloader())))
    for key in ("a", "b"):
        torch.testing.assert_close(batches[0][key], batches[1][key])


def test_datamodule_reads_a_folder_of_tiffs(domains, tmp_path):
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "image_2.tif", rng.random((36, 36)).astype(np.float32))
    tifffile.imwrite(tmp_path / "image_10.tiff", rng.random((2, 40, 36)).astype(np.float32))
    datamodule = UnpairedDataModule(domains[0], tmp_path, patch_size=PATCH, stride=16, val_fraction=0.3)
    datamodule.setup("fit")
    assert datamodule.datasets["val"][0]["b"].shape == (1, PATCH, PATCH)
    # 3 slices, the last one (of image_10, natural order: 40 x 36 pixels) for validation: 2 x 2 windows
    assert len(datamodule.datasets["val"].index["b"]) == 2 * 2
    assert datamodule.datasets["val"].index["b"][:, 0].tolist() == [1] * 4


def test_datamodule_errors_name_the_folder(domains, tmp_path):
    source, target = domains
    with pytest.raises(ValueError, match=re.escape(str(source)) + ".*smaller than the 64 x 64 patch"):
        make_datamodule(domains, patch_size=64).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty)) + " holds no images"):
        UnpairedDataModule(source, empty, patch_size=PATCH).setup("fit")
    with pytest.raises(ValueError, match=re.escape(str(target)) + r" holds 2 channels \(1kV, 2kV\)"):
        UnpairedDataModule(source, target, patch_size=PATCH).setup("fit")
