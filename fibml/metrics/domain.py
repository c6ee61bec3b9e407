"""How close two image domains are: intensity histograms and power spectra.

cyclegan-simulation-domain-adaptation.txt compares simulated, domain-adapted and real images by their
histograms (Fig. 5) and judges domain adaptation by the segmentation it allows (Table 4). These
distances put numbers on the first: how far the grey values (histogram_distance) and the texture
(spectrum_distance) of a synthetic domain are from a target domain, before and after adaptation.

A domain is a (z, y, x) stack, one 2-D image (y, x), or a list of 2-D images (their sizes may
differ). The histogram distances take the intensities as they are, without normalisation: both
domains must be in the same units (e.g. BSE yield, or both normalised the same way), and a gain or
offset between them counts as a difference. The spectrum distance ignores gain and offset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

__all__ = ["domain_distances", "histogram_distance", "image_agreement", "power_spectrum", "spectrum_distance"]

Images = np.ndarray | Sequence[np.ndarray]

# the exact 1-D Wasserstein distance sorts the pixels: subsample above this many (a few seconds at 2^20)
MAX_PIXELS = 2**20


def histogram_distance(a: Images, b: Images, bins: int = 256, metric: str = "wasserstein") -> float:
    """Distance between the intensity distributions of two domains, in their own units (no normalisation).

    metric "wasserstein": the 1-D Wasserstein (earth mover's) distance of the pixel values
        (scipy.stats.wasserstein_distance; at most MAX_PIXELS pixels of each domain, drawn with a
        fixed seed), in intensity units: a pure shift by c gives |c|. `bins` is not used.
    metric "jensen_shannon": the Jensen-Shannon divergence (base 2, in [0, 1]; 0 = identical) of
        the two histograms with `bins` equal bins over the range both domains span.
    """
    x, y = _pixels(a), _pixels(b)
    if metric == "wasserstein":
        return float(wasserstein_distance(_subsample(x), _subsample(y)))
    if metric == "jensen_shannon":
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        edges = np.linspace(low, high if high > low else low + 1.0, int(bins) + 1)
        p, q = np.histogram(x, edges)[0], np.histogram(y, edges)[0]
        # scipy returns the Jensen-Shannon distance, the square root of the divergence
        return float(jensenshannon(p, q, base=2) ** 2)
    raise ValueError(f"metric must be 'wasserstein' or 'jensen_shannon', got {metric!r}")


def power_spectrum(images: Images, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 2-D power spectrum, mean over the images (slices).

    Each image has its mean removed and a Hann window applied (so that its edges, which do not wrap
    around, add no cross to the spectrum); power = |FFT|^2 / sum(window^2), so white noise of
    variance s^2 gives a flat spectrum s^2. Frequencies in cycles per pixel (divide by the pixel
    size in nm for nm^-1), n_bins equal bins from 0 to the Nyquist frequency 0.5 (None: half the
    smallest image side, one bin per frequency step); frequencies beyond 0.5 (the corners) are left
    out. Returns (bin centres, power per bin); a bin no frequency falls into holds NaN.
    """
    stacks = _stacks(images)
    if n_bins is None:
        n_bins = min(min(stack.shape[1:]) for stack in stacks) // 2
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    total, count = np.zeros(n_bins), np.zeros(n_bins)
    for stack in stacks:
        n_z, n_y, n_x = stack.shape
        window = np.outer(np.hanning(n_y), np.hanning(n_x)).astype(np.float32)
        windowed = (stack - stack.mean(axis=(1, 2), keepdims=True)) * window
        power = np.abs(scipy.fft.fft2(windowed, axes=(1, 2))) ** 2 / float((window**2).sum())
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(n_y), np.fft.fftfreq(n_x), indexing="ij"))
        index = np.digitize(radius, edges) - 1  # bin of every frequency; n_bins = beyond Nyquist
        inside = index < n_bins
        total += np.bincount(index[inside], weights=power.sum(axis=0)[inside], minlength=n_bins)
        count += n_z * np.bincount(index[inside], minlength=n_bins)
    with np.errstate(invalid="ignore"):
        return 0.5 * (edges[:-1] + edges[1:]), total / count


