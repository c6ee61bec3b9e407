"""Forward model of two secondary-electron detectors imaging unfilled porous electrodes at 1 keV.

An in-lens detector and the angled chamber SE2 detector of the random-forest multi-detector
paper, imaging the milled faces of a three-phase volume (0 = pore, vacuum; 1 = NMC; 2 = carbon
binder; see fibml.synth.electrode). For the face of slice z (z grows with milling depth):

- a solid voxel (phase >= 1) at the face emits its phase's emission e_d[phase]; secondary
  electrons escape from a few nm only, so solids are opaque to the signal;
- a pore voxel shows what lies beneath it through the open pore: the emission of the first
  solid voxel k slices deeper, attenuated by exp(-k dz / L_d), blurred laterally more with depth
  (sigma grows like sqrt(depth)). That is the emission-absorption recurrence of
  fibml.synth.imaging.render_bse, S_z = emit[phase_z] + transmit[phase_z] * blur(S_{z+1}), with
  emit = e_d, transmit = 0 for solids and emit = e_d[0] (1 - T), transmit = T = exp(-dz / L_d)
  for pores (an endless pore shows e_d[0], the detector's background level);
- edges: the SE yield rises at a solid/pore boundary of the face. A pixel at in-plane distance
  d (nm) from the boundary gets + g * e_d[s] * exp(-d / edge_width_nm), where s is its own
  phase (solid side) or that of the nearest solid pixel (pore side), and g = edge_gain, either
  one number or (pore side, solid side). On the solid side electrons escape through the side
  wall too (the classic edge effect); on the pore side the beam hits the wall below the edge at
  grazing incidence, which the angled chamber detector sees well: its pore side is the brighter;
- then the probe blur, Poisson shot noise of electrons_per_pixel incident electrons and Gaussian
  read noise. Output float32 (z, y, x) in detected electrons per incident electron (NMC ~ 1).

Defaults (DETECTORS, 10 nm voxels). There is no real data here: the values are chosen to
reproduce the qualitative contrasts of the paper's Fig. 2 and Fig. 4, they are not measured.

- "se2" (angled chamber detector): collects from deep in the pores (L = 50 nm: a pore 5 slices
  deep still shows 37 % of the solid beneath), so the pore background is grey and varied and
  overlaps the carbon binder (0.65 of NMC, the paper's SE2 carbon peak sits at ~0.6 of the NMC
  grey value); the pore-side edge gain 2.0 (over 8 nm) makes the pixels next to a particle edge
  brighter than flat NMC: the "bright parts of the background" for which the paper adds a
  fourth threshold interval (void | carbon | NMC | void again); solid-side gain 0.1.
- "inlens": collects near the face only (L = 15 nm: 51 % through one slice, 14 % through
  three), so pores are dark (background level 0.03); carbon is dark too (0.2 of NMC, as the
  paper's in-lens threshold puts carbon at low grey values) but above the pores; weak edges
  (0.05 pore side, 0.1 solid side, over 8 nm).

So carbon and the shine-through background sit at similar SE2 grey values but apart in the
in-lens (where shallow shine-through, in turn, looks like carbon); NMC is bright in both. One
detector alone confuses carbon with pores, the pair and its difference separate them, as in
the paper's section 3.5. Measured on a 96^3 electrode_structure (pixel classifiers trained on
z < 43, scored on z >= 53, seeds 0-2; awe = average weighted error, eq. 1 of the paper):
SE2 double threshold 31-35 %, SE2 triple threshold 23-26 %, in-lens depth-2 tree 9-11 %,
random forest on one signal 22-25 % (SE2) and 6-7 % (in-lens), on both + difference 3 %.
(The greedy depth-2 tree of the paper may root its split between pore and carbon, and then has
no room for the fourth interval, as on a 64 x 80 x 80 volume; a tree of 4 leaves always finds it.)
The tables hold 1 keV values (the paper's voltage); at another voltage pass the emission and
escape length explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from fibml.synth.imaging import _detector_response, _emission_absorption_sweep

__all__ = ["DETECTORS", "render_detector"]

DETECTORS: dict[str, dict] = {
    "inlens": {
        "voltage_kV": 1.0,  # the voltage the table is set for
        "emission": (0.03, 1.0, 0.2),  # pore (background level), NMC, carbon binder
        "escape_length_nm": 15.0,
        "edge_gain": (0.05, 0.1),  # (pore side, solid side)
        "edge_width_nm": 8.0,
    },
    "se2": {
        "voltage_kV": 1.0,
        "emission": (0.0, 1.0, 0.65),
        "escape_length_nm": 50.0,
        "edge_gain": (2.0, 0.1),
        "edge_width_nm": 8.0,
    },
}


def render_detector(
    labels: np.ndarray,
    detector: str = "se2",
    voltage_kV: float = 1.0,
    voxel_size_nm: float | Sequence[float] = 10.0,
    *,
    emission: Sequence[float] | None = None,
    escape_length_nm: float | None = None,
    edge_gain: float | tuple[float, float] | None = None,
    edge_width_nm: float | None = None,
    lateral_spread: float = 0.3,
    probe_sigma_nm: float = 3.0,
    electrons_per_pixel: float | None = 150.0,
    read_noise: float = 0.01,
    boundary: str = "reflect",
    seed: int | None = 0,
    progress: bool = False,
) -> np.ndarray:
    """Simulated secondary-electron image of every milled face of `labels` (z, y, x), float32.

    labels: integer phases (z, y, x), 0 = pore (vacuum), i >= 1 a solid emitting emission[i];
        slice z is the face exposed when slice z is imaged (z grows with milling depth).
    detector: "inlens" or "se2" (keys of DETECTORS); it gives the defaults of the arguments
        left at None. voltage_kV: beam energy (keV); the tables are set for 1 keV, another
        voltage needs an explicit emission and escape_length_nm. voxel_size_nm: scalar or (z, y, x).
    emission: signal of each phase per incident electron (emission[0]: the level of an endless
        pore). escape_length_nm: L, a pore k slices deep passes exp(-k dz / L) of the signal
        beneath. edge_gain, edge_width_nm: + edge_gain * emission[nearest solid] *
        exp(-d / edge_width_nm) at in-plane distance d (nm) from a solid/pore boundary of the
        face; edge_gain is one number or (pore side, solid side).
    lateral_spread: the signal from below is blurred by lateral_spread * sqrt(L dz) per slice.
    probe_sigma_nm: Gaussian beam/detector blur. electrons_per_pixel: dose for Poisson shot noise
        (None = noiseless). read_noise: Gaussian detector noise (signal units).
    boundary: what lies below the last slice and beyond the xy border, "reflect" (default: an
        electrode volume is not periodic) or "periodic".
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}, known: {sorted(DETECTORS)}")
    table = DETECTORS[detector]
    if not voltage_kV > 0:
        raise ValueError(f"voltage_kV must be > 0, got {voltage_kV}")
    if voltage_kV != table["voltage_kV"] and (emission is None or escape_length_nm is None):
        raise ValueError(
            f"DETECTORS[{detector!r}] holds defaults for {table['voltage_kV']:g} keV, got voltage_kV="
            f"{voltage_kV:g}: pass emission and escape_length_nm for that voltage"
        )
    emission = np.asarray(table["emission"] if emission is None else emission, dtype=np.float64)
    escape_length_nm = float(table["escape_length_nm"] if escape_length_nm is None else escape_length_nm)
    edge_gains = _edge_gains(table["edge_gain"] if edge_gain is None else edge_gain)
    edge_width_nm = float(table["edge_width_nm"] if edge_width_nm is None else edge_width_nm)
    _check_parameters(emission, escape_length_nm, edge_width_nm, boundary)
    if lateral_spread < 0 or probe_sigma_nm < 0 or read_noise < 0:
        raise ValueError(
            f"lateral_spread, probe_sigma_nm and read_noise must be >= 0, got {lateral_spread}, "
            f"{probe_sigma_nm}, {read_noise}"
        )
    if electrons_per_pixel is not None and not electrons_per_pixel > 0:
        raise ValueError(f"electrons_per_pixel must be > 0 or None, got {electrons_per_pixel}")
    labels = np.asarray(labels)
    _check_labels(labels, len(emission), detector)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)  # bool arrays would index emit[...] as masks, not phases
    dz, dy, dx = np.broadcast_to(np.asarray(voxel_size_nm, dtype=np.float64), (3,))
    if min(dz, dy, dx) <= 0:
        raise ValueError(f"voxel_size_nm must be > 0, got {voxel_size_nm}")

    pore_transmit = np.exp(-dz / escape_length_nm)
    transmit = np.zeros(len(emission), dtype=np.float32)
    transmit[0] = pore_transmit
    emit = emission.astype(np.float32)
    emit[0] = emission[0] * (1.0 - pore_transmit)

    sigma_step_nm = lateral_spread * np.sqrt(escape_length_nm * dz)
    # slices below the volume until a pore passes < 0.1 % of the signal
    n_below = int(np.ceil(np.log(1e3) * escape_length_nm / dz))
    image = _emission_absorption_sweep(
        labels,
        emit,
        transmit,
        (sigma_step_nm / dy, sigma_step_nm / dx),
        boundary,
        n_below,
        initial=float(emission[labels].mean()),
        progress=progress,
        desc=f"{detector} {voltage_kV:g} kV",
    )
    if any(edge_gains):
        image += _edge_signal(labels, emission, edge_gains, (dy, dx), edge_width_nm, boundary)

    blur_mode = "wrap" if boundary == "periodic" else "reflect"
    return _detector_response(image, probe_sigma_nm, (dy, dx), blur_mode, electrons_per_pixel, read_noise, seed)


