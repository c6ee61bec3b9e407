"""Voxel Monte Carlo simulation of backscattered-electron (BSE) imaging at the milled face.

The open stand-in for MCXray: single-scattering Monte Carlo after Joy (1995), vectorised over
many electrons at once in torch (CPU here, a GPU when there is one). Every electron enters the
milled face (the top of the volume that remains when slice z is imaged) along +z, flies a
random free path, loses energy continuously on the way (Joy-Luo stopping power), scatters
elastically (screened Rutherford), and is counted as backscattered when it leaves through the
face with more than `energy_cutoff_keV`. Formulas (E in keV), from ../shared/DESIGN.md:

    alpha = 3.4e-3 Z^0.67 / E
    sigma = 5.21e-21 (Z^2/E^2) 4 pi / (alpha (1 + alpha)) ((E + 511)/(E + 1022))^2   [cm^2]
    lambda = A / (N_A rho sigma);  step s = -lambda ln R1
    cos(theta) = 1 - 2 alpha R2 / (1 + alpha - R2);  azimuth 2 pi R3
    dE/ds = -78500 rho Z / (A E) ln(1.166 E / J + 0.9911) [keV/cm],  J = (9.76 Z + 58.5 Z^-0.19) 1e-3 keV

Compounds (epoxy) are effective materials with mass-fraction-weighted Z and A (Material.Z / .A).

Geometry: a voxel volume of materials. Free paths cross material boundaries by delta tracking
(Woodcock) with a local majorant: every voxel knows how far (in voxels, chessboard distance) its
own material extends around it; inside that safe ball an electron flies with its own material's
mean free path, exactly, and a step that would leave the ball stops at its edge and is drawn anew
(free paths are memoryless). Only in voxels at a material boundary does it fly with the densest
material's (majorant) free path and accept a collision with probability mu_local / mu_majorant.
That keeps the cost of wide epoxy-filled pores near that of gold, instead of 30x more null steps.

Public: simulate_bse_stack (images of every milled slice), simulate_layers / bulk_backscatter
(eta of epoxy layers over bulk materials and of bare bulk), backscatter_dataset and
write_backscatter_csv (the table that trains the backscatter ANN).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from fibml.io import atomic_path
from fibml.synth.imaging import _check_labels
from fibml.synth.physics import Material, backscatter_coefficient, get_material

__all__ = [
    "BackscatterResult",
    "backscatter_dataset",
    "bulk_backscatter",
    "simulate_bse_stack",
    "safe_distance",
    "simulate_layers",
    "write_backscatter_csv",
]

AVOGADRO = 6.02214076e23
NM_PER_CM = 1e7
MAX_SAFE = 15  # voxels; the safe distance shares a byte with the material index (4 bits each)
MAX_MATERIALS = 16
BOUNDARIES = ("periodic", "reflect")


def simulate_bse_stack(
    labels: np.ndarray,
    voltage_kV: float,
    voxel_size_nm: float | Sequence[float] = 2.5,
    materials: Sequence[str | Material] = ("epoxy", "Au"),
    electrons_per_pixel: int = 50,
    cross_section: str = "browning",
    energy_cutoff_keV: float = 0.05,
    energy_weighting: bool = False,
    detector_angle_deg: Sequence[float] = (0.0, 90.0),
    probe_sigma_nm: float = 1.0,
    boundary: str = "periodic",
    slices: Sequence[int] | range | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    batch_electrons: int | None = None,
    compile: bool = False,
    work_dir: str | Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Monte Carlo BSE image of every milled face of `labels` (z, y, x): float32 (n_slices, y, x).

    labels: integer phase map; value i is made of materials[i] (default 0 = epoxy-filled pore,
        1 = gold). Slice z is the face when slice z is imaged; the beam looks into z, z+1, ...
    voltage_kV: beam energy, 0.5-30 kV. voxel_size_nm: scalar or (z, y, x).
    electrons_per_pixel: incident electrons per pixel; the pixel value is the (weighted) number of
        backscattered electrons per incident electron, i.e. the local backscatter coefficient eta,
        with the Monte Carlo's own shot noise.
    cross_section: "browning" (empirical Mott fit, the default: bulk eta within 10 % of Hunger &
        Kuchler for C to Au at 5-20 kV) or "rutherford" (Joy's screened Rutherford, 25 % high for Au
        at 5 kV).
    energy_cutoff_keV: an electron leaving the face with less energy is not a BSE (50 eV by the
        usual convention); electrons are followed until they fall below it.
    energy_weighting: weigh each BSE by E_exit / E0 (a semiconductor or through-the-lens BSE
        detector's signal grows with the electron energy); False counts electrons.
    detector_angle_deg: (min, max) polar exit angle from the face normal that the detector sees.
    probe_sigma_nm: Gaussian beam profile around the pixel centre (0 = a point beam).
    boundary: what lies below the last slice and beyond the xy border: "periodic" or "reflect".
    slices: simulate only these slices (e.g. range(100, 200)), so a long job can be split.
    seed: every slice gets its own random stream from (seed, voltage, slice), so a slice's image
        does not depend on which other slices run with it; the same seed, device type and
        batch_electrons give the same image. None = not seeded.
    device: "cpu", "cuda", ... (default: cuda when available).
    batch_electrons: electrons tracked at once (default 2^16 on the CPU, 2^24 on a GPU of >= 32 GiB, else 2^22).
    compile: run the electron step through torch.compile (needs a C++ compiler on the CPU, a
        Triton-capable GPU otherwise; results agree with the eager step to float rounding).
    work_dir: a folder where every finished slice is saved; a run given the same folder and
        settings loads those and simulates only the rest (resume after an interruption).
    """
    labels = np.asarray(labels)
    materials = [get_material(m) for m in materials]
    _check_labels(labels, len(materials))
    labels = labels.astype(np.uint8)
    _check_settings(voltage_kV, electrons_per_pixel, energy_cutoff_keV, detector_angle_deg)
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    voxel = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size_nm, dtype=float), (3,)))
    n_z, n_y, n_x = labels.shape
    slices = list(range(n_z)) if slices is None else [int(z) for z in slices]
    bad = [z for z in slices if not 0 <= z < n_z]
    if bad:
        raise ValueError(f"slices {bad[:5]} lie outside the stack of {n_z} slices")
    device = _device(device)
    batch_electrons = int(batch_electrons or _default_batch(device))
    detector = _Detector(voltage_kV, energy_cutoff_keV, energy_weighting, detector_angle_deg)
    geometry = VoxelGeometry(labels, voxel, materials, (boundary,) * 3, device, cross_section)
    settings = {
        "voltage_kV": float(voltage_kV), "voxel_size_nm": voxel, "materials": [m.name for m in materials],
        "electrons_per_pixel": int(electrons_per_pixel), "cross_section": cross_section,
        "energy_cutoff_keV": float(energy_cutoff_keV),
        "energy_weighting": bool(energy_weighting), "detector_angle_deg": [float(a) for a in detector_angle_deg],
        "probe_sigma_nm": float(probe_sigma_nm), "boundary": boundary, "seed": seed, "device": device.type,
        "batch_electrons": batch_electrons, "compile": bool(compile), "labels_sha1": hashlib.sha1(np.ascontiguousarray(labels)).hexdigest(),
    }
    store = _SliceStore(work_dir, settings) if work_dir is not None else None

    image = np.empty((len(slices), n_y, n_x), dtype=np.float32)
    bar = tqdm(slices, desc=f"Monte Carlo {voltage_kV:g} kV", unit="slice", disable=not progress)
    started, tracked = time.perf_counter(), 0
    for i, z in enumerate(bar):
        done = store.load(z) if store else None
        if done is not None:
            image[i] = done
            continue
        generator = _generator(device, seed, voltage_kV, z)
        beam = _Beam(n_y * n_x, electrons_per_pixel, device, generator, face_nm=z * voxel[0],
                     pixel_nm=voxel[1:], grid_x=n_x, probe_sigma_nm=probe_sigma_nm)
        signal, _ = _transport(geometry, detector, beam, batch_electrons, compile)
        image[i] = (signal / electrons_per_pixel).reshape(n_y, n_x).cpu().numpy()
        tracked += beam.total
        if store:
            store.save(z, image[i])
        bar.set_postfix_str(f"{tracked / max(time.perf_counter() - started, 1e-9):.3g} e/s")
    return image


