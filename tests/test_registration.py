"""Registration of FIB-SEM stacks: known subpixel drifts and voltage offsets are recovered.

The synthetic slices are leveled-wave fields (periodic and band-limited) shifted exactly by a
Fourier shift and only then rendered as grey values and cropped, so the true shift of every
slice is known to machine precision and the crop makes the slices non-periodic like real ones.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from fibml.data import registration
from fibml.data.registration import (
    ShiftedStack,
    apply_registration,
    apply_shifts,
    read_shifts_csv,
    register_stacks,
    registration_shifts,
    slice_shifts,
    stack_shift,
    write_shifts_csv,
)
from fibml.synth.microstructure import level_cut, leveled_wave_field

Z, BIG, SIZE = 12, 128, 96  # slices; the periodic field's side and the crop's side (pixels)
MARGIN = (BIG - SIZE) // 2
TOLERANCE = 0.5  # pixels, the bound on the recovered shifts
ROI = (24, 72, 24, 72)  # (y0, y1, x0, x1) in the cropped frame, chosen inside the fiducial
FIDUCIAL = (16, 80, 16, 80)  # the region that shows the same structure in every slice and voltage


@pytest.fixture(scope="module")
def scene():
    """Two fields (the structure, a second structure for shine-through), a random-walk drift
    per slice and a constant 4 kV offset, all in pixels."""
    rng = np.random.default_rng(7)
    fields = leveled_wave_field((48, BIG, BIG), 40.0, (1.0, 2.5, 2.5), n_waves=300, rng=7)[[0, 24]]
    steps = rng.normal(0.0, 1.5, size=(Z, 2))
    steps[0] = 0.0
    return {
        "fields": fields,
        "xi": level_cut(fields[0], 0.35),
        "drift": np.cumsum(steps, axis=0),
        "offset": np.array([1.37, -2.61]),
        "rng": rng,
    }


def _shifted(image: np.ndarray, shift) -> np.ndarray:
    """Exact translation of a periodic band-limited image: content moves by +shift."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), shift)).real


def _render(field: np.ndarray, xi: float) -> np.ndarray:
    """Grey values of a BSE-like image: solid (field <= xi) bright, pores dark, smooth edges."""
    return 0.2 + 0.6 / (1.0 + np.exp((field - xi) / 0.15))


def _crop(image: np.ndarray) -> np.ndarray:
    return image[..., MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE]


def _voltage_stack(scene, offset=(0.0, 0.0), gain=1.0, blur=0.0, noise=0.05) -> np.ndarray:
    """The drifting stack of one voltage: the same structure in every slice (a columnar sample,
    so the drift is the only motion), moved by drift + offset, with its own contrast and noise."""
    rng = scene["rng"]
    slices = [_render(_shifted(scene["fields"][0], d + offset), scene["xi"]) for d in scene["drift"]]
    stack = _crop(np.stack(slices)) * gain
    if blur:
        stack = ndimage.gaussian_filter(stack, (0, blur, blur))
    return (stack + rng.normal(0.0, noise, stack.shape)).astype(np.float32)


def _fiducial_stack(scene, offset=(0.0, 0.0), noise=0.05) -> np.ndarray:
    """Inside FIDUCIAL the structure; outside it a new, unrelated structure in every slice
    (standing in for shine-through), so only the fiducial holds what the slices share."""
    rng = scene["rng"]
    mask = np.zeros((BIG, BIG))
    y0, y1, x0, x1 = (v + MARGIN for v in FIDUCIAL)
    mask[y0:y1, x0:x1] = 1.0
    mask = ndimage.gaussian_filter(mask, 3.0, mode="wrap")  # smooth, so it too shifts exactly
    slices = []
    for d in scene["drift"]:
        shift = d + offset
        other = np.roll(scene["fields"][1], tuple(rng.integers(0, BIG, 2)), axis=(0, 1))
        m = np.clip(_shifted(mask, shift), 0.0, 1.0)
        slices.append(m * _render(_shifted(scene["fields"][0], shift), scene["xi"])
                      + (1.0 - m) * _render(_shifted(other, shift), scene["xi"]))
    stack = _crop(np.stack(slices))
    return (stack + rng.normal(0.0, noise, stack.shape)).astype(np.float32)


def _max_error(found: np.ndarray, applied: np.ndarray) -> float:
    """Largest error (pixels) of found shifts, which should undo the applied ones."""
    return float(np.abs(np.asarray(found) + np.asarray(applied)).max())


def test_slice_shifts_recover_a_random_walk_drift(scene):
    stack = _voltage_stack(scene)
    found = slice_shifts(stack, progress=False)
    assert found.shape == (Z, 2) and found.dtype == np.float64
    assert np.all(found[0] == 0.0)
    assert _max_error(found, scene["drift"]) < TOLERANCE
    assert _max_error(slice_shifts(stack, reference="first", progress=False), scene["drift"]) < TOLERANCE


def test_slice_shifts_with_a_fiducial_roi_follow_the_drift(scene):
    stack = _fiducial_stack(scene)
    found = slice_shifts(stack, roi=ROI, progress=False)
    assert _max_error(found, scene["drift"]) < TOLERANCE


def test_register_stacks_recovers_drift_and_voltage_offset(scene):
    s2 = _voltage_stack(scene)
    s4 = _voltage_stack(scene, offset=scene["offset"], gain=1.4, blur=1.0, noise=0.08)  # another contrast
    aligned, table = register_stacks({"bse_2kV": s2, 4: s4}, reference=2, progress=False)
    assert set(aligned) == set(table) == {2.0, 4.0}
    assert all(a.dtype == np.float32 and a.shape == s2.shape for a in aligned.values())
    assert _max_error(table[2.0], scene["drift"]) < TOLERANCE
    assert _max_error(table[4.0], scene["drift"] + scene["offset"]) < TOLERANCE
    # every channel drifts on its own: the same answer within the tolerance
    _, each = register_stacks({2: s2, 4: s4}, intra="each", progress=False)
    assert _max_error(each[4.0], scene["drift"] + scene["offset"]) < TOLERANCE


