"""ML inpainting in z: masked-plane data, the task's masked loss and metrics, inpaint_volume, the experiment."""

import math
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from fibml.data.inpainting import FILL_VALUE, InpaintingDataModule
from fibml.geometry import slice_positions
from fibml.io import read_stack, write_stack
from fibml.nets.unet import ResidualUNet
from fibml.pipelines.train import train
from fibml.reconstruct.inpainting import inpaint_volume
from fibml.synth.thickness import sample_thicknesses
from fibml.tasks.inpainting import InpaintingTask, MaskedDiceCELoss
from tests.conftest import FAST_TRAIN, TINY_STRUCTURE, compose_config

THICKNESS = {"target_nm": 10.0, "shape": 4.0, "bin_nm": 2.5}


def _module(data_dir, **kwargs) -> InpaintingDataModule:
    settings = {"patch_size": 16, "batch_size": 8, "split": {"gap": 4}, "epoch_size": 16, "val_size": 24,
                "thickness": THICKNESS}
    dm = InpaintingDataModule(data_dir, **(settings | kwargs))
    dm.setup("fit")
    return dm


def _task(features=(8, 16)) -> InpaintingTask:
    net = ResidualUNet(2, 2, spatial_dims=2, features=features)
    return InpaintingTask(net, MaskedDiceCELoss(), optimizer=partial(torch.optim.Adam, lr=1e-3))


def test_samples_are_masked_planes_of_a_thickness_draw(tiny_dataset):
    dm = _module(tiny_dataset)
    labels = read_stack(tiny_dataset / "labels.tif")[0]
    assert dm.grid_nm == 2.5 and dm.labels.shape == (40, 48, 48)
    val = dm.datasets["val"]
    for i, sample in enumerate(val.samples):
        x, y = (t.numpy() for t in val[i])
        assert x.shape == (2, 16, 16) and x.dtype == np.float32 and y.shape == (16, 16) and y.dtype == np.int64
        # the known rows are exactly those of a repositioned thickness draw, shifted by the offset
        positions, _ = slice_positions(sample_thicknesses(16, seed=sample.thickness_seed, **THICKNESS), 2.5)
        rows = positions - sample.offset
        known = np.zeros(16, bool)
        known[rows[(rows >= 0) & (rows < 16)]] = True
        np.testing.assert_array_equal(sample.known, known)
        np.testing.assert_array_equal(x[1], np.repeat(known[:, None], 16, axis=1))  # channel 1 = the mask
        assert np.all(x[0][~known] == FILL_VALUE) and np.array_equal(x[0][known], y[known])
        zs, ws = slice(sample.z0, sample.z0 + 16), slice(sample.w0, sample.w0 + 16)
        truth = labels[zs, sample.index, ws] if sample.plane == "xz" else labels[zs, ws, sample.index]
        np.testing.assert_array_equal(y, truth)  # the target is the full ground-truth plane
    # slices >= 1 grid row thick, ~10 nm = 4 rows apart on average
    spacings = np.concatenate([np.diff(np.flatnonzero(s.known)) for s in _draws(dm, "train", 200)])
    assert spacings.min() >= 1 and 3.0 < spacings.mean() < 5.0


def _draws(dm, split, n):
    rng = np.random.default_rng(1)
    return [dm.datasets[split].draw(rng) for _ in range(n)]


def test_blocks_along_y_do_not_overlap(tiny_dataset):
    dm = _module(tiny_dataset)
    train_y, val_y, test_y = dm.blocks["train"], dm.blocks["val"], dm.blocks["test"]
    assert val_y.start - train_y.stop == 4 and test_y.start - val_y.stop == 4  # the gap
    for split, block in dm.blocks.items():
        samples = dm.datasets[split].samples or _draws(dm, split, 200)
        for s in samples:
            y_extent = range(s.index, s.index + 1) if s.plane == "xz" else range(s.w0, s.w0 + 16)
            assert y_extent.start >= block.start and y_extent.stop <= block.stop, (split, s)
        # the 26-row training block holds 16-wide yz crops, the 5-row val / test blocks only xz planes
        assert {s.plane for s in samples} == ({"xz", "yz"} if split == "train" else {"xz"})


def test_validation_is_fixed_and_training_is_seeded(tiny_dataset):
    first = next(iter(_module(tiny_dataset).val_dataloader()))
    again = _module(tiny_dataset)
    for x in (next(iter(again.val_dataloader())), next(iter(again.val_dataloader()))):
        assert torch.equal(x[0], first[0]) and torch.equal(x[1], first[1])
    assert x[0].shape == (8, 2, 16, 16)
    batches = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        batches.append(next(iter(again.train_dataloader()))[0])
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])
    assert not torch.equal(next(iter(again.train_dataloader()))[0], batches[2])  # fresh samples every epoch


