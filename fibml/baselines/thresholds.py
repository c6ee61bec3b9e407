"""Global intensity thresholds: Otsu, and double / triple thresholds by hand or fitted on labels.

random-forest-multi-detector.txt compares its classifier with the thresholds microscopists use:
a double threshold (void < t1 <= carbon binder < t2 <= active material, section 3.1), and a
triple threshold whose fourth interval maps the brightest grey values back to void, because
parts of the pore background (edges, charging) are brighter than the solid (section 3.2). The
paper fits those thresholds on the labelled slice by minimising the information entropy per
class with a depth-2 decision tree on the intensity; ``MultiThreshold.fit`` does the same.

Every baseline here works on one channel (one voltage or detector) and returns uint8 labels in
fibml's convention (0 = pore, 1 = solid, more phases allowed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from fibml.baselines import common
from fibml.baselines.common import (
    UNLABELLED,
    check_images,
    check_int,
    check_sparse_labels,
)

__all__ = ["MultiThreshold", "OtsuThreshold"]

_MODES = ("volume", "slice")


class OtsuThreshold:
    """Otsu's threshold (n_phases = 2) or multi-Otsu (n_phases > 2) of one channel.

    n_phases: intensity classes; the thresholds split the grey values into n_phases intervals.
    interval_phases: the label of each interval, darkest first (default 0, 1, ..., n_phases - 1:
        darkest = pore, brightest = solid). E.g. [0, 2, 1] when the middle grey is phase 2.
    mode: "volume" (one histogram for the stack) or "slice" (thresholds per slice).
    channel: which channel of a (C, z, y, x) input is thresholded.
    n_bins: histogram bins (skimage's default 256).

    Otsu needs no labels: ``fit`` only checks its input, so evaluation treats it like the others.
    """

    needs_labels = False

    def __init__(self, n_phases: int = 2, interval_phases: Sequence[int] | None = None, mode: str = "volume",
                 channel: int = 0, n_bins: int = 256, progress: bool = False):
        self.n_phases = check_int(n_phases, "n_phases")
        if self.n_phases < 2:
            raise ValueError(f"n_phases must be at least 2, got {n_phases}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.interval_phases = _interval_table(interval_phases, self.n_phases)
        self.mode, self.channel, self.n_bins, self.progress = mode, check_int(channel, "channel"), int(n_bins), progress
        self.thresholds_: np.ndarray | None = None

    def fit(self, images=None, labels=None) -> OtsuThreshold:
        """Nothing to learn: Otsu's thresholds come from the image it segments."""
        return self

    def predict(self, images) -> np.ndarray:
        """uint8 (z, y, x) labels; ``thresholds_`` holds the volume's thresholds (or one row per slice)."""
        stack = _channel(images, self.channel)
        if self.mode == "volume":
            self.thresholds_ = self._thresholds(_histogram(stack, self.n_bins), "the stack")
            return _apply(stack, self.thresholds_, self.interval_phases, self.progress, "Otsu")
        rows, labels = [], np.empty(stack.shape, dtype=np.uint8)
        for z in tqdm(range(stack.shape[0]), desc="Otsu (slice)", unit="slice", disable=not self.progress, leave=False):
            rows.append(self._thresholds(_histogram(stack[z : z + 1], self.n_bins), f"slice {z}"))
            labels[z : z + 1] = _apply(stack[z : z + 1], rows[-1], self.interval_phases)
        self.thresholds_ = np.array(rows)
        return labels

    def _thresholds(self, hist, where: str) -> np.ndarray:
        # scikit-image's Otsu / multi-Otsu: the reference implementations, fed with a histogram
        # built chunk by chunk so a stack larger than memory never needs one flat copy
        from skimage.filters import threshold_multiotsu, threshold_otsu

        counts, centres = hist
        if np.count_nonzero(counts) < self.n_phases:
            raise ValueError(f"{where} has fewer than {self.n_phases} distinct grey values: nothing to threshold")
        if self.n_phases == 2:
            return np.array([threshold_otsu(hist=(counts, centres))])
        return np.asarray(threshold_multiotsu(classes=self.n_phases, hist=(counts, centres)), dtype=np.float64)


class MultiThreshold:
    """Global thresholds of one channel with a phase per interval, by hand or fitted on labels.

    By hand: ``thresholds`` (ascending grey values t_1 < ... < t_k) and ``phases`` (k + 1 labels,
    one per interval, darkest first): a voxel of grey value g gets phases[i] for
    t_i < g <= t_{i+1}. The paper's triple threshold is thresholds [27, 48, 76], phases
    [void, carbon, NMC, void].
    Fitted (thresholds None): ``fit(images, labels)`` trains a decision tree on the labelled
    voxels' intensity with the entropy criterion (the paper's "information entropy per class")
    and at most n_thresholds + 1 leaves, grown best-first: n_thresholds = 2 is the double
    threshold, 3 the triple one (the paper's depth-2 tree has as many leaves). The tree's split values are the thresholds and each interval takes
    the tree's class, so an interval may map to any phase (void again above the solid).
    """

    def __init__(self, thresholds: Sequence[float] | None = None, phases: Sequence[int] | None = None,
                 n_thresholds: int = 2, channel: int = 0, max_training_samples: int = 200_000, seed: int = 0,
                 progress: bool = False):
        self.channel, self.seed, self.progress = check_int(channel, "channel"), int(seed), progress
        self.n_thresholds = check_int(n_thresholds, "n_thresholds")
        self.max_training_samples = check_int(max_training_samples, "max_training_samples")
        if thresholds is None:
            if phases is not None:
                raise ValueError("phases without thresholds: give both by hand, or neither to fit them on labels")
            if self.n_thresholds < 1:
                raise ValueError(f"n_thresholds must be at least 1, got {n_thresholds}")
            self.thresholds_ = self.phases_ = None
            self._by_hand = False
            return
        t = np.asarray(thresholds, dtype=np.float64)
        if t.ndim != 1 or len(t) == 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
            raise ValueError(f"thresholds must be finite and strictly ascending, got {list(thresholds)}")
        p = np.asarray(phases if phases is not None else np.arange(len(t) + 1))
        if p.shape != (len(t) + 1,) or not np.issubdtype(p.dtype, np.integer) or p.min() < 0 or p.max() >= UNLABELLED:
            raise ValueError(
                f"phases must give one label in [0, {UNLABELLED}) per interval ({len(t) + 1} for {len(t)} "
                f"thresholds), got {None if phases is None else list(phases)}"
            )
        self.n_thresholds = len(t)
        self.thresholds_, self.phases_ = t, p.astype(np.uint8)
        self._by_hand = True

    @property
    def needs_labels(self) -> bool:
        return not self._by_hand

    def fit(self, images, labels) -> MultiThreshold:
        """Fit the thresholds on the labelled voxels (labels == UNLABELLED are ignored); a
        threshold set by hand is kept as it is."""
        if self._by_hand:
            return self
        # scikit-learn's tree: the entropy-minimising split search of the paper, tested code
        from sklearn.tree import DecisionTreeClassifier

        stack = _channel(images, self.channel)
        labels = check_sparse_labels(labels, stack.shape)
        z, y, x = np.nonzero(labels != UNLABELLED)
        if len(z) > self.max_training_samples:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(z), self.max_training_samples, replace=False))
            z, y, x = z[keep], y[keep], x[keep]
        values = stack[z, y, x].astype(np.float32)[:, None]
        # n_thresholds + 1 leaves grown best-first: the paper's depth-2 tree has the same 4 leaves
        # for 3 thresholds, but grown level by level it can spend its first split between void and
        # carbon and then has no leaf left for the bright void above the solid
        tree = DecisionTreeClassifier(
            criterion="entropy", max_leaf_nodes=self.n_thresholds + 1, random_state=self.seed,
        ).fit(values, labels[z, y, x])
        splits = np.unique(tree.tree_.threshold[tree.tree_.feature >= 0])
        if len(splits) == 0:
            raise ValueError(f"the labelled voxels hold one phase only ({np.unique(labels[z, y, x]).tolist()}): nothing to split")
        # the class of each interval: the tree's answer at a grey value inside it
        probes = np.concatenate([[splits[0] - 1.0], (splits[:-1] + splits[1:]) / 2, [splits[-1] + 1.0]])
        self.thresholds_ = splits.astype(np.float64)
        self.phases_ = tree.predict(probes.astype(np.float32)[:, None]).astype(np.uint8)
        return self

    def predict(self, images) -> np.ndarray:
        """uint8 (z, y, x) labels."""
        if self.thresholds_ is None:
            raise RuntimeError("MultiThreshold has no thresholds yet: give them by hand or call fit(images, labels)")
        stack = _channel(images, self.channel)
        return _apply(stack, self.thresholds_, self.phases_, self.progress, f"{self.n_thresholds} thresholds")

    def describe(self) -> str:
        """The rule as text, e.g. '0 | 27.5 | 2 | 48.1 | 1 | 76 | 0' (phase, threshold, phase, ...)."""
        if self.thresholds_ is None:
            return "not fitted"
        parts = [str(self.phases_[0])]
        for t, p in zip(self.thresholds_, self.phases_[1:]):
            parts += [f"{t:.4g}", str(p)]
        return " | ".join(parts)


