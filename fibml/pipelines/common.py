"""What several commands share: a model's predictions in memory, the names of methods and
channels in tables, a late-fusion model's voltage weights, list-valued options."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from omegaconf import OmegaConf

from fibml.channels import channel_key, channel_label
from fibml.inference import InferenceSettings, predict_volume, resolve_device
from fibml.protocols import SEGMENTATION, WeighsVoltages, task_of

__all__ = [
    "as_list",
    "channels_text",
    "data_settings",
    "format_weights",
    "method_name",
    "predict_probabilities",
    "slug",
    "voltage_weights",
]


def as_list(value) -> list:
    """A config value as a list: None -> [], a list (or ListConfig) as it is, anything else as [value]."""
    if value is None:
        return []
    return list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]


def slug(name: str) -> str:
    """A method name as a folder name: runs of other characters than letters, digits, '.', '+', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def method_name(run_cfg: Mapping) -> str:
    """A short name for tables: net, input kind and voltages, e.g. 'ResidualUNet 2.5d, 1+2+4 kV'."""
    net = str(run_cfg["model"]["net"]["_target_"]).rsplit(".", 1)[-1]
    return f"{net} {run_cfg['data']['dims']}, {channels_text(run_cfg['data']['voltages'])}"


def channels_text(channels) -> str:
    """Channels for a table: '1+2+4 kV' for BSE voltages, 'se2_1kV+inlens_1kV' for detector stacks."""
    keys = [channel_key(c) for c in channels]
    if all(isinstance(k, float) for k in keys):
        return "+".join(f"{k:g}" for k in keys) + " kV"
    return "+".join(channel_label(k) for k in keys)


def voltage_weights(model, voltages) -> dict[str, float]:
    """{'1kV': w, ...}: the learned weight of each voltage of a late-fusion model, else {}."""
    if task_of(model) != SEGMENTATION or not isinstance(model.net, WeighsVoltages):
        return {}
    net = model.net
    names = [channel_label(v) for v in voltages] if voltages is not None else [
        f"branch{i}" for i in range(net.n_voltages)
    ]
    return dict(zip(names, net.voltage_weights()))


def format_weights(weights: Mapping[str, float]) -> str:
    """Voltage weights for a table cell: '1kV 0.80, 2kV 0.16, 4kV 0.04'."""
    return ", ".join(f"{name} {w:.2f}" for name, w in weights.items())


def data_settings(data) -> dict:
    """The input layout a model was trained with, from its data config or its datamodule."""
    keys = ("dims", "patch_size", "n_adjacent")
    return {k: data[k] if isinstance(data, Mapping) else getattr(data, k) for k in keys}


def predict_probabilities(model, images: np.ndarray, settings: dict, inference: Mapping | InferenceSettings,
                          z_range: range | None = None) -> np.ndarray:
    """Class probabilities (n_classes, z, y, x) of a model over the slices z_range of images
    (channel, z, y, x), in memory, with the inference settings of the config (a config node, a
    dict of some of them over configs/inference/default.yaml, or InferenceSettings)."""
    inference = InferenceSettings.from_config(inference)
    device = resolve_device(inference.device)
    model = model.eval().to(device)
    return predict_volume(
        model.probabilities, images, z_range=z_range, device=device, overlap=inference.overlap,
        slices_per_batch=inference.slices_per_batch, sw_batch_size=inference.sw_batch_size,
        reuse_memory=inference.reuse_memory, **settings,
    )
