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


def channels_per_voltage(dims: str, n_adjacent: int) -> int:
    """Input channels one voltage contributes: k adjacent slices in 2.5D, else 1."""
    return in_channels([0], dims, n_adjacent)


def n_voltages(voltages) -> int:
    """Number of voltages (detectors): the branches of a fusion net."""
    return len(voltages)


def branch_epochs(branch_ckpts, max_epochs) -> int:
    """Late fusion's first stage: 0 when the branches come trained from checkpoints, else 70 % of
    the epochs (the branches converge first; the ensemble layer has a handful of weights)."""
    if branch_ckpts:
        return 0
    if max_epochs is None or int(max_epochs) < 0:
        return 70
    return max(1, round(0.7 * int(max_epochs)))


RESOLVERS = {
    "fibml.in_channels": in_channels,
    "fibml.spatial_dims": spatial_dims,
    "fibml.channels_per_voltage": channels_per_voltage,
    "fibml.n_voltages": n_voltages,
    "fibml.branch_epochs": branch_epochs,
}


def register_resolvers() -> None:
    """Register fibml's resolvers once (safe to call repeatedly)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
