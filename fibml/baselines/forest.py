"""Random-forest pixel classifier on filter features: the Ilastik-style baseline of the multi-detector paper.

The paper on multi-detector FIB-SEM of battery electrodes (sections 3.4-3.6) segments with Ilastik's
random forest: each voxel is described by a bank of filter responses (Gaussian smoothing, edge
filters, texture filters at several scales) and the forest learns the phases from a few labelled
slices. One signal (SE2) and its 60 features gave a weighted error of 12.3 %; two detectors (SE2,
InLens) plus their difference, 183 features, 10.3 %; "tailored" features that let the forest learn
the milling progress (shine-through fades gradually from slice to slice, so the slices above and
below tell a pore from a milled face) 6.1 %. ``filter_features`` builds that feature bank,
``RandomForestSegmenter`` trains and applies the forest, chunk by chunk over z so that the
features of a 256^3 volume never sit in memory at once.

Arrays are (channel, z, y, x) images of raw intensities and uint8 (z, y, x) labels, z the milling
direction; sigmas are in voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from fibml.baselines.common import (
    UNLABELLED,
    check_images,
    check_int,
    check_sparse_labels,
)

__all__ = ["FEATURE_GROUPS", "FeaturePlan", "RandomForestSegmenter", "feature_halo", "filter_features", "sample_labelled"]

# the paper's Fig. 3 groups (edge, smoothing, texture), plus the tailored milling-progress features
FEATURE_GROUPS = ("smoothing", "edge", "texture", "z-neighbour")
DIMS = ("2d", "3d")
# the wider Gaussian of the difference of Gaussians is this many times the narrower (Marr-Hildreth)
DOG_RATIO = 1.6
# scipy's and skimage's default Gaussian truncation: the kernel radius is int(TRUNCATE * sigma + 0.5)
TRUNCATE = 4.0
# every filter mirrors at the borders the same way: scipy's "reflect" (d c b a | a b c d)
MODE = "reflect"


def filter_features(
    images,
    dims: str = "2d",
    sigmas: Sequence[float] = (0.7, 1.6, 3.5),
    channel_difference: bool = True,
    z_neighbours: bool = True,
    channel_names: Sequence[str] | None = None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Ilastik-style filter features of every voxel of a (multi-detector) stack.

    images: a (z, y, x) stack or a (C, z, y, x) array of C channels (detectors or voltages),
        filtered as given (``RandomForestSegmenter`` standardises each channel first, so that
        channel differences compare detectors of different gain).
    dims: "2d" filters each slice in its (y, x) plane only (sigma 0 along z), as a slice-wise
        Ilastik project does; "3d" filters with an isotropic sigma along z, y and x (voxels).
    sigmas: filter scales, voxels.
    channel_difference: with C >= 2 also filter the difference c_i - c_j of every pair i < j (the
        paper's SE2 - InLens signal, named e.g. "se2-inlens").
    z_neighbours: add the tailored milling-progress features of every filtered channel: its
        in-plane Gaussian at the smallest sigma on the slice above (z-1) and below (z+1), and the
        differences (z+1) - (z) and (z) - (z-1). The stack ends are mirrored.
    channel_names: one name per input channel (default "ch0", "ch1", ...).
    n_jobs: threads (-1 = all cores); the features do not depend on it.

    Per filtered channel: the channel itself (smoothing); per sigma s a Gaussian (smoothing);
    gradient magnitude of Gaussian, Laplacian of Gaussian and difference of Gaussians s - 1.6 s
    (edge); the eigenvalues, largest first, of the structure tensor (Sobel derivatives, Gaussian
    window s) and of the Hessian of the Gaussian-smoothed channel (texture), 2 each in 2D, 3 in 3D;
    then the 4 z-neighbour features. 2 channels, 3 sigmas: 3 x (1 + 3 x 8) + 3 x 4 = 87 features
    in 2D, 3 x (1 + 3 x 10) + 3 x 4 = 105 in 3D.

    All filters are scipy's and skimage's, truncated at 4 sigma, mirrored at the borders; note that
    scipy's truncated Laplacian kernel does not sum to 0 (-0.01 at sigma 0.7), so a flat region
    gives a Laplacian of -0.01 x its intensity.

    Returns (features, names, groups): float32 (F, z, y, x); F readable names like
    "se2 gaussian s=1.6"; F groups, each one of ``FEATURE_GROUPS``.
    """
    images = check_images(images)
    plan = FeaturePlan(images.shape[0], dims, sigmas, channel_difference, z_neighbours, channel_names)
    features = plan.compute(images.astype(np.float32, copy=False), 0, images.shape[1], _threads(n_jobs))
    return features, list(plan.names), list(plan.groups)


