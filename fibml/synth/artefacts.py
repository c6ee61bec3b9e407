"""Artefacts of real FIB-SEM images on top of a rendered stack: the "realistic" target domain.

No real FIB-SEM data is available offline, so fibml stands in for it (the r-1kV ... r-4kV data of
cyclegan-simulation-domain-adaptation.txt, whose histograms differ from the simulated ones, Fig. 5)
with clean renderings (fast model or Monte Carlo) of structures the segmentation never saw, plus
what a real acquisition adds, in the order the signal meets it:

1. curtaining: the ion beam mills ridges into the face along the milling direction (image y),
   so the BSE yield is modulated in vertical stripes, constant along y, varying along x; the ridges
   persist from slice to slice and drift slowly sideways;
2. blur: focus / astigmatism a little worse than the fast model's probe (Gaussian, sigma ~1 pixel);
3. charging: charge trapped in the epoxy next to the gold deflects the beam and saturates the
   detector for a while: bright streaks that start on bright (solid) pixels and decay along the
   scan line (+x), a few per slice at random places;
4. shading: trench walls shadow the detector and the face is seen at an angle: a smooth gain
   (low-order polynomial) across the field of view that changes slowly from slice to slice;
5. noise, unlike the fast model's Poisson + white read noise: spatially correlated Gaussian noise
   (amplifier bandwidth), an offset per scan line (row), and a gain that jumps from slice to slice
   (auto brightness / contrast);
6. histogram: the detector's gamma / contrast / offset, so the intensity histogram has another shape.

Every artefact is off unless asked for, so an empty call returns the data unchanged: True switches it
on with the defaults in DEFAULTS, a mapping switches it on with those parameters overriding the
defaults; configs/artefacts/realistic.yaml switches all of them on. Lengths are in nm (converted
with the voxel size), amplitudes are relative: gains are fractions of the signal, additive terms
fractions of the stack's intensity range (99th minus 1st percentile of the input). Arrays are
(z, y, x) float32; z is the milling direction (slice index), x the fast scan direction.

Curtaining and shading belong to the milled face, so every channel (voltage, detector) of the same
stack gets the same pattern for the same seed; charging and noise are drawn for each `channel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import signal

from fibml.synth.imaging import _detector_response

__all__ = ["ARTEFACTS", "DEFAULTS", "add_artefacts"]

# the order in which add_artefacts applies them (the order the signal meets them)
ARTEFACTS = ("curtaining", "blur", "charging", "shading", "noise", "histogram")

DEFAULTS: dict[str, dict[str, Any]] = {
    "curtaining": {
        "amplitude": 0.06,  # std of the stripe profile: a fraction of the signal (or of the range, additive)
        "width_nm": 12.0,  # correlation length of the stripes along x (Gaussian sigma)
        "persistence_nm": 75.0,  # correlation length of the stripes along z, the milling depth (Gaussian sigma)
        "drift_nm_per_slice": 0.25,  # sideways drift of the stripe pattern from one slice to the next
        "mode": "multiplicative",  # or "additive"
    },
    "blur": {
        "sigma_nm": 2.5,  # in-plane Gaussian sigma on top of the probe blur (~1 pixel at 2.5 nm)
    },
    "charging": {
        "per_slice": 3.0,  # mean number of streaks per slice (Poisson)
        "amplitude": 0.4,  # mean peak brightness of a streak (exponentially distributed), fraction of the range
        "length_nm": 30.0,  # exponential decay length along the scan line (+x)
        "width_nm": 2.5,  # Gaussian sigma across the scan lines (y): one or a few rows
        "bright_quantile": 0.85,  # streaks start on pixels brighter than this quantile of their slice
    },
    "shading": {
        "amplitude": 0.08,  # RMS of the relative gain over the field of view and the stack
        "order": 2,  # polynomial order in the normalised field coordinates (y, x) in [-1, 1]
        "persistence_nm": 150.0,  # correlation length along z of the changing part (Gaussian sigma)
        "variation": 0.5,  # share of the shading that changes from slice to slice (0 = fixed pattern)
    },
    "noise": {
        "std": 0.04,  # std of the correlated Gaussian noise, fraction of the range
        "correlation_nm": 2.5,  # Gaussian sigma of its spatial correlation
        "row_std": 0.015,  # std of an offset per scan line (row), fraction of the range
        "gain_std": 0.03,  # std of the relative gain of a slice (auto brightness / contrast jumps)
    },
    "histogram": {
        "gamma": 0.8,  # I -> s (I / s)^gamma, s = the 99.5th percentile: < 1 lifts the dark pores
        "contrast": 1.0,  # gain applied after the gamma
        "offset": 0.0,  # black level added at the end, fraction of the range
    },
}

# keeps the artefact streams apart from the structure's and the renderer's (seed, seed * 1000 + i)
_STREAM = 0xA27EFAC7


def add_artefacts(
    images: np.ndarray,
    seed: int = 0,
    voxel_size_nm: float | Sequence[float] = 2.5,
    channel: int = 0,
    curtaining: Mapping | bool | None = None,
    blur: Mapping | bool | None = None,
    charging: Mapping | bool | None = None,
    shading: Mapping | bool | None = None,
    noise: Mapping | bool | None = None,
    histogram: Mapping | bool | None = None,
) -> np.ndarray:
    """`images` (z, y, x, BSE yield or any linear signal) with the artefacts of a real acquisition, float32.

    seed: the artefacts are a function of (seed, channel) and the input only. voxel_size_nm: scalar
    or (z, y, x), converts the lengths of the options to pixels / slices. channel: index of this
    stack among the channels imaged from the same faces (voltages, detectors): curtaining and
    shading are the same for every channel, charging and noise differ.
    curtaining, blur, charging, shading, noise, histogram: None / False = off, True = on with
    DEFAULTS[name], a mapping = on with these parameters over the defaults (see DEFAULTS for
    their meaning and units). All off: the input, as float32, unchanged.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be a 3-D (z, y, x) stack, got shape {images.shape}")
    voxel = np.broadcast_to(np.asarray(voxel_size_nm, dtype=np.float64), (3,))
    if np.any(voxel <= 0):
        raise ValueError(f"voxel_size_nm must be > 0, got {voxel_size_nm}")
    given = {"curtaining": curtaining, "blur": blur, "charging": charging, "shading": shading, "noise": noise,
             "histogram": histogram}
    options = {name: _options(name, value) for name, value in given.items()}
    out = images.astype(np.float32, copy=True)
    if not any(o is not None for o in options.values()):
        return out
    # amplitudes of additive terms refer to the clean stack, so they do not depend on the order
    low, high = np.percentile(out, [1.0, 99.0])
    scale = float(high - low) or float(abs(out.mean())) or 1.0
    for index, name in enumerate(ARTEFACTS):
        if options[name] is None:
            continue
        # face-bound artefacts share a stream over channels; acquisition-bound ones get their own
        entropy = [_STREAM, int(seed), index] if name in ("curtaining", "shading") else [_STREAM, int(seed), index,
                                                                                          int(channel)]
        rng = np.random.default_rng(entropy)
        out = _APPLY[name](out, rng, voxel, scale, **options[name])
    return out.astype(np.float32, copy=False)


