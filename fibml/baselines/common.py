"""What every classical baseline shares: input checks, the unlabelled marker, sparse labels.

A baseline is a class with ``fit(images, labels)`` and ``predict(images)``: images are a
(C, z, y, x) array of raw intensities (one channel per voltage or detector; a (z, y, x) stack is
one channel), labels uint8 (z, y, x) with ``UNLABELLED`` where no label is known. Methods that
learn nothing (k-means, Otsu) accept ``fit`` and ignore it, so evaluate.py treats all alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CHUNK_VOXELS", "UNLABELLED", "check_images", "check_int", "check_sparse_labels", "sparse_labels"]

# voxels (per channel) that one prediction chunk holds: bounds memory on big stacks
CHUNK_VOXELS = 4_000_000
# label of voxels without a training label (0 is the pore phase, so it cannot mark "unknown")
UNLABELLED = 255


def check_images(images) -> np.ndarray:
    """(C, z, y, x) view of the input; ValueError for a wrong shape, dtype or non-finite values."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    elif images.ndim != 4:
        raise ValueError(
            f"images must be a (z, y, x) stack or a (channel, z, y, x) array, got {images.ndim} dimensions "
            f"(shape {images.shape})"
        )
    if images.size == 0:
        raise ValueError(f"images are empty (shape {images.shape})")
    real = np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
    if images.dtype == bool or not real:
        raise ValueError(f"images must hold real numbers (integer or float), got dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.floating):
        step = max(1, CHUNK_VOXELS // (images.shape[2] * images.shape[3]))
        for z0 in range(0, images.shape[1], step):  # slice chunks: no full-size temporary mask
            bad = ~np.isfinite(images[:, z0 : z0 + step])
            if bad.any():
                c, z, y, x = np.argwhere(bad)[0]
                chunks = range(0, images.shape[1], step)
                total = sum(int((~np.isfinite(images[:, s : s + step])).sum()) for s in chunks)
                raise ValueError(
                    f"images contain {total} NaN or inf voxel(s), the first at channel {c}, slice {z0 + z}, "
                    f"row {y}, column {x}: fill or mask them first"
                )
    return images


def check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_sparse_labels(labels, shape: Sequence[int]) -> np.ndarray:
    """uint8 (z, y, x) training labels of the images' spatial shape, with at least one labelled voxel."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ValueError(f"labels have shape {labels.shape}, the images (z, y, x) {tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer phase labels (and {UNLABELLED} = unlabelled), got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() > UNLABELLED:
        raise ValueError(f"labels must be in [0, {UNLABELLED}], got {labels.min()}..{labels.max()}")
    if not (labels != UNLABELLED).any():
        raise ValueError(f"labels hold no labelled voxel (every voxel is {UNLABELLED} = unlabelled)")
    return labels.astype(np.uint8, copy=False)


def sparse_labels(
    labels: np.ndarray,
    z_range: range | Sequence[int] | None = None,
    n_slices: int = 3,
    pixels_per_class: int | None = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Sparse training labels from a ground truth, as a user would draw them: ``n_slices``
    evenly spaced slices of ``z_range`` (default: all), and on each of them at most
    ``pixels_per_class`` random pixels per phase (None = the whole slice). Every other voxel is
    ``UNLABELLED``. Returns uint8 (z, y, x) of the labels' shape.

    z_range keeps the labels inside a block (the training split): no label is ever taken from
    outside it, so test slices stay unseen.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a (z, y, x) volume, got shape {labels.shape}")
    z_range = range(labels.shape[0]) if z_range is None else z_range
    n_slices = check_int(n_slices, "n_slices")
    if not 1 <= n_slices <= len(z_range):
        raise ValueError(f"n_slices must be in [1, {len(z_range)}] (the slices of z {z_range}), got {n_slices}")
    picks = np.asarray(z_range)[np.linspace(0, len(z_range) - 1, n_slices).round().astype(int)]
    rng = np.random.default_rng(seed)
    sparse = np.full(labels.shape, UNLABELLED, dtype=np.uint8)
    for z in picks:
        truth = labels[z]
        if pixels_per_class is None:
            sparse[z] = truth
            continue
        for phase in np.unique(truth):
            y, x = np.nonzero(truth == phase)
            keep = rng.choice(len(y), size=min(len(y), int(pixels_per_class)), replace=False)
            sparse[z, y[keep], x[keep]] = phase
    return sparse
