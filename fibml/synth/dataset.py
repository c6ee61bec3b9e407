"""Synthetic FIB-SEM datasets: a microstructure, its BSE stacks at several voltages, labels."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fibml.io import MANIFEST, write_dataset
from fibml.synth.imaging import render_bse

__all__ = ["cached_dataset", "generate_dataset"]

# bump when the generated data for the same parameters changes, so caches are rebuilt
GENERATOR_VERSION = 1


def generate_dataset(
    out: str | Path,
    shape: Sequence[int],
    voxel_size_nm: float | Sequence[float],
    voltages: Sequence[float],
    structure: Mapping,
    imaging: Mapping | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a structure, render its BSE stacks and write the dataset folder `out`.

    structure: {"function": dotted path of a function taking shape, voxel_size_nm and seed and
        returning a (z, y, x) label array, e.g. fibml.synth.microstructure.hierarchical_leveled_wave,
        **its other keyword arguments}. (Not a Hydra `_target_`, so that a data config holding it
        stays plain data when Hydra instantiates the datamodule.)
    imaging: keyword arguments of fibml.synth.imaging.render_bse (materials, noise, ...).
    """
    if not voltages:
        raise ValueError("voltages is empty: give at least one beam voltage in kV")
    params = {
        "shape": [int(s) for s in shape],
        "voxel_size_nm": voxel_size_nm,
        "voltages": [float(v) for v in voltages],
        "structure": _plain(structure),
        "imaging": _plain(imaging or {}),
        "seed": int(seed),
    }
    bar = tqdm(total=1 + len(voltages), desc=f"synth {Path(out).name}", disable=not progress)
    bar.set_postfix_str("structure")
    labels = _make_structure(params["structure"], params["shape"], voxel_size_nm, seed).astype(np.uint8)
    bar.update()
    images = {}
    for i, voltage in enumerate(params["voltages"]):
        bar.set_postfix_str(f"BSE {voltage:g} kV")
        images[voltage] = render_bse(labels, voltage, voxel_size_nm, seed=seed * 1000 + i + 1, **params["imaging"])
        bar.update()
    bar.close()
    manifest = {
        "generator": "fibml.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "materials": list(params["imaging"].get("materials", ["epoxy", "Au"])),
        "periodic": params["imaging"].get("boundary", "periodic") == "periodic",
        "solid_fraction": float((labels == 1).mean()),
        "parameters": params,
    }
    return write_dataset(out, images, voxel_size_nm, labels=labels, manifest=manifest, overwrite=overwrite)


def cached_dataset(cache_dir: str | Path, generator: Mapping, progress: bool = True) -> Path:
    """Folder of the dataset that `generator` (the keyword arguments of generate_dataset)
    describes, generated once into cache_dir and reused afterwards."""
    params = _plain(generator)
    key = hashlib.sha1(
        json.dumps({"v": GENERATOR_VERSION, **params}, sort_keys=True).encode()
    ).hexdigest()[:10]
    folder = Path(cache_dir) / f"synthetic-{key}"
    if not (folder / MANIFEST).is_file():
        generate_dataset(folder, **params, overwrite=folder.exists(), progress=progress)
    return folder


def _make_structure(structure: Mapping, shape, voxel_size_nm, seed) -> np.ndarray:
    kwargs = dict(structure)
    if "function" not in kwargs:
        raise ValueError(f"structure needs a 'function' (dotted path of a generator), got keys {sorted(kwargs)}")
    function = get_method(kwargs.pop("function"))
    return np.asarray(function(shape=shape, voxel_size_nm=voxel_size_nm, seed=seed, **kwargs))


def _plain(node):
    """A Hydra/OmegaConf node (or anything mapping-like) as plain, JSON-ready Python."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node