def _options(name: str, value: Mapping | bool | None) -> dict | None:
    if value is None or value is False:
        return None
    given = {} if value is True else dict(value)
    unknown = sorted(set(given) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"unknown {name} options {unknown}: expected some of {sorted(DEFAULTS[name])}")
    return DEFAULTS[name] | given


def _curtaining(images, rng, voxel, scale, amplitude, width_nm, persistence_nm, drift_nm_per_slice, mode):
    """Stripes constant along y: a (z, x) profile, correlated over width_nm in x and persistence_nm in
    z, sheared by the drift, multiplying (1 + amplitude p) or adding (amplitude * scale * p)."""
    if mode not in ("multiplicative", "additive"):
        raise ValueError(f"curtaining.mode must be 'multiplicative' or 'additive', got {mode!r}")
    n_z, _, n_x = images.shape
    dz, _, dx = voxel
    sigma = (persistence_nm / dz, width_nm / dx)
    drift = drift_nm_per_slice / dx
    # a field wide enough for the drift, padded so the filter's wrap-around does not reach the crop
    pad_z, pad_x = int(np.ceil(4 * sigma[0])) + 1, int(np.ceil(4 * sigma[1])) + 1
    width = n_x + int(np.ceil(abs(drift) * n_z)) + 2 * pad_x
    field = ndi.gaussian_filter(rng.standard_normal((n_z + 2 * pad_z, width)), sigma, mode="wrap")
    z, x = np.meshgrid(np.arange(n_z), np.arange(n_x), indexing="ij")
    start = pad_x + (abs(drift) * n_z if drift < 0 else 0.0)
    profile = ndi.map_coordinates(field, [z + pad_z, x + start + drift * z], order=1, mode="nearest")
    profile = profile / (profile.std() or 1.0)
    if mode == "multiplicative":
        return images * (1.0 + amplitude * profile[:, None, :]).astype(np.float32)
    return images + (amplitude * scale * profile[:, None, :]).astype(np.float32)


def _blur(images, rng, voxel, scale, sigma_nm):
    """In-plane Gaussian blur through the fast model's detector blur (no noise added there)."""
    return _detector_response(images, sigma_nm, (voxel[1], voxel[2]), "reflect", None, 0.0, None)