@dataclass(frozen=True)
class BackscatterResult:
    """eta of one simulated configuration, with its binomial standard error and the mean of the
    deepest point each electron reached below the face (nm)."""

    eta: float
    eta_std: float
    electrons: int
    mean_penetration_nm: float


def simulate_layers(
    substrate: str | Material,
    voltage_kV: float,
    thickness_nm: Sequence[float],
    matrix: str | Material = "epoxy",
    electrons: int = 2000,
    cross_section: str = "browning",
    energy_cutoff_keV: float = 0.05,
    energy_weighting: bool = False,
    detector_angle_deg: Sequence[float] = (0.0, 90.0),
    seed: int | None = 0,
    device: str | torch.device | None = None,
    batch_electrons: int | None = None,
) -> list[BackscatterResult]:
    """eta of a flat `matrix` layer of each thickness (nm) over a bulk `substrate`, one result per
    thickness (thickness 0 = the bare substrate), at normal incidence; `electrons` per thickness.
    All thicknesses run in one stream of electrons; options as in simulate_bse_stack."""
    substrate, matrix = get_material(substrate), get_material(matrix)
    _check_settings(voltage_kV, electrons, energy_cutoff_keV, detector_angle_deg)
    thickness = np.asarray(thickness_nm, dtype=float)
    if thickness.ndim != 1 or len(thickness) == 0 or np.any(thickness < 0):
        raise ValueError(f"thickness_nm must be a non-empty list of thicknesses >= 0 nm, got {thickness_nm}")
    device = _device(device)
    detector = _Detector(voltage_kV, energy_cutoff_keV, energy_weighting, detector_angle_deg)
    geometry = LayerGeometry(thickness, matrix, substrate, voltage_kV, device, cross_section)
    beam = _Beam(len(thickness), int(electrons), device, _generator(device, seed, voltage_kV, 0))
    signal, depth = _transport(geometry, detector, beam, batch_electrons or _default_batch(device))
    eta = (signal / electrons).cpu().numpy()
    depth = (depth / electrons).cpu().numpy()
    return [
        BackscatterResult(float(e), float(np.sqrt(max(e * (1 - e), 0.0) / electrons)), int(electrons), float(d))
        for e, d in zip(eta, depth)
    ]


