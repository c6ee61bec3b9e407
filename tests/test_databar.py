"""Data bars of SEM images (fibml.io.databar) on synthetic but realistic pages.

A page is a porous-looking BSE image (a smoothed random field thresholded into pores and solid,
blurred by the beam, with Poisson shot noise and, for uint16, Gaussian read noise) with an
information bar appended at the bottom: FEI-like (black, white text, scale bar), Zeiss-like
(white or light grey, black text), with or without a one-pixel separator line. The bar's height
is known exactly, so every detection is checked exactly: an off-by-one (or a bar found in a page
without one) fails, and cropping the rows found gives back the sample pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fibml.io.databar import MIN_BAR_ROWS, databar_rows, detect_databar

FULL = {np.uint8: 255, np.uint16: 65535}


def porous_sample(shape: tuple[int, int], seed: int, dtype=np.uint8, pore: float = 0.2, solid: float = 0.7,
                  photons: float = 50.0, porosity: float = 0.4) -> np.ndarray:
    """A BSE-like image of a porous sample: pores (level `pore`, a `porosity` fraction of the
    area) and solid (level `solid`), as fractions of the full scale, blurred (the beam's spread)
    and with shot noise (`photons` per pixel at full scale). The field is drawn at 1/8
    resolution and zoomed: fast at 2048 rows."""
    rng = np.random.default_rng(seed)
    h, w = shape
    coarse = ndimage.gaussian_filter(rng.normal(size=(h // 8 + 2, w // 8 + 2)), 1.5)
    field = ndimage.zoom(coarse, 8, order=1)[:h, :w]
    signal = ndimage.gaussian_filter(np.where(field > np.quantile(field, porosity), solid, pore), 1.0)
    full = FULL[dtype]
    values = rng.poisson(signal * photons) / photons * full
    if dtype is np.uint16:  # read noise: uint16 pages are not quantised to multiples of full / photons
        values += rng.normal(0.0, 0.01 * full, size=shape)
    return np.clip(np.round(values), 0, full).astype(dtype)


def info_bar(height: int, width: int, background: int, ink: int, seed: int, dtype=np.uint8,
             separator: int | None = None, dense: bool = False) -> np.ndarray:
    """A data bar: text lines of 6 x 10 px glyphs (random strokes, as rectangles) separated by
    blank rows, a scale bar with end ticks on the right and, if `separator` is given, a one-pixel
    line of that value as its top row (counted in `height`). `dense`: glyphs with top and bottom
    strokes across the whole width, tight lines: ~25 % of the bar's pixels ink."""
    rng = np.random.default_rng(seed)
    bar = np.full((height, width), background, dtype)
    first = 1 if separator is not None else 0
    margin, spacing, stroke = (2, 2, 1) if dense else (max(3, height // 10), 5, 1)
    text_width = width - 8 if dense else int(0.6 * width)
    y = first + margin
    while y + 10 <= height - margin:
        x = margin
        while x + 6 <= text_width:
            for _ in range(rng.integers(3, 8) if not dense else 12):  # a word of glyphs
                if x + 6 > text_width:
                    break
                glyph = np.zeros((10, 6), bool)
                if dense:  # top and bottom strokes always: rows of mostly ink
                    strokes = [2, 4, *rng.choice([0, 1, 3, 5], size=2, replace=False)]
                else:
                    strokes = rng.choice(6, size=rng.integers(2, 5), replace=False)
                for s in strokes:
                    if s == 0:
                        glyph[:, :stroke] = True  # left vertical
                    elif s == 1:
                        glyph[:, 6 - stroke:] = True  # right vertical
                    elif s == 2:
                        glyph[:stroke, :] = True  # top
                    elif s == 3:
                        glyph[4:4 + stroke, :] = True  # middle
                    elif s == 4:
                        glyph[10 - stroke:, :] = True  # bottom
                    else:
                        glyph[:, 2:2 + stroke] = True  # inner vertical
                bar[y:y + 10, x:x + 6][glyph] = ink
                x += 7 if dense else 8
            x += 4 if dense else 8  # space between words
        y += 10 + spacing
    if not dense:  # scale bar: a 3 px line with 2 x 9 px end ticks, centred in the bar's right part
        mid, x0, x1 = (first + height) // 2, int(0.75 * width), int(0.9 * width)
        bar[mid - 1:mid + 2, x0:x1] = ink
        bar[mid - 4:mid + 5, x0:x0 + 2] = ink
        bar[mid - 4:mid + 5, x1 - 2:x1] = ink
    if separator is not None:
        bar[0] = separator
    return bar


def page(sample: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """The saved image: the sample with the bar burnt into the rows below it."""
    return np.vstack([sample, bar])


def assert_found(image: np.ndarray, sample: np.ndarray, bar_rows: int) -> None:
    """Exactly `bar_rows` found, the crop is the sample itself and holds no bar any more."""
    assert detect_databar(image) == bar_rows
    cropped = image[:image.shape[0] - bar_rows]
    assert np.array_equal(cropped, sample)
    assert detect_databar(cropped) == 0


# ------------------------------------------------------------------ bars that must be found


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("shape", "bar_rows"), [((480, 640), 32), ((884, 1024), 59), ((600, 800), 100)])
def test_fei_black_bar_white_text(shape, bar_rows, dtype):
    """FEI / Thermo Fisher style: black background, white text and scale bar."""
    full = FULL[dtype]
    sample = porous_sample(shape, seed=bar_rows, dtype=dtype)
    bar = info_bar(bar_rows, shape[1], 0, full, seed=1, dtype=dtype)
    assert_found(page(sample, bar), sample, bar_rows)


@pytest.mark.parametrize(("background", "dtype"), [(255, np.uint8), (200, np.uint8), (52000, np.uint16)])
def test_zeiss_white_or_grey_bar_black_text(background, dtype):
    """Zeiss SmartSEM style: white or light-grey background, black text."""
    sample = porous_sample((700, 1024), seed=3, dtype=dtype)
    bar = info_bar(90, 1024, background, 0, seed=2, dtype=dtype)
    assert_found(page(sample, bar), sample, 90)


def test_flat_background_that_is_neither_black_nor_white():
    """A bar at grey level 40 (darker than the pores' mean, inside the sample's range): flat is what counts."""
    sample = porous_sample((512, 768), seed=4)
    bar = info_bar(48, 768, 40, 255, seed=3)
    assert_found(page(sample, bar), sample, 48)


@pytest.mark.parametrize(("background", "line"), [(0, 255), (255, 0)])
def test_separator_line_on_top_counts_with_the_bar(background, line):
    """A one-pixel line between sample and bar: flat at its own value, so it is bar, not sample.
    Whether the line belongs to the bar is a matter of taste (±1 row); fibml crops it (it is
    not sample), and since the rule is deterministic the test asserts the exact count: the
    bar's 59 rows include the line."""
    sample = porous_sample((884, 1024), seed=5)
    bar = info_bar(59, 1024, background, 255 - background, seed=4, separator=line)
    assert_found(page(sample, bar), sample, 59)


def test_dense_text_covering_a_quarter_of_the_bar():
    """Text up to ~25 % of the bar's pixels, some rows mostly ink (gaps in the band of bar rows)."""
    sample = porous_sample((512, 768), seed=6)
    bar = info_bar(40, 768, 0, 255, seed=5, dense=True)
    assert np.mean(bar != 0) >= 0.2  # the case is as dense as it claims
    assert np.mean(bar != 0, axis=1).max() > 0.7  # and rows more ink than background (gaps in the band)
    assert_found(page(sample, bar), sample, 40)


@pytest.mark.parametrize(("background", "ink"), [(0, 255), (255, 0)])
def test_antialiased_text(background, ink):
    """Anti-aliased glyphs (a Gaussian of 0.5 px cut at 1 px: the background further away stays
    exactly flat): their faint edge pixels lie near the background, but next to text."""
    sample = porous_sample((600, 1024), seed=9)
    sharp = info_bar(59, 1024, background, ink, seed=8).astype(float)
    bar = np.round(ndimage.gaussian_filter(sharp, 0.5, truncate=2.0)).astype(np.uint8)
    faint = (bar != background) & (np.abs(bar.astype(int) - background) <= 25)
    assert faint.sum() > 1000  # many pixels near the background that are not background
    assert_found(page(sample, bar), sample, 59)


def test_float_image():
    """Float pages (e.g. a uint16 page scaled to [0, 1]) are read the same way."""
    sample = porous_sample((600, 800), seed=7, dtype=np.uint16)
    image = page(sample, info_bar(64, 800, 0, 65535, seed=6, dtype=np.uint16)).astype(np.float32) / 65535
    assert detect_databar(image) == 64


@pytest.mark.parametrize("bar_rows", [30, 120])
def test_tall_page(bar_rows):
    """A 2048-row uint16 page (narrow, to keep the test fast): thin and thick bars."""
    sample = porous_sample((2048 - bar_rows, 768), seed=8, dtype=np.uint16)
    bar = info_bar(bar_rows, 768, 0, 65535, seed=7, dtype=np.uint16, separator=65535)
    assert_found(page(sample, bar), sample, bar_rows)


# ------------------------------------------------------------------ no bar


def test_sample_without_bar():
    for seed, dtype in [(10, np.uint8), (11, np.uint16)]:
        assert detect_databar(porous_sample((512, 768), seed=seed, dtype=dtype)) == 0


def test_dark_pores_at_the_bottom_are_noisy_not_flat():
    """A pore region across the bottom 100 rows, so dark that shot noise clips it at 0 for a
    fifth of its pixels (Poisson with 1.5 counts): a black but noisy band, not a bar."""
    sample = porous_sample((512, 768), seed=12)
    pores = porous_sample((100, 768), seed=13, pore=0.03, solid=0.03)
    image = page(sample, pores)
    assert np.mean(pores == 0) > 0.15
    assert detect_databar(image) == 0
    # even darker pores (0.4 counts: two pixels out of three 0) over 85 % of the area, solid grains in it
    grains = porous_sample((100, 768), seed=14, pore=0.008, solid=0.7, porosity=0.85)
    image = page(sample, grains)
    assert np.mean(grains == 0) > 0.4
    assert detect_databar(image) == 0
    # the hardest: pores so dark (0.02 counts) that 98 % of them are 0, sparse bright grains as
    # "text", rows all but blank: only the single counts scattered over the pores (values near 0
    # but far from any grain) tell it from a black bar, and must
    sparse = porous_sample((100, 768), seed=22, pore=0.0004, solid=0.7, porosity=0.93)
    assert np.mean(sparse == 0) > 0.85 and np.mean(sparse == 0, axis=1).max() > 0.97
    assert detect_databar(page(sample, sparse)) == 0


def test_uniform_noise():
    rng = np.random.default_rng(15)
    assert detect_databar(rng.integers(0, 256, size=(512, 512)).astype(np.uint8)) == 0
    assert detect_databar(rng.normal(1000, 50, size=(512, 512)).astype(np.uint16)) == 0


def test_bottom_partially_saturated():
    """A brightness ramp over the bottom rows: solid grains clip at 255, pores do not. Its last
    rows are exactly flat where clipped, with high-contrast pores: no row is (nearly) blank, as
    the margins and line spacing of a data bar are, and that refuses it."""
    sample = porous_sample((512, 768), seed=16).astype(float)
    sample[-12:] *= np.linspace(1.5, 3.0, 12)[:, None]
    image = np.clip(sample, 0, 255).astype(np.uint8)
    assert np.mean(image[-6:] == 255) > 0.4
    assert detect_databar(image) == 0


def test_bottom_fully_saturated_with_specks():
    """The bottom 20 rows saturated ten times over: flat at 255 but for isolated dark specks (the
    pixels that caught almost no electrons). Flat, with contrast, but specks are not text strokes."""
    sample = porous_sample((512, 768), seed=21).astype(float)
    sample[-20:] *= 10
    image = np.clip(sample, 0, 255).astype(np.uint8)
    assert 0.97 < np.mean(image[-20:] == 255) < 1
    assert detect_databar(image) == 0


def test_uint16_smooth_gradients():
    """Row-wise constant gradients: steep (every row its own value) and shallow (bands of ~20
    identical rows, flat but without text), and one with noise."""
    steep = np.repeat(np.linspace(0, 65535, 1024).astype(np.uint16)[:, None], 1024, axis=1)
    shallow = np.repeat(np.linspace(1000, 1050, 1024).astype(np.uint16)[:, None], 1024, axis=1)
    noisy = (shallow + np.random.default_rng(17).normal(0, 5, size=shallow.shape)).astype(np.uint16)
    across = np.ascontiguousarray(steep.T)
    for image in (steep, shallow, noisy, across):
        assert detect_databar(image) == 0


def test_thin_tall_blank_and_constant_bands_are_refused():
    sample = porous_sample((512, 768), seed=18)
    # a black band of 3 rows with a bright mark: below MIN_BAR_ROWS, more likely a sample edge
    thin = np.zeros((MIN_BAR_ROWS - 1, 768), np.uint8)
    thin[:, 100:110] = 255
    assert detect_databar(page(sample, thin)) == 0
    # the same with 4 rows is a bar
    assert detect_databar(page(sample, np.vstack([thin, thin[:1]]))) == MIN_BAR_ROWS
    # a "bar" taller than half the page is refused
    assert detect_databar(page(sample[:200], info_bar(300, 768, 0, 255, seed=8))) == 0
    # a flat band without any text (registration padding) is not a data bar
    assert detect_databar(page(sample, np.zeros((50, 768), np.uint8))) == 0
    # a flat band with text on 55 % of it (runs of ink on every row): a data bar's text is sparse
    hatched = np.zeros((40, 768), np.uint8)
    runs = np.repeat(np.random.default_rng(23).random((36, 96)) < 0.55, 8, axis=1)
    hatched[2:38][runs] = 255
    assert 0.45 < np.mean(hatched == 255) < 0.6
    assert detect_databar(page(sample, hatched)) == 0
    # a constant image, an empty one
    assert detect_databar(np.zeros((100, 100), np.uint8)) == 0
    assert detect_databar(np.zeros((0, 100), np.uint8)) == 0


def test_detect_rejects_non_images():
    with pytest.raises(ValueError, match="2D"):
        detect_databar(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        detect_databar(np.zeros((64, 64), bool))


# ------------------------------------------------------------------ databar_rows


def test_rows_from_the_vendor_metadata():
    rows, reason = databar_rows(943, 884)
    assert rows == 59
    assert reason == "the vendor metadata states 884 rows of image; the page has 943: 59 rows of data bar"
    rows, reason = databar_rows(884, 884)
    assert rows == 0
    assert "884" in reason and "no data bar" in reason
    rows, reason = databar_rows(800, 884)
    assert rows == 0
    assert "884" in reason and "800" in reason and "cropped already" in reason and "no data bar" in reason
    # numpy integers (as tifffile gives them) are fine
    assert databar_rows(np.int64(943), np.uint16(884))[0] == 59


def test_metadata_wins_over_the_image():
    """A stated height decides even where the pixels would say otherwise."""
    sample = porous_sample((512, 768), seed=19)
    image = page(sample, info_bar(40, 768, 0, 255, seed=9))
    assert databar_rows(552, 552, image)[0] == 0
    assert databar_rows(552, 500, image)[0] == 52


def test_rows_detected_without_metadata():
    sample = porous_sample((884, 1024), seed=20)
    image = page(sample, info_bar(59, 1024, 0, 255, seed=10))
    assert databar_rows(943, None, image) == (59, "detected from the image: a flat band of 59 rows with text")
    rows, reason = databar_rows(884, None, sample)
    assert rows == 0
    assert reason == "no data bar detected in the image"
    assert databar_rows(943, None) == (0, "no metadata and no image: not checked")


@pytest.mark.parametrize(("page_height", "stated"), [(-1, None), (943, -5), (0, None), (943.0, 884), (943, 884.0),
                                                     (True, None), ("943", None), (943, "884")])
def test_bad_heights(page_height, stated):
    with pytest.raises(ValueError, match="positive integer"):
        databar_rows(page_height, stated)


def test_image_must_be_the_page():
    with pytest.raises(ValueError, match="943 rows"):
        databar_rows(943, None, np.zeros((900, 64), np.uint8))
