"""BatchAugmentation: the loader's transforms applied to whole batches on the device."""

import numpy as np
import pytest
import torch

from fibml.data.batch_augment import BatchAugmentation
from fibml.data.datamodules import FIBSEMDataModule

OFF = {"hflip": 0.0, "vflip": 0.0, "rot90": 0.0, "crop": 0.0, "brightness_contrast": 0.0}


def _batch(b=16, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (b, size, size), generator=g)
    x = torch.rand(b, c, size, size, generator=g)
    x[:, 0] = y.float()  # channel 0 carries the labels: geometry must move both alike
    return x, y


def test_off_is_identity():
    x, y = _batch()
    ax, ay = BatchAugmentation(**OFF)(x, y)
    assert torch.equal(ax, x) and torch.equal(ay, y)


@pytest.mark.parametrize("name, op", [
    ("hflip", lambda a: np.flip(a, -1)),
    ("vflip", lambda a: np.flip(a, -2)),
])
def test_flips_move_images_and_labels_together(name, op):
    torch.manual_seed(1)
    x, y = _batch()
    ax, ay = BatchAugmentation(**(OFF | {name: 1.0}))(x, y)
    assert np.array_equal(ax.numpy(), op(x.numpy())) and np.array_equal(ay.numpy(), op(y.numpy()))


def test_rotations_are_quarter_turns_shared_by_labels():
    torch.manual_seed(2)
    x, y = _batch(b=64)
    ax, ay = BatchAugmentation(**(OFF | {"rot90": 1.0}))(x, y)
    turns = []
    for i in range(len(x)):
        k = [n for n in range(4) if np.array_equal(ax[i].numpy(), np.rot90(x[i].numpy(), n, (-2, -1)))]
        assert k, f"sample {i} is not a quarter turn of its input"
        assert np.array_equal(ay[i].numpy(), np.rot90(y[i].numpy(), k[0], (-2, -1)))
        turns.append(k[0])
    assert set(turns) == {0, 1, 2, 3}  # k uniform in 0..3, as albumentations draws it


def test_probability_is_per_sample():
    torch.manual_seed(3)
    x, y = _batch(b=400)
    ax, _ = BatchAugmentation(**(OFF | {"hflip": 0.3}))(x, y)
    flipped = np.mean([not torch.equal(ax[i], x[i]) for i in range(len(x))])
    assert 0.22 < flipped < 0.38


def _kept_window(profile: np.ndarray) -> tuple[float, float]:
    """The window [lo, hi] of the unit interval that a zoomed ramp shows. Output pixel j samples
    the normalised coordinate s = scale u_j + shift at its centre u_j = -1 + (2 j + 1) / n, and the
    ramp's value there is (s + 1) / 2: a line in u whose ends u = -1 and u = 1 are the window's."""
    n = len(profile)
    u = -1 + (2 * np.arange(n) + 1) / n
    inner = slice(1, -1)  # an edge pixel may sample the border (as cv2.resize does): clamped
    slope, intercept = np.polyfit(u[inner], profile[inner], 1)
    assert np.allclose(profile[inner], slope * u[inner] + intercept, atol=1e-5)  # still exactly linear
    return intercept - slope, intercept + slope


def test_crop_zoom_of_a_ramp_keeps_a_window_of_each_side_up_to_crop_max():
    """Bilinear resampling of a linear ramp is exact: the zoomed ramp spans exactly the kept
    window, [left, 1 - right] along x and [top, 1 - bottom] along y, each side cut by 0..crop_max."""
    torch.manual_seed(4)
    size, crop_max = 32, 0.25
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in (0, 1)
    x = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size)])
    x = x.expand(64, 2, size, size).clone()
    ax, _ = BatchAugmentation(**(OFF | {"crop": 1.0, "crop_max": crop_max}))(x, None)
    cuts = []
    for i in range(len(x)):
        assert np.allclose(ax[i, 0], ax[i, 0, :1]) and np.allclose(ax[i, 1], ax[i, 1, :, :1])  # axes kept apart
        left, right = _kept_window(ax[i, 0, 0].numpy())
        top, bottom = _kept_window(ax[i, 1, :, 0].numpy())
        cuts.append([left, 1 - right, top, 1 - bottom])
    cuts = np.array(cuts)
    assert cuts.min() > -1e-5 and cuts.max() < crop_max + 1e-5, cuts  # every side cut within [0, crop_max]
    # drawn uniformly: each side's cuts fill the range (a side never cut, or always cut alike, fails)
    assert (cuts.min(0) < 0.05 * crop_max).all() and (cuts.max(0) > 0.95 * crop_max).all(), cuts
    assert 0.35 * crop_max < cuts.mean() < 0.65 * crop_max


