"""Segmentation accuracy from a confusion matrix: MP, MGP, MDS (Dice), IoU and awe, in numpy and torchmetrics.

Labels: 0 = pore, ``solid_class`` (default 1) = solid. The confusion matrix C has rows = target
class and columns = predicted class, so C[t, p] counts pixels of class t predicted as p.

The formula functions take C as a numpy array or a torch tensor and return the same library's
type (numpy input: Python float / float64 array; torch input: float tensor), so the numpy
evaluation and the torchmetrics metrics share one implementation.

Empty-denominator conventions: a class absent from both prediction and target has Dice = IoU = 1
(nothing to get wrong, so it does not drag the mean down); MGP with no solid in the target is 0;
MP of an empty confusion matrix is 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "confusion_matrix",
    "misplaced_pixels",
    "misplaced_solid_pixels",
    "dice_per_class",
    "mean_dice_score",
    "iou_per_class",
    "average_weighted_error",
    "segmentation_scores",
    "MisplacedPixels",
    "MisplacedSolidPixels",
    "MeanDiceScore",
]


def confusion_matrix(pred, target, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = target class, columns = predicted class.

    ``pred`` and ``target`` are integer label arrays of the same (any) shape.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    for name, labels in (("pred", pred), ("target", target)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype} (argmax/threshold first)")
        _check_label_range(name, labels, n_classes)
    flat = target.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def misplaced_pixels(confmat):
    """MP in %: share of all pixels whose predicted class differs from the target, 100 * (1 - trace(C) / sum(C))."""
    return _scalar(100.0 * (1.0 - _safe_div(confmat.diagonal().sum(), confmat.sum(), empty=1.0)))


def misplaced_solid_pixels(confmat, solid_class: int = 1):
    """MGP in %: share of target-solid pixels predicted as another class, 100 * (1 - TP / (TP + FN))."""
    tp = confmat[solid_class, solid_class]
    return _scalar(100.0 * (1.0 - _safe_div(tp, confmat[solid_class].sum(), empty=1.0)))


def dice_per_class(confmat):
    """Dice per class, 2TP / (2TP + FP + FN); 1 for a class absent from prediction and target."""
    # 2TP + FP + FN = (TP + FN) + (TP + FP) = row sum + column sum.
    return _safe_div(2 * confmat.diagonal(), confmat.sum(1) + confmat.sum(0), empty=1.0)


def mean_dice_score(confmat):
    """MDS: mean of the per-class Dice over all classes (pore included), in [0, 1]."""
    return _scalar(dice_per_class(confmat).mean())


def iou_per_class(confmat):
    """IoU (Jaccard) per class, TP / (TP + FP + FN); 1 for a class absent from prediction and target."""
    tp = confmat.diagonal()
    return _safe_div(tp, confmat.sum(1) + confmat.sum(0) - tp, empty=1.0)


def average_weighted_error(confmat):
    """awe in %: (1 - sum_i IoU_i p_i) * 100, p_i the volume fraction of class i in the target
    (eq. 1 of random-forest-multi-detector.txt): IoU weighted by phase volume, so a small phase
    does not dominate. 0 for a perfect segmentation; 0 for an empty confusion matrix."""
    total = confmat.sum()
    fractions = _safe_div(confmat.sum(1), total, empty=0.0)
    if total == 0:
        return _scalar(fractions.sum() * 0.0)
    return _scalar(100.0 * (1.0 - (iou_per_class(confmat) * fractions).sum()))


def segmentation_scores(pred, target, n_classes: int = 2, solid_class: int = 1) -> dict[str, Any]:
    """All scores of integer label arrays: {"mp": %, "mgp": %, "mds": [0, 1], "awe": %,
    "iou": per class, "dice": per class}."""
    c = confusion_matrix(pred, target, n_classes)
    return {
        "mp": misplaced_pixels(c),
        "mgp": misplaced_solid_pixels(c, solid_class),
        "mds": mean_dice_score(c),
        "awe": average_weighted_error(c),
        "iou": iou_per_class(c).tolist(),
        "dice": dice_per_class(c).tolist(),
    }


class _ConfusionScore(MulticlassConfusionMatrix):
    """Accumulates torchmetrics' confusion matrix; subclasses turn it into one score in ``compute``.

    ``preds`` may be integer labels (B, *spatial) or probabilities/logits (B, C, *spatial), which are
    arg-maxed over C; ``target`` is integer labels (B, *spatial).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int = 2, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch to the confusion matrix."""
        if self.validate_args:
            # torchmetrics only counts unique values; an out-of-range label would land silently in a wrong cell.
            labels = target if self.ignore_index is None else target[target != self.ignore_index]
            _check_label_range("target", labels, self.num_classes)
            if not preds.is_floating_point():
                _check_label_range("preds", preds, self.num_classes)
        super().update(preds, target)

    def compute(self) -> Tensor:
        return torch.as_tensor(self._score(self.confmat), dtype=torch.float32, device=self.confmat.device)

    def _score(self, confmat: Tensor) -> Tensor:
        raise NotImplementedError

    def plot(self, val=None, ax=None):
        """Plot the scalar score (the parent class would draw a confusion matrix)."""
        return self._plot(val, ax)


class MisplacedPixels(_ConfusionScore):
    """MP in % over all accumulated pixels (lower is better)."""

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    def _score(self, confmat: Tensor) -> Tensor:
        return misplaced_pixels(confmat)


class MisplacedSolidPixels(_ConfusionScore):
    """MGP in % of the target-solid pixels (lower is better)."""

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    def __init__(self, num_classes: int = 2, solid_class: int = 1, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if not 0 <= solid_class < num_classes:
            raise ValueError(f"solid_class {solid_class} outside [0, {num_classes})")
        self.solid_class = solid_class

    def _score(self, confmat: Tensor) -> Tensor:
        return misplaced_solid_pixels(confmat, self.solid_class)


class MeanDiceScore(_ConfusionScore):
    """MDS: mean per-class Dice over all accumulated pixels, in [0, 1] (higher is better)."""

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def _score(self, confmat: Tensor) -> Tensor:
        return mean_dice_score(confmat)


def _safe_div(num, den, empty: float):
    """num / den elementwise, ``empty`` where den == 0; numpy or torch, whichever the inputs are."""
    zero = den == 0
    # Adding the bool mask makes the denominator 1 where it was 0, so no division by zero (or NaN) happens.
    return num / (den + zero) * (den != 0) + empty * zero


def _scalar(x):
    # numpy reductions give numpy scalars; callers of the numpy API get a plain float, torch stays a tensor.
    return x if isinstance(x, Tensor) else float(x)


def _check_label_range(name: str, labels, n_classes: int) -> None:
    n = labels.numel() if isinstance(labels, Tensor) else labels.size
    if n == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"{name} contains label {lo}; labels must be in [0, {n_classes})")
    if hi >= n_classes:
        raise ValueError(f"{name} contains label {hi}; labels must be in [0, {n_classes})")
