"""Synthetic FIB-SEM datasets: a microstructure, its image stacks (BSE at several voltages, or
several detector signals), labels."""

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
    detectors: Sequence[str] | None = None,
    phases: Sequence[str] | None = None,
    thickness: Mapping | None = None,
    simulator: Mapping | None = None,
    artefacts: Mapping | None = None,
) -> Path:
    """Generate a structure, render its image stacks and write the dataset folder `out`.

    structure: {"function": dotted path of a function taking shape, voxel_size_nm and seed and
        returning a (z, y, x) label array, e.g. fibml.synth.microstructure.hierarchical_leveled_wave,
        **its other keyword arguments}. (Not a Hydra `_target_`, so that a data config holding it
        stays plain data when Hydra instantiates the datamodule.)
    imaging: keyword arguments of the renderer: fibml.synth.imaging.render_bse (materials,
        noise, ...), or with detectors fibml.synth.detectors.render_detector (options for every
        detector; a nested mapping under a detector's name applies to that detector only).
    detectors: None = BSE stacks bse_<V>kV.tif; a list of secondary-electron detectors (e.g.
        [se2, inlens]) = one stack <detector>_<V>kV.tif per detector and voltage (the
        two-detector data of random-forest-multi-detector.txt).
    phases: names of the label values (0, 1, ...) for tables, stored in the manifest.
    thickness: None = every slice one voxel thick. A mapping {target_nm, shape, bin_nm, seed}
        (keyword arguments of fibml.synth.thickness.sample_thicknesses; bin_nm defaults to the
        voxel size along z) writes the "mimicking" dataset of slice-thickness-repositioning-
        inpainting.txt instead: milled slices of gamma-distributed thickness, each showing the
        structure (and the image) at its true depth, stored as if target_nm apart, with their
        true thicknesses in thickness.csv and the isotropic ground truth in labels_isotropic.tif.
    simulator: None or {name: fast} = the fast forward model (render_bse). {name: montecarlo,
        **options of fibml.synth.montecarlo.simulate_bse_stack} = the voxel Monte Carlo simulator
        (materials, boundary and probe_sigma_nm come from `imaging`); with work_dir, finished
        slices are kept in <work_dir>/<V>kV and a rerun resumes there. {name: depth_weighted, eta,
        n_slices} = the "preprocessed" images of the ML simulation (fibml.synth.preprocess): eta is
        "formula" (the Hunger-Kuchler approximation) or a run / checkpoint of the backscatter ANN.
    artefacts: None or empty = clean images. A mapping = keyword arguments of
        fibml.synth.artefacts.add_artefacts (curtaining, blur, charging, shading, noise, histogram; see
        configs/artefacts/realistic.yaml), applied to every image stack after rendering (and after the
        slice-thickness mimicking, as they belong to the acquired slices): the "realistic" target domain.
        Curtaining and shading are shared by the channels of the dataset, charging and noise are drawn per
        channel; the seed is the dataset's. Labels are the same as without artefacts.
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
    if detectors:
        params["detectors"] = [str(d) for d in detectors]
    simulator = _plain(simulator or {})
    if simulator.get("name", "fast") not in SIMULATORS:
        raise ValueError(f"simulator.name must be one of {SIMULATORS}, got {simulator.get('name')!r}")
    if simulator.get("name", "fast") != "fast":
        if detectors:
            raise ValueError(f"simulator={simulator['name']} renders BSE images only: leave detectors empty")
        params["simulator"] = simulator
    if artefacts:
        params["artefacts"] = _plain(artefacts)
    channels = [(v, d) for v in params["voltages"] for d in (params.get("detectors") or [None])]
    bar = tqdm(total=1 + len(channels) + ("artefacts" in params), desc=f"synth {Path(out).name}", disable=not progress)
    bar.set_postfix_str("structure")
    labels = _make_structure(params["structure"], params["shape"], voxel_size_nm, seed).astype(np.uint8)
    bar.update()
    images = {}
    for i, (voltage, detector) in enumerate(channels):
        noise_seed = seed * 1000 + i + 1
        if detector is None and params.get("simulator", {}).get("name") == "montecarlo":
            bar.set_postfix_str(f"Monte Carlo {voltage:g} kV")
            images[voltage] = _monte_carlo(labels, voltage, voxel_size_nm, noise_seed, params["imaging"],
                                           params["simulator"], progress)
        elif detector is None and "simulator" in params:
            bar.set_postfix_str(f"depth-weighted {voltage:g} kV")
            images[voltage] = _depth_weighted(labels, voltage, voxel_size_nm, params["imaging"], params["simulator"])
        elif detector is None:
            bar.set_postfix_str(f"BSE {voltage:g} kV")
            images[voltage] = render_bse(labels, voltage, voxel_size_nm, seed=noise_seed, **params["imaging"])
        else:
            bar.set_postfix_str(f"{detector} {voltage:g} kV")
            images[f"{detector}_{voltage:g}kV"] = _render_detector(labels, detector, voltage, voxel_size_nm, noise_seed,
                                                                  params["imaging"], params["detectors"])
        bar.update()
    extra = {}
    if thickness:
        labels, images, extra = _mimic(labels, images, voxel_size_nm, dict(thickness), seed)
        params["thickness"] = extra["manifest"]
    if "artefacts" in params:
        bar.set_postfix_str("artefacts")
        images = _add_artefacts(images, extra.get("voxel_size_nm", voxel_size_nm), seed, params["artefacts"])
        bar.update()
    bar.close()
    manifest = {
        "generator": "fibml.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "periodic": params["imaging"].get("boundary", "reflect" if detectors else "periodic") == "periodic",
        "solid_fraction": float((labels == 1).mean()),
        "phase_fractions": (np.bincount(labels.ravel(), minlength=2) / labels.size).tolist(),
        "parameters": params,
    }
    if not detectors:
        manifest["materials"] = list(params["imaging"].get("materials", ["epoxy", "Au"]))
    if phases:
        if len(phases) < int(labels.max()) + 1:
            raise ValueError(f"phases names {len(phases)} phases {list(phases)}, the structure has labels 0..{labels.max()}")
        manifest["phases"] = [str(p) for p in phases]
    if thickness:
        manifest["periodic"] = False  # the mimicked stack does not wrap around in z
        manifest["isotropic_voxel_size_nm"] = list(np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,)))
        return write_dataset(out, images, extra["voxel_size_nm"], labels=labels, manifest=manifest, overwrite=overwrite,
                             thickness_nm=extra["thickness_nm"], extra_stacks=extra["stacks"])
    return write_dataset(out, images, voxel_size_nm, labels=labels, manifest=manifest, overwrite=overwrite)


ISOTROPIC_LABELS = "labels_isotropic.tif"
SIMULATORS = ("fast", "montecarlo", "depth_weighted")


def _mimic(labels, images: dict, voxel_size_nm, thickness: dict, seed: int):
    """The mimicking stack: as many gamma-thick slices as fit in the volume, each the labels and
    images of the face at its true depth; the isotropic ground truth over the same depth."""
    from fibml.geometry import slice_positions
    from fibml.synth.thickness import mimic_stack, sample_thicknesses, slices_that_fit

    dz, dy, dx = (float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,)))
    options = {"target_nm": 10.0, "shape": 4.0, "bin_nm": dz, "seed": seed} | {
        k: v for k, v in thickness.items() if v is not None
    }
    if abs(options["bin_nm"] - dz) > 1e-9:
        raise ValueError(f"thickness.bin_nm ({options['bin_nm']}) must equal the voxel size along z ({dz} nm)")
    drawn = sample_thicknesses(labels.shape[0], **options)  # each slice >= 1 voxel: never more are needed
    n = slices_that_fit(drawn, labels.shape[0], dz)
    if n < 2:
        raise ValueError(f"a {labels.shape[0]}-voxel deep volume holds fewer than 2 slices of ~{options['target_nm']} nm")
    t = drawn[:n]
    mimicked, z_index = mimic_stack(labels, t, dz)
    depth = slice_positions(t, dz)[1]
    return mimicked, {k: v[z_index] for k, v in images.items()}, {
        "voxel_size_nm": (options["target_nm"], dy, dx),
        "thickness_nm": t,
        "stacks": {ISOTROPIC_LABELS: (labels[:depth], (dz, dy, dx))},
        "manifest": options | {"n_slices": n, "mean_nm": float(t.mean()), "std_nm": float(t.std())},
    }


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


def _add_artefacts(images: dict, voxel_size_nm, seed: int, artefacts: Mapping) -> dict:
    """Every stack of `images` with the artefacts of a real acquisition; channel i of the dataset is
    channel i of add_artefacts, so the face-bound artefacts (curtaining, shading) are shared."""
    from fibml.synth.artefacts import add_artefacts

    return {key: add_artefacts(image, seed=seed, voxel_size_nm=voxel_size_nm, channel=i, **artefacts)
            for i, (key, image) in enumerate(images.items())}


def _monte_carlo(labels, voltage, voxel_size_nm, seed, imaging: Mapping, simulator: Mapping, progress) -> np.ndarray:
    from fibml.synth.montecarlo import simulate_bse_stack

    options = {k: v for k, v in simulator.items() if k not in ("name", "work_dir")}
    shared = {k: imaging[k] for k in ("materials", "boundary", "probe_sigma_nm") if k in imaging}
    work_dir = simulator.get("work_dir")
    return simulate_bse_stack(labels, voltage, voxel_size_nm, seed=seed, progress=progress,
                              work_dir=None if work_dir is None else Path(work_dir) / f"{voltage:g}kV",
                              **shared, **options)


def _depth_weighted(labels, voltage, voxel_size_nm, imaging: Mapping, simulator: Mapping) -> np.ndarray:
    """The preprocessed image of the ML simulation (fibml.synth.preprocess): the backscatter ANN's
    eta (or the formula approximation) weighting the n_slices slices beneath every face."""
    from fibml.synth.preprocess import depth_weighted_stack, depth_weights, resolve_eta_model

    eta, _ = resolve_eta_model(simulator.get("eta") or "formula")
    dz = float(np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,))[0])
    weights = depth_weights(eta, imaging.get("materials", ["epoxy", "Au"]), voltage,
                            int(simulator.get("n_slices", 12)), dz)
    return depth_weighted_stack(labels, weights, imaging.get("boundary", "periodic"))


def _render_detector(labels, detector, voltage, voxel_size_nm, seed, imaging: Mapping, detectors) -> np.ndarray:
    from fibml.synth.detectors import render_detector

    common = {k: v for k, v in imaging.items() if k not in detectors}
    return render_detector(labels, detector=detector, voltage_kV=voltage, voxel_size_nm=voxel_size_nm, seed=seed,
                           **common, **dict(imaging.get(detector) or {}))


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
