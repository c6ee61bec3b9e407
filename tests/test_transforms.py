"""Intensity normalisation and albumentations augmentation that keeps channels and mask aligned."""

import albumentations as A
import cv2
import numpy as np
import pytest

from fibml.data.transforms import Augmentation, normalize_stack


def test_normalize_stack_maps_percentiles_to_0_and_1():
    stack = np.arange(1000, dtype=np.float64).reshape(10, 10, 10) * 0.5 + 3.0
    out = normalize_stack(stack, low=1.0, high=99.0)
    lo, hi = np.percentile(stack, [1.0, 99.0])  # 3 + 0.5 * 9.99, 3 + 0.5 * 989.01
    assert (lo, hi) == pytest.approx((7.995, 497.505))
    assert out.dtype == np.float32 and out.shape == stack.shape
    assert out.min() == 0.0 and out.max() == 1.0
    # linear in between, clipped outside
    inside = (stack > lo) & (stack < hi)
    np.testing.assert_allclose(out[inside], (stack[inside] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.all(out[stack <= lo] == 0.0) and np.all(out[stack >= hi] == 1.0)
    assert np.count_nonzero(out == 0.0) == np.count_nonzero(stack <= lo) == 10


def test_normalize_stack_ignores_outliers_with_default_percentiles():
    rng = np.random.default_rng(0)
    stack = rng.normal(0.3, 0.05, size=(16, 32, 32))
    stack[0, 0, 0] = 1e6  # a hot pixel must not squash the contrast of the rest
    out = normalize_stack(stack)
    assert out[0, 0, 0] == 1.0
    assert 0.4 < np.median(out) < 0.6


def test_normalize_large_stack_subsamples_but_keeps_the_scale():
    rng = np.random.default_rng(1)
    stack = rng.random((200, 16, 16)) + np.linspace(0, 3, 200)[:, None, None]  # z-dependent level
    out = normalize_stack(stack)  # 200 slices: percentiles from every 3rd slice
    lo, hi = np.percentile(stack, [0.5, 99.5])  # of the whole stack
    expected = np.clip((stack - lo) / (hi - lo), 0, 1)
    assert out.shape == (200, 16, 16)
    np.testing.assert_allclose(out, expected, atol=0.01)


def test_normalize_constant_stack_raises():
    with pytest.raises(ValueError, match="no contrast"):
        normalize_stack(np.full((4, 8, 8), 0.7))


# Nearest-neighbour resizing for the image too: with linear interpolation the crop-and-resize
# would blend an image edge that the nearest-neighbour mask keeps sharp, and the
# "channel == mask * constant" check below would fail on a correct pipeline.
def _geometric(seed):
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.CropAndPad(percent=(-0.25, 0), keep_size=True, interpolation=cv2.INTER_NEAREST, p=1.0),
        ],
        seed=seed,
    )


CONSTANTS = np.array([0.2, 0.45, 0.7, 0.95], dtype=np.float32)


def _random_mask(shape, rng):
    """Blobs rather than pixel noise, so that crops and rotations keep some structure."""
    mask = rng.random(shape) < 0.02
    for _ in range(3):
        mask = mask | np.roll(mask, 1, -1) | np.roll(mask, 1, -2)
    return mask.astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_augmentation_keeps_2p5d_channels_aligned_with_mask(seed):
    rng = np.random.default_rng(seed)
    channels = CONSTANTS.repeat(3)  # 4 voltages x 3 adjacent slices, voltage-major
    augment = Augmentation(_geometric(seed))
    changed = 0
    for _ in range(40):
        mask = _random_mask((36, 36), rng)  # square: RandomRotate90 would swap H and W otherwise
        image = mask[None].astype(np.float32) * channels[:, None, None]
        new_image, new_mask = augment(image, mask)
        assert new_image.shape == image.shape and new_mask.shape == mask.shape
        assert new_image.dtype == np.float32
        for c, constant in enumerate(channels):
            np.testing.assert_array_equal(new_image[c], new_mask * constant)
        changed += not np.array_equal(new_mask, mask)
    assert changed >= 35  # the crop alone (p=1) almost always moves the pixels


@pytest.mark.parametrize("seed", [0, 1])
def test_augmentation_keeps_3d_channels_and_slices_aligned(seed):
    rng = np.random.default_rng(seed)
    n_channels, depth = 2, 5
    augment = Augmentation(_geometric(seed))
    for _ in range(30):
        mask = _random_mask((depth, 24, 24), rng)  # every slice different
        image = mask[None].astype(np.float32) * CONSTANTS[:n_channels, None, None, None]
        new_image, new_mask = augment(image, mask)
        assert new_image.shape == (n_channels, depth, 24, 24) and new_mask.shape == (depth, 24, 24)
        for c in range(n_channels):
            # channel c, slice d must still be mask slice d (not another slice or voltage)
            np.testing.assert_array_equal(new_image[c], new_mask * CONSTANTS[c])


def test_augmentation_is_one_geometry_for_every_slice():
    # slices that start identical must stay identical: one flip / rotation / crop for all
    rng = np.random.default_rng(3)
    plane = _random_mask((24, 24), rng)
    mask = np.stack([plane] * 4)
    image = mask[None].astype(np.float32) * CONSTANTS[:2, None, None, None]
    augment = Augmentation(_geometric(3))
    for _ in range(10):
        new_image, new_mask = augment(image, mask)
        for d in range(1, 4):
            np.testing.assert_array_equal(new_mask[d], new_mask[0])
            np.testing.assert_array_equal(new_image[:, d], new_image[:, 0])


def test_augmentation_follows_the_torch_seed():
    # albumentations' own generators are tied to torch's seed (which Lightning sets per worker)
    import torch

    rng = np.random.default_rng(4)
    mask = _random_mask((32, 32), rng)
    image = mask[None].astype(np.float32) * CONSTANTS[:, None, None]

    def masks(torch_seed):
        torch.manual_seed(torch_seed)
        augment = Augmentation(_geometric(None))
        return np.stack([augment(image, mask)[1] for _ in range(6)])

    np.testing.assert_array_equal(masks(0), masks(0))
    assert not np.array_equal(masks(0), masks(1))


def test_brightness_contrast_changes_intensities_not_mask():
    rng = np.random.default_rng(5)
    mask = _random_mask((32, 32), rng)
    image = (mask[None] * 0.5 + 0.2).astype(np.float32) * np.ones((3, 1, 1), np.float32)
    augment = Augmentation(
        A.Compose([A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0)], seed=0)
    )
    changed = 0
    for _ in range(10):
        new_image, new_mask = augment(image, mask)
        np.testing.assert_array_equal(new_mask, mask)
        assert new_image.shape == image.shape
        changed += not np.allclose(new_image, image)
        # one brightness / contrast for every channel: the channels stay equal
        np.testing.assert_allclose(new_image[1], new_image[0])
    assert changed >= 9
