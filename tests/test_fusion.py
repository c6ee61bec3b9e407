"""Fusion networks (early, intermediate, late) in 2D, 2.5D and 3D, and late fusion's two-stage training."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fibml.nets.fusion import IntermediateFusion, LateFusion, early_fusion, split_voltages
from fibml.nets.unet import ResidualUNet
from fibml.tasks.fusion import LateFusionTask

# (spatial dims, channels per voltage, spatial shape of a patch)
LAYOUTS = {"2d": (2, 1, (16, 16)), "2.5d": (2, 7, (16, 16)), "3d": (3, 1, (8, 16, 16))}


def _branch(spatial, per_voltage, **kw):
    return partial(ResidualUNet, in_channels=per_voltage, spatial_dims=spatial, features=[4, 8], **kw)


def _nets(layout: str, n_voltages: int) -> dict[str, nn.Module]:
    spatial, c, _ = LAYOUTS[layout]
    return {
        "early": early_fusion(n_voltages, c, out_channels=2, spatial_dims=spatial, features=[4, 8]),
        "intermediate": IntermediateFusion(_branch(spatial, c), n_voltages, 2, branch_channels=4, head_channels=8,
                                           spatial_dims=spatial),
        "late": LateFusion(_branch(spatial, c, out_channels=2), n_voltages, 2, spatial_dims=spatial),
        "late-voting": LateFusion(_branch(spatial, c, out_channels=2), n_voltages, 2, spatial_dims=spatial,
                                  ensemble="voting"),
    }


def _by_hand(name: str, net: nn.Module, x: torch.Tensor, c: int, n_voltages: int) -> torch.Tensor:
    """What each fusion computes, written out: the voltage-major channels cut by hand (voltage v
    owns channels v*c .. v*c + c - 1), every branch on its own voltage, then the paper's fusion."""
    parts = [x[:, v * c : (v + 1) * c] for v in range(n_voltages)]
    if name == "early":
        return net(x)  # one U-Net on every channel: nothing to combine (its input width is checked below)
    if name == "intermediate":
        return net.head(torch.cat([branch(p) for branch, p in zip(net.branches, parts)], 1))
    probs = [torch.softmax(branch(p), 1) for branch, p in zip(net.branches, parts)]
    if name == "late-voting":  # p = sum_v w_v p_v, w = softmax(a); logits log p
        w = torch.softmax(net.ensemble.logits, 0)
        return torch.log(sum(w[v] * probs[v] for v in range(n_voltages)))
    # conv: logit_o = sum_v sum_i W[o, v*K + i] p_v,i + b_o (a 1x1 convolution over the probabilities)
    k = probs[0].shape[1]
    weight = net.ensemble.weight.reshape(k, n_voltages, k)
    spatial = "xyz"[: probs[0].ndim - 2]
    logits = torch.einsum(f"ovi,bvi{spatial}->bo{spatial}", weight, torch.stack(probs, 1))
    return logits + net.ensemble.bias.view(1, k, *(1,) * len(spatial))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n_voltages", [2, 3, 4])
def test_every_fusion_net_computes_its_fusion_and_trains_every_branch(layout, n_voltages):
    spatial, c, shape = LAYOUTS[layout]
    torch.manual_seed(0)
    x = torch.randn(2, n_voltages * c, *shape)
    for name, net in _nets(layout, n_voltages).items():
        with torch.no_grad():  # an ensemble away from its symmetric start, so that every weight shows
            for p in net.ensemble.parameters() if hasattr(net, "ensemble") else ():
                p.add_(torch.randn_like(p))
        net.eval()  # batch norm from running statistics: the same numbers in both passes
        with torch.no_grad():
            torch.testing.assert_close(net(x), _by_hand(name, net, x, c, n_voltages), rtol=1e-5, atol=1e-5,
                                       msg=name)
        net.train()
        out = net(x)
        assert out.shape == (2, 2, *shape), name
        out.square().mean().backward()
        assert all(p.grad is not None for p in net.parameters()), name
        if hasattr(net, "branches"):
            assert len(net.branches) == n_voltages
            for branch in net.branches:  # every voltage's branch learns
                assert any(p.grad.abs().sum() > 0 for p in branch.parameters()), name
        else:  # early fusion: every voltage's slices are input channels of the one U-Net
            first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
            assert first.in_channels == n_voltages * c, name


def test_each_branch_sees_only_its_own_voltage():
    spatial, c, shape = LAYOUTS["2.5d"]
    net = LateFusion(_branch(spatial, c, out_channels=2), 3, 2).eval()
    x = torch.randn(1, 3 * c, *shape)
    before = [z.detach() for z in net.branch_logits(x)]
    x2 = x.clone()
    x2[:, c : 2 * c] += 5.0  # voltage-major: channels c..2c-1 are the second voltage's slices
    after = [z.detach() for z in net.branch_logits(x2)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])
    with pytest.raises(ValueError, match="not a multiple of 3 voltages"):
        split_voltages(torch.zeros(1, 8, 4, 4), 3)