def test_non_binary_labels_raise(tmp_path):
    labels = np.zeros((20, 24, 24), np.uint8)
    labels[3, 4, 5] = 2
    write_stack(tmp_path / "labels.tif", labels, 2.5)
    with pytest.raises(ValueError, match=r"labels.tif: inpainting needs binary labels \(0 = pore, 1 = solid\), found the values 0, 2$"):
        _module(tmp_path)


def test_embedded_default_and_batch_per_device(tmp_path):
    generator = {"shape": [24, 40, 40], "voxel_size_nm": 2.5, "voltages": [2], "structure": TINY_STRUCTURE,
                 "imaging": {}, "seed": 0}
    dm = InpaintingDataModule(None, patch_size=16, batch_size=8, split={"gap": 2}, cache_dir=tmp_path,
                              generator=generator)
    dm.trainer = type("T", (), {"world_size": 2})()
    dm.setup("fit")
    assert dm.labels_path.parent.parent == tmp_path and dm.labels.shape == (24, 40, 40)
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 2, 16, 16)


def test_loss_and_metrics_ignore_known_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 1::3] = True  # the unknown rows
    loss = MaskedDiceCELoss()
    base = loss(logits, target, mask)
    changed = logits.detach().clone()
    changed[:, :, ~mask[0]] = torch.randn_like(changed[:, :, ~mask[0]]) * 10
    assert torch.equal(loss(changed, target, mask), base)
    base.backward()
    assert logits.grad[:, :, ~mask[0]].abs().max() == 0 and logits.grad[:, :, mask[0]].abs().max() > 0
    changed[:, 1, mask[0]] += 1.0  # more solid on the unknown rows
    assert not torch.isclose(loss(changed, target, mask), base)
    perfect = (F.one_hot(target, 2).movedim(-1, 1).float() - 0.5) * 40
    perfect[:, :, ~mask[0]] *= -1  # wrong everywhere the loss must not look
    assert loss(perfect, target, mask) < 1e-6

    # MP counts masked pixels only: an all-solid net misplaces exactly the masked pore pixels
    task = _task()
    task.net = _AllSolid()
    x = torch.stack([torch.full((2, 8, 8), FILL_VALUE), (~mask).float()], dim=1)
    with pytest.warns(UserWarning, match="self.log"):
        task.validation_step((x, target), 0)
    expected = 100.0 * (target[mask] == 0).float().mean()
    assert task.val_metrics["mp"].compute() == pytest.approx(expected.item())


class _AllSolid(torch.nn.Module):
    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], dim=1)


def test_task_trains_and_keeps_known_rows(tiny_dataset):
    pl.seed_everything(0)
    dm = InpaintingDataModule(tiny_dataset, patch_size=32, batch_size=4, split={"gap": 4}, epoch_size=12, val_size=4)
    task = _task()
    before = [p.detach().clone() for p in task.net.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=dm)
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["val/mds"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, task.net.parameters()))
    x, y = next(iter(dm.val_dataloader()))
    probabilities = task.eval().probabilities(x)
    known = x[:, 1].bool()
    torch.testing.assert_close(probabilities.sum(1), torch.ones_like(x[:, 0]))
    assert torch.equal(probabilities[:, 1][known], y[known].float())  # known rows: one-hot of the known label
    with torch.no_grad():
        free = torch.softmax(task.net(x), 1)[:, 1][~known]
    torch.testing.assert_close(probabilities[:, 1][~known], free)
    # the trained task fills a repositioned volume; its known rows stay as given
    truth = dm.labels[:32, :4, :32]
    volume, rows = _repositioned(truth)
    filled = inpaint_volume(volume, rows, task.probabilities, patch_size=32, batch_size=4)
    np.testing.assert_array_equal(filled[rows], truth[rows])


def _repositioned(truth: np.ndarray, seed: int = 3):
    positions, _ = slice_positions(sample_thicknesses(truth.shape[0], seed=seed, **THICKNESS), 2.5)
    known = np.zeros(truth.shape[0], bool)
    known[positions[positions < truth.shape[0]]] = True
    return np.where(known[:, None, None], truth, 255).astype(np.uint8), known


def _constant(solid_xz: float, solid_yz: float, xz_width: int):
    """Probabilities that tell xz planes (width xz_width) from yz planes."""
    def predictor(x):
        p = solid_xz if x.shape[-1] == xz_width else solid_yz
        return torch.stack([torch.full_like(x[:, 0], 1 - p), torch.full_like(x[:, 0], p)], dim=1)
    return predictor


