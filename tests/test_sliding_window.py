"""fibml.sliding_window against MONAI's sliding_window_inference, the reference it replaces for
2D / 2.5D prediction; and the argmax / scaling helpers of the prediction loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from fibml.data.transforms import scale_to_unit
from fibml.inference import first_argmax
from fibml.sliding_window import (
    batch_blocks,
    sliding_window,
    window_groups,
    window_starts,
)


def _net(in_channels: int, spatial_dims: int = 2, seed: int = 0) -> torch.nn.Module:
    """A small net whose output depends on each pixel's neighbourhood (so a window's border
    differs from the same pixels seen mid-window, and misplaced windows would show)."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(in_channels, 4, 3, padding=1), torch.nn.Tanh(), conv(4, 3, 1)).eval()


def _monai(x, roi, net, sw, overlap):
    return sliding_window_inference(x, roi, sw, net, overlap=overlap, mode="gaussian", padding_mode="reflect")


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "sw"),
    [
        ((2, 3, 100, 77), (32, 32), 0.5, 7),  # off-grid last windows on both axes, two images
        ((1, 2, 20, 90), (32, 16), 0.25, 5),  # y shorter than the patch: padded like MONAI
        ((3, 1, 64, 64), (64, 64), 0.5, 4),  # one window per image
        ((1, 3, 50, 61), (16, 24), 0.6, 1000),  # all windows of a group in one batch
        ((1, 3, 40, 40), (8, 8), 0.5, 1),  # one window per batch
        ((2, 2, 33, 47), (10, 12), 0.0, 3),  # no overlap
    ],
)
def test_equals_monai_2d(shape, roi, overlap, sw):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    net = _net(shape[1])
    with torch.no_grad():
        expected = _monai(x, roi, net, sw, overlap)
        got = sliding_window(x, roi, net, sw, overlap)
    assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_equals_monai_3d():
    x = torch.rand((1, 2, 20, 33, 40), generator=torch.Generator().manual_seed(2))
    net = _net(2, spatial_dims=3)
    with torch.no_grad():
        expected = _monai(x, (8, 16, 16), net, 5, 0.5)
        got = sliding_window(x, (8, 16, 16), net, 5, 0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_identity_reproduces_the_input_without_seams():
    """Blending a net equal to identity gives the input back everywhere, patch borders included."""
    x = torch.rand((2, 1, 70, 90), generator=torch.Generator().manual_seed(3))
    out = sliding_window(x, (16, 16), lambda w: w, 9, 0.5)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_an_image_smaller_than_the_window_is_padded_and_cropped_back():
    # 13 x 11 under a 16 x 16 window: 3 and 5 rows and columns of padding, split unevenly
    x = torch.rand((1, 2, 13, 11), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(sliding_window(x, (16, 16), lambda w: w, 4, 0.5), x, rtol=0, atol=1e-6)


def test_reruns_and_batch_sizes_give_the_same_bits():
    """The blending adds each voxel's contributions in a fixed order: reruns and other batch
    sizes give the same bits (with a per-pixel predictor; a conv net's own rounding may
    depend on its batch size)."""
    x = torch.rand((2, 3, 67, 45), generator=torch.Generator().manual_seed(4))

    def predictor(w):
        return torch.tanh(3 * w[:, :2] - w[:, 2:])

    runs = [sliding_window(x, (16, 16), predictor, sw, 0.5) for sw in (1, 3, 64, 64)]
    for run in runs[1:]:
        assert torch.equal(run, runs[0])
    net = _net(3)
    with torch.no_grad():
        assert torch.equal(sliding_window(x, (16, 16), net, 7, 0.5), sliding_window(x, (16, 16), net, 7, 0.5))


def test_the_predictor_sees_each_monai_window_once():
    """Every window MONAI would place is predicted exactly once, whatever the batching."""
    seen = []

    def predictor(windows):
        seen.extend(windows[:, 0, 0, 0].tolist())  # each window's top-left pixel = its position code
        return windows

    y, x = torch.meshgrid(torch.arange(45.0), torch.arange(38.0), indexing="ij")
    code = (y * 1000 + x)[None, None]
    sliding_window(code, (16, 12), predictor, 5, 0.5)
    expected = sorted(a * 1000 + b for a in window_starts(45, 16, 0.5) for b in window_starts(38, 12, 0.5))
    assert sorted(seen) == expected


@pytest.mark.parametrize(("size", "patch", "overlap"), [(100, 32, 0.5), (96, 32, 0.5), (50, 16, 0.25), (61, 24, 0.6),
                                                         (30, 32, 0.5), (32, 32, 0.5), (40, 10, 0.0)])
def test_window_groups_partition_monai_windows_without_overlap(size, patch, overlap):
    groups = window_groups(size, patch, overlap)
    starts = [first + i * step for first, step, count in groups for i in range(count)]
    assert sorted(starts) == window_starts(size, patch, overlap)
    for _, step, count in groups:
        assert count == 1 or step >= patch


@pytest.mark.parametrize(("counts", "sw", "n_blocks"), [((5, 7), 10, 5), ((5, 7), 3, 15), ((5, 7), 100, 1),
                                                     ((3, 4, 5), 7, 12), ((1,), 1, 1), ((3, 2, 2), 8, 2)])
def test_batch_blocks_cover_the_grid_once(counts, sw, n_blocks):
    hits = np.zeros(counts, dtype=int)
    blocks = batch_blocks(counts, sw)
    for block in blocks:
        assert 1 <= hits[block].size <= max(sw, 1)
        hits[block] += 1
    assert (hits == 1).all()
    # as few blocks as whole trailing axes allow, by hand: (5, 7) by 10 is 5 rows of 7; by 3, 5 x 3
    # pieces of a row; (3, 4, 5) by 7: 12 rows of 5; (3, 2, 2) by 8: two 2 x 2 planes, then one
    assert len(blocks) == n_blocks


def test_bad_arguments_are_refused():
    x = torch.zeros((1, 1, 8, 8))
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(x, (4, 4, 4), lambda w: w, 1)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(x, (4, 4), lambda w: w, 1, overlap=1.0)
    with pytest.raises(ValueError, match="expected"):
        sliding_window(x, (4, 4), lambda w: w[:, :, :2], 1)
    with pytest.raises(ValueError, match=r"^sw_batch_size must be >= 1, got 0$"):
        sliding_window(x, (4, 4), lambda w: w, 0)


def test_the_output_keeps_a_float64_predictors_precision():
    # probabilities are accumulated in the predictor's dtype, at least float32
    x = torch.rand((1, 2, 40, 36), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = sliding_window(x, (16, 16), lambda w: w, 4, 0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)  # the weights' sum is float32: 1e-7 relative
    assert sliding_window(x.float(), (16, 16), lambda w: w.to(torch.bfloat16), 4, 0.5).dtype == torch.float32


@pytest.mark.parametrize("n_classes", [1, 2, 3, 5])
def test_first_argmax_is_numpys_argmax_ties_included(n_classes):
    probs = torch.rand((n_classes, 4, 30, 20), generator=torch.Generator().manual_seed(n_classes))
    probs[-1, :2] = probs[0, :2]  # ties go to the lower class
    probs[n_classes // 2, 3] = probs[0, 3]
    labels = first_argmax(probs)
    assert labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels.numpy(), probs.numpy().argmax(0))


def test_scale_to_unit_in_float32():
    stack = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lo, hi = np.percentile(stack.astype(np.float32), [0.5, 99.5])
    scaled = scale_to_unit(stack, lo, hi)
    assert scaled.dtype == np.float32
    reference = np.clip((stack.astype(np.float64) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(scaled, reference, rtol=0, atol=2e-7)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert stack[0, 0] == 0  # the input is not changed
    float_stack = stack.astype(np.float32)
    scale_to_unit(float_stack, lo, hi)
    np.testing.assert_array_equal(float_stack, stack)
