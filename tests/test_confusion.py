"""Tests for MP / MGP / MDS / IoU (numpy functions and torchmetrics metrics) against hand-computed values."""

import numpy as np
import pytest
import torch

from fibml.metrics.confusion import (
    MeanDiceScore,
    MisplacedPixels,
    MisplacedSolidPixels,
    average_weighted_error,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_dice_score,
    misplaced_pixels,
    misplaced_solid_pixels,
    segmentation_scores,
)

# 4x4, 1 = solid: the top half is solid in the target; only its left 2x2 quarter is predicted solid.
TARGET_4X4 = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
PRED_4X4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])

# 3 classes: target [0,0,1,1,2,2], pred [0,1,1,1,2,0]
# C (rows target) = [[1,1,0],[0,2,0],[1,0,1]]; diag 1,2,1; row sums 2,2,2; column sums 2,3,1.
TARGET_3 = np.array([0, 0, 1, 1, 2, 2])
PRED_3 = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_matrix_rows_are_target():
    # TP(solid)=4, FN=4 (solid predicted pore), FP=0, TN=8.
    np.testing.assert_array_equal(confusion_matrix(PRED_4X4, TARGET_4X4, 2), [[8, 0], [4, 4]])


def test_hand_made_binary_case():
    s = segmentation_scores(PRED_4X4, TARGET_4X4)
    assert s["mp"] == pytest.approx(25.0)  # 1 - (4 + 8) / 16
    assert s["mgp"] == pytest.approx(50.0)  # 1 - 4 / (4 + 4)
    # Dice pore: TP=8, FP=4, FN=0 -> 16/20 = 0.8; solid: TP=4, FP=0, FN=4 -> 8/12 = 2/3.
    assert s["dice"] == pytest.approx([0.8, 2 / 3])
    assert s["mds"] == pytest.approx((0.8 + 2 / 3) / 2)
    # IoU pore: 8/(8+4) = 2/3; solid: 4/(4+4) = 0.5.
    assert s["iou"] == pytest.approx([2 / 3, 0.5])
    assert isinstance(s["mp"], float) and isinstance(s["iou"], list)


def test_swapped_solid_class():
    c = confusion_matrix(PRED_4X4, TARGET_4X4, 2)
    # Treating pore as "solid": all 8 target-pore pixels are predicted pore -> MGP 0.
    assert misplaced_solid_pixels(c, solid_class=0) == pytest.approx(0.0)


def test_perfect_prediction():
    s = segmentation_scores(TARGET_4X4, TARGET_4X4)
    assert (s["mp"], s["mgp"], s["mds"]) == (0.0, 0.0, 1.0)
    assert s["iou"] == [1.0, 1.0]


def test_all_wrong_prediction():
    s = segmentation_scores(1 - TARGET_4X4, TARGET_4X4)
    assert s["mp"] == pytest.approx(100.0)
    assert s["mgp"] == pytest.approx(100.0)
    assert s["mds"] == pytest.approx(0.0)
    assert s["iou"] == [0.0, 0.0]


def test_absent_class_counts_as_perfect_and_no_solid_gives_zero_mgp():
    pore_only = np.zeros((3, 3), dtype=np.int64)
    s = segmentation_scores(pore_only, pore_only)
    assert s["dice"] == [1.0, 1.0] and s["iou"] == [1.0, 1.0] and s["mgp"] == 0.0
    # Class 2 never appears: its Dice is 1, so MDS of an otherwise 50 % wrong binary case is (0 + 0 + 1) / 3.
    c = confusion_matrix(np.array([1, 0]), np.array([0, 1]), 3)
    np.testing.assert_allclose(dice_per_class(c), [0.0, 0.0, 1.0])
    assert mean_dice_score(c) == pytest.approx(1 / 3)
    assert misplaced_pixels(np.zeros((2, 2), dtype=np.int64)) == 0.0


def test_three_class_case():
    c = confusion_matrix(PRED_3, TARGET_3, 3)
    np.testing.assert_array_equal(c, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # Dice 2*diag / (row + col): 2/4, 4/5, 2/3.
    np.testing.assert_allclose(dice_per_class(c), [0.5, 0.8, 2 / 3])
    assert mean_dice_score(c) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # IoU diag / (row + col - diag): 1/3, 2/3, 1/2.
    np.testing.assert_allclose(iou_per_class(c), [1 / 3, 2 / 3, 0.5])
    assert misplaced_pixels(c) == pytest.approx(100 * 2 / 6)
    assert misplaced_solid_pixels(c, solid_class=1) == pytest.approx(0.0)
    assert misplaced_solid_pixels(c, solid_class=2) == pytest.approx(50.0)  # 1 of 2 class-2 pixels missed


def test_average_weighted_error_weights_iou_by_phase_volume():
    # eq. 1 of the random-forest paper: awe = (1 - sum IoU_i p_i) * 100 %
    # 3 classes of 2 pixels each (p = 1/3): IoU 1/3, 2/3, 1/2 -> awe = 100 (1 - 1.5 / 3) = 50
    assert average_weighted_error(confusion_matrix(PRED_3, TARGET_3, 3)) == pytest.approx(50.0)
    # a small phase missed entirely: target [0,0,0,1], all predicted 0 -> IoU 3/4 and 0, p = 3/4 and 1/4
    # awe = 100 (1 - 9/16) = 43.75 (the unweighted mean IoU error would be 62.5)
    c = confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 2)
    assert average_weighted_error(c) == pytest.approx(43.75)
    assert average_weighted_error(confusion_matrix(TARGET_3, TARGET_3, 3)) == pytest.approx(0.0)
    assert average_weighted_error(np.zeros((3, 3), dtype=np.int64)) == 0.0
    assert segmentation_scores(PRED_3, TARGET_3, n_classes=3)["awe"] == pytest.approx(50.0)