def feature_halo(dims: str = "2d", sigmas: Sequence[float] = (0.7, 1.6, 3.5), z_neighbours: bool = True) -> int:
    """Slices above and below a block of slices whose intensities its features depend on.

    Features computed on a block padded by this many slices (or up to the stack end, which is
    mirrored alike) equal those of the whole stack exactly. 2D: only the z-neighbour features
    reach across slices, by one. 3D: the Gaussian supports, radius int(4 sigma + 0.5) - the widest
    is the difference of Gaussians' 1.6 sigma; the Hessian adds two central differences to its
    Gaussian and the structure tensor one Sobel stencil to its Gaussian window.
    """
    _check_dims(dims)
    sigmas = _check_sigmas(sigmas)
    halo = 1 if z_neighbours else 0
    if dims == "3d":
        for sigma in sigmas:
            halo = max(halo, _radius(DOG_RATIO * sigma), _radius(sigma) + 2)
    return halo


class RandomForestSegmenter:
    """Random forest on filter features, trained on sparse labels (the paper's Ilastik baseline).

    dims, sigmas, channel_difference, z_neighbours, channel_names: the feature bank, see
        ``filter_features``. The defaults are the paper's tailored set (3.6) with three of
        Ilastik's scales (0.7, 1.6, 3.5 voxels) in 2D: 87 features for two detectors.
    n_estimators, max_depth, min_samples_leaf, class_weight: the forest. 32 trees of depth <= 16
        keep the prediction of a 256^3 two-detector volume under 2 minutes on 2 busy CPU cores
        (benchmarks/baselines_speed.py; the filters take about 60 % of it, the trees the rest),
        with the accuracy of 50 trees; "balanced" weights every phase equally whatever its share
        of the labels.
    max_training_samples: the forest is fitted on at most this many labelled voxels, drawn per
        phase in proportion to its labels (every phase keeps at least one), seeded.
    chunk_slices: prediction runs over this many slices at a time, each chunk filtered with the
        halo of ``feature_halo`` around it, so the result equals that of filtering the whole stack
        at once; memory is bounded by the features of one chunk (87 x 16 slices of 256 x 256
        float32 = 0.37 GB in 2D) plus a few filtered copies of the chunk and its halo. In 3D the
        halo is wide (22 slices at sigma 3.5: a 16-slice chunk filters 60), so larger chunks waste
        less work; 3D is also about 6x slower per voxel than 2D (skimage's 3 x 3 eigenvalues).
    n_jobs: threads for fitting and predicting (-1 = all cores).
    seed: seeds the training subsample, the forest and the permutations of ``class_importances``;
        equal seeds give equal labels.
    progress: a tqdm bar over the slices while predicting.

    Each input channel is standardised with the mean and standard deviation of the training
    images (stored as ``mean_`` and ``std_``), and predict uses the same. After ``fit``:
    ``classes_`` (uint8 label values), ``feature_names_``, ``feature_groups_``,
    ``feature_channels_``, ``forest_`` (the scikit-learn forest).
    """

    needs_labels = True

    def __init__(
        self,
        dims: str = "2d",
        sigmas: Sequence[float] = (0.7, 1.6, 3.5),
        channel_difference: bool = True,
        z_neighbours: bool = True,
        n_estimators: int = 32,
        max_depth: int | None = 16,
        min_samples_leaf: int = 2,
        max_training_samples: int = 200_000,
        class_weight: str | dict | None = "balanced",
        chunk_slices: int = 16,
        n_jobs: int = -1,
        seed: int | None = 0,
        progress: bool = False,
        channel_names: Sequence[str] | None = None,
    ):
        self.dims = _check_dims(dims)
        self.sigmas = _check_sigmas(sigmas)
        self.channel_difference = bool(channel_difference)
        self.z_neighbours = bool(z_neighbours)
        self.n_estimators = _check_positive(n_estimators, "n_estimators")
        self.max_depth = None if max_depth is None else _check_positive(max_depth, "max_depth")
        self.min_samples_leaf = _check_positive(min_samples_leaf, "min_samples_leaf")
        self.max_training_samples = _check_positive(max_training_samples, "max_training_samples")
        self.class_weight = class_weight
        self.chunk_slices = _check_positive(chunk_slices, "chunk_slices")
        self.n_jobs = check_int(n_jobs, "n_jobs")
        if self.n_jobs == 0:
            raise ValueError("n_jobs must be a positive thread count or negative (-1 = all cores), got 0")
        self.seed = None if seed is None else check_int(seed, "seed")
        self.progress = progress
        self.channel_names = None if channel_names is None else list(channel_names)
        self.halo = feature_halo(self.dims, self.sigmas, self.z_neighbours)
        self.forest_ = None

    def fit(self, images, labels) -> RandomForestSegmenter:
        """Train on the labelled voxels of ``labels`` (uint8 (z, y, x), ``UNLABELLED`` = none).

        Standardises every channel (mean and standard deviation of ``images``, kept for predict),
        draws at most ``max_training_samples`` labelled voxels and computes features only on the
        slices that hold them, with their halo, so they are exactly those of the whole stack.
        Returns self. Raises ValueError for labels of another shape than the images' (z, y, x), or
        without any labelled voxel.
        """
        # scikit-learn's forest: well tested, seeded, parallel, and it reports mean-decrease-impurity
        # importances per feature (Ilastik's forest is vigra's; the algorithm is the same)
        from sklearn.ensemble import RandomForestClassifier

        images = check_images(images)
        labels = check_sparse_labels(labels, images.shape[1:])
        n_channels = images.shape[0]
        self._plan = FeaturePlan(
            n_channels, self.dims, self.sigmas, self.channel_difference, self.z_neighbours, self.channel_names
        )
        self.mean_, self.std_ = _channel_statistics(images)
        self.n_channels_ = n_channels
        self.feature_names_ = list(self._plan.names)
        self.feature_groups_ = list(self._plan.groups)
        self.feature_channels_ = list(self._plan.channels)

        rng = np.random.default_rng(self.seed)
        z, y, x = sample_labelled(labels, self.max_training_samples, rng)
        features = self.features_at(images, z, y, x)
        forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            class_weight=self.class_weight,
            n_jobs=self.n_jobs,
            random_state=self.seed,
        )
        forest.fit(features, labels[z, y, x])
        # prediction parallelises over voxels instead (``_forest_proba``): trees then add up in a
        # fixed order, so a voxel's probabilities do not depend on thread timing or chunking
        forest.set_params(n_jobs=1)
        self.forest_ = forest
        self.classes_ = forest.classes_.astype(np.uint8)
        return self

    def predict(self, images) -> np.ndarray:
        """uint8 (z, y, x) labels, each voxel the phase of highest forest probability (label values
        as in the training labels)."""
        images = self._check_predict_images(images)
        labels = np.empty(images.shape[1:], dtype=np.uint8)
        for z0, z1, proba in self._proba_chunks(images):
            labels[z0:z1] = self.classes_[proba.argmax(axis=0)]
        return labels

    def predict_proba(self, images) -> np.ndarray:
        """float32 (n_classes, z, y, x) forest probabilities, in the order of ``classes_``, chunk by
        chunk (``chunk_slices``). Raises RuntimeError before ``fit`` and ValueError for another
        channel count than in ``fit``."""
        images = self._check_predict_images(images)
        proba = np.empty((len(self.classes_), *images.shape[1:]), dtype=np.float32)
        for z0, z1, chunk in self._proba_chunks(images):
            proba[:, z0:z1] = chunk
        return proba

    def feature_importances(self, by: str | Sequence[str] = ("group",)) -> list[dict]:
        """The forest's mean-decrease-impurity importances summed per feature group (``by=("group",)``),
        per filtered channel (``"channel"``) or per both (``("group", "channel")``).

        Returns rows like {"group": "edge", "importance": 0.41}, largest first, summing to 1 (to 0
        if no tree split at all).
        """
        self._check_fitted()
        by = (by,) if isinstance(by, str) else tuple(by)
        keys = {"group": self.feature_groups_, "channel": self.feature_channels_}
        if not by or any(key not in keys for key in by):
            raise ValueError(f"by must name one or more of {tuple(keys)}, got {by!r}")
        totals: dict[tuple, float] = {}
        for i, importance in enumerate(self.forest_.feature_importances_):
            row = tuple(keys[key][i] for key in by)
            totals[row] = totals.get(row, 0.0) + float(importance)
        rows = [{**dict(zip(by, row)), "importance": value} for row, value in totals.items()]
        return sorted(rows, key=lambda row: -row["importance"])

    def class_importances(self, images, labels, n_repeats: int = 3, max_samples: int = 5000) -> list[dict]:
        """Per phase and feature group, how much that phase's recall drops when all features of the
        group are permuted together across voxels (the paper's Fig. 3, per image class).

        Uses at most ``max_samples`` labelled voxels of ``labels`` (drawn as in ``fit``), seeded;
        the drop is the mean over ``n_repeats`` permutations. Returns rows like
        {"class": 1, "group": "edge", "recall": 0.97, "importance": 0.12} ("recall" without any
        permutation), by class, largest importance first; phases absent from ``labels`` are left out.
        """
        self._check_fitted()
        images = self._check_predict_images(images)
        labels = check_sparse_labels(labels, images.shape[1:])
        n_repeats = _check_positive(n_repeats, "n_repeats")
        max_samples = _check_positive(max_samples, "max_samples")
        rng = np.random.default_rng(self.seed)
        z, y, x = sample_labelled(labels, max_samples, rng)
        features = self.features_at(images, z, y, x)
        truth = labels[z, y, x]
        present = [c for c in self.classes_ if (truth == c).any()]
        base = _recalls(self._predict_rows(features), truth, present)
        groups = np.asarray(self.feature_groups_)
        rows = []
        drops = {c: {} for c in present}
        for group in FEATURE_GROUPS:
            columns = np.flatnonzero(groups == group)
            if columns.size == 0:
                continue
            total = np.zeros(len(present))
            for _ in range(n_repeats):
                shuffled = features.copy()
                shuffled[:, columns] = features[rng.permutation(len(features))][:, columns]
                total += base - _recalls(self._predict_rows(shuffled), truth, present)
            for c, drop in zip(present, total / n_repeats):
                drops[c][group] = float(drop)
        for c, recall in zip(present, base):
            for group, drop in sorted(drops[c].items(), key=lambda item: -item[1]):
                rows.append({"class": int(c), "group": group, "recall": float(recall), "importance": drop})
        return rows

    # --- helpers ---------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.forest_ is None:
            raise RuntimeError("RandomForestSegmenter is not fitted: call fit(images, labels) first")

    def _check_predict_images(self, images) -> np.ndarray:
        self._check_fitted()
        images = check_images(images)
        if images.shape[0] != self.n_channels_:
            raise ValueError(
                f"images have {images.shape[0]} channel(s), the forest was trained on {self.n_channels_} "
                f"({', '.join(self._plan.input_names)})"
            )
        return images

    def chunk_features(self, images: np.ndarray, z0: int, z1: int) -> np.ndarray:
        """float32 (F, z1 - z0, y, x) features of slices [z0, z1), computed on the block widened by
        the halo (clipped at the stack ends, which the filters mirror like the whole stack)."""
        b0, b1 = max(0, z0 - self.halo), min(images.shape[1], z1 + self.halo)
        block = np.empty((images.shape[0], b1 - b0, *images.shape[2:]), dtype=np.float32)
        for c in range(images.shape[0]):
            block[c] = (images[c, b0:b1].astype(np.float64) - self.mean_[c]) / self.std_[c]
        return self._plan.compute(block, z0 - b0, z1 - b0, _threads(self.n_jobs))

    def features_at(self, images: np.ndarray, z, y, x) -> np.ndarray:
        """float32 (n, F) features of the voxels (z, y, x) (z sorted), chunk by chunk."""
        rows = np.empty((len(z), len(self._plan.names)), dtype=np.float32)
        for z0, z1 in _runs(np.unique(z), self.chunk_slices):
            first, last = np.searchsorted(z, [z0, z1])
            features = self.chunk_features(images, z0, z1)
            rows[first:last] = features[:, z[first:last] - z0, y[first:last], x[first:last]].T
        return rows

    def _proba_chunks(self, images: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """(z0, z1, float32 (n_classes, z1 - z0, y, x) probabilities) over the stack."""
        depth = images.shape[1]
        with tqdm(total=depth, desc="random forest", unit="slice", disable=not self.progress, leave=False) as bar:
            for z0 in range(0, depth, self.chunk_slices):
                z1 = min(depth, z0 + self.chunk_slices)
                features = self.chunk_features(images, z0, z1)
                n_features, *shape = features.shape
                # (voxel, feature) rows as a transposed view: scikit-learn's trees read any strides,
                # as fast as from a C-ordered copy, which would cost a second chunk of memory
                proba = self._forest_proba(features.reshape(n_features, -1).T)
                del features
                yield z0, z1, proba.T.reshape(len(self.classes_), *shape)
                bar.update(z1 - z0)

    def _forest_proba(self, rows: np.ndarray) -> np.ndarray:
        """float32 (n, n_classes) probabilities, the rows split among threads (tree traversal releases
        the GIL); each voxel's trees are summed in the same order whatever the split."""
        n_threads = max(1, min(_threads(self.n_jobs), len(rows) // 10_000))
        if n_threads == 1:
            return self.forest_.predict_proba(rows).astype(np.float32)
        with ThreadPoolExecutor(n_threads) as pool:
            parts = pool.map(self.forest_.predict_proba, np.array_split(rows, n_threads))
            return np.concatenate([part.astype(np.float32) for part in parts])

    def _predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.classes_[self._forest_proba(rows).argmax(axis=1)]


class FeaturePlan:
    """Names, groups and channels of the features, and their computation in that order."""

    def __init__(self, n_channels, dims, sigmas, channel_difference, z_neighbours, channel_names):
        self.dims = _check_dims(dims)
        self.sigmas = _check_sigmas(sigmas)
        self.z_neighbours = bool(z_neighbours)
        if channel_names is None:
            channel_names = [f"ch{c}" for c in range(n_channels)]
        channel_names = [str(name) for name in channel_names]
        if len(channel_names) != n_channels:
            raise ValueError(f"channel_names has {len(channel_names)} name(s), the images {n_channels} channel(s)")
        if len(set(channel_names)) != n_channels:
            raise ValueError(f"channel_names must be distinct, got {channel_names}")
        self.input_names = channel_names
        # (name, index or (i, j) for the difference c_i - c_j)
        self.filtered = [(name, c) for c, name in enumerate(channel_names)]
        if channel_difference:
            self.filtered += [
                (f"{channel_names[i]}-{channel_names[j]}", (i, j))
                for i in range(n_channels)
                for j in range(i + 1, n_channels)
            ]
        self.suffixes = _feature_suffixes(self.dims, self.sigmas, self.z_neighbours)
        self.row_of_suffix = {suffix: row for row, (suffix, _) in enumerate(self.suffixes)}
        self.names = [f"{channel} {suffix}" for channel, _ in self.filtered for suffix, _ in self.suffixes]
        self.groups = [group for _ in self.filtered for _, group in self.suffixes]
        self.channels = [channel for channel, _ in self.filtered for _ in self.suffixes]

    def compute(self, block: np.ndarray, z0: int, z1: int, n_threads: int = 1) -> np.ndarray:
        """float32 (F, z1 - z0, y, x) features of slices [z0, z1) of a float32 (C, z, y, x) block.

        The work is split into one task per filtered channel and sigma (plus one for the raw and
        z-neighbour features), run on ``n_threads`` threads: scipy's filters release the GIL, and
        every task writes its own rows, so the result does not depend on the thread count.
        """
        features = np.empty((len(self.names), z1 - z0, *block.shape[2:]), dtype=np.float32)
        channels = [
            block[source] if isinstance(source, int) else block[source[0]] - block[source[1]]
            for _, source in self.filtered
        ]
        per_channel = len(self.suffixes)
        # widest filters first: the long tasks start early and the threads finish together
        tasks = [(c, sigma) for sigma in (*sorted(self.sigmas, reverse=True), None) for c in range(len(channels))]

        def run(task):
            c, sigma = task
            for suffix, feature in _channel_features(channels[c], self.dims, self.sigmas, self.z_neighbours, sigma):
                # names and arrays come from one list of suffixes (_part_suffixes), looked up by name
                features[c * per_channel + self.row_of_suffix[suffix]] = feature[z0:z1]

        if n_threads > 1:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(run, tasks))
        else:
            for task in tasks:
                run(task)
        return features


def _feature_suffixes(dims: str, sigmas: tuple[float, ...], z_neighbours: bool) -> list[tuple[str, str]]:
    """(name without the channel, group) of every feature of one filtered channel, in order."""
    raw, *z_neighbour = _part_suffixes(dims, sigmas, z_neighbours, None)
    per_sigma = [suffix for s in sigmas for suffix in _part_suffixes(dims, sigmas, z_neighbours, s)]
    return [raw, *per_sigma, *z_neighbour]


def _part_suffixes(dims: str, sigmas, z_neighbours: bool, sigma: float | None) -> list[tuple[str, str]]:
    """(suffix, group) of the features of one channel at one sigma; sigma None: the raw channel and
    its z-neighbour features."""
    if sigma is None:
        suffixes = [("raw", "smoothing")]
        if z_neighbours:
            s = min(sigmas)
            suffixes += [
                (f"slice above (z-1) s={s:g}", "z-neighbour"),
                (f"slice below (z+1) s={s:g}", "z-neighbour"),
                (f"(z+1) - (z) s={s:g}", "z-neighbour"),
                (f"(z) - (z-1) s={s:g}", "z-neighbour"),
            ]
        return suffixes
    n_eigen = 2 if dims == "2d" else 3
    s = sigma
    return [
        (f"gaussian s={s:g}", "smoothing"),
        (f"gradient magnitude s={s:g}", "edge"),
        (f"laplacian of gaussian s={s:g}", "edge"),
        (f"difference of gaussians s={s:g}", "edge"),
        *[(f"structure tensor ev{k} s={s:g}", "texture") for k in range(1, n_eigen + 1)],
        *[(f"hessian ev{k} s={s:g}", "texture") for k in range(1, n_eigen + 1)],
    ]


def _channel_features(
    channel: np.ndarray, dims: str, sigmas, z_neighbours: bool, sigma: float | None
) -> Iterator[tuple[str, np.ndarray]]:
    """(name suffix, float32 (z, y, x) array) of the features of one float32 (z, y, x) channel at one
    sigma, in the order of ``_part_suffixes``; sigma None: the raw channel and its z-neighbours."""
    if sigma is None:
        yield "raw", channel
        if z_neighbours:
            s = min(sigmas)
            in_plane = ndi.gaussian_filter(channel, s, mode=MODE, axes=(1, 2))
            # numpy's "symmetric" padding is scipy's "reflect": the end slice is its own neighbour
            padded = np.pad(in_plane, ((1, 1), (0, 0), (0, 0)), mode="symmetric")
            above, below = padded[:-2], padded[2:]
            yield f"slice above (z-1) s={s:g}", above
            yield f"slice below (z+1) s={s:g}", below
            yield f"(z+1) - (z) s={s:g}", below - in_plane
            yield f"(z) - (z-1) s={s:g}", in_plane - above
        return
    s = sigma
    axes = (1, 2) if dims == "2d" else (0, 1, 2)  # 2D: sigma 0 along z
    smooth = ndi.gaussian_filter(channel, s, mode=MODE, axes=axes)
    yield f"gaussian s={s:g}", smooth
    # per-axis sigma too: scipy's gaussian_gradient_magnitude differentiates along ``axes`` only but
    # smooths along every axis with a scalar sigma, which would blur across slices in 2D
    per_axis = s if dims == "3d" else (0.0, s, s)
    yield f"gradient magnitude s={s:g}", ndi.gaussian_gradient_magnitude(channel, per_axis, mode=MODE, axes=axes)
    yield f"laplacian of gaussian s={s:g}", ndi.gaussian_laplace(channel, s, mode=MODE, axes=axes)
    yield f"difference of gaussians s={s:g}", smooth - ndi.gaussian_filter(channel, DOG_RATIO * s, mode=MODE, axes=axes)
    for k, eigenvalues in enumerate(_texture(channel, s, dims, "structure"), start=1):
        yield f"structure tensor ev{k} s={s:g}", eigenvalues
    for k, eigenvalues in enumerate(_texture(channel, s, dims, "hessian"), start=1):
        yield f"hessian ev{k} s={s:g}", eigenvalues


def _texture(channel: np.ndarray, sigma: float, dims: str, kind: str) -> np.ndarray:
    """float32 (n_dims, z, y, x) eigenvalues, largest first, of the structure tensor or the Hessian:
    per slice in 2D, of the volume in 3D."""
    from skimage.feature import (
        hessian_matrix,
        hessian_matrix_eigvals,
        structure_tensor,
        structure_tensor_eigenvalues,
    )

    def eigenvalues(image):
        if kind == "structure":
            return structure_tensor_eigenvalues(structure_tensor(image, sigma=sigma, mode=MODE, order="rc"))
        # finite differences of the smoothed image: skimage's Gaussian-derivative variant truncates
        # its kernels at 100 sigma for sigma <= 1, a 100-slice halo in 3D for no visible gain
        return hessian_matrix_eigvals(
            hessian_matrix(image, sigma=sigma, mode=MODE, order="rc", use_gaussian_derivatives=False)
        )

    if dims == "3d":
        return eigenvalues(channel).astype(np.float32, copy=False)
    out = np.empty((2, *channel.shape), dtype=np.float32)
    for z in range(channel.shape[0]):
        out[:, z] = eigenvalues(channel[z])
    return out


def sample_labelled(labels: np.ndarray, max_samples: int, rng: np.random.Generator):
    """(z, y, x) index arrays, sorted by position, of at most ~max_samples labelled voxels, drawn per
    phase in proportion to its labelled voxels (every phase keeps at least one)."""
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat != UNLABELLED)
    if len(where) > max_samples:
        phases = flat[where]
        counts = np.bincount(phases, minlength=UNLABELLED)
        picks = []
        for phase in np.flatnonzero(counts):
            members = where[phases == phase]
            quota = min(len(members), max(1, math.floor(max_samples * len(members) / len(where))))
            picks.append(rng.choice(members, size=quota, replace=False))
        where = np.sort(np.concatenate(picks))
    return np.unravel_index(where, labels.shape)


def _runs(slices: np.ndarray, max_length: int) -> list[tuple[int, int]]:
    """[z0, z1) runs of consecutive slice indices (sorted, distinct), each at most max_length long."""
    runs = []
    for z in slices.tolist():
        if runs and runs[-1][1] == z and runs[-1][1] - runs[-1][0] < max_length:
            runs[-1][1] = z + 1
        else:
            runs.append([z, z + 1])
    return [(z0, z1) for z0, z1 in runs]


def _channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 (C,) mean and standard deviation of every channel (1 for a constant channel)."""
    mean = np.array([images[c].mean(dtype=np.float64) for c in range(images.shape[0])])
    std = np.array([images[c].std(dtype=np.float64) for c in range(images.shape[0])])
    std[std == 0] = 1.0  # a constant channel carries no information; leave it at 0 after centring
    return mean, std


def _recalls(predicted: np.ndarray, truth: np.ndarray, classes) -> np.ndarray:
    return np.array([(predicted[truth == c] == c).mean() for c in classes])


def _threads(n_jobs: int) -> int:
    """Thread count of a scikit-learn style n_jobs (-1 = all cores the process may use)."""
    from joblib import effective_n_jobs

    return effective_n_jobs(check_int(n_jobs, "n_jobs"))


def _radius(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5)


def _check_dims(dims: str) -> str:
    if dims not in DIMS:
        raise ValueError(f"dims must be one of {DIMS}, got {dims!r}")
    return dims


def _check_sigmas(sigmas) -> tuple[float, ...]:
    values = tuple(float(s) for s in np.atleast_1d(sigmas))
    if not values or not all(math.isfinite(s) and s > 0 for s in values) or len(set(values)) != len(values):
        raise ValueError(f"sigmas must be one or more distinct positive filter scales (voxels), got {sigmas!r}")
    return values


def _check_positive(value, name: str) -> int:
    value = check_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value