def test_stack_shift_with_a_fiducial_roi(scene):
    s2 = _fiducial_stack(scene)
    s4 = _fiducial_stack(scene, offset=scene["offset"])
    drift = slice_shifts(s2, roi=ROI, progress=False)
    aligned2, aligned4 = apply_shifts(s2, drift, progress=False), apply_shifts(s4, drift, progress=False)
    assert _max_error(stack_shift(aligned4, aligned2, roi=ROI), scene["offset"]) < TOLERANCE
    _, table = register_stacks({2: s2, 4: s4}, roi=ROI, intra_roi=ROI, progress=False)
    assert _max_error(table[4.0], scene["drift"] + scene["offset"]) < TOLERANCE


def test_shifts_csv_round_trip_reapplies_exactly(scene, tmp_path):
    stacks = {2: _voltage_stack(scene), "se2_2kV": _voltage_stack(scene, offset=scene["offset"])}
    aligned, table = register_stacks(stacks, progress=False)
    path = write_shifts_csv(tmp_path / "shifts.csv", table)
    lines = path.read_text().splitlines()
    assert lines[0] == "channel,slice,dy,dx" and len(lines) == 1 + 2 * Z
    assert lines[1].startswith("bse_2kV,0,")
    back = read_shifts_csv(path)
    assert set(back) == {2.0, "se2_2kV"}
    assert all(np.array_equal(back[c], table[c]) for c in table)
    again = apply_registration(stacks, back, progress=False)
    assert all(np.array_equal(again[c], aligned[c]) for c in aligned)


def test_labels_stay_labels_when_shifted():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(3, 32, 32)).astype(np.uint8)
    shifted = apply_shifts(labels, [[0.0, 0.0], [2.4, -3.3], [-1.0, 1.0]], progress=False)
    assert shifted.dtype == np.uint8 and set(np.unique(shifted)) <= {0, 1, 2}
    assert np.array_equal(shifted[0], labels[0])
    assert np.array_equal(shifted[1, 3:, :-4], labels[1, 1:-2, 3:-1])  # nearest pixel: (2, -3), edges filled
    assert apply_shifts(labels.astype(bool), (0.6, 0.0), progress=False).dtype == bool
    image = apply_shifts(labels.astype(np.float64), (0.5, 0.5), progress=False)
    assert image.dtype == np.float32


def test_mismatched_stacks_and_missing_reference_are_refused():
    ok = np.zeros((12, 40, 40), np.float32)
    with pytest.raises(ValueError, match=r"4kV has 10 slices, 2kV has 12"):
        register_stacks({2: ok, 4: ok[:10]}, progress=False)
    with pytest.raises(ValueError, match=r"1kV has 30 rows, 2kV has 40"):
        register_stacks({1: ok[:, :30], 2: ok}, progress=False)
    with pytest.raises(ValueError, match=r"reference channel 2kV is not among the stacks \(present: 1kV, 4kV\)"):
        register_stacks({1: ok, 4: ok}, progress=False)
    with pytest.raises(ValueError, match=r"same channel"):
        register_stacks({2: ok, "bse_2kV": ok}, progress=False)
    with pytest.raises(ValueError, match=r"shift table has no shifts for 4kV"):
        apply_registration({2: ok, 4: ok}, {2: np.zeros((12, 2))}, progress=False)
    with pytest.raises(ValueError, match=r"2kV has 12 slices, the shift table has 5"):
        apply_registration({2: ok}, {2: np.zeros((5, 2))}, progress=False)


def test_bad_shift_tables_write_nothing_and_bad_files_name_the_row(tmp_path):
    path = tmp_path / "shifts.csv"
    with pytest.raises(ValueError, match=r"shifts of 4kV hold NaN"):
        write_shifts_csv(path, {2: np.zeros((3, 2)), 4: np.full((3, 2), np.nan)})
    assert list(tmp_path.iterdir()) == []
    path.write_text("channel,slice,dy,dx\nbse_2kV,0,0.0,0.0\nbse_2kV,1,abc,0.5\n")
    with pytest.raises(ValueError, match=r"shifts.csv, row 1 \(line 3\): dy 'abc' is not a number"):
        read_shifts_csv(path)
    path.write_text("channel,slice,dy,dx\nbse_2kV,0,0.0,0.0\nbse_2kV,2,1.0,0.5\n")
    with pytest.raises(ValueError, match=r"2kV lists slices up to 2 but not slice 1"):
        read_shifts_csv(path)
    path.write_text("channel,slice,dx\n")
    with pytest.raises(ValueError, match=r"no column dy"):
        read_shifts_csv(path)


# --- ShiftedStack: the registered stack read slice by slice (predict.py) -------------------------


