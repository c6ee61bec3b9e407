"""Patch datasets: window starts, 2D / 2.5D / 3D items and their layout, z splits."""

import numpy as np
import pytest
import torch

from fibml.data.patches import PatchDataset, context_indices, patch_shape, patch_starts, split_z_blocks


def _volume(channels=2, shape=(20, 24, 28), seed=0):
    """Images whose every voxel is unique (so a wrong index shows) and random labels."""
    n = channels * int(np.prod(shape))
    images = np.random.default_rng(seed).permutation(n).astype(np.float32).reshape(channels, *shape)
    labels = np.random.default_rng(seed + 1).integers(0, 3, size=shape).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize(
    "size, patch, stride, expected",
    [
        (10, 4, 3, [0, 3, 6]),  # aligned: the last start is already size - patch
        (10, 4, 4, [0, 4, 6]),  # not aligned: one extra window flush with the end
        (24, 8, 6, [0, 6, 12, 16]),
        (28, 8, 6, [0, 6, 12, 18, 20]),
        (8, 8, 4, [0]),  # patch == size
        (9, 2, 1, list(range(8))),
    ],
)
def test_patch_starts(size, patch, stride, expected):
    starts = patch_starts(size, patch, stride)
    assert starts == expected
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()


def test_patch_starts_errors():
    with pytest.raises(ValueError, match="patch of 9 does not fit in 8 rows"):
        patch_starts(8, 9, 4, "rows")
    with pytest.raises(ValueError, match="stride"):
        patch_starts(8, 4, 0)


def test_patch_shape():
    assert patch_shape(16, "2d") == (16, 16)
    assert patch_shape(16, "3d") == (16, 16, 16)
    assert patch_shape((8, 16, 24), "2.5d") == (16, 24)
    assert patch_shape((8, 16, 24), "3d") == (8, 16, 24)
    with pytest.raises(ValueError, match="expected 3 sizes"):
        patch_shape((16, 24), "3d")


def test_number_of_2d_patches():
    images, labels = _volume()
    ds = PatchDataset(images, labels, range(3, 11), dims="2d", patch_size=8, stride=6)
    # 8 slices * 4 row starts (0, 6, 12, 16) * 5 column starts (0, 6, 12, 18, 20)
    assert len(ds) == 8 * 4 * 5
    assert sorted(set(ds.index[:, 0])) == list(range(3, 11))
    assert sorted(set(ds.index[:, 1])) == [0, 6, 12, 16]
    assert sorted(set(ds.index[:, 2])) == [0, 6, 12, 18, 20]


