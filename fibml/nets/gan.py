"""CycleGAN building blocks (cyclegan-simulation-domain-adaptation.txt, 2.2-2.4): generator, PatchGAN, image pool.

Plain nn.Modules, no Lightning (fibml.tasks.cyclegan trains them). Images are (B, C, y, x)
tensors scaled to [-1, 1]; the defaults are those of Zhu et al.'s CycleGAN
(junyanz/pytorch-CycleGAN-and-pix2pix): 70x70 PatchGAN, instance norm, N(0, 0.02) weights, a pool
of 50 generated images. The generator is fibml's residual U-Net ("a customized U-Net with
residual connections", 2.2) with a tanh head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fibml.nets.unet import ResidualUNet

__all__ = ["ImagePool", "PatchDiscriminator", "UNetGenerator", "init_weights", "receptive_field"]

_DISCRIMINATOR_NORMS = ("instance", "batch", "none")
_RESIDUAL_LIMIT = 0.999  # residual generator: inputs beyond +-0.999 count as +-0.999 (atanh 3.8, not infinite)


class UNetGenerator(nn.Module):
    """Image-to-image generator: fibml's residual U-Net (2D) followed by tanh.

    forward: (B, in_channels, y, x) in [-1, 1] -> (B, out_channels, y, x) in [-1, 1], same size.
    Arguments as fibml.nets.unet.ResidualUNet's; weights are drawn by init_weights(gain=init_gain).

    residual: a global skip from input to output, ``tanh(atanh(x) + unet(x))``: the U-Net learns
    only the change of domain, and a fresh generator (small weights) starts near the identity, so
    the structure is kept from the first step instead of being learnt back through the cycle loss.
    Needs in_channels == out_channels. False is the paper's plain generator.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        n_blocks: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        init_gain: float = 0.02,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if residual and self.in_channels != self.out_channels:
            raise ValueError(f"residual=True needs in_channels == out_channels, got {in_channels} and {out_channels}")
        self.residual = bool(residual)
        self.unet = ResidualUNet(
            in_channels, out_channels, spatial_dims=2, features=features, n_blocks=n_blocks, norm=norm, dropout=dropout
        )
        init_weights(self, gain=init_gain)

    def forward(self, x: Tensor) -> Tensor:
        if self.residual:  # the input's own pre-activation; the clamp keeps atanh finite at +-1
            return torch.tanh(torch.atanh(x.clamp(-_RESIDUAL_LIMIT, _RESIDUAL_LIMIT)) + self.unet(x))
        return torch.tanh(self.unet(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / CycleGAN ``NLayerDiscriminator``): one real/fake logit per patch.

    The receptive field of each output pixel is 70x70 input pixels for n_layers=3 (see receptive_field).
    Layers: conv 4x4 stride 2 (ndf) + LeakyReLU 0.2; n_layers - 1 more stride-2 convs doubling the
    channels (at most 8 * ndf) with norm + LeakyReLU; one stride-1 conv likewise; a final 1-channel
    conv 4x4. A 256x256 input gives a 30x30 map, a 64x64 input 6x6.

    norm: "instance" (not affine, as in CycleGAN), "batch" or "none".
    forward: (B, in_channels, y, x) -> (B, 1, y', x') logits (no sigmoid: the LSGAN loss takes them as is).
    """

    def __init__(
        self,
        in_channels: int = 1,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if norm not in _DISCRIMINATOR_NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r}; choose one of {_DISCRIMINATOR_NORMS}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = int(n_layers)
        # batch norm has its own shift, so the conv before it needs no bias (CycleGAN's use_bias rule)
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=bias), _norm(norm, out)]
            layers.append(nn.LeakyReLU(0.2, True))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self, gain=init_gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def receptive_field(n_layers: int = 3) -> int:
    """Receptive field (input pixels, per axis) of one PatchDiscriminator output pixel: 70 for n_layers=3."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    # walk back from the output: two stride-1 4x4 convs, then n_layers stride-2 4x4 convs
    kernels_strides = [(4, 2)] * n_layers + [(4, 1), (4, 1)]
    field = 1
    for kernel, stride in reversed(kernels_strides):
        field = (field - 1) * stride + kernel
    return field


class ImagePool:
    """History of generated images for the discriminators (Shrivastava et al. 2017; CycleGAN's pool of 50).

    query(images (B, C, y, x)) returns a batch of the same shape: while the pool fills, the images
    themselves (each is stored); then for each image, with probability 1/2, a stored image that
    the new one replaces, else the new image. pool_size=0 returns the input unchanged.
    The random draws come from the pool's own torch.Generator (seeded by `seed`), so a run is
    reproducible and ``state_dict`` / ``load_state_dict`` (stored images on the CPU and the
    generator state) resume it exactly.
    """

    def __init__(self, pool_size: int = 50, seed: int = 0) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.images: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        """A batch of images (B, C, y, x) for the discriminator, drawn from `images` and the pool."""
        if self.pool_size == 0:
            return images
        chosen = []
        for image in images.detach():
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                chosen.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                i = int(torch.randint(self.pool_size, (), generator=self.generator))
                chosen.append(self.images[i].to(images.device, images.dtype))
                self.images[i] = image.clone()
            else:
                chosen.append(image)
        return torch.stack(chosen)

    def state_dict(self) -> dict:
        """{"pool_size", "images" (list of CPU tensors (C, y, x)), "generator" (the RNG state)}."""
        return {
            "pool_size": self.pool_size,
            "images": [image.detach().cpu().clone() for image in self.images],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the stored images and the RNG state of ``state_dict()``."""
        images = list(state["images"])
        if len(images) > self.pool_size:
            raise ValueError(f"the saved image pool holds {len(images)} images, more than pool_size {self.pool_size}")
        self.images = [torch.as_tensor(image).clone() for image in images]
        if "generator" in state:
            self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's "normal" init: conv / linear weights N(0, gain), norm scales N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()
