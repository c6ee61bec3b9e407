"""Depth-weighted "preprocessed" images (cyclegan-simulation-domain-adaptation.txt, 2.3).

The ML simulation of the paper replaces the Monte Carlo: a binary structure is turned into
grayscale images that already hold the depth information of BSE imaging, and a CycleGAN
translates those into Monte-Carlo-like images. The image of milled slice z sums, over the
n_slices slices z, z+1, ... under the face, a weight of the material found there at that depth:

    S[z, y, x] = sum_{k < n_slices} w[label[z + k, y, x], k]

w[m, k] is the backscatter coefficient eta(Z_m, E, depth = k * slice_nm) of material m under k
slices of matrix (the backscatter ANN, fibml.tasks.backscatter.BackscatterTask.predict_eta, or
the Hunger-Kuchler approximation formula_eta), normalised over the group of the sample's
materials at each voltage (depth_weights). "Typically using 10-15 slices" (the paper): n_slices 12.

Public: depth_weights, depth_weighted_stack, preprocess_dataset (a dataset folder of preprocessed
images, bse_<V>kV.tif: the source domain of the simulation CycleGAN), formula_eta, resolve_eta_model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.io import LABELS, read_manifest, read_stack, write_dataset
from fibml.protocols import BACKSCATTER, EtaModel, task_of
from fibml.synth.imaging import _check_labels, _reflect_index
from fibml.synth.physics import Material, backscatter_coefficient, get_material

__all__ = [
    "BOUNDARIES",
    "depth_weighted_stack",
    "depth_weights",
    "formula_eta",
    "preprocess_dataset",
    "resolve_eta_model",
]

log = logging.getLogger(__name__)

BOUNDARIES = ("periodic", "reflect")


def depth_weights(
    predict_eta: EtaModel,
    materials: Sequence[str | Material],
    voltage_kV: float,
    n_slices: int,
    slice_nm: float,
) -> np.ndarray:
    """Weights (n_materials, n_slices) float64 of every material at depth k * slice_nm under the face.

    predict_eta: any callable (Z, E_keV, depth_nm) -> eta on numpy arrays (BackscatterTask.predict_eta,
        formula_eta). materials: names or Materials, in label order (label i = materials[i]); a
        compound enters with its mass-fraction-weighted Z (Material.Z, epoxy ~6.0).
    Normalisation ("across groups of atomic numbers and accelerating voltages", the paper): at
    this voltage, every eta is divided by the largest one of the group of materials and depths,
    so the brightest material at the face weighs 1 and the weights are comparable between
    voltages. A material with a higher eta (gold) stays brighter than the matrix (epoxy pore),
    and its weight falls with depth as the ANN's eta does (towards the matrix's eta: the layer of
    matrix over it takes over). Negative predictions are clipped to 0. The image that
    depth_weighted_stack makes is scaled to [0, 1] by the extreme sums of these weights, so any
    other affine normalisation (e.g. subtracting the matrix's eta) would give the same image.
    """
    if int(n_slices) < 1 or float(slice_nm) <= 0:
        raise ValueError(f"n_slices must be >= 1 and slice_nm > 0, got {n_slices} and {slice_nm} nm")
    Z = np.asarray([get_material(m).Z for m in materials], dtype=np.float64)
    if len(Z) == 0:
        raise ValueError("materials is empty: name the material of every label value (e.g. ['epoxy', 'Au'])")
    depth = np.arange(int(n_slices), dtype=np.float64) * float(slice_nm)
    Z_grid, depth_grid = np.meshgrid(Z, depth, indexing="ij")
    eta = np.asarray(predict_eta(Z_grid, np.full_like(Z_grid, float(voltage_kV)), depth_grid), dtype=np.float64)
    if eta.shape != Z_grid.shape:
        raise ValueError(f"predict_eta returned shape {eta.shape} for inputs of shape {Z_grid.shape}")
    if not np.isfinite(eta).all():
        raise ValueError(f"predict_eta returned non-finite eta at {voltage_kV:g} kV: {eta.tolist()}")
    eta = np.clip(eta, 0.0, None)
    top = eta.max()
    if top <= 0:
        raise ValueError(f"predict_eta gives eta <= 0 for every material and depth at {voltage_kV:g} kV")
    return eta / top


def depth_weighted_stack(labels: np.ndarray, weights: np.ndarray, boundary: str = "periodic") -> np.ndarray:
    """The preprocessed image of every milled slice of `labels` (z, y, x): float32 (z, y, x) in [0, 1].

    S[z] = sum_{k < n_slices} weights[labels[z + k], k] with weights (n_materials, n_slices)
    (depth_weights); beyond the last slice the structure repeats ("periodic") or is mirrored
    ("reflect": ..., n-1, n-1, n-2, ...). The sums are scaled by the least and the largest sum
    the weights allow, sum_k min_m weights[m, k] -> 0 and sum_k max_m weights[m, k] -> 1 (a column
    all of the darkest material is 0, all of the brightest 1), so images of different structures
    share one scale. One vectorised gather per depth k; no loop over pixels.
    """
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be (n_materials, n_slices), got shape {weights.shape}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    _check_labels(labels, weights.shape[0])
    labels = labels.astype(np.intp, copy=False)
    n_z = labels.shape[0]
    low, high = weights.min(axis=0).sum(), weights.max(axis=0).sum()
    span = high - low
    image = np.zeros(labels.shape, dtype=np.float32)
    slices = np.arange(n_z)
    for k in range(weights.shape[1]):  # n_slices gathers of the whole volume
        below = np.mod(slices + k, n_z) if boundary == "periodic" else _reflect_index(slices + k, n_z)
        image += weights[:, k].astype(np.float32)[labels[below]]
    if span <= 0:  # every material weighs the same at every depth: no contrast to show
        return np.zeros(labels.shape, dtype=np.float32)
    image -= np.float32(low)
    image /= np.float32(span)
    return np.clip(image, 0.0, 1.0, out=image)


def preprocess_dataset(
    source: str | Path | np.ndarray,
    predict_eta: EtaModel | str | Path,
    voltages: Sequence[float],
    out: str | Path,
    n_slices: int = 12,
    slice_nm: float | None = None,
    voxel_size_nm: float | Sequence[float] | None = None,
    materials: Sequence[str | Material] | None = None,
    boundary: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a dataset folder of preprocessed images: bse_<V>kV.tif (float32 (z, y, x) in [0, 1], the
    depth_weighted_stack at each voltage), the same labels.tif and voxel size, and a manifest with
    "preprocessed": true, the weights and the settings. The source domain of the simulation CycleGAN.

    source: a dataset folder with labels.tif (its manifest gives the voxel size, the materials and
        whether it is periodic), a labels TIFF, or a labels array (z, y, x) (then voxel_size_nm is needed).
    predict_eta: a callable (Z, E_keV, depth_nm) -> eta, "formula" (formula_eta, the Hunger-Kuchler
        approximation), or a checkpoint / run folder of the backscatter ANN (resolve_eta_model).
    voltages: beam energies in kV, one stack each. n_slices: slices summed per image.
    slice_nm: the depth step between slices (default: the z voxel size).
    materials: the material of each label value (default: the manifest's, else epoxy, Au).
    boundary: "periodic" or "reflect" below the last slice (default: periodic when the manifest
        says the volume is periodic or for an array, else reflect).
    """
    labels, voxel, manifest, origin = _read_source(source, voxel_size_nm)
    materials = list(materials if materials is not None else manifest.get("materials") or ["epoxy", "Au"])
    boundary = boundary or ("periodic" if manifest.get("periodic", origin is None) else "reflect")
    slice_nm = float(voxel[0] if slice_nm is None else slice_nm)
    eta_model, model_name = resolve_eta_model(predict_eta)
    voltages = [float(v) for v in voltages]
    if not voltages:
        raise ValueError("voltages is empty: give the beam energies (kV) to preprocess for, e.g. [1, 2, 4]")
    images, weights = {}, {}
    for voltage in tqdm(voltages, desc="depth-weighted images", unit="voltage", disable=not progress):
        w = depth_weights(eta_model, materials, voltage, n_slices, slice_nm)
        images[voltage] = depth_weighted_stack(labels, w, boundary)
        weights[f"{voltage:g}kV"] = w.tolist()
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=len(materials))
    content = {
        "generator": "fibml.synth.preprocess",
        "preprocessed": True,
        "source": None if origin is None else str(origin),
        "eta_model": model_name,
        "materials": [get_material(m).name for m in materials],
        "n_slices": int(n_slices),
        "slice_nm": slice_nm,
        "boundary": boundary,
        "periodic": boundary == "periodic",
        "normalization": "eta / max over materials and depths per voltage; sums scaled to [0, 1] by their extremes",
        "weights": weights,
        "solid_fraction": float((labels == 1).mean()),
        "phase_fractions": (counts / labels.size).tolist(),
        **{k: manifest[k] for k in ("phases", "seed") if k in manifest},
    }
    return write_dataset(out, images, voxel, labels=labels, manifest=content, overwrite=overwrite)