def bulk_backscatter(material: str | Material, voltage_kV: float, electrons: int = 2000, **options) -> BackscatterResult:
    """eta of a bare bulk material at normal incidence (options as in simulate_layers)."""
    return simulate_layers(material, voltage_kV, [0.0], electrons=electrons, **options)[0]


def backscatter_dataset(
    atomic_numbers: Sequence[int] = (6, 13, 29, 47, 79),
    voltages_kV: Sequence[float] = (1.0, 2.0, 4.0),
    epoxy_thickness_nm: Sequence[float] = tuple(range(0, 200, 10)),
    electrons: int = 2000,
    matrix: str | Material = "epoxy",
    seed: int | None = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options,
) -> list[dict]:
    """eta of epoxy layers of every thickness over bulk elements of every Z at every voltage: the
    sMC-BS table of cyclegan-simulation-domain-adaptation.txt (section 2.1.1) that trains the
    backscatter ANN (inputs Z, E, penetration depth = the layer thickness).

    Rows: {Z, element, voltage_kV, epoxy_thickness_nm, eta, eta_std, electrons,
    mean_penetration_nm, eta_hunger_kuchler (bulk formula, for reference)}.
    """
    import periodictable

    rows = []
    jobs = [(int(z), float(v)) for z in atomic_numbers for v in voltages_kV]
    for i, (z, voltage) in enumerate(tqdm(jobs, desc="backscatter table", disable=not progress)):
        element = periodictable.elements[z]
        results = simulate_layers(element.symbol, voltage, epoxy_thickness_nm, matrix=matrix, electrons=electrons,
                                  seed=None if seed is None else seed * 10007 + i, device=device, **options)
        for t, r in zip(epoxy_thickness_nm, results):
            rows.append({
                "Z": z, "element": element.symbol, "voltage_kV": voltage, "epoxy_thickness_nm": float(t),
                "eta": r.eta, "eta_std": r.eta_std, "electrons": r.electrons,
                "mean_penetration_nm": r.mean_penetration_nm,
                "eta_hunger_kuchler": float(backscatter_coefficient(z, voltage)),
            })
    return rows


