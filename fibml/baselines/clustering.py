"""k-means clustering of voxel intensities: the classical baseline of the multi-voltage paper.

Sardhara et al. compare their multimodal network with k-means (k = 3) on single-voltage stacks
(their Tables 3-7): with little shine-through (1 kV) k-means does well, and it gets worse as the
voltage, and with it the shine-through from deeper layers, grows. ``kmeans_segmentation``
reproduces that baseline for one or several voltages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from fibml.baselines import common
from fibml.baselines.common import check_images, check_int

__all__ = ["KMeansSegmenter", "kmeans_segmentation"]

_MODES = ("volume", "slice")


def kmeans_segmentation(
    images,
    n_clusters: int = 3,
    solid_clusters: int = 1,
    mode: str = "volume",
    n_phases: int = 2,
    sample_size: int = 200_000,
    seed: int = 0,
    progress: bool = False,
    cluster_to_phase: Sequence[int] | None = None,
    n_init: int = 4,
) -> np.ndarray:
    """Segment a stack into phases by k-means clustering of its (multi-channel) intensities.

    images: a (z, y, x) stack or a (C, z, y, x) array of C channels (e.g. one stack per voltage,
        as ``Dataset.stack()`` returns; a list of (z, y, x) stacks works too). Every channel is
        standardised (zero mean, unit standard deviation) before clustering, so no channel
        dominates the distances because of its gain or offset.
    n_clusters: k, the number of intensity clusters (the paper uses 3: dark pore, grey
        shine-through, bright solid).
    mode: "volume" fits one clustering to the whole stack; "slice" fits one per 2-D slice (as
        the paper clusters slices), which tolerates brightness drift between slices but lets the
        cluster boundaries vary from slice to slice. In "slice" mode the standardisation, the
        subsample and the cluster-to-phase mapping are per slice too, so every slice should show
        every phase: in a slice without, say, solid, the k clusters split the other phases and
        the brightest of them becomes "solid".
    sample_size: the clustering is fitted on a seeded random subsample of at most this many
        voxels (per slice in "slice" mode), so fitting time and memory stay bounded on big
        stacks; every voxel is then assigned to its nearest centre, a few slices at a time.
    seed: seeds the subsample and the k-means++ initialisation: equal inputs give equal labels.
    n_init: k-means restarts from different k-means++ seeds; the one with the lowest inertia wins.

    Clusters to phases. The clusters are ranked by brightness, the mean over channels of their
    standardised centre (rank 0 = darkest). Then:

    - n_phases = 2: the ``solid_clusters`` brightest clusters are solid (label 1), all others
      pore (label 0). With k = 3 and solid_clusters = 1 (default) the middle, grey cluster -
      pore background lit by shine-through - goes to the pores, as in the paper's binary
      segmentation of HNPG; solid_clusters = 2 makes it solid instead.
    - n_phases > 2: the brightness ranks are split into n_phases groups of consecutive ranks,
      as even in size as possible (darker groups take the extra clusters: k = 5, 3 phases ->
      ranks {0, 1}, {2, 3}, {4}); label 0 is the darkest group, n_phases - 1 the brightest.
    - ``cluster_to_phase`` (length n_clusters, indexed by brightness rank, values in
      [0, n_phases)) overrides both rules: cluster of rank r gets label cluster_to_phase[r].

    Returns uint8 labels of shape (z, y, x).

    Raises TypeError for non-integer counts, and ValueError for images that are not 3-D or 4-D,
    hold NaN / inf or too few distinct values to form n_clusters clusters, for n_clusters <
    n_phases, solid_clusters outside [1, n_clusters - 1], an unknown mode, or a malformed
    cluster_to_phase.
    """
    images = check_images(images)
    n_clusters, solid_clusters, n_phases, sample_size, n_init = (
        check_int(value, name)
        for value, name in ((n_clusters, "n_clusters"), (solid_clusters, "solid_clusters"), (n_phases, "n_phases"),
                            (sample_size, "sample_size"), (n_init, "n_init"))
    )
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if n_phases < 2:
        raise ValueError(f"n_phases must be at least 2 (pore and solid), got {n_phases}")
    if n_clusters < n_phases:
        raise ValueError(
            f"n_clusters ({n_clusters}) < n_phases ({n_phases}): every phase needs at least one cluster"
        )
    if not 1 <= solid_clusters <= n_clusters - 1:
        raise ValueError(
            f"solid_clusters must be in [1, n_clusters - 1] = [1, {n_clusters - 1}] so that both pore and "
            f"solid get a cluster, got {solid_clusters}"
        )
    if sample_size < n_clusters:
        raise ValueError(f"sample_size ({sample_size}) must be at least n_clusters ({n_clusters})")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    phase_of_rank = _phase_of_rank(n_clusters, n_phases, solid_clusters, cluster_to_phase)

    _, depth, height, width = images.shape
    rng = np.random.default_rng(seed)
    labels = np.empty((depth, height, width), dtype=np.uint8)
    bar = tqdm(total=depth, desc=f"k-means ({mode})", unit="slice", disable=not progress, leave=False)
    if mode == "volume":
        model = _fit(images, n_clusters, sample_size, rng, seed, n_init, phase_of_rank, where="the stack")
        step = max(1, common.CHUNK_VOXELS // (height * width))
        for z0 in range(0, depth, step):
            z1 = min(depth, z0 + step)
            labels[z0:z1] = model.predict(images[:, z0:z1])
            bar.update(z1 - z0)
    else:
        for z in range(depth):
            slab = images[:, z : z + 1]
            model = _fit(slab, n_clusters, sample_size, rng, seed, n_init, phase_of_rank, where=f"slice {z}")
            labels[z : z + 1] = model.predict(slab)
            bar.update(1)
    bar.close()
    return labels


class KMeansSegmenter:
    """``kmeans_segmentation`` as a baseline object (fit / predict), as evaluate.py runs every
    baseline. k-means learns nothing from labels: ``fit`` is a no-op and every ``predict``
    clusters the stack it is given (keyword arguments as in ``kmeans_segmentation``)."""

    needs_labels = False

    def __init__(self, **options):
        self.options = options

    def fit(self, images=None, labels=None) -> KMeansSegmenter:
        return self

    def predict(self, images) -> np.ndarray:
        return kmeans_segmentation(images, **self.options)


class _Model:
    """A fitted clustering: standardisation, k-means and the cluster -> phase table."""

    def __init__(self, mean, std, kmeans, phase_of_cluster):
        self.mean, self.std, self.kmeans, self.phase_of_cluster = mean, std, kmeans, phase_of_cluster

    def predict(self, block: np.ndarray) -> np.ndarray:
        """uint8 labels (z, y, x) of a (C, z, y, x) block."""
        features = self.standardise(block.reshape(block.shape[0], -1).T)
        return self.phase_of_cluster[self.kmeans.predict(features)].reshape(block.shape[1:])

    def standardise(self, voxels: np.ndarray) -> np.ndarray:
        """(n, C) raw intensities -> (n, C) float64 standardised features."""
        return np.ascontiguousarray((voxels.astype(np.float64) - self.mean) / self.std)


def _fit(images, n_clusters, sample_size, rng, seed, n_init, phase_of_rank, where) -> _Model:
    # scikit-learn's KMeans: a well-maintained, tested implementation with k-means++ seeding and
    # n_init restarts (keeping the lowest inertia), so a bad initialisation cannot silently
    # produce a poor clustering; fibml only adds sampling, standardisation and the phase mapping.
    from sklearn.cluster import KMeans

    sample = _sample(images, sample_size, rng)  # (n, C) float64
    mean = sample.mean(axis=0)
    std = sample.std(axis=0)
    std[std == 0] = 1.0  # a constant channel carries no information; leave it at 0 after centring
    model = _Model(mean, std, None, None)
    features = model.standardise(sample)
    n_distinct = len(np.unique(features, axis=0))
    if n_distinct < n_clusters:
        raise ValueError(
            f"{where} has only {n_distinct} distinct intensity value(s) in the {len(features)} sampled voxels, "
            f"too few for n_clusters={n_clusters} clusters (is the image blank or saturated?)"
        )
    kmeans = KMeans(n_clusters=n_clusters, init="k-means++", n_init=n_init, random_state=seed).fit(features)
    brightness = kmeans.cluster_centers_.mean(axis=1)
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[np.argsort(brightness, kind="stable")] = np.arange(n_clusters)
    model.kmeans, model.phase_of_cluster = kmeans, phase_of_rank[rank]
    return model


def _sample(images: np.ndarray, sample_size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, C) float64 intensities of min(sample_size, all) voxels drawn without replacement."""
    n_channels, *spatial = images.shape
    n_voxels = int(np.prod(spatial))
    if sample_size >= n_voxels:
        return images.reshape(n_channels, -1).T.astype(np.float64)
    flat = np.sort(rng.choice(n_voxels, size=sample_size, replace=False))
    # index with coordinates rather than reshaping: no full copy of a non-contiguous or memory-mapped stack
    z, y, x = np.unravel_index(flat, spatial)
    return images[:, z, y, x].T.astype(np.float64)


def _phase_of_rank(n_clusters, n_phases, solid_clusters, cluster_to_phase) -> np.ndarray:
    """uint8 table: label of the cluster with brightness rank r (0 = darkest)."""
    if cluster_to_phase is not None:
        table = np.asarray(cluster_to_phase)
        if table.shape != (n_clusters,):
            raise ValueError(
                f"cluster_to_phase must list one phase per cluster ({n_clusters} values, indexed by brightness "
                f"rank), got shape {table.shape}"
            )
        if not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"cluster_to_phase must hold integer phase labels, got {table.tolist()}")
        if table.min() < 0 or table.max() >= n_phases:
            raise ValueError(
                f"cluster_to_phase values must be in [0, n_phases) = [0, {n_phases}), got {table.tolist()}"
            )
        return table.astype(np.uint8)
    if n_phases == 2:
        return (np.arange(n_clusters) >= n_clusters - solid_clusters).astype(np.uint8)
    table = np.empty(n_clusters, dtype=np.uint8)
    for phase, ranks in enumerate(np.array_split(np.arange(n_clusters), n_phases)):
        table[ranks] = phase
    return table
