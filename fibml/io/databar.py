"""The information bar ("data bar") of SEM images: how many bottom rows to crop before use.

Zeiss (SmartSEM, Atlas) and FEI / Thermo Fisher microscopes burn a band into the bottom rows of
the saved image: a flat background (black, white or light grey) with text (magnification, HV,
WD, detector, date) and a scale bar. It is not sample. `databar_rows` decides how many rows it
has, from the vendor metadata when that states the image height without the bar, else from the
pixels (`detect_databar`).

Detection works on per-row statistics of the bottom half, against the band's background value
b (the most common value of the bottom rows) and a tolerance t (a tenth of the image's robust
range). Pixels are exactly equal to b, "near" it (0 < |x - b| <= t) or far from it (|x - b| > t:
text). A data bar is exactly flat between high-contrast text: its rows have many pixels equal to
b and none near b except the anti-aliased edges of text, within a pixel of a text pixel. A
sample is never like that, even where it is dark or saturated: shot noise spreads the pixels of
a pore (or of a clipped bright region) over values around b, "near" ones all over the row.
A robust spread (the row's median absolute deviation) would not tell the two apart: it is 0 for
a bar row and for a pore row clipped at 0 more than half the time.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["MAX_BAR_FRACTION", "MIN_BAR_ROWS", "databar_rows", "detect_databar"]

MIN_BAR_ROWS = 4  # thinner flat bands are more likely a dark sample edge than a data bar
MAX_BAR_FRACTION = 0.5  # a "bar" taller than this fraction of the image is refused (0 returned)

_MODE_ROWS = 16  # the background value is the mode of this many bottom rows (or of the bottom half)
_TOLERANCE = 0.1  # "near the background": within this fraction of the image's 0.1-99.9 percentile range
_SUBSAMPLE = 250_000  # about this many pixels estimate that range (a strided view: fast on 6 Mpixel images)
_MIN_BACKGROUND = 0.3  # a bar row: at least this fraction of its pixels exactly the background...
_MAX_STRAY = 0.005  # ...and at most this fraction near it but not next to text (anti-aliasing is)
_MAX_GAP = 3  # rows of dense text (or a line) inside the bar: clean but with less background
_MIN_MEAN_BACKGROUND = 0.6  # the whole band: text covers at most ~40 % of it (sparse text)
_BLANK_ROW = 0.97  # the band has a margin or line spacing: a row (nearly) all background
_MIN_TEXT = 0.001  # the band has text: a flat band without any is padding, not a data bar...
_MIN_STROKES = 0.5  # ...drawn in strokes: most text pixels touch another (isolated specks are noise)
_MAX_SEPARATOR_ROWS = 2  # a 1-2 px line on top of the bar, flat at its own value
_SEPARATOR_FLAT = 0.9  # fraction of the line's row at its own most common value


def detect_databar(image: np.ndarray) -> int:
    """The number of bottom rows of `image` (2D, integer or float) that form a data bar, 0 if none.

    The bar is the contiguous band at the bottom whose rows are mostly exactly one background
    value with sparse high-contrast text (see the module's docstring), plus a flat 1-2 px
    separator line on top of it. Bands thinner than MIN_BAR_ROWS or taller than
    MAX_BAR_FRACTION of the image, without text, or without a blank row give 0.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"detect_databar needs a 2D image, got shape {img.shape}")
    if img.dtype.kind not in "uif":
        raise ValueError(f"detect_databar needs an integer or float image, got dtype {img.dtype}")
    height, width = img.shape
    max_rows = int(height * MAX_BAR_FRACTION)
    if max_rows < MIN_BAR_ROWS or width == 0:
        return 0
    tolerance = _tolerance(img)
    if tolerance is None:  # a constant image: nothing tells a bar from the sample
        return 0
    background = _mode(img[height - min(_MODE_ROWS, max_rows):])
    # rows examined from the bottom: enough to see a band continue past max_rows (then refused)
    look = min(height, max_rows + _MAX_GAP + _MAX_SEPARATOR_ROWS + 1)
    rows = img[height - look:]
    low, high = _interval(background, tolerance, img.dtype)
    is_background = rows == background
    inside = (rows >= low) & (rows <= high)  # equal or near; NaN is neither (text)
    text = ~inside
    stray = inside & ~is_background & ~_dilate(text)  # near pixels more than one pixel away from text
    equal = np.count_nonzero(is_background, axis=1) / width
    clean = np.count_nonzero(stray, axis=1) <= _MAX_STRAY * width
    bar_like = clean & (equal >= _MIN_BACKGROUND)

    # the topmost bar-like row of the band that starts at the bottom, across short clean gaps
    top, gap = None, 0
    for i in range(look - 1, -1, -1):  # at most ~h/2 booleans: a Python loop costs microseconds
        if bar_like[i]:
            top, gap = i, 0
        elif clean[i] and gap < _MAX_GAP:
            gap += 1
        else:
            break
    if top is None or look - top > max_rows:
        return 0
    band_equal, band_text = equal[top:], text[top:]
    if (band_equal.mean() < _MIN_MEAN_BACKGROUND or band_equal.max() < _BLANK_ROW
            or band_text.mean() < _MIN_TEXT or _touching(band_text) < _MIN_STROKES * np.count_nonzero(band_text)):
        return 0
    for _ in range(_MAX_SEPARATOR_ROWS):
        if top == 0 or not _flat_line(rows[top - 1], tolerance):
            break
        top -= 1
    n = look - top
    return n if MIN_BAR_ROWS <= n <= max_rows else 0


