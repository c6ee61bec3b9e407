"""The inference settings of a config (configs/inference/default.yaml), parsed once into a
dataclass: every pipeline that predicts reads its fields, the YAML file is the one place that
holds their defaults, and a misspelt key is an error that names it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache

import torch
from omegaconf import OmegaConf

from fibml.config import CONFIG_DIR

__all__ = ["DEFAULTS_FILE", "InferenceSettings"]


DEFAULTS_FILE = CONFIG_DIR / "inference" / "default.yaml"


@dataclass(frozen=True)
class InferenceSettings:
    """How a trained net is run over whole slices or volumes (the keys of configs/inference/)."""

    overlap: float  # of the patch size; Gaussian blending of the overlaps
    slices_per_batch: int | None  # 2d / 2.5d: slices predicted together (predict.py: None = as many as fit)
    sw_batch_size: int  # patches per forward pass
    device: str  # auto = the GPU when there is one
    devices: list[str] | str | None  # predict.py on several devices: "all" or a list
    chunk_slices: int  # predict.py: slices per chunk (2d / 2.5d)
    block: list[int] | int | None  # predict.py, 3d: the core block
    precision: str  # predict.py: "32" or "bf16"
    reuse_memory: bool  # keep freed host memory for the next batch (fibml.inference.reuse_host_memory)
    resample: bool  # predict.py: present the input at the training voxel size, the segmentation back

    @classmethod
    def from_config(cls, node: Mapping | InferenceSettings | None) -> InferenceSettings:
        """The settings of a config's ``inference`` node (or a plain dict), over the defaults of
        configs/inference/default.yaml; a key that is no setting raises ValueError naming it."""
        if isinstance(node, cls):
            return node
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
        names = [f.name for f in fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"did you mean inference.{close[0]}? " if close else ""
                raise ValueError(f"inference.{key} is not an inference setting: {hint}the settings are "
                                 f"{', '.join(names)} ({DEFAULTS_FILE})")
        merged = {**_defaults(), **values}
        settings = cls(
            overlap=float(merged["overlap"]),
            slices_per_batch=None if merged["slices_per_batch"] is None else int(merged["slices_per_batch"]),
            sw_batch_size=int(merged["sw_batch_size"]),
            device=str(merged["device"]),
            devices=merged["devices"] if merged["devices"] is None or isinstance(merged["devices"], str)
            else [str(d) for d in merged["devices"]],
            chunk_slices=int(merged["chunk_slices"]),
            block=merged["block"],
            precision=str(merged["precision"]),
            reuse_memory=bool(merged["reuse_memory"]),
            resample=bool(merged["resample"]),
        )
        if settings.precision not in ("32", "bf16"):
            raise ValueError(f"inference.precision must be 32 or bf16, got {settings.precision!r}")
        return settings

    def device_list(self) -> list[str] | None:
        """inference.devices as a list: None (one device: inference.device), every visible GPU
        for "all", or the list given."""
        if self.devices is None:
            return None
        if self.devices == "all":
            count = torch.cuda.device_count()
            if count == 0:
                raise ValueError("inference.devices=all found no GPU")
            return [f"cuda:{i}" for i in range(count)]
        if isinstance(self.devices, str) or not len(self.devices):
            raise ValueError(
                f"inference.devices must be null, all, or a list such as [cuda:0,cuda:1], got {self.devices!r}"
            )
        return list(self.devices)


@cache
def _defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.load(DEFAULTS_FILE), resolve=True)
