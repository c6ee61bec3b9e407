"""Classical segmentation methods that fibml's neural segmentation is compared against.

These baselines need no training data: they take the BSE stacks (one or several voltages) and
return labels in fibml's convention (uint8, 0 = pore, 1 = solid, more phases allowed).
"""

from fibml.baselines.clustering import kmeans_segmentation

__all__ = ["kmeans_segmentation"]