def _channel(images, channel: int) -> np.ndarray:
    """(z, y, x) stack of one channel of a (C, z, y, x) or (z, y, x) input."""
    images = check_images(images)
    if not 0 <= channel < images.shape[0]:
        raise ValueError(f"channel {channel} does not exist: the images have {images.shape[0]} channel(s)")
    return images[channel]


def _histogram(stack: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, bin centres) of a stack, accumulated a few slices at a time."""
    low, high = float(stack.min()), float(stack.max())
    if high == low:
        high = low + 1.0
    edges = np.linspace(low, high, n_bins + 1)
    counts = np.zeros(n_bins, dtype=np.int64)
    step = max(1, common.CHUNK_VOXELS // (stack.shape[1] * stack.shape[2]))
    for z0 in range(0, stack.shape[0], step):
        counts += np.histogram(stack[z0 : z0 + step], bins=edges)[0]
    return counts, (edges[:-1] + edges[1:]) / 2


def _apply(stack: np.ndarray, thresholds: np.ndarray, phases: np.ndarray, progress: bool = False,
           desc: str = "") -> np.ndarray:
    """Label of every voxel: phases[i] for thresholds[i-1] < g <= thresholds[i], chunk by chunk."""
    labels = np.empty(stack.shape, dtype=np.uint8)
    step = max(1, common.CHUNK_VOXELS // (stack.shape[1] * stack.shape[2]))
    for z0 in tqdm(range(0, stack.shape[0], step), desc=desc, disable=not progress, leave=False):
        # float32 values against float64 thresholds: exactly the comparison of the fitted tree
        # (scikit-learn casts its input to float32; its split values are float64 midpoints)
        block = stack[z0 : z0 + step].astype(np.float32).astype(np.float64)
        labels[z0 : z0 + step] = phases[np.searchsorted(thresholds, block, side="left")]
    return labels


def _interval_table(interval_phases, n_phases: int) -> np.ndarray:
    if interval_phases is None:
        return np.arange(n_phases, dtype=np.uint8)
    table = np.asarray(interval_phases)
    if table.shape != (n_phases,) or not np.issubdtype(table.dtype, np.integer) or table.min() < 0:
        raise ValueError(
            f"interval_phases must give one non-negative label per interval ({n_phases}), got {list(interval_phases)}"
        )
    return table.astype(np.uint8)