def write_backscatter_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write backscatter_dataset rows as CSV (atomically)."""
    if not rows:
        raise ValueError("no rows to write")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


# --------------------------------------------------------------------------- physics tables


CROSS_SECTIONS = ("rutherford", "browning")


class _Physics:
    """Per-material constants on the device, and the energy-dependent cross sections.

    cross_section "rutherford": Joy's screened Rutherford (DESIGN.md). "browning": the empirical
    fit to Mott cross sections of Browning et al. (J. Appl. Phys. 76, 2016, 1994; 0.1-30 keV),
    sigma = 3.0e-18 Z^1.7 / (E + 0.005 Z^1.7 E^0.5 + 0.0007 Z^2 / E^0.5) cm^2, scattering
    Rutherford-like (alpha = 7e-3 / E) with probability r / (1 + r), r = 300 E / Z + Z^3 / (3e5 E),
    else isotropic. Screened Rutherford overestimates large-angle scattering by heavy atoms at
    low energy (Au at 5 keV: eta 25 % above experiment); Browning's fit does not.
    """

    def __init__(self, materials: Sequence[Material], device: torch.device, cross_section: str = "rutherford"):
        if cross_section not in CROSS_SECTIONS:
            raise ValueError(f"cross_section must be one of {CROSS_SECTIONS}, got {cross_section!r}")
        self.cross_section = cross_section

        def column(values):
            return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)

        self.Z = column(m.Z for m in materials)
        self.A = column(m.A for m in materials)
        rho = column(m.density_g_cm3 for m in materials)
        self.J = (9.76 * self.Z + 58.5 * self.Z**-0.19) * 1e-3
        self.stopping_factor = 78500.0 * rho * self.Z / self.A / NM_PER_CM  # keV^2 / nm
        atoms_per_nm = AVOGADRO * rho / self.A / NM_PER_CM  # N_A rho / A: 1/cm^3 -> sigma [cm^2] gives 1/nm
        if cross_section == "rutherford":
            self.screening = 3.4e-3 * self.Z**0.67  # alpha * E
            self.mu_factor = atoms_per_nm * 5.21e-21 * self.Z**2 * 4 * math.pi
        else:
            self.Z17 = self.Z**1.7
            self.mu_factor = atoms_per_nm * 3.0e-18 * self.Z17

    def inverse_mfp(self, E: torch.Tensor, material: torch.Tensor | None = None) -> torch.Tensor:
        """Elastic inverse mean free path 1/lambda (1/nm) of each electron in `material`, or (n, M)
        for every material when material is None."""
        if material is None:
            E, index = E[:, None], slice(None)
        else:
            index = material
        if self.cross_section == "rutherford":
            alpha = self.screening[index] / E
            relativistic = ((E + 511.0) / (E + 1022.0)) ** 2
            return self.mu_factor[index] / (E * E) / (alpha * (1 + alpha)) * relativistic
        root = torch.sqrt(E)
        Z = self.Z[index]
        return self.mu_factor[index] / (E + 0.005 * self.Z17[index] * root + 0.0007 * Z * Z / root)

    def cos_theta(self, E: torch.Tensor, material: torch.Tensor, r_angle: torch.Tensor,
                  r_kind: torch.Tensor) -> torch.Tensor:
        """Cosine of the elastic scattering angle for uniform random numbers r_angle, r_kind."""
        if self.cross_section == "rutherford":
            alpha = self.screening.take(material) / E
            return 1 - 2 * alpha * r_angle / (1 + alpha - r_angle)
        Z = self.Z.take(material)
        alpha = 7.0e-3 / E
        r = 300.0 * E / Z + Z**3 / (3.0e5 * E)
        rutherford_like = r_kind * (1 + r) <= r
        return torch.where(rutherford_like, 1 - 2 * alpha * r_angle / (1 + alpha - r_angle), 1 - 2 * r_angle)

    def stopping_power(self, E: torch.Tensor, material: torch.Tensor) -> torch.Tensor:
        """Joy-Luo |dE/ds| in keV/nm."""
        return self.stopping_factor.take(material) / E * torch.log(1.166 * E / self.J.take(material) + 0.9911)


# --------------------------------------------------------------------------- geometries


class VoxelGeometry:
    """A (z, y, x) voxel volume of materials; per voxel a byte: safe distance << 4 | material.

    boundary: per axis (z, y, x), "periodic" or "reflect" (mirror), what lies beyond the volume.
    The face of slice z is the plane z * voxel_z; everything above it is vacuum.
    """

    def __init__(self, labels: np.ndarray, voxel_nm, materials, boundary, device, cross_section="rutherford"):
        if len(materials) > MAX_MATERIALS:
            raise ValueError(f"at most {MAX_MATERIALS} materials, got {len(materials)}")
        self.physics = _Physics(materials, device, cross_section)
        self.voxel = torch.tensor(voxel_nm, dtype=torch.float32, device=device)
        self.step_unit = float(min(voxel_nm))  # a safe distance of k voxels is k * this, in nm
        self.shape = labels.shape
        self.boundary = tuple(boundary)
        code = (safe_distance(labels, boundary).astype(np.uint8) << 4) | labels.astype(np.uint8)
        self.code = torch.from_numpy(code.ravel()).to(device)
        self.n = torch.tensor(self.shape, dtype=torch.float32, device=device)
        self.last = torch.tensor(self.shape, device=device) - 1
        self.strides = torch.tensor([self.shape[1] * self.shape[2], self.shape[2], 1], device=device)
        self.periodic = torch.tensor([b == "periodic" for b in self.boundary], device=device)

    def lookup(self, pos: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """Code (safe << 4 | material) of the voxel holding each position (n, 3) in nm."""
        # fold positions (in voxels) into the volume: wrap, or mirror; x - floor(x / n) n is much
        # faster than torch.remainder on the CPU
        u = pos / self.voxel
        if any(b == "periodic" for b in self.boundary):
            wrapped = u - torch.floor(u / self.n) * self.n
        if any(b == "reflect" for b in self.boundary):
            mirrored = u - torch.floor(u / (2 * self.n)) * (2 * self.n)
            mirrored = torch.where(mirrored < self.n, mirrored, 2 * self.n - mirrored)
        if all(b == "periodic" for b in self.boundary):
            u = wrapped
        elif all(b == "reflect" for b in self.boundary):
            u = mirrored
        else:
            u = torch.where(self.periodic, wrapped, mirrored)
        index = torch.minimum(u.long(), self.last)  # float rounding at the far edge
        return torch.take(self.code, (index * self.strides).sum(1))


class LayerGeometry:
    """Flat matrix layers of several thicknesses over a bulk substrate, one per "pixel": the
    electrons of pixel i see layer thickness_nm[i]; the geometry is laterally uniform, so only
    the depth matters. Voxels along z of `step` nm (the layer thicknesses' common divisor)."""

    def __init__(self, thickness_nm: np.ndarray, matrix: Material, substrate: Material, voltage_kV, device,
                 cross_section="rutherford"):
        self.physics = _Physics([matrix, substrate], device, cross_section)
        step = _common_step(thickness_nm)
        # deep enough that no electron that reached the bottom comes back: 1.5 x the substrate's range
        n_bulk = int(np.ceil(1.5 * substrate.range_nm(voltage_kV) / step)) + 2
        n_layer = np.rint(thickness_nm / step).astype(int)
        n_z = int(n_layer.max()) + n_bulk
        labels = (np.arange(n_z)[None, :] >= n_layer[:, None]).astype(np.uint8)  # (pixels, z)
        code = (safe_distance(labels[:, :, None], ("reflect", "reflect", "periodic"), axes=(1,)).astype(np.uint8)
                << 4) | labels[:, :, None]
        self.code = torch.from_numpy(np.ascontiguousarray(code[:, :, 0]).ravel()).to(device)
        self.n_z, self.step, self.step_unit = n_z, float(step), float(step)

    def lookup(self, pos: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        iz = _mirror(torch.floor(pos[:, 0] / self.step).long(), self.n_z)
        return torch.take(self.code, pixel * self.n_z + iz)


def safe_distance(labels: np.ndarray, boundary, axes=(0, 1, 2)) -> np.ndarray:
    """Per voxel: how many voxels around it (chessboard distance, along `axes`) hold its own
    material, capped at MAX_SAFE; 0 for a voxel next to another material."""
    pad = MAX_SAFE + 1
    widths = [(pad, pad) if a in axes else (0, 0) for a in range(labels.ndim)]
    modes = {"periodic": "wrap", "reflect": "symmetric"}
    padded = labels
    for axis in axes:  # np.pad takes one mode for all axes
        w = [(0, 0)] * labels.ndim
        w[axis] = widths[axis]
        padded = np.pad(padded, w, mode=modes[boundary[axis]])
    safe = np.full(padded.shape, MAX_SAFE, dtype=np.int32)
    for m in np.unique(labels):
        inside = padded == m
        if inside.all():
            continue
        footprint = np.zeros((3,) * labels.ndim, dtype=bool)
        footprint[tuple(slice(None) if a in axes else slice(1, 2) for a in range(labels.ndim))] = True
        distance = ndi.distance_transform_cdt(inside, metric=footprint)  # chessboard along `axes`
        safe[inside] = np.minimum(distance[inside] - 1, MAX_SAFE)
    crop = tuple(slice(p, s - q) for (p, q), s in zip(widths, padded.shape))
    return safe[crop]


def _mirror(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices beyond [0, n) back into it (..., 1, 0, 0, 1, ..., n-1, n-1, n-2, ...)."""
    period = torch.remainder(i, 2 * n)
    return torch.where(period < n, period, 2 * n - 1 - period)


def _common_step(thickness_nm: np.ndarray) -> float:
    """The largest step of at most 10 nm (and at least 0.5 nm) that divides every thickness."""
    positive = thickness_nm[thickness_nm > 0]
    for step in (10.0, 5.0, 2.5, 2.0, 1.0, 0.5):
        if np.allclose(positive / step, np.rint(positive / step), atol=1e-6):
            return step
    raise ValueError(f"layer thicknesses {thickness_nm.tolist()} must be multiples of 0.5 nm")


# --------------------------------------------------------------------------- transport


class _Detector:
    def __init__(self, voltage_kV, energy_cutoff_keV, energy_weighting, detector_angle_deg):
        self.E0 = float(voltage_kV)
        self.cutoff = float(energy_cutoff_keV)
        self.energy_weighting = bool(energy_weighting)
        low, high = (math.radians(float(a)) for a in detector_angle_deg)
        # polar exit angle theta from the face normal: cos(theta) = -w; the detector sees [low, high]
        self.cos_range = (math.cos(high), math.cos(low))

    def weight(self, E: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cos_theta = -w
        seen = (E > self.cutoff) & (cos_theta >= self.cos_range[0] - 1e-7) & (cos_theta <= self.cos_range[1] + 1e-7)
        value = E / self.E0 if self.energy_weighting else torch.ones_like(E)
        return torch.where(seen, value, torch.zeros_like(E))


def _transport(geometry, detector: _Detector, beam: _Beam, batch_electrons: int,
               compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Follow the electrons of `beam` from its face along +z until they leave the face or stop,
    at most batch_electrons at a time (finished ones are replaced by new ones from the beam, so
    the batch stays full). Returns the detector signal summed per pixel and the sum per pixel of
    each electron's deepest point below the face (nm)."""
    device, generator, physics = beam.device, beam.generator, geometry.physics
    signal = torch.zeros(beam.n_pixels, dtype=torch.float64, device=device)
    deepest = torch.zeros(beam.n_pixels, dtype=torch.float64, device=device)
    state = _State.entering(*beam.take(batch_electrons), detector.E0)
    cutoff, step = detector.cutoff, _step_function(compile)
    while len(state.E):
        pos, direction, E, depth, face, pixel = state.pos, state.direction, state.E, state.depth, state.face, state.pixel
        n = len(E)
        random = torch.rand((n, 5), generator=generator, device=device)
        pos, direction, E_new, depth, leaves, w = step(geometry, physics, pos, direction, E, depth, face, pixel,
                                                       random, cutoff)
        E = E_new
        escaped = leaves & (E > cutoff)
        if escaped.any():
            signal.index_add_(0, pixel[escaped], detector.weight(E[escaped], w[escaped]).double())
        alive = ~leaves & (E > cutoff)
        finished = ~alive
        if finished.any():
            deepest.index_add_(0, pixel[finished], depth[finished].double())
        state = _State(pos, direction, E, depth, face, pixel)
        if finished.any() or beam.remaining:
            state = state.select(alive.nonzero()[:, 0])
            if beam.remaining and len(state.E) < batch_electrons:
                state = state.extend(_State.entering(*beam.take(batch_electrons - len(state.E)), detector.E0))
    return signal, deepest


def _step(geometry, physics, pos, direction, E, depth, face, pixel, random, cutoff: float):
    """One flight and (possibly null) collision of every electron; see the module docstring."""
    code = geometry.lookup(pos, pixel)
    material, safe = (code & 15).long(), (code >> 4).float()
    mu_all = physics.inverse_mfp(E)
    mu_own = mu_all.gather(1, material[:, None])[:, 0]
    inside = safe > 0  # the safe ball holds only this voxel's material: fly with its own free path
    mu_major = torch.where(inside, mu_own, mu_all.max(1).values)
    reach = torch.where(inside, safe, torch.ones_like(safe)) * geometry.step_unit
    step = -torch.log1p(-random[:, 0]) / mu_major
    collides = step <= reach
    step = torch.minimum(step, reach)

    w = direction[:, 0]
    new_z = pos[:, 0] + step * w
    leaves = new_z < face
    path = torch.where(leaves, (face - pos[:, 0]) / torch.where(leaves, w, -torch.ones_like(w)), step)
    # energy lost on the way, at the material of the path's midpoint (second-order in E)
    mid_material = (geometry.lookup(pos + 0.5 * path[:, None] * direction, pixel) & 15).long()
    E_mid = torch.clamp(E - 0.5 * path * physics.stopping_power(E, mid_material), min=0.5 * cutoff)
    E_new = E - path * physics.stopping_power(E_mid, mid_material)
    pos = pos + path[:, None] * direction
    depth = torch.maximum(depth, pos[:, 0] - face)

    # a real collision at the end of the step, with probability mu_local / mu_majorant
    here = (geometry.lookup(pos, pixel) & 15).long()
    mu_here = mu_all.gather(1, here[:, None])[:, 0]
    scatters = collides & ~leaves & (random[:, 1] * mu_major < mu_here)
    cos_theta = physics.cos_theta(torch.clamp(E_new, min=cutoff), here, random[:, 2], random[:, 4])
    cos_theta = torch.where(scatters, cos_theta, torch.ones_like(cos_theta))
    direction = _rotate(direction, cos_theta.clamp(-1.0, 1.0), 2 * math.pi * random[:, 3])

    return pos, direction, E_new, depth, leaves, w


_COMPILED_STEP = None


def _step_function(compile: bool):
    """_step, or its torch.compile'd form (fused kernels: 1.5x on 2 CPU cores after ~40 s of
    compiling; worth more on a GPU, where the many small kernels of a step dominate)."""
    global _COMPILED_STEP
    if not compile:
        return _step
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_step, dynamic=True)
    return _COMPILED_STEP


def _rotate(direction: torch.Tensor, cos_theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Turn unit vectors (n, 3; components along z, y, x) by the polar angle theta about
    themselves, at azimuth phi."""
    w, v, u = direction.unbind(1)
    sin_theta = torch.sqrt(torch.clamp(1 - cos_theta**2, min=0.0))
    cos_phi, sin_phi = torch.cos(phi), torch.sin(phi)
    perp = torch.sqrt(torch.clamp(1 - w * w, min=0.0))
    near_axis = perp < 1e-5
    safe_perp = torch.where(near_axis, torch.ones_like(perp), perp)
    u_new = u * cos_theta + sin_theta * (u * w * cos_phi - v * sin_phi) / safe_perp
    v_new = v * cos_theta + sin_theta * (v * w * cos_phi + u * sin_phi) / safe_perp
    w_new = w * cos_theta - sin_theta * cos_phi * perp
    # along the z axis the general formula divides by zero: take the azimuth in the xy plane
    u_new = torch.where(near_axis, sin_theta * cos_phi, u_new)
    v_new = torch.where(near_axis, sin_theta * sin_phi, v_new)
    w_new = torch.where(near_axis, torch.sign(w) * cos_theta, w_new)
    out = torch.stack((w_new, v_new, u_new), dim=1)
    return out / torch.linalg.vector_norm(out, dim=1, keepdim=True)  # float32 drift


@dataclass
class _State:
    """The electrons in flight: position and unit direction (n, 3; z, y, x), energy (keV), deepest
    point so far below the face (nm), face plane z (nm), pixel index."""

    pos: torch.Tensor
    direction: torch.Tensor
    E: torch.Tensor
    depth: torch.Tensor
    face: torch.Tensor
    pixel: torch.Tensor

    @classmethod
    def entering(cls, pos: torch.Tensor, pixel: torch.Tensor, E0: float) -> _State:
        direction = torch.zeros_like(pos)
        direction[:, 0] = 1.0  # normal incidence on the face
        E = torch.full((len(pos),), E0, dtype=torch.float32, device=pos.device)
        return cls(pos, direction, E, torch.zeros_like(E), pos[:, 0].clone(), pixel)

    def select(self, index: torch.Tensor) -> _State:
        return _State(*(t.index_select(0, index) for t in self._tensors()))

    def extend(self, other: _State) -> _State:
        return _State(*(torch.cat((a, b)) for a, b in zip(self._tensors(), other._tensors())))

    def _tensors(self):
        return self.pos, self.direction, self.E, self.depth, self.face, self.pixel


class _Beam:
    """The incident electrons, electrons_per_pixel per pixel in pixel order, drawn on demand.

    Pixels lie on a grid of grid_x columns with pixel_nm (y, x) spacing on the face plane
    z = face_nm; the beam hits each pixel centre, spread by a Gaussian probe of probe_sigma_nm.
    Without a grid (grid_x None) every electron enters at the origin (laterally uniform samples).
    """

    def __init__(self, n_pixels: int, electrons_per_pixel: int, device, generator, face_nm: float = 0.0,
                 pixel_nm=(1.0, 1.0), grid_x: int | None = None, probe_sigma_nm: float = 0.0):
        self.n_pixels, self.per_pixel = int(n_pixels), int(electrons_per_pixel)
        self.total, self.next = self.n_pixels * self.per_pixel, 0
        self.device, self.generator = device, generator
        self.face, self.pixel_nm, self.grid_x, self.sigma = float(face_nm), pixel_nm, grid_x, float(probe_sigma_nm)

    @property
    def remaining(self) -> int:
        return self.total - self.next

    def take(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Entry positions (k', 3) in nm and pixel indices of the next k' <= k electrons."""
        k = min(int(k), self.remaining)
        pixel = torch.div(torch.arange(self.next, self.next + k, device=self.device), self.per_pixel,
                          rounding_mode="floor")
        self.next += k
        pos = torch.zeros((k, 3), device=self.device)
        pos[:, 0] = self.face
        if self.grid_x is not None:
            pos[:, 1] = (torch.div(pixel, self.grid_x, rounding_mode="floor") + 0.5) * self.pixel_nm[0]
            pos[:, 2] = (torch.remainder(pixel, self.grid_x) + 0.5) * self.pixel_nm[1]
            if self.sigma > 0:
                pos[:, 1:] += torch.randn((k, 2), generator=self.generator, device=self.device) * self.sigma
        return pos, pixel


# --------------------------------------------------------------------------- plumbing


class _SliceStore:
    """Finished slices of a long simulation, one .npy each, so a run can resume."""

    def __init__(self, folder: str | Path, settings: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / "settings.json"
        text = json.dumps(settings, sort_keys=True, indent=1)
        if record.is_file() and record.read_text() != text:
            raise ValueError(
                f"{self.folder} holds slices of a simulation with other settings ({record}); "
                f"give another work_dir or delete it"
            )
        if not record.is_file():
            with atomic_path(record) as tmp:
                tmp.write_text(text)

    def _path(self, z: int) -> Path:
        return self.folder / f"slice_{z:05d}.npy"

    def load(self, z: int) -> np.ndarray | None:
        path = self._path(z)
        return np.load(path) if path.is_file() else None

    def save(self, z: int, image: np.ndarray) -> None:
        with atomic_path(self._path(z)) as tmp, open(tmp, "wb") as f:
            np.save(f, image)


def _default_batch(device: torch.device) -> int:
    """Electrons in flight: 2^16 on the CPU; on a GPU 2^24 where it has 32 GiB or more (an H100,
    compiled, 4 kV: 2.23e6 electrons/s against 1.43e6 with 2^22), else 2^22."""
    if device.type != "cuda":
        return 2**16
    return 2**24 if torch.cuda.get_device_properties(device).total_memory >= 32 * 2**30 else 2**22


def _generator(device: torch.device, seed, voltage_kV, z: int) -> torch.Generator | None:
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), round(float(voltage_kV) * 1000), int(z)]).generate_state(1)[0]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state))
    return generator


def _device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_settings(voltage_kV, electrons, energy_cutoff_keV, detector_angle_deg) -> None:
    if not 0.1 <= voltage_kV <= 50:
        raise ValueError(f"voltage_kV must be within 0.1-50 kV (the model is meant for 0.5-30), got {voltage_kV}")
    if int(electrons) < 1:
        raise ValueError(f"the number of electrons must be >= 1, got {electrons}")
    if not 0 < energy_cutoff_keV < voltage_kV:
        raise ValueError(f"energy_cutoff_keV must lie between 0 and the beam energy {voltage_kV} keV, "
                         f"got {energy_cutoff_keV}")
    low, high = (float(a) for a in detector_angle_deg)
    if not 0 <= low < high <= 90:
        raise ValueError(f"detector_angle_deg must be (min, max) with 0 <= min < max <= 90, got {detector_angle_deg}")