def test_formulas_work_unchanged_on_torch_tensors():
    c_np = confusion_matrix(PRED_3, TARGET_3, 3)
    c_t = torch.from_numpy(c_np)
    for fn in (misplaced_pixels, misplaced_solid_pixels, mean_dice_score, dice_per_class, iou_per_class,
               average_weighted_error):
        out = fn(c_t)
        assert isinstance(out, torch.Tensor) and out.is_floating_point()
        np.testing.assert_allclose(out.numpy(), fn(c_np), rtol=1e-6)


def test_confusion_matrix_accepts_any_shape_and_bool():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, size=(3, 4, 5))
    p = rng.integers(0, 2, size=(3, 4, 5))
    c = confusion_matrix(p.astype(bool), t, 2)
    assert c.sum() == 60 and c[1, 1] == np.sum((p == 1) & (t == 1)) and c[0, 1] == np.sum((p == 1) & (t == 0))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 3\)"):
        confusion_matrix(PRED_4X4, TARGET_4X4[:, :3], 2)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.array([0, 1]), np.array([0, 3]), "target contains label 3"),
        (np.array([-1, 1]), np.array([0, 1]), "pred contains label -1"),
        (np.array([0.2, 0.9]), np.array([0, 1]), "pred must hold integer labels"),
    ],
)
def test_bad_labels_raise(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 2)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_metrics_match_numpy_over_three_batches(n_classes):
    g = torch.Generator().manual_seed(1)
    targets = [torch.randint(0, n_classes, (2, 6, 7), generator=g) for _ in range(3)]
    preds = [torch.randint(0, n_classes, (2, 6, 7), generator=g) for _ in range(3)]
    metrics = {
        "mp": MisplacedPixels(n_classes),
        "mgp": MisplacedSolidPixels(n_classes, solid_class=1),
        "mds": MeanDiceScore(n_classes),
    }
    for p, t in zip(preds, targets):
        for m in metrics.values():
            m.update(p, t)
    expected = segmentation_scores(torch.cat(preds).numpy(), torch.cat(targets).numpy(), n_classes)
    for key, m in metrics.items():
        value = m.compute()
        assert value.dtype == torch.float32 and value.ndim == 0
        assert value.item() == pytest.approx(expected[key], rel=1e-5)
    # Accumulation must span all batches, not just the last one.
    last = segmentation_scores(preds[-1].numpy(), targets[-1].numpy(), n_classes)
    assert last["mp"] != pytest.approx(expected["mp"])


def test_metrics_accept_logits_and_probabilities_3d():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g) * 3  # (B, C, z, y, x), values well outside [0, 1]
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    expected = segmentation_scores(logits.argmax(1).numpy(), target.numpy(), n_classes=3)
    for inputs in (logits, logits.softmax(1)):
        mp, mgp, mds = MisplacedPixels(3), MisplacedSolidPixels(3), MeanDiceScore(3)
        for m in (mp, mgp, mds):
            m.update(inputs, target)
        assert mp.compute().item() == pytest.approx(expected["mp"], rel=1e-5)
        assert mgp.compute().item() == pytest.approx(expected["mgp"], rel=1e-5)
        assert mds.compute().item() == pytest.approx(expected["mds"], rel=1e-5)


def test_metric_hand_made_case_via_forward():
    m = MisplacedPixels()
    batch_value = m(torch.from_numpy(PRED_4X4)[None], torch.from_numpy(TARGET_4X4)[None])
    assert batch_value.item() == pytest.approx(25.0)
    assert MeanDiceScore()(torch.from_numpy(TARGET_4X4)[None], torch.from_numpy(TARGET_4X4)[None]).item() == 1.0


def test_metric_flags():
    assert MisplacedPixels.higher_is_better is False
    assert MisplacedSolidPixels.higher_is_better is False
    assert MeanDiceScore.higher_is_better is True
    assert not any(c.full_state_update for c in (MisplacedPixels, MisplacedSolidPixels, MeanDiceScore))