def databar_rows(page_height: int, stated_height: int | None,
                 image: np.ndarray | None = None) -> tuple[int, str]:
    """The rows to crop at the bottom of a page and why, as a short reason for the user's report.

    The vendor metadata, when it states the image height without the bar (`stated_height`),
    decides: a taller page has `page_height - stated_height` rows of bar, an equal or shorter
    one (cropped already) none. Without it the bar is detected from `image` (the page's pixels,
    `page_height` rows tall); with neither nothing is cropped.
    """
    page_height = _height(page_height, "page_height")
    if stated_height is not None:
        stated_height = _height(stated_height, "stated_height")
        if page_height > stated_height:
            rows = page_height - stated_height
            return rows, (f"the vendor metadata states {stated_height} rows of image; the page has "
                          f"{page_height}: {rows} rows of data bar")
        if page_height == stated_height:
            return 0, f"the vendor metadata states {stated_height} rows of image; the page has {page_height}: " \
                      "no data bar"
        return 0, (f"page shorter than the stated {stated_height} rows ({page_height} rows): cropped already, "
                   "no data bar")
    if image is None:
        return 0, "no metadata and no image: not checked"
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] != page_height:
        raise ValueError(f"image must be the 2D page, {page_height} rows tall; got shape {image.shape}")
    rows = detect_databar(image)
    if rows:
        return rows, f"detected from the image: a flat band of {rows} rows with text"
    return 0, "no data bar detected in the image"


def _height(value, name: str) -> int:
    """`value` as a positive int (Python or numpy integer; not bool, not float), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer number of rows, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer number of rows, got {value}")
    return int(value)


def _tolerance(img: np.ndarray) -> float | None:
    """A tenth of the image's robust range (0.1-99.9 percentiles of a strided sub-sample), at
    least one grey level for integers; None for a constant image."""
    step = max(1, int(np.sqrt(img.size / _SUBSAMPLE)))
    sub = img[::step, ::step]
    finite = sub[np.isfinite(sub)] if img.dtype.kind == "f" else sub
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [0.1, 99.9])
    span = float(high - low)
    if span <= 0:  # one value covers > 99.8 % of the sub-sample: the full range
        span = float(np.max(finite)) - float(np.min(finite))
    if span <= 0:
        return None
    tolerance = _TOLERANCE * span
    return max(tolerance, 1.0) if img.dtype.kind in "ui" else tolerance


def _mode(block: np.ndarray):
    """The most common value of `block` (NaN ignored), as a scalar of its dtype."""
    values, counts = np.unique(block, return_counts=True)
    if block.dtype.kind == "f":
        keep = ~np.isnan(values)
        values, counts = values[keep], counts[keep]
        if values.size == 0:
            return block.dtype.type(np.nan)
    return values[np.argmax(counts)]


def _interval(value, tolerance: float, dtype: np.dtype) -> tuple:
    """[value - tolerance, value + tolerance] in `dtype` (clipped to its range for integers), so
    that the comparisons with the image stay in its own dtype (no float64 copy of it)."""
    if dtype.kind == "f":
        return dtype.type(value - tolerance), dtype.type(value + tolerance)
    info = np.iinfo(dtype)
    low = max(info.min, int(np.ceil(int(value) - tolerance)))
    high = min(info.max, int(np.floor(int(value) + tolerance)))
    return dtype.type(low), dtype.type(high)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel in all 8 directions: scipy.ndimage.binary_dilation with a 3 x 3
    square, by four shifted ORs (7x faster on the bottom half of a 2048 x 3072 page)."""
    grown = mask.copy()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    rows = grown.copy()
    grown[1:] |= rows[:-1]
    grown[:-1] |= rows[1:]
    return grown


def _touching(mask: np.ndarray) -> int:
    """How many pixels of `mask` have a 4-neighbour in it."""
    touch = np.zeros_like(mask)
    touch[:, 1:] |= mask[:, :-1]
    touch[:, :-1] |= mask[:, 1:]
    touch[1:] |= mask[:-1]
    touch[:-1] |= mask[1:]
    return int(np.count_nonzero(touch & mask))


def _flat_line(row: np.ndarray, tolerance: float) -> bool:
    """Whether a row is a separator line: nearly all one value, with nothing else near it."""
    value = _mode(row)
    low, high = _interval(value, tolerance, row.dtype)
    equal = np.count_nonzero(row == value)
    near = np.count_nonzero((row >= low) & (row <= high)) - equal
    return equal >= _SEPARATOR_FLAT * row.size and near <= 0.01 * row.size