class _Lazy:
    """A slice source like fibml.io.LazyStack: shape, dtype and [z], counting the slices read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, z):
        self.reads.append(int(z))
        return self.array[z]


def test_shifted_stack_reads_each_slice_shifted_as_apply_shifts_shifts_it():
    rng = np.random.default_rng(3)
    stack = ndimage.gaussian_filter(rng.random((6, 40, 36)), 2).astype(np.float32)
    shifts = rng.uniform(-3, 3, (6, 2))
    shifts[2] = 0.0  # an unshifted slice comes back as it is
    lazy = _Lazy(stack)
    shifted = ShiftedStack(lazy, shifts, cval=0.25)
    assert shifted.shape == (6, 40, 36) and len(shifted) == 6 and shifted.dtype == np.float32
    expected = apply_shifts(stack, shifts, cval=0.25, progress=False)
    for z in range(6):
        np.testing.assert_allclose(shifted[z], expected[z], rtol=0, atol=1e-6)
    assert lazy.reads == list(range(6))  # one slice read per slice asked for, nothing else
    np.testing.assert_array_equal(shifted[2], stack[2])
    # the content moves by (dy, dx): a whole-pixel shift moves a point exactly
    point = np.zeros((1, 20, 20), np.float32)
    point[0, 5, 7] = 1.0
    moved = ShiftedStack(point, [[2.0, -3.0]], cval=0.0)[0]
    assert np.unravel_index(moved.argmax(), moved.shape) == (7, 4) and moved.max() == pytest.approx(1.0)
    nearest = ShiftedStack(point, [[0.4, 0.0]], cval=0.0, order=0)[0]  # order 0: nearest pixel
    np.testing.assert_array_equal(nearest, point[0])


def test_shifted_stack_fills_with_the_median_of_sampled_slices():
    # 40 slices of constant grey z^2: the median of 16 evenly spaced slices (0, 2.6, ..., 39 rounded)
    stack = np.broadcast_to((np.arange(40, dtype=np.float32) ** 2)[:, None, None], (40, 8, 8)).copy()
    sampled = np.unique(np.linspace(0, 39, 16).round().astype(int)) ** 2
    shifted = ShiftedStack(stack, np.tile([[0.0, 5.0]], (40, 1)))
    assert shifted.cval == pytest.approx(np.median(sampled))
    assert (shifted[39][:, :5] == shifted.cval).all()  # the grey shifted in from outside
    assert shifted.cval == pytest.approx(382.5) and np.median(stack[:, 0, 0]) == 380.5  # not all 40 slices
    assert ShiftedStack(stack[:3], np.zeros((3, 2))).cval == pytest.approx(1.0)  # fewer than 16 slices: all


def test_shifted_stack_refuses_bad_shifts():
    stack = np.zeros((4, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"shifts must be \(z, 2\) = \(4, 2\), got shape \(3, 2\)"):
        ShiftedStack(stack, np.zeros((3, 2)))
    bad = np.zeros((4, 2))
    bad[1, 0], bad[2, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match="shifts hold 2 NaN or inf values"):
        ShiftedStack(stack, bad)
    with pytest.raises(ValueError, match=r"must be a \(z, y, x\) stack"):
        ShiftedStack(np.zeros((16, 16)), np.zeros((16, 2)))


def test_stack_shift_reads_only_the_roi_and_refines_to_a_twentieth_of_a_pixel(scene):
    # a stack whose corner window moved by (1.35, -0.6) while everything else moved by (-3, 4):
    # with the roi on that corner, the roi's shift, found on the 1/20-pixel grid of the upsampled
    # correlation (Fourier-exact images); without it, the rest of the slice's
    image = _render(scene["fields"][0][:BIG, :BIG], scene["xi"])
    reference = np.stack([_crop(image)] * 5).astype(np.float32)
    moving = np.stack([_crop(_shifted(image, (-3.0, 4.0)))] * 5)
    moving[:, :44, :44] = _crop(_shifted(image, (1.35, -0.6)))[:44, :44]
    roi = (4, 40, 4, 40)
    found = stack_shift(moving.astype(np.float32), reference, roi=roi)
    np.testing.assert_allclose(found, (-1.35, 0.6), atol=0.051)  # undoes the roi's motion
    np.testing.assert_allclose(found * 20, np.round(found * 20), atol=1e-9)  # on the 1/20 pixel grid
    whole = stack_shift(moving.astype(np.float32), reference)
    np.testing.assert_allclose(whole, (3.0, -4.0), atol=0.3)
    tall = np.repeat(reference, 8, axis=0)  # 40 slices of 20 rows: more slices than rows is fine too
    np.testing.assert_allclose(stack_shift(tall[:, :20], tall[:, :20]), (0.0, 0.0), atol=1e-9)


def test_stack_shift_names_the_bad_stack():
    ok = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(ValueError, match=r"^moving must be a \(z, y, x\) stack"):
        stack_shift(ok[0], ok)
    with pytest.raises(ValueError, match=r"^reference must be a \(z, y, x\) stack"):
        stack_shift(ok, ok[0])
    with pytest.raises(ValueError, match=r"moving stack has shape \(3, 32, 30\), reference stack has \(3, 32, 32\)"):
        stack_shift(ok[:, :, :30], ok)


def test_write_shifts_csv_refuses_tables_of_another_shape(tmp_path):
    path = tmp_path / "shifts.csv"
    for bad, shape in ((np.zeros(3), r"\(3,\)"), (np.zeros((3, 3)), r"\(3, 3\)"), (np.zeros((0, 2)), r"\(0, 2\)")):
        with pytest.raises(ValueError, match=rf"shifts.csv: shifts of 4kV must be \(z, 2\) \(dy, dx\), got shape {shape}"):
            write_shifts_csv(path, {2: np.zeros((3, 2)), 4: bad})
    write_shifts_csv(path, {2: [[0, 0]]})  # one slice, integer shifts: fine
    assert read_shifts_csv(path)[2.0].tolist() == [[0.0, 0.0]]
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("text, message", [
    ("", r"no column channel, slice, dy, dx \(found: an empty file\)"),
    ("a,b\n", r"no column channel, slice, dy, dx \(found: a, b\)"),
    ("channel,slice,dy,dx\n", r"lists no shifts \(a header and no rows\)"),
    ("channel,slice,dy,dx\nfoo,0,0,0\n", r"row 0 \(line 2\): channel 'foo' is not a channel name \(bse_2kV, se2_1kV\)"),
    ("channel,slice,dy,dx\nbse_2kV,x,0,0\n", r"row 0 \(line 2\): slice 'x' is not an integer"),
    ("channel,slice,dy,dx\nbse_2kV,-1,0,0\n", r"row 0 \(line 2\): slice -1 is negative"),
    ("channel,slice,dy,dx\nbse_2kV,0,inf,0\n", r"row 0 \(line 2\): dy is 'inf', expected a finite number of pixels"),
    ("channel,slice,dy,dx\nbse_2kV,0,0,0\nbse_2kV,0,1,1\n", r"row 1 \(line 3\): slice 0 of 2kV is listed twice"),
    ("channel,slice,dy,dx\nbse_2kV,0,0,0\nbse_2kV,11,0,0\n", r"2kV lists slices up to 11 but not slice 1, 2, 3, 4, 5, 6, 7, "
                                                               r"8, 9, 10$"),
    ("channel,slice,dy,dx\nbse_2kV,0,0,0\nbse_2kV,12,0,0\n", r"but not slice 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 \.\.\.$"),
])
def test_bad_shift_files_are_named_with_the_row_and_what_was_expected(tmp_path, text, message):
    path = tmp_path / "shifts.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_shifts_csv(path)


def test_a_missing_shift_file_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.csv: no such shift file \(expected a CSV with columns "
                                                r"channel, slice, dy, dx\)"):
        read_shifts_csv(tmp_path / "nowhere.csv")


def test_the_fill_grey_strides_to_a_million_sampled_pixels():
    # 16 slices of 250 x 1000 = 4.0 M pixels: a stride of exactly 2 brings them to 1 M. The pixels
    # of even row and column are 100 but where both are multiples of 4: three quarters of what the
    # stride 2 reads, 3/16 of all, none of what a stride 4 would read.
    stack = np.zeros((16, 250, 1000), np.float32)
    stack[:, ::2, ::2] = 100.0
    stack[:, ::4, ::4] = 0.0
    assert ShiftedStack(stack, np.zeros((16, 2))).cval == 100.0
    assert np.median(stack) == 0.0  # read whole, it would be 0
    assert ShiftedStack(stack.astype(np.float64), np.zeros((16, 2)))[3].dtype == np.float32  # slices as float32
    assert ShiftedStack(stack.astype(np.float64), np.ones((16, 2)))[3].dtype == np.float32


def test_the_fill_grey_comes_from_strided_pixels_of_large_slices():
    # 16 slices of 512 x 512 (4.2 M pixels > 1 M): every second row and column is read, so a
    # stack that is 100 on even rows and columns only (a quarter of it) fills with 100 ...
    large = np.zeros((16, 512, 512), np.float32)
    large[:, ::2, ::2] = 100.0
    assert ShiftedStack(large, np.zeros((16, 2))).cval == 100.0
    # ... while a small stack is read whole: three quarters are 0
    assert ShiftedStack(large[:, :64, :64], np.zeros((16, 2))).cval == 0.0


def test_stack_shift_passes_its_normalization_to_the_correlation():
    # plain cross-correlation and phase correlation (whitened spectra) weigh noise differently:
    # on the same noisy slices they land on different 1/20-pixel grid points near the truth
    rng = np.random.default_rng(0)
    reference = ndimage.gaussian_filter(rng.random((5, 96, 96)), 3)
    moving = np.stack([ndimage.shift(image, (1.3, -0.7)) for image in reference]) + rng.normal(0, 0.02, reference.shape)
    plain = stack_shift(moving.astype(np.float32), reference.astype(np.float32))
    phase = stack_shift(moving.astype(np.float32), reference.astype(np.float32), normalization="phase")
    np.testing.assert_allclose(plain, (-1.3, 0.7), atol=0.05)
    assert np.abs(phase - (-1.3, 0.7)).max() < 0.25 and not np.allclose(phase, plain)


# --- inputs, options and messages ---------------------------------------------------------


def _smooth(shape, seed):
    return ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (0, 2, 2)).astype(np.float32)


def test_apply_shifts_interpolates_images_cubically_and_labels_by_nearest_pixel():
    image = _smooth((3, 32, 32), 1)
    shifts = np.array([[0.0, 0.0], [0.3, -1.6], [2.5, 0.25]])
    out = apply_shifts(image, shifts, cval=0.5, progress=False)
    for z in (1, 2):  # scipy's cubic spline shift, constant fill
        np.testing.assert_allclose(out[z], ndimage.shift(image[z], shifts[z], order=3, mode="constant", cval=0.5),
                                   rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[0], image[0])
    grey = (image * 200).astype(np.uint8)
    linear = apply_shifts(grey, shifts, order=1, cval=0, progress=False)  # integers interpolated: float32
    assert linear.dtype == np.float32
    np.testing.assert_allclose(linear[1], ndimage.shift(grey[1].astype(np.float32), shifts[1], order=1, cval=0), atol=1e-4)
    same = apply_shifts(image, (0.3, -1.6), cval=0.5, progress=False)  # one (dy, dx) for every slice
    np.testing.assert_allclose(same[2], ndimage.shift(image[2], (0.3, -1.6), order=3, cval=0.5), atol=1e-6)


def test_what_shifts_in_is_a_neutral_value_of_the_stack():
    # floats: the median, from at most 1e6 evenly strided pixels; labels: the most frequent label
    small = np.zeros((1, 40, 50), np.float32)
    small.reshape(-1)[::2] = 100.0  # half 100, half 0: the median of all is 50
    assert apply_shifts(small, (0.0, 3.0), progress=False)[0, 0, 0] == 50.0
    large = np.zeros((1, 1000, 2000), np.float32)  # 2e6 pixels: every second one is read
    large.reshape(-1)[::2] = 100.0
    assert apply_shifts(large, (0.0, 3.0), progress=False)[0, 0, 0] == 100.0
    labels = np.full((1, 20, 20), 2, np.uint8)
    labels[0, :5] = 0
    assert (apply_shifts(labels, (0.0, 4.0), progress=False)[0, :, :4] == 2).all()
    assert (apply_shifts(_smooth((1, 20, 20), 2), (0.0, 4.0), mode="nearest", progress=False)[0, :, 0] != 0).all()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((32, 32), np.float32), r"stack must be a \(z, y, x\) stack, got an array of shape \(32, 32\)"),
    (np.zeros((0, 32, 32), np.float32), r"stack must be a \(z, y, x\) stack, got an array of shape \(0, 32, 32\)"),
    (np.full((2, 32, 32), "a"), r"stack must hold numbers, got dtype <U1"),
    (np.array([[[np.nan, np.inf, 0.0]]] * 2), r"stack holds 4 NaN or inf pixels"),
    (np.array([[[np.nan, 1.0, 0.0]]] * 2, np.float32), r"stack holds 2 NaN or inf pixels"),  # float32 too
])
def test_bad_stacks_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        apply_shifts(bad, (0.0, 0.0), progress=False)
    with pytest.raises(ValueError, match=message):
        slice_shifts(bad, progress=False)


class _LazyOnly:
    """A lazy slice source with only .shape and [z] (no dtype: read as float32)."""

    def __init__(self, array):
        self.array, self.shape = array, array.shape

    def __getitem__(self, z):
        return self.array[z]


def test_lazy_stacks_are_checked_by_shape_and_dtype_only():
    stack = _smooth((3, 32, 32), 3)
    np.testing.assert_array_equal(ShiftedStack(_LazyOnly(stack), np.zeros((3, 2)))[1], stack[1])
    assert slice_shifts(_LazyOnly(stack[:1]), progress=False).tolist() == [[0.0, 0.0]]  # one slice: no drift
    with pytest.raises(ValueError, match=r"stack must be a \(z, y, x\) stack, got shape \(32, 32\)"):
        ShiftedStack(_LazyOnly(stack[0]), np.zeros((32, 2)))
    with pytest.raises(ValueError, match=r"stack must be a \(z, y, x\) stack, got shape \(0, 32, 32\)"):
        ShiftedStack(_LazyOnly(stack[:0]), np.zeros((0, 2)))
    text = _Lazy(np.full((2, 32, 32), "a"))
    with pytest.raises(ValueError, match="stack must hold numbers, got dtype <U1"):
        ShiftedStack(text, np.zeros((2, 2)))
    flags = _Lazy(np.zeros((2, 32, 32), bool))  # bool slices are numbers enough
    assert ShiftedStack(flags, np.zeros((2, 2)), cval=0.0).shape == (2, 32, 32)


def test_shift_inputs_are_checked():
    stack = _smooth((3, 32, 32), 4)
    with pytest.raises(ValueError, match=r"shifts must be \(z, 2\) = \(3, 2\) or \(2,\) \(dy, dx\), got shape \(2, 2\)"):
        apply_shifts(stack, np.zeros((2, 2)), progress=False)
    with pytest.raises(ValueError, match="shifts hold 2 NaN or inf values"):
        apply_shifts(stack, [[0, 0], [np.nan, 0], [0, np.inf]], progress=False)
    with pytest.raises(ValueError, match="reference must be 'previous' or 'first', got 'last'"):
        slice_shifts(stack, reference="last", progress=False)


@pytest.mark.parametrize("roi, message", [
    ((0, 40, 0, 16), r"roi \(y0, y1, x0, x1\) = \(0, 40, 0, 16\) does not lie inside the 32 x 48 slices"),
    ((0, 16, 0, 49), r"= \(0, 16, 0, 49\) does not lie inside the 32 x 48 slices"),
    ((-1, 16, 0, 16), r"= \(-1, 16, 0, 16\) does not lie inside"),
    ((0, 16, -1, 16), r"= \(0, 16, -1, 16\) does not lie inside"),
    ((16, 16, 0, 16), r"= \(16, 16, 0, 16\) does not lie inside"),
    ((0, 16, 20, 20), r"= \(0, 16, 20, 20\) does not lie inside"),
    ((0, 15, 0, 16), r"roi \(0, 15, 0, 16\) is 15 x 16 pixels: give at least 16 x 16"),
    ((10, 26, 30, 45), r"roi \(10, 26, 30, 45\) is 16 x 15 pixels: give at least 16 x 16"),
    ((17, 32, 0, 16), r"roi \(17, 32, 0, 16\) is 15 x 16 pixels: give at least 16 x 16"),  # the height, not y1
    ((0, 16, 0), r"roi must be \(y0, y1, x0, x1\) pixels, got \(0, 16, 0\)"),
])
def test_rois_must_lie_inside_and_be_large_enough(roi, message):
    with pytest.raises(ValueError, match=message):
        slice_shifts(np.zeros((2, 32, 48), np.float32), roi=roi, progress=False)


@pytest.mark.parametrize("reference", ["previous", "first"])
def test_slice_shifts_read_each_slice_once(reference):
    lazy = _Lazy(_drifting(background_static=False, n=5))
    slice_shifts(lazy, reference=reference, progress=False)
    assert lazy.reads == list(range(5))


@pytest.mark.parametrize("normalization", [None, "phase"])
def test_every_correlation_uses_the_normalization_asked_for(monkeypatch, normalization):
    # both passes of every slice (the estimate and the refinement on the recentred window)
    calls = []
    real = registration.phase_cross_correlation

    def spy(*args, **kwargs):
        calls.append(kwargs.get("normalization", "skimage's default"))
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "phase_cross_correlation", spy)
    slice_shifts(_drifting(background_static=False, n=4, step=2.5), normalization=normalization, progress=False)
    assert len(calls) > 3 and set(calls) == {normalization}  # 3 slices, and some refined on a second pass


def test_rois_at_the_edges_and_of_the_smallest_size_are_accepted():
    stack = _smooth((2, 32, 48), 5)
    for roi in ((0, 32, 0, 48), (16, 32, 32, 48), (0, 16, 0, 16)):
        assert slice_shifts(stack, roi=roi, progress=False).shape == (2, 2)


def _drifting(background_static: bool, n=6, seed=6, step=1.5):
    """Slices of a structure drifting by `step` px in y per slice: everywhere, or only inside a
    32 x 32 window that moves with it (to the pixel) over a static background."""
    big = _smooth((1, 112, 112), seed)[0]
    static = _smooth((1, 80, 80), seed + 1)[0] * 3
    slices = []
    for z in range(n):
        moved = _shifted(big, (step * z, 0.0))[16:96, 16:96].astype(np.float32)
        if background_static:
            frame, d = static.copy(), int(round(step * z))
            frame[24 + d : 56 + d, 24:56] = moved[24 + d : 56 + d, 24:56]
            moved = frame
        slices.append(moved)
    return np.stack(slices)


def test_slice_shifts_follow_the_roi_and_not_a_static_background():
    stack = _drifting(background_static=True)
    expected = -1.5 * np.arange(6)
    found = slice_shifts(stack, roi=(28, 52, 28, 52), progress=False)
    np.testing.assert_allclose(np.diff(found[:, 0]), -1.5, atol=0.2)  # each step (measured 1.4 px)
    np.testing.assert_allclose(found[:, 1], 0.0, atol=0.2)
    np.testing.assert_allclose(found * 20, np.round(found * 20), atol=1e-9)  # the 1/20-pixel grid
    whole = slice_shifts(stack, progress=False)  # the static background and the window's edges mislead it
    assert np.abs(np.diff(whole[:, 0]) + 1.5).max() > 0.4
    first = slice_shifts(stack, roi=(28, 52, 28, 52), reference="first", progress=False)
    np.testing.assert_allclose(first[:, 0], expected, atol=0.6)


def test_previous_follows_a_changing_structure_where_first_cannot():
    # consecutive slices of a 3D field (1.5 nm apart, wavelength 30 nm), drifting 0.8 px per slice:
    # each resembles the one before it, the far ones not slice 0. "previous" accumulates small
    # errors (oblique ligaments look like drift); "first" loses the structure
    field = leveled_wave_field((30, 96, 96), 30.0, (1.5, 2.5, 2.5), n_waves=200, rng=8)
    drift = np.cumsum(np.r_[0.0, np.full(29, 0.8)])
    stack = np.stack([_shifted(field[z], (d, -d))[8:88, 8:88] for z, d in enumerate(drift)]).astype(np.float32)
    error_previous = np.abs(slice_shifts(stack, progress=False) + np.c_[drift, -drift]).max()
    error_first = np.abs(slice_shifts(stack, reference="first", progress=False) + np.c_[drift, -drift]).max()
    assert error_previous < 3.0 and error_first > 6.0  # measured 2.35 and 12.05 px over 23 px of drift


def test_uniform_slices_warn_naming_them_and_keep_the_drift(recwarn):
    stack = _smooth((4, 32, 32), 9)
    stack[2] = 0.5  # a uniform slice: nothing to correlate
    shifts = slice_shifts(stack, progress=False)
    messages = [str(w.message) for w in recwarn]
    assert "slice 2 or 1 is uniform inside the window: slice 2 is not moved" in messages
    assert "slice 3 or 2 is uniform inside the window: slice 3 is not moved" in messages
    np.testing.assert_array_equal(shifts[2], shifts[1])
    recwarn.clear()
    first = slice_shifts(stack, reference="first", progress=False)
    assert [str(w.message) for w in recwarn] == ["slice 2 or 0 is uniform inside the window: slice 2 keeps the drift of 1"]
    np.testing.assert_array_equal(first[2], first[1])


def test_progress_bars_show_by_default_and_leave_no_trace(capsys):
    stack = _smooth((3, 32, 32), 10)
    bar = r"(^|\r){}: .*(?<![A-Za-z])(slice/s|s/slice)(?![A-Za-z])"  # tqdm's "desc: ... 12.3slice/s]"
    slice_shifts(stack)
    err = capsys.readouterr().err
    assert re.search(bar.format("intra-stack"), err) and not err.endswith("\n")  # cleared when done (leave=False)
    apply_shifts(stack, (0.5, 0.5))
    err = capsys.readouterr().err
    assert re.search(bar.format("shift"), err) and not err.endswith("\n")
    apply_registration({2: stack}, {2: np.zeros((3, 2))})
    assert re.search(bar.format("shift"), capsys.readouterr().err)
    slice_shifts(stack, progress=False)
    apply_shifts(stack, (0.5, 0.5), progress=False)
    apply_registration({2: stack}, {2: np.zeros((3, 2))}, progress=False)
    assert capsys.readouterr().err == ""


def test_registration_options_select_the_steps(scene):
    s2 = _voltage_stack(scene)
    s4 = _voltage_stack(scene, offset=scene["offset"])
    none = registration_shifts({2: s2, 4: s4}, intra=False, inter=False, progress=False)
    assert all(not t.any() for t in none.values())
    inter_only = registration_shifts({2: s2, 4: s4}, intra=False, progress=False)
    assert not inter_only[2.0].any()  # the reference stays where it is
    assert (inter_only[4.0] == inter_only[4.0][0]).all() and _max_error(inter_only[4.0], scene["offset"]) < TOLERANCE
    drift_only = registration_shifts({2: s2, 4: s4}, inter=False, progress=False)
    np.testing.assert_array_equal(drift_only[2.0], drift_only[4.0])  # voltages drift together
    with pytest.raises(ValueError, match="intra must be True, False or 'each', got 'both'"):
        registration_shifts({2: s2}, intra="both", progress=False)
    with pytest.raises(ValueError, match="^no stacks to register$"):
        registration_shifts({}, progress=False)
    with pytest.raises(ValueError, match=r"cannot register stacks of different shapes \(z, y, x\): 4kV has 90 columns, "
                                         r"2kV has 96"):
        registration_shifts({2: s2, 4: s2[:, :, :90]}, progress=False)
    with pytest.raises(ValueError, match=r"^4kV must be a \(z, y, x\) stack"):
        registration_shifts({2: s2, 4: s2[0]}, progress=False)
    uniform = np.full_like(s2, 0.3)
    with pytest.raises(ValueError, match="^every slice is uniform inside the window: nothing to correlate between the stacks$"):
        registration_shifts({2: s2, 4: uniform}, intra=False, progress=False)


def test_inter_stack_offsets_use_the_roi_and_every_slice_when_asked(scene):
    s2 = _fiducial_stack(scene)
    s4 = _fiducial_stack(scene, offset=scene["offset"])
    sampled = registration_shifts({2: s2, 4: s4}, roi=ROI, intra_roi=ROI, max_slices=3, progress=False)
    every = registration_shifts({2: s2, 4: s4}, roi=ROI, intra_roi=ROI, max_slices=None, progress=False)
    for table in (sampled, every):
        assert _max_error(table[4.0], scene["drift"] + scene["offset"]) < TOLERANCE



@pytest.mark.parametrize("max_slices, expected", [(3, [0, 30, 59]), (None, list(range(60))), ("default", 50)])
def test_the_inter_stack_offset_reads_max_slices_evenly_spaced_slices(max_slices, expected):
    # a 60-slice stack: the inter step reads max_slices slices of the moving stack, evenly spaced
    # (the default 50), or every one with max_slices=None
    rng = np.random.default_rng(5)
    plane = ndimage.gaussian_filter(rng.random((24, 24)), 2).astype(np.float32)
    reference = np.repeat(plane[None], 60, axis=0)
    moving = _Lazy(np.roll(reference, 2, axis=2))
    options = {} if max_slices == "default" else {"max_slices": max_slices}
    table = registration_shifts({2: reference, 4: moving}, intra=False, progress=False, **options)
    np.testing.assert_allclose(table[4.0], -np.array([[0.0, 2.0]] * 60), atol=0.05)
    if max_slices == "default":
        assert len(moving.reads) == expected and moving.reads[:2] == [0, 1] and moving.reads[-1] == 59
    else:
        assert moving.reads == expected


def test_a_roi_that_drifts_out_of_the_slice_is_refused():
    stack = _drifting(background_static=False, n=6, step=-3.0)  # the content moves up 3 px per slice
    with pytest.raises(ValueError, match=r"slice \d: the roi \(2, 18, 20, 36\) has drifted out of the image \(drift "
                                         r"of about \(\d+, 0\) pixels\): choose a roi further from the edges"):
        slice_shifts(stack, roi=(2, 18, 20, 36), progress=False)


def test_a_table_without_the_channel_says_what_it_has():
    stack = _smooth((2, 32, 32), 11)
    with pytest.raises(ValueError, match=r"the shift table has no shifts for 2kV, 4kV \(it has: none\)"):
        apply_registration({2: stack, 4: stack}, {}, progress=False)
    with pytest.raises(ValueError, match=r"has no shifts for 4kV \(it has: 1kV, 2kV\)"):
        apply_registration({4: stack}, {1: np.zeros((2, 2)), 2: np.zeros((2, 2))}, progress=False)


def test_non_square_slices_are_registered_along_each_axis():
    big = _smooth((1, 96, 128), 12)[0]
    stack = np.stack([_shifted(big, (0.5 * z, -1.0 * z))[8:72, 8:104] for z in range(5)]).astype(np.float32)  # 64 x 96
    found = slice_shifts(stack, progress=False)
    np.testing.assert_allclose(found, -np.c_[0.5 * np.arange(5), -1.0 * np.arange(5)], atol=0.15)
    np.testing.assert_allclose(stack_shift(stack[:, :, ::-1].copy(), stack[:, :, ::-1].copy()), (0.0, 0.0), atol=1e-9)


def test_the_inter_stack_roi_and_normalization_are_used():
    # 2 kV and 4 kV slices agree outside a window; inside it 4 kV is offset by (2.35, -1.4)
    big = _smooth((1, 112, 112), 13)[0]
    s2 = np.stack([big[16:96, 16:96]] * 3).astype(np.float32)
    s4 = s2.copy()
    s4[:, 8:48, 8:48] = _shifted(big, (2.35, -1.4))[24:64, 24:64]
    roi = (12, 44, 12, 44)
    table = registration_shifts({2: s2, 4: s4}, roi=roi, intra=False, progress=False)
    np.testing.assert_allclose(table[4.0], np.tile((-2.35, 1.4), (3, 1)), atol=0.1)
    whole = registration_shifts({2: s2, 4: s4}, intra=False, progress=False)
    assert np.abs(whole[4.0] - table[4.0]).max() > 1.0  # without the roi the agreeing part wins
    noisy = s4 + np.random.default_rng(14).normal(0, 0.02, s4.shape).astype(np.float32)
    plain = registration_shifts({2: s2, 4: noisy}, roi=roi, intra=False, progress=False)[4.0]
    phase = registration_shifts({2: s2, 4: noisy}, roi=roi, intra=False, normalization="phase", progress=False)[4.0]
    assert not np.allclose(plain, phase)  # phase correlation weighs the noise otherwise
    drifting = _drifting(background_static=False, n=6, step=-3.0)
    steps = slice_shifts(drifting, progress=False)
    assert not np.allclose(steps, slice_shifts(drifting, normalization="phase", progress=False))


def test_an_inter_stack_roi_that_drifts_out_names_the_slice():
    stack = _drifting(background_static=False, n=6, step=-3.0)
    with pytest.raises(ValueError, match=r"^slice \d: the roi \(2, 18, 20, 36\) has drifted out of the image"):
        registration_shifts({2: stack, 4: stack.copy()}, roi=(2, 18, 20, 36), progress=False)


def test_a_bad_stack_to_shift_is_named_by_its_channel():
    with pytest.raises(ValueError, match=r"^4kV must be a \(z, y, x\) stack"):
        apply_registration({4: np.zeros((32, 32), np.float32)}, {4: np.zeros((32, 2))}, progress=False)


def test_register_stacks_is_the_table_of_registration_shifts_applied(scene, capsys):
    s2 = _fiducial_stack(scene)
    s4 = _fiducial_stack(scene, offset=scene["offset"])
    options = dict(roi=ROI, intra_roi=(20, 76, 20, 76), max_slices=5, normalization="phase", progress=False)
    aligned, table = register_stacks({2: s2, 4: s4}, **options)
    expected = registration_shifts({2: s2, 4: s4}, **options)
    assert all(np.array_equal(table[c], expected[c]) for c in (2.0, 4.0))
    again = apply_registration({2: s2, 4: s4}, expected, progress=False)
    assert all(np.array_equal(aligned[c], again[c]) for c in (2.0, 4.0))
    assert not np.array_equal(table[4.0], registration_shifts({2: s2, 4: s4}, progress=False)[4.0])
    assert capsys.readouterr().err == ""  # progress=False reaches both steps: no bar at all
    _, default = register_stacks({2: s2, 4: s4})  # defaults: 1/20 pixel, progress shown
    np.testing.assert_allclose(default[2.0] * 20, np.round(default[2.0] * 20), atol=1e-9)
    err = capsys.readouterr().err
    assert "intra-stack" in err and re.search(r"(^|\r)shift: ", err)


def test_an_empty_shift_table_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"shifts.csv: the shift table is empty$"):
        write_shifts_csv(tmp_path / "shifts.csv", {})


def test_registration_shifts_pass_the_intra_options_to_slice_shifts():
    # the intra step is slice_shifts with the roi, precision and normalization asked for
    stack = _drifting(background_static=True, n=5, step=1.5)
    other = _drifting(background_static=True, n=5, seed=16, step=-1.0)
    roi = (28, 52, 28, 52)
    options = dict(intra_roi=roi, upsample_factor=4, normalization="phase", inter=False, progress=False)
    table = registration_shifts({2: stack, 4: other}, **options)
    expected = slice_shifts(stack, roi, 4, normalization="phase", progress=False)
    assert all(np.array_equal(table[c], expected) for c in (2.0, 4.0))  # 4 kV drifts with 2 kV
    np.testing.assert_allclose(table[2.0] * 4, np.round(table[2.0] * 4), atol=1e-9)  # the 1/4-pixel grid
    each = registration_shifts({2: stack, 4: other}, intra="each", **options)
    assert np.array_equal(each[2.0], expected)
    assert np.array_equal(each[4.0], slice_shifts(other, roi, 4, normalization="phase", progress=False))
    assert np.abs(each[4.0] - each[2.0]).max() > 1.0  # the two drifts really differ (+1.5 and -1.0 px per slice)
    assert not np.array_equal(expected, slice_shifts(stack, roi, 4, progress=False))  # "phase" changes the result
    default = registration_shifts({2: stack}, inter=False, progress=False)  # whole slices, 1/20 px, cross-correlation
    assert np.array_equal(default[2.0], slice_shifts(stack, progress=False))


def test_registration_shifts_show_progress_by_default(capsys):
    stack = _smooth((3, 32, 32), 17)
    registration_shifts({2: stack})
    assert re.search(r"(^|\r)intra-stack: ", capsys.readouterr().err)


@pytest.mark.parametrize("reference", ["previous", "first"])
def test_the_roi_is_looked_for_where_the_drift_so_far_puts_it(reference):
    # 4 px per slice inside a moving window over a static background: the roi must follow the
    # drift found up to the slice before (a window one slice behind sees the static background)
    stack = _drifting(background_static=True, n=6, step=4.0)
    found = slice_shifts(stack, roi=(28, 52, 28, 52), reference=reference, progress=False)
    np.testing.assert_allclose(np.diff(found[:, 0]), -4.0, atol=0.3)  # measured -3.75 and -4.0 per step
    np.testing.assert_allclose(found[:, 1], 0.0, atol=0.3)


def test_first_reference_uses_the_roi_and_the_normalization():
    stack = _drifting(background_static=True)
    roi = (28, 52, 28, 52)
    first = slice_shifts(stack, roi=roi, reference="first", progress=False)
    # with the roi every slice lands within 0.1 px of the truth (measured); without it the static
    # background pulls it up to 0.5 px away
    np.testing.assert_allclose(first[:, 0], -1.5 * np.arange(6), atol=0.25)
    whole = slice_shifts(stack, reference="first", progress=False)
    assert np.abs(whole[:, 0] + 1.5 * np.arange(6)).max() > 0.4
    phase = slice_shifts(stack, roi=roi, reference="first", normalization="phase", progress=False)
    assert not np.array_equal(phase, first)
    drifting = _drifting(background_static=False, n=6, step=-3.0)
    with pytest.raises(ValueError, match=r"^slice 5: the roi \(2, 26, 20, 44\) has drifted out of the image \(drift "
                                         r"of about \(11, 0\) pixels\)"):
        slice_shifts(drifting, roi=(2, 26, 20, 44), reference="first", progress=False)


def test_other_fill_modes_shift_in_their_own_values():
    stack = _smooth((2, 32, 32), 18) + 5.0  # median about 5: "constant" fills with it
    zero = apply_shifts(stack, (3.0, 0.0), mode="grid-constant", progress=False)
    np.testing.assert_allclose(zero[:, :2], 0.0, atol=1e-6)  # cval defaults to 0 for other modes
    grey = apply_shifts(stack, (3.0, 0.0), progress=False)
    np.testing.assert_allclose(grey[:, :2], np.median(stack), rtol=1e-6)
    nearest = apply_shifts(stack, (3.0, 0.0), mode="nearest", progress=False)
    np.testing.assert_allclose(nearest[:, 0], stack[:, 0], rtol=1e-6)  # the edge row repeated


def test_a_label_stack_is_filled_with_its_most_frequent_label_not_its_median():
    labels = np.zeros((2, 20, 20), np.uint8)  # 40 % label 0, 35 % label 1, 25 % label 2: the median is 1
    labels[:, 8:15] = 1
    labels[:, 15:] = 2
    shifted = apply_shifts(labels, (0.0, 4.0), progress=False)
    assert shifted.dtype == np.uint8
    assert (shifted[:, :, :4] == 0).all() and (shifted[:, 15:, 4:] == 2).all()


def test_every_channel_of_another_shape_is_named():
    stack = _smooth((3, 32, 32), 19)
    with pytest.raises(ValueError, match=r"stacks of different shapes \(z, y, x\): 1kV has 2 slices, 2kV has 3; "
                                         r"4kV has 30 rows, 2kV has 32$"):
        registration_shifts({1: stack[:2], 2: stack, 4: stack[:, :30]}, progress=False)