def _charging(images, rng, voxel, scale, per_slice, amplitude, length_nm, width_nm, bright_quantile):
    """Bright streaks: seeds on bright pixels (Poisson, per_slice per slice), each spread over rows by
    a Gaussian of width_nm (peak kept) and trailing along +x with an exponential decay of length_nm."""
    _, dy, dx = voxel
    bright = images > np.quantile(images, bright_quantile, axis=(1, 2), keepdims=True)
    n_bright = bright.sum(axis=(1, 2), keepdims=True)
    # each bright pixel starts a streak with probability per_slice / n_bright: ~Poisson(per_slice) per slice
    chance = np.divide(per_slice, n_bright, out=np.zeros(n_bright.shape), where=n_bright > 0)
    seeds = bright & (rng.random(images.shape) < chance)
    source = np.zeros(images.shape, dtype=np.float32)
    source[seeds] = rng.exponential(amplitude * scale, size=int(seeds.sum()))
    sigma_y = width_nm / dy
    if sigma_y > 0:
        # the filter keeps the sum; times sqrt(2 pi) sigma keeps the peak of a single row
        peak = np.float32(np.sqrt(2 * np.pi) * sigma_y)
        source = ndi.gaussian_filter1d(source, sigma_y, axis=1, mode="reflect") * peak
    decay = np.exp(-dx / length_nm) if length_nm > 0 else 0.0
    streaks = signal.lfilter([1.0], [1.0, -decay], source, axis=2)  # s[x] = source[x] + decay * s[x - 1]
    return images + streaks.astype(np.float32)


def _shading(images, rng, voxel, scale, amplitude, order, persistence_nm, variation):
    """A smooth gain 1 + amplitude * g(z, y, x): g a polynomial of the given order in (y, x), its
    coefficients a fixed part plus a part correlated over persistence_nm along z, RMS 1."""
    n_z, n_y, n_x = images.shape
    y = np.linspace(-1.0, 1.0, n_y)[:, None]
    x = np.linspace(-1.0, 1.0, n_x)[None, :]
    powers = [(i, total - i) for total in range(1, int(order) + 1) for i in range(total + 1)]  # y^i x^j, 1 <= i+j
    if not powers:
        return images
    basis = np.stack([np.broadcast_to(y**i * x**j, (n_y, n_x)) for i, j in powers])  # (k, y, x)
    basis = basis - basis.mean(axis=(1, 2), keepdims=True)  # the mean gain stays 1
    fixed = rng.standard_normal((1, len(powers)))
    varying = ndi.gaussian_filter1d(rng.standard_normal((n_z, len(powers))), persistence_nm / voxel[0], axis=0,
                                    mode="reflect")
    varying = varying / (varying.std(axis=0, keepdims=True) + 1e-12)
    coefficients = np.sqrt(1 - variation) * fixed + np.sqrt(variation) * varying  # (z, k)
    gain = np.tensordot(coefficients, basis, axes=1)  # (z, y, x)
    gain = gain / (np.sqrt(np.mean(gain**2)) or 1.0)
    return images * (1.0 + amplitude * gain).astype(np.float32)


def _noise(images, rng, voxel, scale, std, correlation_nm, row_std, gain_std):
    """Correlated Gaussian noise (std * scale after the blur), an offset per row and a gain per slice."""
    _, dy, dx = voxel
    out = images
    if std > 0:
        field = rng.standard_normal(images.shape, dtype=np.float32)
        if correlation_nm > 0:
            field = ndi.gaussian_filter(field, (0, correlation_nm / dy, correlation_nm / dx), mode="wrap")
            field /= field.std() or 1.0  # the blur lowers the std: restore it
        out = out + np.float32(std * scale) * field
    if row_std > 0:
        out = out + rng.normal(0.0, row_std * scale, size=(images.shape[0], images.shape[1], 1)).astype(np.float32)
    if gain_std > 0:
        out = out * (1.0 + rng.normal(0.0, gain_std, size=(images.shape[0], 1, 1))).astype(np.float32)
    return out


def _histogram(images, rng, voxel, scale, gamma, contrast, offset):
    """I -> offset * scale + contrast * s * sign(I) |I / s|^gamma, s = the 99.5th percentile of |I|."""
    reference = float(np.percentile(np.abs(images), 99.5)) or 1.0
    reshaped = np.sign(images) * np.abs(images / reference) ** gamma * reference
    return (contrast * reshaped + offset * scale).astype(np.float32)


_APPLY = {"curtaining": _curtaining, "blur": _blur, "charging": _charging, "shading": _shading, "noise": _noise,
          "histogram": _histogram}