def test_late_fusion_ensemble_and_voltage_weights():
    torch.manual_seed(1)
    conv = LateFusion(_branch(2, 1, out_channels=2), 3, 2)
    assert conv.voltage_weights() == pytest.approx([1 / 3] * 3)  # starts as a plain average
    with torch.no_grad():  # only voltage 0's solid vote counts, with twice the weight of voltage 2
        conv.ensemble.weight.zero_()
        w = conv.ensemble.weight.view(2, 3, 2)  # (out class, voltage, in class)
        w[1, 0, 1], w[0, 0, 0] = 2.0, 2.0
        w[1, 2, 1], w[0, 2, 0] = 1.0, 1.0
    assert conv.voltage_weights() == pytest.approx([2 / 3, 0.0, 1 / 3])

    voting = LateFusion(_branch(2, 1, out_channels=2), 3, 2, ensemble="voting")
    with torch.no_grad():
        voting.ensemble.logits.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])))
    assert voting.voltage_weights() == pytest.approx([0.5, 0.3, 0.2])
    x = torch.randn(2, 3, 8, 8)
    voting.eval()
    probs = [torch.softmax(z, 1) for z in voting.branch_logits(x)]
    expected = 0.5 * probs[0] + 0.3 * probs[1] + 0.2 * probs[2]
    torch.testing.assert_close(torch.softmax(voting(x), 1), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ensemble"):
        LateFusion(_branch(2, 1, out_channels=2), 3, 2, ensemble="mean")


def test_intermediate_fusion_head_is_the_papers():
    net = IntermediateFusion(_branch(2, 1), 3, n_classes=2, branch_channels=16, head_channels=64)
    first, last = net.head[0], net.head[-1]
    assert (first.in_channels, first.out_channels) == (48, 64)
    assert (last.in_channels, last.out_channels, last.kernel_size) == (64, 2, (1, 1))


class _Snapshots(pl.Callback):
    def __init__(self):
        self.branches, self.ensemble, self.running_mean, self.branch_grads = [], [], [], []

    def on_train_epoch_end(self, trainer, module):
        net = module.net
        self.branches.append(torch.cat([p.detach().flatten().clone() for p in net.branches.parameters()]))
        self.ensemble.append(torch.cat([p.detach().flatten().clone() for p in net.ensemble.parameters()]))
        self.running_mean.append(net.branches[0].encoder[0][0].norm1.running_mean.clone())

    def on_after_backward(self, trainer, module):
        # whether this step's backward pass went through the branches (one entry per epoch)
        grads = any(p.grad is not None for p in module.net.branches.parameters())
        if len(self.branch_grads) == trainer.current_epoch:
            self.branch_grads.append(grads)


def _late_task(branch_epochs: int) -> LateFusionTask:
    net = LateFusion(_branch(2, 1, out_channels=2), 3, 2)
    return LateFusionTask(
        net, DiceLoss(softmax=True, to_onehot_y=True, batch=True), partial(torch.optim.Adam, lr=1e-3),
        branch_epochs=branch_epochs, ensemble_lr=1e-2, voltages=[1, 2, 4],
    )


def _loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(n, 16, 16, generator=g) > 0.6).long()
    x = torch.stack([y + 0.3 * k * torch.rand(n, 16, 16, generator=g) for k in range(3)], 1).float()
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_late_fusion_trains_branches_first_then_only_the_ensemble():
    pl.seed_everything(0)
    task, snaps = _late_task(branch_epochs=2), _Snapshots()
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps])
    trainer.fit(task, _loader(), _loader(8))
    b, e, bn = snaps.branches, snaps.ensemble, snaps.running_mean
    assert not torch.equal(b[0], b[1])  # stage 1: the branches learn
    assert torch.equal(b[2], b[3]) and torch.equal(b[1], b[2])  # stage 2 (epochs 2, 3): frozen
    assert torch.equal(bn[2], bn[3])  # batch-norm statistics frozen too
    assert not torch.equal(e[2], e[3])  # while the ensemble keeps learning
    # one process: frozen branches run forward only, no backward pass through them
    assert snaps.branch_grads == [True, True, False, False]
    assert {"val/loss_1kV", "val/loss_4kV", "ensemble/weight_2kV"} <= set(trainer.callback_metrics)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # branches' group
    assert trainer.optimizers[0].param_groups[1]["lr"] == pytest.approx(1e-2)


def test_late_fusion_from_checkpoints_never_backpropagates_through_the_branches():
    # branch_epochs=0 (model.branch_ckpts, the paper's procedure): the branches are frozen before
    # DDP could wrap them, so a step costs their inference only, and the ensemble still learns
    pl.seed_everything(0)
    task, snaps = _late_task(branch_epochs=0), _Snapshots()
    assert not any(p.requires_grad for p in task.net.branches.parameters())
    start = torch.cat([p.detach().flatten().clone() for p in task.net.branches.parameters()])
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps])
    trainer.fit(task, _loader(), _loader(8))
    assert snaps.branch_grads == [False, False]
    assert torch.equal(snaps.branches[1], start)
    assert not torch.equal(snaps.ensemble[0], snaps.ensemble[1])
    assert {"val/loss_1kV", "train/loss_4kV"} <= set(trainer.callback_metrics)


def test_late_fusion_task_checks_its_inputs():
    loss = DiceLoss(softmax=True, to_onehot_y=True)
    with pytest.raises(TypeError, match="needs a fibml.nets.fusion.LateFusion net"):
        LateFusionTask(ResidualUNet(3, 2), loss, partial(torch.optim.Adam))
    with pytest.raises(ValueError, match=r"2 voltages \[1, 2\] for 3 branches"):
        LateFusionTask(LateFusion(_branch(2, 1, out_channels=2), 3), loss, partial(torch.optim.Adam), voltages=[1, 2])