def test_metric_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="target contains label 2"):
        MisplacedPixels(2).update(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="preds contains label 5"):
        MeanDiceScore(2).update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="solid_class 2"):
        MisplacedSolidPixels(2, solid_class=2)


def test_metric_shape_mismatch_raises_and_ignore_index_drops_pixels():
    with pytest.raises(ValueError, match="shape"):
        MisplacedPixels(2).update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 3, dtype=torch.long))
    # Unlabelled voxels (255) are excluded: the 2 remaining pixels have 1 error -> MP 50 %.
    m = MisplacedPixels(2, ignore_index=255)
    m.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 255, 255]]))
    assert m.compute().item() == pytest.approx(50.0)


def test_defaults_are_two_classes_with_solid_1():
    # MGP of the 4x4 case by hand: 8 target-solid pixels, 4 predicted solid -> 50 %
    c = confusion_matrix(PRED_4X4, TARGET_4X4, 2)
    assert misplaced_solid_pixels(c) == pytest.approx(50.0)
    for metric in (MisplacedPixels(), MisplacedSolidPixels(), MeanDiceScore()):
        assert metric.num_classes == 2
    dice = MeanDiceScore()  # a third, absent class would count as a perfect Dice of 1
    dice.update(torch.as_tensor(PRED_4X4)[None], torch.as_tensor(TARGET_4X4)[None])
    assert dice.compute().item() == pytest.approx(mean_dice_score(c))
    solid = MisplacedSolidPixels()
    solid.update(torch.as_tensor(PRED_4X4)[None], torch.as_tensor(TARGET_4X4)[None])
    assert solid.compute().item() == pytest.approx(50.0)


def test_solid_class_0_scores_the_pore_phase():
    # 3 classes by hand (C above): MGP of class 2 = 1 - 1/2 -> 50 %, of class 0 = 1 - 1/2 -> 50 %, of 1 -> 0 %
    assert segmentation_scores(PRED_3, TARGET_3, n_classes=3, solid_class=2)["mgp"] == pytest.approx(50.0)
    assert segmentation_scores(PRED_3, TARGET_3, n_classes=3, solid_class=1)["mgp"] == pytest.approx(0.0)
    # the 4x4 case: the pore phase (8 pixels) is all predicted pore -> 0 %; the solid -> 50 %
    pore = MisplacedSolidPixels(2, solid_class=0)
    pore.update(torch.as_tensor(PRED_4X4)[None], torch.as_tensor(TARGET_4X4)[None])
    assert pore.compute().item() == pytest.approx(0.0) and pore.solid_class == 0


def test_metrics_pass_their_options_to_torchmetrics():
    m = MisplacedSolidPixels(2, ignore_index=255)  # MGP: 2 solid pixels, 1 missed -> 50 %
    m.update(torch.tensor([[1, 0, 1, 1]]), torch.tensor([[1, 1, 255, 255]]))
    assert m.compute().item() == pytest.approx(50.0)
    quiet = MisplacedPixels(2, validate_args=False)
    assert quiet.validate_args is False
    quiet.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert quiet.compute().item() == 0.0


def test_awe_of_an_empty_matrix_is_zero():
    empty = np.zeros((3, 3), np.int64)
    assert average_weighted_error(empty) == 0.0
    assert average_weighted_error(torch.zeros(2, 2, dtype=torch.long)).item() == 0.0


def test_plot_draws_the_score():
    import matplotlib

    matplotlib.use("Agg")
    m = MisplacedPixels()
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))  # 1 of 3 wrong: 33.3 %
    fig, ax = m.plot()
    assert [float(line.get_ydata()[0]) for line in ax.lines] == [pytest.approx(100 / 3, rel=1e-6)]
    fig2, ax2 = m.plot(torch.tensor(12.5), ax=ax)  # a given value, on a given axis
    assert ax2 is ax and float(ax.lines[-1].get_ydata()[0]) == pytest.approx(12.5)
    assert ax.get_ylim()[0] <= 0.0 and ax.get_ylim()[1] >= 100.0  # the plot bounds: 0-100 %


def test_single_pixels_empty_batches_and_python_floats():
    one = confusion_matrix(np.array([1]), np.array([1]), 2)  # one pixel, right: every denominator is 1
    assert misplaced_pixels(one) == 0.0 and misplaced_solid_pixels(one) == 0.0 and mean_dice_score(one) == 1.0
    assert type(misplaced_pixels(one)) is float and type(mean_dice_score(one)) is float  # not numpy scalars
    with pytest.raises(ValueError, match="target contains label 5"):
        confusion_matrix(np.array([1]), np.array([5]), 2)  # a single pixel is range-checked too
    m = MisplacedPixels(2, ignore_index=255)  # a batch whose pixels are all unlabelled adds nothing
    m.update(torch.tensor([[1, 0]]), torch.tensor([[255, 255]]))
    m.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]))
    assert m.compute().item() == pytest.approx(50.0)