def test_2d_items_match_the_arrays():
    images, labels = _volume()
    ds = PatchDataset(images, labels, range(0, 20), dims="2d", patch_size=(8, 12), stride=(5, 7))
    for i in (0, 7, len(ds) // 2, len(ds) - 1):
        z, y, x = ds.index[i]
        image, mask = ds[i]
        assert image.dtype == torch.float32 and image.shape == (2, 8, 12)
        assert mask.dtype == torch.int64 and mask.shape == (8, 12)
        np.testing.assert_array_equal(image.numpy(), images[:, z, y : y + 8, x : x + 12])
        np.testing.assert_array_equal(mask.numpy(), labels[z, y : y + 8, x : x + 12])


def test_context_indices_mirror_at_the_ends():
    assert context_indices(0, 5, 10).tolist() == [2, 1, 0, 1, 2]
    assert context_indices(1, 5, 10).tolist() == [1, 0, 1, 2, 3]
    assert context_indices(9, 5, 10).tolist() == [7, 8, 9, 8, 7]
    assert context_indices(8, 5, 10).tolist() == [6, 7, 8, 9, 8]
    assert context_indices(4, 5, 10).tolist() == [2, 3, 4, 5, 6]
    assert context_indices(3, 1, 10).tolist() == [3]
    assert context_indices(0, 7, 20).tolist() == [3, 2, 1, 0, 1, 2, 3]


@pytest.mark.parametrize("n_slices", [1, 2, 3])
def test_context_indices_stay_inside_a_stack_thinner_than_the_context(n_slices):
    # mirrored once at each end a 7-slice context still overhangs 1-3 slices: the ends repeat
    for z in range(n_slices):
        index = context_indices(z, 7, n_slices)
        assert index[3] == z and index.min() >= 0 and index.max() <= n_slices - 1


@pytest.mark.parametrize("k", [3, 5])
def test_2p5d_channel_layout(k):
    images, labels = _volume(channels=3)
    n_z = images.shape[1]
    ds = PatchDataset(images, labels, range(0, n_z), dims="2.5d", patch_size=8, stride=8, n_adjacent=k)
    for i in range(len(ds)):
        z, y, x = ds.index[i]
        if z not in (0, 1, n_z // 2, n_z - 1):
            continue
        image, mask = ds[i]
        assert image.shape == (3 * k, 8, 8)
        for v in range(3):
            for j in range(k):
                source = z - k // 2 + j
                source = -source if source < 0 else source  # mirrored at the ends
                source = 2 * (n_z - 1) - source if source > n_z - 1 else source
                np.testing.assert_array_equal(image[v * k + j].numpy(), images[v, source, y : y + 8, x : x + 8])
        # the label is that of the centre slice
        np.testing.assert_array_equal(mask.numpy(), labels[z, y : y + 8, x : x + 8])


def test_2p5d_rejects_even_context():
    images, labels = _volume()
    with pytest.raises(ValueError, match="odd"):
        PatchDataset(images, labels, range(0, 20), dims="2.5d", patch_size=8, n_adjacent=4)


def test_3d_items_stay_inside_the_z_range():
    images, labels = _volume(shape=(30, 16, 20))
    z_range = range(5, 23)  # 18 slices: starts 5, 9, 13 (+ 5 + 18 - 8 = 15)
    ds = PatchDataset(images, labels, z_range, dims="3d", patch_size=(8, 16, 12), stride=(4, 8, 8))
    assert sorted(set(ds.index[:, 0])) == [5, 9, 13, 15]
    assert len(ds) == 4 * 1 * 2  # rows: [0]; columns: [0, 8]
    for i in range(len(ds)):
        z, y, x = ds.index[i]
        assert z_range.start <= z and z + 8 <= z_range.stop
        image, mask = ds[i]
        assert image.shape == (2, 8, 16, 12) and image.dtype == torch.float32
        assert mask.shape == (8, 16, 12) and mask.dtype == torch.int64
        np.testing.assert_array_equal(image.numpy(), images[:, z : z + 8, y : y + 16, x : x + 12])
        np.testing.assert_array_equal(mask.numpy(), labels[z : z + 8, y : y + 16, x : x + 12])


def test_3d_patch_longer_than_the_split_raises():
    images, labels = _volume(shape=(30, 16, 16))
    with pytest.raises(ValueError, match="slices of the split"):
        PatchDataset(images, labels, range(0, 6), dims="3d", patch_size=8)


def test_without_labels_and_with_a_transform():
    images, _ = _volume()
    calls = []

    def flip(image, mask):
        calls.append(mask.shape)
        return image[..., ::-1], mask

    ds = PatchDataset(images, None, range(0, 4), dims="2d", patch_size=8, stride=8, transform=flip)
    image, mask = ds[0]
    z, y, x = ds.index[0]
    np.testing.assert_array_equal(image.numpy(), images[:, z, y : y + 8, x : x + 8][..., ::-1])
    assert mask.dtype == torch.int64 and mask.shape == (8, 8) and not mask.any()
    assert calls == [(8, 8)]


def test_bad_inputs_raise():
    images, labels = _volume()
    with pytest.raises(ValueError, match="channel, z, y, x"):
        PatchDataset(images[0], labels, range(0, 4))
    with pytest.raises(ValueError, match="labels shape"):
        PatchDataset(images, labels[:-1], range(0, 4))
    with pytest.raises(ValueError, match="dims"):
        PatchDataset(images, labels, range(0, 4), dims="4d")


def test_split_z_blocks_sizes_and_gaps():
    blocks = split_z_blocks(100, 0.7, 0.15, 0.15, gap=8)
    train, val, test = blocks["train"], blocks["val"], blocks["test"]
    # usable = 100 - 2 * 8 = 84: floor(58.8) = 58, floor(12.6) = 12, 12, remainder 2 to train
    assert (train, val, test) == (range(0, 60), range(68, 80), range(88, 100))
    assert val.start - train.stop == 8 and test.start - val.stop == 8
    assert set(train).isdisjoint(val) and set(val).isdisjoint(test) and set(train).isdisjoint(test)


@pytest.mark.parametrize("n, fractions, gap", [(100, (0.7, 0.15, 0.15), 8), (57, (0.5, 0.25, 0.25), 3), (200, (0.6, 0.2, 0.2), 0)])
@pytest.mark.parametrize("periodic", [False, True])
def test_split_z_blocks_properties(n, fractions, gap, periodic):
    blocks = split_z_blocks(n, *fractions, gap=gap, periodic=periodic)
    train, val, test = blocks["train"], blocks["val"], blocks["test"]
    assert train.start == 0
    assert val.start - train.stop == gap and test.start - val.stop == gap
    # the end of test is gap slices before the wrap-around for a periodic volume, flush otherwise
    assert n - test.stop == (gap if periodic else 0)
    usable = n - gap * (3 if periodic else 2)
    assert len(train) + len(val) + len(test) == usable
    for block, fraction in zip((train, val, test), fractions):
        assert abs(len(block) - fraction * usable) < 3  # floors, remainder to train


def test_split_z_blocks_periodic_example():
    blocks = split_z_blocks(100, gap=8, periodic=True)
    # usable = 100 - 3 * 8 = 76: floor(53.2) = 53, 11, 11, remainder 1 to train
    assert blocks == {"train": range(0, 54), "val": range(62, 73), "test": range(81, 92)}


def test_split_z_blocks_errors():
    with pytest.raises(ValueError, match="18 slices are too few"):
        split_z_blocks(18, gap=8)
    with pytest.raises(ValueError, match="too few"):
        split_z_blocks(26, gap=8, periodic=True)  # 26 - 24 = 2 usable
    # 3 usable slices pass the first check, but floor(0.15 * 3) = 0 would leave val and test empty
    with pytest.raises(ValueError, match=r"too few.*\[3, 0, 0\]"):
        split_z_blocks(27, gap=8, periodic=True)
    # 7 usable: floor(0.15 * 7) = 1, just enough
    assert split_z_blocks(31, gap=8, periodic=True) == {"train": range(0, 5), "val": range(13, 14), "test": range(22, 23)}
    # a split asked to be empty may be empty
    assert len(split_z_blocks(40, 0.8, 0.2, 0.0, gap=2)["test"]) == 0
    with pytest.raises(ValueError, match="fractions"):
        split_z_blocks(100, 0.7, -0.1, 0.4)


def test_split_z_blocks_defaults_and_unnormalised_fractions():
    # defaults: 70 / 15 / 15 % and gaps of 8; of 100 slices 84 are usable: floors 58, 12, 12 (+2 to train)
    blocks = split_z_blocks(100)
    assert blocks == {"train": range(0, 60), "val": range(68, 80), "test": range(88, 100)}
    # fractions are relative: 2 : 1 : 1 of 84 usable slices is 42 / 21 / 21
    assert split_z_blocks(100, 2, 1, 1) == {"train": range(0, 42), "val": range(50, 71), "test": range(79, 100)}
    with pytest.raises(ValueError, match=r"split fractions must be >= 0 with a positive sum, got \[0.0, 0.0, 0.0\]"):
        split_z_blocks(100, 0, 0, 0)


def test_defaults_are_64_pixel_patches_every_32_pixels_and_7_slices_in_25d():
    rng = np.random.default_rng(0)
    images = rng.random((1, 3, 128, 128)).astype(np.float64)  # float64 in, float32 out
    ds = PatchDataset(images, None, range(0, 3))
    assert len(ds) == 3 * 3 * 3  # 3 slices x starts 0, 32, 64 along y and x
    assert sorted(set(ds.index[:, 1])) == sorted(set(ds.index[:, 2])) == [0, 32, 64]
    image, mask = ds[0]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert PatchDataset(images, None, range(0, 3), dims="2.5d")[0][0].shape == (7, 64, 64)
    assert PatchDataset(images, None, range(1, 2), dims="2.5d", n_adjacent=1)[0][0].shape == (1, 64, 64)


def test_items_run_over_x_then_y_then_z():
    images, labels = _volume()
    ds = PatchDataset(images, labels, range(2, 4), dims="2d", patch_size=8, stride=6)
    # x starts 0, 6, 12, 18, 20 and y starts 0, 6, 12, 16: x varies fastest, z slowest
    np.testing.assert_array_equal(ds.index[:6], [[2, 0, 0], [2, 0, 6], [2, 0, 12], [2, 0, 18], [2, 0, 20], [2, 6, 0]])
    np.testing.assert_array_equal(ds.index[-1], [3, 16, 20])


def test_3d_patches_of_other_sizes_along_each_axis():
    images, labels = _volume(shape=(30, 16, 24))
    ds = PatchDataset(images, labels, range(0, 20), dims="3d", patch_size=(4, 8, 12), stride=(4, 4, 6))
    assert sorted(set(ds.index[:, 1])) == [0, 4, 8] and sorted(set(ds.index[:, 2])) == [0, 6, 12]
    image, mask = ds[len(ds) - 1]
    assert image.shape == (2, 4, 8, 12) and mask.shape == (4, 8, 12)
    unlabelled = PatchDataset(images, None, range(0, 20), dims="3d", patch_size=(4, 8, 12), stride=(4, 4, 6))
    assert unlabelled[0][1].shape == (4, 8, 12) and not unlabelled[0][1].any()


def test_a_transform_gets_an_empty_uint8_mask_without_labels():
    images, _ = _volume()
    seen = []
    ds = PatchDataset(images, None, range(0, 2), patch_size=8, stride=8,
                      transform=lambda image, mask: seen.append(mask.dtype) or (image, mask))
    ds[0]
    assert seen == [np.uint8]


def test_errors_name_the_axis_that_is_too_short():
    images, labels = _volume(shape=(30, 16, 24))
    with pytest.raises(ValueError, match="patch of 20 does not fit in 16 rows"):
        PatchDataset(images, labels, range(0, 4), patch_size=20)
    with pytest.raises(ValueError, match="patch of 30 does not fit in 24 columns"):
        PatchDataset(images, labels, range(0, 4), patch_size=(8, 30))
    with pytest.raises(ValueError, match="patch of 8 does not fit in 6 slices of the split"):
        PatchDataset(images, labels, range(0, 6), dims="3d", patch_size=8)
    with pytest.raises(ValueError, match="patch of 9 does not fit in 5 pixels"):
        patch_starts(5, 9, 1)
    with pytest.raises(ValueError, match=r"labels shape \(29, 16, 24\) differs from the images' \(30, 16, 24\)"):
        PatchDataset(images, labels[:-1], range(0, 4))
