"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# flat layout: configs/ sits beside the fibml package (editable install, as the README says)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def in_channels(voltages, dims: str, n_adjacent: int) -> int:
    """Input channels of a segmentation net: one per voltage, times k slices in 2.5D."""
    return len(voltages) * (int(n_adjacent) if str(dims) == "2.5d" else 1)


def spatial_dims(dims: str) -> int:
    """Convolution dimensionality: 3 for 3D patches, 2 for 2D and 2.5D (slices as channels)."""
    dims = str(dims)
    if dims not in ("2d", "2.5d", "3d"):
        raise ValueError(f"data.dims must be '2d', '2.5d' or '3d', got {dims!r}")
    return 3 if dims == "3d" else 2


def register_resolvers() -> None:
    """Register fibml's resolvers once (safe to call repeatedly)."""
    for name, fn in {"fibml.in_channels": in_channels, "fibml.spatial_dims": spatial_dims}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
