"""The chunk plan of predict_to_disk: runs of whole slices (2D / 2.5D), or 3D blocks whose cores
lie on MONAI's window grid with the halos that make them equal to a whole-volume run (see
fibml.inference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from fibml.sliding_window import scan_interval, window_starts

__all__ = ["DEFAULT_BLOCK", "Chunk", "axis_blocks", "plan_chunks"]


DEFAULT_BLOCK = (64, 512, 512)  # 3D core block (z, y, x), rounded up to the window stride


@dataclass(frozen=True)
class Chunk:
    """A chunk writes `core` ((z0, z1), (y0, y1), (x0, x1)) and reads `region` (3D: core plus
    halo; 2D / 2.5D: the core, the reader adds the neighbours)."""

    index: int
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]

    @property
    def n_voxels(self) -> int:
        return int(np.prod([b - a for a, b in self.core]))

    def slices(self, plane: int) -> int | float:
        """How many whole slices the core is worth (progress in slices; a 3D block is a fraction)."""
        slices = self.n_voxels / plane
        return int(slices) if slices.is_integer() else slices


def plan_chunks(shape, dims: str, roi, overlap: float, chunk_slices: int, block) -> tuple[list[Chunk], list]:
    """The chunks, and the chunking as stored in the fingerprint."""
    n_z, n_y, n_x = shape
    if dims != "3d":
        cores = [((z, min(z + chunk_slices, n_z)), (0, n_y), (0, n_x)) for z in range(0, n_z, chunk_slices)]
        return [Chunk(i, core, core) for i, core in enumerate(cores)], [chunk_slices]
    block = DEFAULT_BLOCK if block is None else block
    block = (int(block),) * 3 if isinstance(block, (int, np.integer)) else tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"block must be one size or three (z, y, x) sizes >= 1, got {block}")
    axes = [axis_blocks(n, p, overlap, b) for n, p, b in zip(shape, roi, block)]
    chunks = [
        Chunk(i, tuple((a, b) for a, b, _, _ in blocks), tuple((lo, hi) for _, _, lo, hi in blocks))
        for i, blocks in enumerate(product(*axes))
    ]
    return chunks, [axis[0][1] - axis[0][0] for axis in axes]


def axis_blocks(size: int, patch: int, overlap: float, core: int) -> list[tuple[int, int, int, int]]:
    """Blocks (a, b, A, B) along one axis: core [a, b), read [A, B) (see the module docstring).

    Checks each block against MONAI's window placement: the windows MONAI places on [A, B)
    that reach the core must be exactly the whole-axis run's windows that reach it.
    """
    stride = scan_interval(size, patch, overlap)
    core = max(stride, -(-core // stride) * stride)  # whole strides: cores start on the window grid
    if size <= patch or core >= size:
        return [(0, size, 0, size)]
    reach = stride * ((patch - 1) // stride)  # the first grid window reaching a core starts this far before it
    last_grid = (size - patch) // stride * stride  # a block must hold a whole patch
    blocks = []
    for a in range(0, size, core):
        b = min(a + core, size)
        lo = max(0, min(a - reach, last_grid))
        hi = b - stride + patch if b + patch <= size else size
        blocks.append((a, b, lo, hi))

    whole = window_starts(size, patch, overlap)
    for a, b, lo, hi in blocks:
        local = [lo + w for w in window_starts(hi - lo, patch, overlap)]
        if hi - lo < patch or _reaching(whole, a, b, patch) != _reaching(local, a, b, patch):
            raise RuntimeError(
                f"internal error: the block [{lo}, {hi}) of an axis of {size} would not be covered by the "
                f"whole-volume windows over its core [{a}, {b}) (patch {patch}, overlap {overlap})"
            )
    return blocks


def _reaching(starts: Sequence[int], a: int, b: int, patch: int) -> list[int]:
    return sorted({s for s in starts if s < b and s + patch > a})