def test_crop_max_zero_keeps_the_patch_and_half_is_refused():
    x, y = _batch()
    ax, ay = BatchAugmentation(**(OFF | {"crop": 1.0, "crop_max": 0.0}))(x, y)
    torch.testing.assert_close(ax, x, rtol=0, atol=1e-6)
    assert torch.equal(ay, y)
    with pytest.raises(ValueError, match=r"crop_max=0.5 must be in \[0, 0.5\)"):
        BatchAugmentation(crop_max=0.5)


def _coordinate_batch(b: int, size: int, depth: int | None, seed: int):
    """Images whose channels 0 and 1 are the x and y pixel-centre coordinates (c + 0.5) / size and
    (r + 0.5) / size, and random labels of four classes (one plane per slice in 3D). Flips and
    quarter turns move the coordinates exactly, and bilinear resampling of a linear ramp is exact,
    so after any geometric augmentation channels 0 and 1 say which source point each output pixel
    shows: an independent reference for where the labels must come from."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    x = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size)])  # (2, H, W)
    x = x.expand(b, 2, size, size).clone()
    y = torch.randint(0, 4, (b, size, size) if depth is None else (b, depth, size, size), generator=g)
    if depth is not None:
        x = x[:, :, None].expand(b, 2, depth, size, size).clone()
    return x, y


def _nearest_source_labels(ax: torch.Tensor, y: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The label each output pixel should carry (nearest source pixel of the coordinates read off
    channels 0 and 1) and a mask of pixels whose source point is not halfway between two pixels
    (where nearest neighbour may round either way)."""
    column = ax[:, 0].numpy().astype(np.float64) * size - 0.5  # source pixel coordinates
    row = ax[:, 1].numpy().astype(np.float64) * size - 0.5
    decided = (np.abs(column - np.floor(column) - 0.5) > 1e-3) & (np.abs(row - np.floor(row) - 0.5) > 1e-3)
    c = np.clip(np.rint(column), 0, size - 1).astype(int)
    r = np.clip(np.rint(row), 0, size - 1).astype(int)
    labels = y.numpy()
    b = np.arange(len(labels)).reshape((-1,) + (1,) * (c.ndim - 1))
    if labels.ndim == 3:
        return labels[b, r, c], decided
    d = np.arange(labels.shape[1]).reshape(1, -1, 1, 1)
    return labels[b, d, r, c], decided


