"""Augmentation of whole training batches on the device (after the host-to-device copy).

The loader's albumentations pipeline (fibml.data.transforms.Augmentation) costs about 1.8 ms per
2.5D patch of 21 channels (7 slices x 3 voltages) on one CPU core, because albumentations runs
its OpenCV kernels four channels at a time; on a GPU node the loader then cannot keep up with the
step (benchmarks/train_throughput.py). BatchAugmentation draws the same kinds of transform per
sample, but applies them to the whole (B, C, *spatial) batch at once with torch ops, on the device
the batch is already on, so the loader only slices patches. It is written here rather than taken
from kornia because it is five exact tensor operations and kornia would be one more dependency.

Per sample, with the same geometry for every channel, every slice of a 3D patch and the labels
(the albumentations defaults of configs/data/fibsem.yaml):
- horizontal flip (p hflip), vertical flip (p vflip);
- rotation by k x 90 degrees, k uniform in 0..3 (p rot90; square patches only, like albumentations);
- crop and zoom (p crop): each side cropped by a fraction uniform in [0, crop_max], the rest
  resized back to the patch size, bilinear for images, nearest for labels
  (albumentations.CropAndPad(percent=(-crop_max, 0), keep_size=True));
- brightness and contrast (p brightness_contrast): x * (1 + a) + b, a ~ U(-contrast, contrast),
  b ~ U(-brightness, brightness), clipped to [0, 1] (albumentations.RandomBrightnessContrast on
  images normalised to [0, 1]).
Random numbers come from torch's generator on the batch's device, which seed_everything seeds,
so a seeded run augments the same way every time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """Random flips, 90-degree rotations, crop-and-zoom and brightness/contrast of a batch.

    __call__(x, y): x float (B, C, H, W) or (B, C, D, H, W); y integer labels (B, H, W) or
    (B, D, H, W), or None. Returns new tensors; the inputs are not modified.
    """

    def __init__(
        self,
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: float = 0.5,
        crop: float = 0.3,
        crop_max: float = 0.25,
        brightness_contrast: float = 0.5,
        brightness: float = 0.1,
        contrast: float = 0.1,
    ):
        for name, p in (("hflip", hflip), ("vflip", vflip), ("rot90", rot90), ("crop", crop),
                        ("brightness_contrast", brightness_contrast)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"batch augmentation: probability {name}={p} is not in [0, 1]")
        if not 0.0 <= crop_max < 0.5:
            raise ValueError(f"batch augmentation: crop_max={crop_max} must be in [0, 0.5)")
        self.hflip, self.vflip, self.rot90, self.crop, self.crop_max = hflip, vflip, rot90, crop, crop_max
        self.brightness_contrast, self.brightness, self.contrast = brightness_contrast, brightness, contrast

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim not in (4, 5):
            raise ValueError(f"batch augmentation expects (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
        if y is not None and (y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]):
            raise ValueError(f"labels of shape {tuple(y.shape)} do not match images of shape {tuple(x.shape)}")
        b, device = x.shape[0], x.device

        def draw(p: float) -> torch.Tensor:  # which samples of the batch get a transform
            return torch.rand(b, device=device) < p

        x, y = _where(draw(self.hflip), x, y, lambda t: t.flip(-1))
        x, y = _where(draw(self.vflip), x, y, lambda t: t.flip(-2))
        if x.shape[-1] == x.shape[-2]:
            rotate = draw(self.rot90)
            k = torch.randint(0, 4, (b,), device=device)
            for turns in (1, 2, 3):
                x, y = _where(rotate & (k == turns), x, y, lambda t, n=turns: t.rot90(n, (-2, -1)))
        zoom = draw(self.crop)
        sides = torch.rand(b, 4, device=device) * self.crop_max  # top, bottom, left, right
        if zoom.any():
            x, y = _crop_zoom(x, y, zoom, sides)
        adjust = draw(self.brightness_contrast)
        alpha = 1.0 + (torch.rand(b, device=device) * 2 - 1) * self.contrast
        beta = (torch.rand(b, device=device) * 2 - 1) * self.brightness
        if adjust.any():
            shape = (b,) + (1,) * (x.ndim - 1)
            adjusted = (x * alpha.view(shape) + beta.view(shape)).clamp(0.0, 1.0)
            x = torch.where(adjust.view(shape), adjusted, x)
        return x, y


def _where(selected: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, op) -> tuple:
    """op applied to the selected samples of x (and y), the others unchanged."""
    if not selected.any():
        return x, y
    x = torch.where(selected.view((-1,) + (1,) * (x.ndim - 1)), op(x), x)
    if y is not None:
        y = torch.where(selected.view((-1,) + (1,) * (y.ndim - 1)), op(y), y)
    return x, y


def _crop_zoom(x, y, selected, sides) -> tuple:
    """Crop each selected sample by sides (fractions top, bottom, left, right) and resize back.

    With align_corners=False an output pixel centre u in [-1, 1] samples the input at
    scale * u + shift: the kept window [-1 + 2 left, 1 - 2 right] gives scale = 1 - left - right
    and shift = left - right (likewise in y)."""
    index = selected.nonzero().squeeze(1)
    top, bottom, left, right = sides[index].unbind(1)
    theta = torch.zeros(len(index), 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2] = 1 - left - right, left - right
    theta[:, 1, 1], theta[:, 1, 2] = 1 - top - bottom, top - bottom
    h, w = x.shape[-2:]
    grid = F.affine_grid(theta, [len(index), 1, h, w], align_corners=False)

    def resample(t: torch.Tensor, mode: str) -> torch.Tensor:
        planes = t[index].reshape(len(index), -1, h, w)  # channels (and slices) share the geometry
        out = F.grid_sample(planes.float(), grid, mode=mode, padding_mode="border", align_corners=False)
        return out.to(t.dtype).reshape(t[index].shape)

    x = x.index_copy(0, index, resample(x, "bilinear"))
    if y is not None:
        y = y.index_copy(0, index, resample(y, "nearest"))
    return x, y