def spectrum_distance(a: Images, b: Images, n_bins: int | None = None) -> float:
    """Distance of the textures of two domains: L2 distance of their log10 radially averaged power
    spectra (power_spectrum), each divided by its total power first, so that a gain or an offset
    gives 0 while blur, noise or stripes do not; divided by sqrt(number of bins), i.e. the RMS
    difference in decades. n_bins None: half the smallest image side of both domains. Bins empty
    in either domain are left out."""
    if n_bins is None:
        n_bins = min(min(stack.shape[1:]) for stack in _stacks(a) + _stacks(b)) // 2
    pa, pb = power_spectrum(a, n_bins)[1], power_spectrum(b, n_bins)[1]
    both = np.isfinite(pa) & np.isfinite(pb)
    if not both.any():
        raise ValueError(f"no frequency bin holds data of both domains (n_bins={n_bins})")
    tiny = np.finfo(np.float64).tiny  # a constant image has no power: keep the log finite
    la = np.log10(np.maximum(pa[both] / max(pa[both].sum(), tiny), tiny))
    lb = np.log10(np.maximum(pb[both] / max(pb[both].sum(), tiny), tiny))
    return float(np.sqrt(np.mean((la - lb) ** 2)))


def domain_distances(a: Images, b: Images, bins: int = 256) -> dict[str, float]:
    """All the distances of two domains, for the reports: wasserstein (intensity units),
    jensen_shannon (histogram divergence, [0, 1]) and spectrum (log10 spectra, decades)."""
    return {
        "wasserstein": histogram_distance(a, b, metric="wasserstein"),
        "jensen_shannon": histogram_distance(a, b, bins, metric="jensen_shannon"),
        "spectrum": spectrum_distance(a, b),
    }


def image_agreement(model: np.ndarray, reference: np.ndarray, labels: np.ndarray,
                    repeat: np.ndarray | None = None, solid: int = 1) -> dict[str, float]:
    """How well images of a forward model reproduce reference images (Monte Carlo) of the same
    faces: (n, y, x) stacks in the same units, `labels` the phase of every face pixel.

    Returns the mean pore and solid levels of both ("model pore", "reference pore", ...), their
    contrast (solid - pore) / solid, the pixel correlation of model and reference, SSIM
    (scikit-image, on the reference's range), and, given `repeat` (the reference again with
    another seed), the reference's noise ceiling sqrt(r(reference, repeat)): the correlation a
    noiseless perfect model would reach with one noisy reference run."""
    model, reference = np.asarray(model, np.float64), np.asarray(reference, np.float64)
    labels = np.asarray(labels)
    if model.shape != reference.shape or labels.shape != reference.shape or model.ndim != 3:
        raise ValueError(f"model, reference and labels must be (n, y, x) stacks of one shape, got {model.shape}, "
                         f"{reference.shape}, {labels.shape}")
    is_solid = labels == solid
    if is_solid.all() or not is_solid.any():
        raise ValueError("the faces must show both pore and solid")
    from skimage.metrics import structural_similarity  # scikit-image's SSIM, the field's reference

    out: dict[str, float] = {}
    for name, images in (("model", model), ("reference", reference)):
        pore, solid_level = float(images[~is_solid].mean()), float(images[is_solid].mean())
        out |= {f"{name} pore": pore, f"{name} solid": solid_level,
                f"{name} contrast": (solid_level - pore) / solid_level if solid_level else float("nan")}
    out["correlation"] = float(np.corrcoef(model.ravel(), reference.ravel())[0, 1])
    data_range = float(reference.max() - reference.min()) or 1.0
    out["ssim"] = float(np.mean([structural_similarity(m, r, data_range=data_range) for m, r in zip(model, reference)]))
    if repeat is not None:
        r = float(np.corrcoef(reference.ravel(), np.asarray(repeat, np.float64).ravel())[0, 1])
        out["noise ceiling"] = float(np.sqrt(max(r, 0.0)))
    return out


def _stacks(images: Images) -> list[np.ndarray]:
    """The images as (n, y, x) float32 stacks, one per image size."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [np.asarray(images, dtype=np.float32).reshape((-1, *images.shape[-2:]))]
    if isinstance(images, np.ndarray) or not len(images):
        raise ValueError(f"expected a (z, y, x) stack, a 2-D image or a list of 2-D images, got {_describe(images)}")
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"a list of images must hold 2-D (y, x) arrays, got one of shape {image.shape}")
        by_shape.setdefault(image.shape, []).append(image)
    return [np.stack(group) for group in by_shape.values()]


def _pixels(images: Images) -> np.ndarray:
    return np.concatenate([stack.ravel() for stack in _stacks(images)])


def _subsample(pixels: np.ndarray) -> np.ndarray:
    """At most MAX_PIXELS of the pixels, drawn with a fixed seed (the same pixels for equal sizes)."""
    if pixels.size <= MAX_PIXELS:
        return pixels
    return pixels[np.random.default_rng(0).choice(pixels.size, MAX_PIXELS, replace=False)]


def _describe(images) -> str:
    if isinstance(images, np.ndarray):
        return f"an array of shape {images.shape}"
    return f"{type(images).__name__} {images!r}"