def _edge_signal(
    labels: np.ndarray,
    emission: np.ndarray,
    gains: tuple[float, float],
    pixel_nm: tuple[float, float],
    width_nm: float,
    boundary: str,
) -> np.ndarray:
    """The edge term of every face (z, y, x): gain * emission[nearest solid] * exp(-d / width_nm).

    d: in-plane distance (nm) from the pixel centre to the nearest solid/pore boundary (the
    distance between pixel centres less half a pixel); gains = (pore side, solid side). A pore
    pixel takes the emission of its nearest solid pixel, a solid pixel its own. Periodic faces
    are padded by wrapping, over 12 widths (the term is then below exp(-12) = 6e-6 of its peak).
    """
    pore_gain, solid_gain = gains
    dy, dx = pixel_nm
    edge = np.zeros(labels.shape, dtype=np.float32)
    ny, nx = labels.shape[1:]
    pad = [min(int(np.ceil(12 * width_nm / d)), n) for d, n in zip(pixel_nm, (ny, nx))]
    for z, face in enumerate(labels):
        solid = face > 0
        if solid.all() or not solid.any():
            continue
        if boundary == "periodic":
            face = np.pad(face, [(pad[0], pad[0]), (pad[1], pad[1])], mode="wrap")
            solid = face > 0
        # pore side: distance to, and phase of, the nearest solid pixel (scipy's EDT, unlike
        # the edt package, returns the nearest feature's index)
        d_pore, nearest = ndi.distance_transform_edt(~solid, sampling=pixel_nm, return_indices=True)
        d_solid = ndi.distance_transform_edt(solid, sampling=pixel_nm)
        gain = np.where(solid, solid_gain, pore_gain) * emission[face[nearest[0], nearest[1]]]
        d = np.where(solid, d_solid, d_pore) - 0.5 * min(dy, dx)
        term = gain * np.exp(-np.maximum(d, 0.0) / width_nm)
        if boundary == "periodic":
            term = term[pad[0] : pad[0] + ny, pad[1] : pad[1] + nx]
        edge[z] = term
    return edge


