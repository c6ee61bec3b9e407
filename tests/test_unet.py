"""Tests for the dimension-generic residual U-Net (tiny widths so the file runs in seconds on CPU)."""

import pytest
import torch
from torch import nn

from fibml.nets.unet import ResidualUNet


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("in_channels", [1, 7, 21])  # single slice, 2.5D with 7 slices, 3 voltages x 7 slices
def test_2d_output_shape(in_channels):
    net = ResidualUNet(in_channels, 3, spatial_dims=2, features=(4, 8, 16))
    assert net(torch.randn(2, in_channels, 32, 32)).shape == (2, 3, 32, 32)


def test_3d_output_shape():
    net = ResidualUNet(2, 2, spatial_dims=3, features=(4, 8, 16))
    assert net(torch.randn(1, 2, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


@pytest.mark.parametrize(
    ("spatial_dims", "size", "strides"),
    [(2, (37, 45), None), (3, (13, 22, 30), None), (3, (13, 22, 30), [(1, 2, 2), (1, 2, 2)])],
)
def test_odd_sizes_keep_input_size(spatial_dims, size, strides):
    features = (4, 8, 16, 32) if spatial_dims == 2 else (4, 8, 16)
    net = ResidualUNet(1, 2, spatial_dims=spatial_dims, features=features, strides=strides)
    assert net(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_encode_channels_and_sizes_isotropic():
    net = ResidualUNet(3, 2, features=(4, 8, 16, 32))
    maps = net.encode(torch.randn(2, 3, 37, 45))
    # "same" conv with stride 2 gives ceil(n / 2): 37 -> 19 -> 10 -> 5, 45 -> 23 -> 12 -> 6.
    assert [tuple(m.shape) for m in maps] == [(2, 4, 37, 45), (2, 8, 19, 23), (2, 16, 10, 12), (2, 32, 5, 6)]


def test_encode_anisotropic_strides_keep_z():
    net = ResidualUNet(1, 2, spatial_dims=3, features=(4, 8, 16), strides=[(1, 2, 2), (1, 2, 2)], kernel_size=(1, 3, 3))
    maps = net.encode(torch.randn(1, 1, 5, 16, 20))
    assert [tuple(m.shape) for m in maps] == [(1, 4, 5, 16, 20), (1, 8, 5, 8, 10), (1, 16, 5, 4, 5)]
    assert net.encoder[0][0].conv1.weight.shape[2:] == (1, 3, 3)
    assert net.upsamplers[0].stride == (1, 2, 2)
    assert net(torch.randn(1, 1, 5, 16, 20)).shape == (1, 2, 5, 16, 20)


def test_decode_accepts_encode_output_and_n_blocks():
    net = ResidualUNet(1, 2, features=(4, 8), n_blocks=2)
    assert len(net.encoder[1]) == 2 and len(net.decoder[0]) == 2
    x = torch.randn(1, 1, 16, 16)
    net.eval()
    torch.testing.assert_close(net.decode(net.encode(x)), net(x))


def test_gradients_reach_first_conv():
    net = ResidualUNet(7, 2, features=(4, 8, 16))
    net(torch.randn(2, 7, 24, 24)).square().mean().backward()
    grad = net.encoder[0][0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_residual_shortcut_identity_for_equal_channels():
    # With both convs zeroed the main path is norm(0) = 0, so only the shortcut remains: ReLU(x).
    block = ResidualUNet(4, 2, features=(4,)).encoder[0][0]
    assert isinstance(block.shortcut, nn.Identity)
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    block.eval()
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_residual_shortcut_projects_when_channels_or_stride_change():
    net = ResidualUNet(1, 2, features=(4, 8))
    down = net.encoder[1][0]
    assert isinstance(down.shortcut, nn.Sequential) and down.shortcut[0].stride == (2, 2)
    assert down.shortcut[0].weight.shape == (8, 4, 1, 1)


def test_norm_and_dropout_choices():
    net = ResidualUNet(1, 2, spatial_dims=3, features=(4, 12), norm="instance", dropout=0.2)
    kinds = {type(m) for m in net.modules()}
    assert nn.InstanceNorm3d in kinds and nn.Dropout3d in kinds and nn.BatchNorm3d not in kinds
    assert all(m.affine for m in net.modules() if isinstance(m, nn.InstanceNorm3d))
    g = ResidualUNet(1, 2, features=(4, 12), norm="group")
    groups = sorted({m.num_groups for m in g.modules() if isinstance(m, nn.GroupNorm)})
    assert groups == [4, 6]  # min(8, 4) = 4; 12 is not divisible by 8, so the largest divisor <= 8 is used
    assert nn.Dropout2d not in {type(m) for m in g.modules()}  # dropout=0 adds no layer
    assert g(torch.randn(1, 1, 9, 9)).shape == (1, 2, 9, 9)


def test_overfits_fixed_binary_image():
    image = (torch.rand(1, 1, 32, 32) > 0.5).float()
    target = image[:, 0].long()
    net = ResidualUNet(1, 2, features=(8, 16))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(image), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    assert (net(image).argmax(1) == target).float().mean() > 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"norm": "layer"}, "norm"),
        ({"strides": [2]}, "strides"),
        ({"spatial_dims": 3, "strides": [(2, 2), 2, 2]}, "stride"),
        ({"kernel_size": 4}, "odd"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResidualUNet(1, 2, **{"features": (4, 8, 16, 32), **kwargs})