def formula_eta(Z, E_keV, depth_nm, matrix: str | Material = "epoxy",
                information_depth_fraction: float = 0.2) -> np.ndarray:
    """An APPROXIMATE backscatter ANN, from formulas: eta of atomic number Z under depth_nm of matrix,
    eta = eta_matrix (1 - exp(-t/L)) + eta_HK(Z, E) exp(-t/L), L = information_depth_fraction x the
    Kanaya-Okayama range of the matrix (nm), eta_HK of Hunger & Kuchler (an extrapolation below
    4 keV); the model of fibml.synth.imaging.shine_through_profile, for any (also non-integer) Z.
    Z, E_keV (keV), depth_nm (nm) broadcast; float64."""
    matrix = get_material(matrix)
    Z, E, depth = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (Z, E_keV, depth_nm)))
    if np.any(depth < 0):
        raise ValueError(f"depth_nm must be >= 0, got a minimum of {depth.min()} nm")
    transmitted = np.exp(-depth / (information_depth_fraction * matrix.range_nm(E)))
    return matrix.backscatter_coefficient(E) * (1 - transmitted) + backscatter_coefficient(Z, E) * transmitted


def resolve_eta_model(spec: EtaModel | str | Path) -> tuple[EtaModel, str]:
    """(callable (Z, E_keV, depth_nm) -> eta, a name for the manifest) from a callable, "formula" /
    "hunger_kuchler" (formula_eta), or a checkpoint / run folder of a trained BackscatterTask."""
    if callable(spec):
        return spec, getattr(spec, "__qualname__", type(spec).__name__)
    if str(spec) in ("formula", "hunger_kuchler"):
        return formula_eta, "formula_eta (Hunger-Kuchler approximation)"
    checkpoint = resolve_checkpoint(spec)
    model, _ = load_model(checkpoint)
    if task_of(model) != BACKSCATTER:
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not a backscatter ANN (BackscatterTask)")
    return model.predict_eta, str(checkpoint)