@pytest.mark.parametrize("depth", [None, 5], ids=["2d", "3d"])
@pytest.mark.parametrize("name", ["hflip", "vflip", "rot90", "crop", "all"])
def test_labels_are_the_nearest_source_pixel_under_every_augmentation(name, depth):
    """Whatever geometry a sample gets, its label at an output pixel is the source label nearest to
    the point the image shows there: labels cropped, zoomed, flipped and turned with their image."""
    torch.manual_seed(7)
    size = 24
    x, y = _coordinate_batch(32, size, depth, seed=8)
    on = {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "crop": 0.5} if name == "all" else {name: 1.0}
    ax, ay = BatchAugmentation(**(OFF | on))(x, y)
    expected, decided = _nearest_source_labels(ax, y, size)
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(ay.numpy()[decided], expected[decided])
    changed = [not torch.equal(ax[i], x[i]) for i in range(len(x))]
    assert sum(changed) >= (len(x) // 4 if name == "all" else len(x) // 2)  # most samples were moved
    if name in ("crop", "all"):  # and some were zoomed: source points between pixel centres
        fractional = np.abs(ax[:, 0].numpy() * size - 0.5 - np.rint(ax[:, 0].numpy() * size - 0.5)) > 1e-3
        assert fractional.reshape(len(x), -1).any(1).sum() >= 4


def test_crop_zoom_3d_shares_geometry_over_slices():
    torch.manual_seed(5)
    x = torch.rand(4, 2, 1, 16, 16).repeat(1, 1, 5, 1, 1)  # five equal slices
    y = torch.randint(0, 3, (4, 1, 16, 16)).repeat(1, 5, 1, 1)
    ax, ay = BatchAugmentation(**(OFF | {"crop": 1.0}))(x, y)
    assert not torch.allclose(ax, x)
    assert torch.allclose(ax, ax[:, :, :1].expand_as(ax)) and torch.equal(ay, ay[:, :1].expand_as(ay))


def test_brightness_contrast_is_affine_and_clipped():
    """The defaults are albumentations': contrast factor 1 + U(-0.1, 0.1), brightness U(-0.1, 0.1)."""
    torch.manual_seed(6)
    x, y = _batch(b=64)
    ax, ay = BatchAugmentation(**(OFF | {"brightness_contrast": 1.0}))(x, y)
    assert torch.equal(ay, y)
    fits = []
    for i in range(len(x)):
        inside = (ax[i] > 0) & (ax[i] < 1)
        a, b = np.polyfit(x[i][inside].numpy(), ax[i][inside].numpy(), 1)
        assert 0.9 - 1e-4 <= a <= 1.1 + 1e-4 and -0.1 - 1e-4 <= b <= 0.1 + 1e-4
        assert np.allclose(ax[i][inside].numpy(), a * x[i][inside].numpy() + b, atol=1e-5)
        fits.append((a, b))
    a, b = np.array(fits).T
    # both factors spread over their whole ranges, on both sides of no change
    assert a.min() < 0.93 and a.max() > 1.07 and b.min() < -0.07 and b.max() > 0.07
    assert ax.min() >= 0 and ax.max() <= 1
    clipped = BatchAugmentation(**(OFF | {"brightness_contrast": 1.0, "brightness": 0.5}))(x + 0.4, None)[0]
    assert clipped.max() == 1.0 and clipped.min() >= 0.0  # clipped to [0, 1]


def test_rotations_are_drawn_uniformly_and_only_on_square_patches():
    torch.manual_seed(9)
    x, y = _batch(b=800)
    ax, _ = BatchAugmentation(**(OFF | {"rot90": 1.0}))(x, y)
    turns = [next(n for n in range(4) if torch.equal(ax[i], x[i].rot90(n, (-2, -1)))) for i in range(len(x))]
    assert np.allclose(np.bincount(turns, minlength=4) / len(x), 0.25, atol=0.05)  # k uniform in 0..3
    wide = torch.rand(4, 2, 16, 24)  # not square: a quarter turn would change the shape (albumentations skips it)
    assert torch.equal(BatchAugmentation(**(OFF | {"rot90": 1.0}))(wide, None)[0], wide)
    cube = torch.rand(64, 1, 5, 16, 16)  # 3D: depth 5, square slices: turned
    turned = BatchAugmentation(**(OFF | {"rot90": 1.0}))(cube, None)[0]
    assert sum(not torch.equal(turned[i], cube[i]) for i in range(len(cube))) > 32


@pytest.mark.parametrize("name", ["hflip", "vflip", "rot90", "crop", "brightness_contrast"])
def test_a_probability_outside_0_1_is_refused_by_name(name):
    with pytest.raises(ValueError, match=rf"probability {name}=1.5 is not in \[0, 1\]"):
        BatchAugmentation(**{name: 1.5})
    with pytest.raises(ValueError, match=rf"probability {name}=-0.1 is not in \[0, 1\]"):
        BatchAugmentation(**{name: -0.1})


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop_max"):
        BatchAugmentation(crop_max=0.6)
    with pytest.raises(ValueError, match="shape"):
        BatchAugmentation()(torch.zeros(2, 3, 8))
    x, y = _batch(b=4, size=16)
    with pytest.raises(ValueError, match=r"labels of shape \(3, 16, 16\) do not match images of shape \(4, 3, 16, 16\)"):
        BatchAugmentation()(x, y[:3])  # another batch size
    with pytest.raises(ValueError, match=r"labels of shape \(4, 16, 12\) do not match"):
        BatchAugmentation()(x, y[:, :, :12])  # another patch size


def test_datamodule_augments_training_batches_only():
    dm = FIBSEMDataModule(data_dir="unused", batch_augmentation=BatchAugmentation(**(OFF | {"hflip": 1.0})))
    x, y = _batch(b=2)

    class Trainer:
        training = True

    dm.trainer = Trainer()
    ax, ay = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(ax, x.flip(-1)) and torch.equal(ay, y.flip(-1))
    Trainer.training = False  # validation / test / predict batches stay as they are
    ax, ay = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(ax, x) and torch.equal(ay, y)
