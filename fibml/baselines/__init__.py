"""Classical segmentation methods that fibml's neural segmentation is compared against.

Every baseline is an object with ``fit(images, labels)`` and ``predict(images)`` on (C, z, y, x)
raw intensities, returning uint8 labels (0 = pore, 1 = solid, more phases allowed); the ones
that learn nothing from labels (k-means, Otsu) ignore ``fit``. evaluate.py scores them on the
same slices and in the same table as the networks (``python evaluate.py method=kmeans``).
"""

from fibml.baselines.clustering import KMeansSegmenter, kmeans_segmentation
from fibml.baselines.common import UNLABELLED, sparse_labels
from fibml.baselines.forest import RandomForestSegmenter, filter_features
from fibml.baselines.thresholds import MultiThreshold, OtsuThreshold

__all__ = [
    "UNLABELLED",
    "KMeansSegmenter",
    "MultiThreshold",
    "OtsuThreshold",
    "RandomForestSegmenter",
    "filter_features",
    "kmeans_segmentation",
    "sparse_labels",
]