def test_inpaint_volume_fills_only_masked_rows(tiny_dataset):
    truth = read_stack(tiny_dataset / "labels.tif")[0][:, :20, :24]  # (40, 20, 24)
    volume, known = _repositioned(truth)
    assert 0 < known.sum() < len(known)

    # an oracle that knows every plane's answer (patch >= plane: each window is one whole plane)
    answers = {}
    for plane, stack in (("xz", truth.transpose(1, 0, 2)), ("yz", truth.transpose(2, 0, 1))):
        for gt in stack:
            image = np.stack([np.where(known[:, None], gt, FILL_VALUE), np.repeat(known[:, None], gt.shape[1], 1)])
            answers[image.astype(np.float32).tobytes()] = gt
    assert len(answers) == truth.shape[1] + truth.shape[2]  # no two planes look alike

    def oracle(x):
        gt = np.stack([answers[plane.numpy().tobytes()] for plane in x])
        return F.one_hot(torch.from_numpy(gt).long(), 2).movedim(-1, 1).float()

    filled = inpaint_volume(volume, known, oracle, patch_size=64, batch_size=7)
    assert filled.dtype == np.uint8 and filled.shape == truth.shape
    np.testing.assert_array_equal(filled, truth)

    # any predictor: known rows come back exactly; sliding windows cover planes larger than the patch
    shapes = []
    def noise(x):
        shapes.append(tuple(x.shape[-2:]))
        return torch.softmax(torch.randn(x.shape[0], 2, *x.shape[2:]), 1)
    filled = inpaint_volume(volume, known, noise, patch_size=16, overlap=0.25)
    np.testing.assert_array_equal(filled[known], truth[known])
    assert set(np.unique(filled[~known])) == {0, 1} and set(shapes) == {(16, 16)}


def test_inpaint_volume_averages_xz_and_yz():
    truth = np.zeros((12, 10, 14), np.uint8)
    volume, known = _repositioned(truth, seed=0)
    unknown = ~known
    # mean solid probability 0.6 -> solid, 0.4 -> pore; xz alone would say solid both times
    assert np.all(inpaint_volume(volume, known, _constant(0.9, 0.3, 14))[unknown] == 1)
    assert np.all(inpaint_volume(volume, known, _constant(0.7, 0.1, 14))[unknown] == 0)
    assert np.all(inpaint_volume(volume, known, _constant(0.7, 0.1, 14), planes=("xz",))[unknown] == 1)
    assert np.all(inpaint_volume(volume, known, _constant(0.7, 0.1, 14), planes=("yz",))[unknown] == 0)
    assert np.all(inpaint_volume(volume, known, _constant(0.9, 0.9, 14))[known] == 0)  # known rows stay


def test_inpaint_volume_errors():
    volume, known = _repositioned(np.zeros((12, 8, 8), np.uint8), seed=0)
    predictor = _constant(0.5, 0.5, 8)
    with pytest.raises(ValueError, match="12 rows, got shape"):
        inpaint_volume(volume, known[:-1], predictor)
    with pytest.raises(ValueError, match="no known row"):
        inpaint_volume(volume, np.zeros(12, bool), predictor)
    bad = volume.copy()
    bad[np.flatnonzero(known)[-1], 2, 3] = 2
    with pytest.raises(ValueError, match=rf"binary labels .* \[0, 2\] \(first bad row z={np.flatnonzero(known)[-1]}\)"):
        inpaint_volume(bad, known, predictor)
    with pytest.raises(ValueError, match="planes must name"):
        inpaint_volume(volume, known, predictor, planes=("xy",))


@pytest.mark.smoke
def test_inpainting_experiment_trains_a_step(tiny_dataset, tmp_path):
    """experiment=inpainting composes from the shared defaults and trains a step (that it learns:
    test_e2e.test_every_experiment_learns_a_batch_and_evaluates; what it inpaints: the tests above)."""
    cfg = compose_config("train", ["experiment=inpainting"], tmp_path)
    assert cfg.data._target_.endswith("InpaintingDataModule") and cfg.model._target_.endswith("InpaintingTask")
    assert cfg.data.patch_size == 64 and dict(cfg.data.thickness) == THICKNESS and cfg.evaluate is False
    assert cfg.data.generator == compose_config("train", [], tmp_path).data.generator  # the shared embedded default
    overrides = ["experiment=inpainting", "debug=fdr", f"data.data_dir={tiny_dataset}", "data.val_size=8"]
    overrides += [o for o in FAST_TRAIN if not o.startswith("data.stride")]  # planes are sampled, not strided
    cfg = compose_config("train", overrides, tmp_path)
    metrics, objects = train(cfg)
    assert isinstance(objects["model"], InpaintingTask) and math.isfinite(metrics["train/loss"])
    assert 0 <= metrics["val/mds"] <= 1 and 0 <= metrics["val/mp"] <= 100
    assert objects["model"].net.features == (8, 16)