def _edge_gains(edge_gain) -> tuple[float, float]:
    """(pore side, solid side) from a scalar (both sides) or a pair."""
    gains = np.atleast_1d(np.asarray(edge_gain, dtype=np.float64))
    if gains.size == 1:
        gains = np.repeat(gains, 2)
    if gains.shape != (2,) or not np.all(np.isfinite(gains)):
        raise ValueError(f"edge_gain must be a finite number or (pore side, solid side), got {edge_gain}")
    return float(gains[0]), float(gains[1])


def _check_parameters(emission, escape_length_nm, edge_width_nm, boundary) -> None:
    if emission.ndim != 1 or emission.size < 2 or not np.all(np.isfinite(emission)) or np.any(emission < 0):
        raise ValueError(
            f"emission must be >= 2 finite values >= 0 (pore, solid phases...), got {emission.tolist()}"
        )
    if not escape_length_nm > 0:
        raise ValueError(f"escape_length_nm must be > 0, got {escape_length_nm}")
    if not edge_width_nm > 0:
        raise ValueError(f"edge_width_nm must be > 0, got {edge_width_nm}")
    if boundary not in ("periodic", "reflect"):
        raise ValueError(f"boundary must be 'reflect' or 'periodic', got {boundary!r}")


def _check_labels(labels: np.ndarray, n_phases: int, detector: str) -> None:
    if labels.ndim != 3 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 3-D (z, y, x) array, got shape {labels.shape}")
    if labels.dtype == bool:
        return
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer phase indices, got dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_phases:
        raise ValueError(
            f"labels hold values {low}..{high} but the {detector!r} emission table has {n_phases} "
            f"phases (0 = pore, 1.. = solids): label i emits emission[i]"
        )