def _read_source(source, voxel_size_nm) -> tuple[np.ndarray, tuple[float, float, float], Mapping, Path | None]:
    """(labels (z, y, x), voxel size (z, y, x) nm, manifest, the folder or file it came from)."""
    if isinstance(source, np.ndarray):
        if voxel_size_nm is None:
            raise ValueError("a labels array needs voxel_size_nm (nm, scalar or (z, y, x))")
        voxel = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,)))
        return source, voxel, {}, None
    path = Path(source)
    if path.is_dir():
        if not (path / LABELS).is_file():
            raise FileNotFoundError(f"{path} has no {LABELS}: preprocessing needs the binary structure")
        labels, voxel = read_stack(path / LABELS)  # the image stacks are not needed: labels only
        manifest = read_manifest(path)
        voxel = manifest.get("voxel_size_nm") or voxel
    elif path.is_file():
        labels, voxel = read_stack(path)
        manifest = {}
    else:
        raise FileNotFoundError(f"{path} is neither a dataset folder nor a labels TIFF")
    if voxel_size_nm is not None:
        voxel = voxel_size_nm
    if voxel is None:
        raise ValueError(f"{path}: no voxel size in the manifest or the TIFF: give voxel_size_nm")
    voxel = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel, dtype=float), (3,)))
    return labels, voxel, manifest, path
