"""Chunked, resumable prediction to disk and lazy TIFF stacks (issue 9, part 2).

Tiny stacks and toy predictors: the point is that chunking (slices, 3D blocks with a halo),
resuming and splitting over processes give exactly what one whole-volume run gives.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval  # MONAI exposes its stride nowhere public: the reference fibml matches

from fibml.data.transforms import normalize_stack, percentile_range, percentile_step, stack_percentiles
from fibml.inference import (
    FINGERPRINT,
    SEGMENTATION,
    WORK_DIR,
    NormalizedStack,
    PredictorFactory,
    axis_blocks,
    finished_chunks,
    plan_chunks,
    predict_to_disk,
    predict_volume,
    probability_name,
)
from fibml.io import (
    StackFile,
    create_stack_file,
    open_dataset_stacks,
    open_stack,
    open_stack_file,
    read_stack,
    write_json,
    write_stack,
)
from fibml.sliding_window import scan_interval

SHAPE = (2, 20, 48, 40)  # channel, z, y, x
PATCH = {"2d": 16, "2.5d": 16, "3d": [8, 16, 16]}


def _images(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


class RandomConv(torch.nn.Module):
    """A fixed random 3x3(x3) convolution + softmax. Zero padding at the window borders makes
    its output depend on where the windows lie, so a shifted or missing window shows."""

    def __init__(self, in_channels: int, n_classes: int = 3, dims: str = "2d", seed: int = 0, sleep: float = 0.0):
        super().__init__()
        conv = torch.nn.Conv3d if dims == "3d" else torch.nn.Conv2d
        self.conv = conv(in_channels, n_classes, 3, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.conv.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.sleep = sleep

    def forward(self, x):
        if self.sleep:
            time.sleep(self.sleep)
        return self.conv(x).softmax(1)


class ConvFactory(PredictorFactory):
    """Builds RandomConv in a worker process (module level: the workers import it)."""

    def __init__(self, in_channels: int, n_classes: int = 3, dims: str = "2d"):
        self.args = (in_channels, n_classes, dims)

    def __call__(self, device):
        return RandomConv(*self.args).to(device).eval()


def identity(x):
    return x.clone()  # MONAI scales the output in place: never hand back its input tensor


def window_mean(x):
    """Two classes, constant over each window: the window's mean. Every voxel's blend then
    depends on exactly which windows cover it."""
    m = torch.sigmoid(8 * (x.mean(dim=tuple(range(1, x.ndim)), keepdim=True) - 0.5)).expand(-1, 1, *x.shape[2:])
    return torch.cat([m, 1 - m], 1)


def _predict(out_dir, predictor, images, dims, n_classes, **kwargs):
    kwargs = {"patch_size": PATCH[dims], "fingerprint": {"test": "chunked"}, "progress": False, **kwargs}
    return predict_to_disk(predictor, list(images), out_dir, dims=dims, n_classes=n_classes, **kwargs)


def _probabilities(out_dir: Path, n_classes: int) -> np.ndarray:
    return np.stack([read_stack(out_dir / probability_name(c))[0] for c in range(n_classes)])


def _files(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.tif"))}


# --- blending and chunking ---------------------------------------------------------------


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_identity_passes_through_the_gaussian_blending_without_seams(tmp_path, dims):
    images = _images()
    chunking = {"block": [8, 16, 16]} if dims == "3d" else {"chunk_slices": 7}
    _predict(tmp_path, identity, images, dims, n_classes=2, save_probabilities=True, **chunking)
    probs = _probabilities(tmp_path, 2)
    assert np.abs(probs - images).max() < 1e-5


CASES = [
    ("2d", {"chunk_slices": 1}),
    ("2d", {"chunk_slices": 7}),  # 20 slices: chunks of 7, 7, 6
    ("2d", {"chunk_slices": 9, "slices_per_batch": 4}),  # batches of 4, 4, 1 slices in a chunk
    ("2.5d", {"chunk_slices": 3, "n_adjacent": 5}),  # neighbours cross every chunk border
    ("2.5d", {"chunk_slices": 8, "n_adjacent": 3}),
    ("3d", {"block": [4, 16, 8]}),  # many blocks: every core needs halos on every side
    ("3d", {"block": [12, 24, 16]}),  # cores that do not divide the volume
    ("3d", {"block": 1}),  # rounded up to one stride
    ("3d", {"block": [8, 16, 16], "patch_size": [6, 12, 10], "overlap": 0.3}),  # strides 4, 8, 7
]


@pytest.mark.parametrize(("dims", "settings"), CASES, ids=[f"{d}-{s}" for d, s in CASES])
@pytest.mark.parametrize("net", ["conv", "window_mean"])
def test_chunked_prediction_equals_one_whole_volume_run(tmp_path, dims, settings, net):
    images = _images()
    settings = dict(settings)
    k = settings.get("n_adjacent", 1) if dims == "2.5d" else 1
    predictor = RandomConv(SHAPE[0] * k, 3, dims) if net == "conv" else window_mean
    n_classes = 3 if net == "conv" else 2
    patch = settings.pop("patch_size", PATCH[dims])
    overlap = settings.get("overlap", 0.5)
    whole = predict_volume(predictor, images, dims, patch, n_adjacent=settings.get("n_adjacent", 7),
                           overlap=overlap, progress=False)
    summary = _predict(tmp_path, predictor, images, dims, n_classes, save_probabilities=True, patch_size=patch,
                       **settings)
    assert summary["n_chunks"] > 1
    np.testing.assert_allclose(_probabilities(tmp_path, n_classes), whole, atol=1e-5)
    segmentation, _ = read_stack(tmp_path / SEGMENTATION)
    np.testing.assert_array_equal(segmentation, whole.argmax(0))
    counts = np.bincount(whole.argmax(0).ravel(), minlength=n_classes)
    np.testing.assert_allclose(summary["class_fractions"], counts / counts.sum())


def test_3d_blocks_see_exactly_monais_whole_volume_windows():
    # along every axis, the windows MONAI places on a block's [A, B) that reach its core must
    # be the whole axis's windows that reach it: checked here with MONAI's own functions
    for size, patch, overlap, core in itertools.product(
        range(1, 31), [1, 2, 3, 4, 5, 7, 8, 12], [0.0, 0.3, 0.5, 0.9], [1, 6, 8]
    ):
        stride = _get_scan_interval((max(size, patch),), (patch,), 1, (overlap,))[0]
        assert scan_interval(size, patch, overlap) == stride
        whole = [s[0].start for s in dense_patch_slices((max(size, patch),), (patch,), (stride,))]
        blocks = axis_blocks(size, patch, overlap, core)
        assert [(a, b) for a, b, _, _ in blocks] == sorted((a, b) for a, b, _, _ in blocks)
        assert blocks[0][0] == 0 and blocks[-1][1] == size
        for (a, b, lo, hi), following in zip(blocks, blocks[1:] + [(size, size, 0, 0)]):
            assert b == following[0] and 0 <= lo <= a < b <= hi <= size
            local_stride = _get_scan_interval((max(hi - lo, patch),), (patch,), 1, (overlap,))[0]
            local = [lo + s[0].start for s in dense_patch_slices((max(hi - lo, patch),), (patch,), (local_stride,))]
            assert hi - lo >= min(size, patch)  # MONAI pads a block only when the whole axis is padded too
            for x in range(a, b):
                assert {w for w in whole if w <= x < w + patch} == {w for w in local if w <= x < w + patch}, (
                    size, patch, overlap, core, (a, b, lo, hi), x
                )



def test_3d_block_halos_by_hand():
    # the module docstring's halos, worked by hand. 31 voxels, patch 8, overlap 0.25: stride 6,
    # cores of 6; a core [a, b) is read from a - 6 (the first grid window reaching it starts
    # 6 * floor(7 / 6) before it), but not past the last grid start 18 that holds a patch, to
    # b - 6 + 8 (the last grid window starting in the core), or to the end when b + 8 > 31
    assert axis_blocks(31, 8, 0.25, 6) == [(0, 6, 0, 8), (6, 12, 0, 14), (12, 18, 6, 20), (18, 24, 12, 31),
                                           (24, 30, 18, 31), (30, 31, 18, 31)]
    # 20 voxels, patch 8, overlap 0.5: stride 4, halos of 4 before (4 * floor(7 / 4)) and 4 after;
    # [8, 12) ends exactly a patch before the end, so it still stops at 12 - 4 + 8 = 16
    assert axis_blocks(20, 8, 0.5, 4) == [(0, 4, 0, 8), (4, 8, 0, 12), (8, 12, 4, 16), (12, 16, 8, 20),
                                          (16, 20, 12, 20)]
    # an axis no longer than a patch is one block, read whole
    assert axis_blocks(6, 8, 0.25, 1) == [(0, 6, 0, 6)] and axis_blocks(8, 8, 0.25, 1) == [(0, 8, 0, 8)]


def test_slice_chunks_are_runs_of_whole_slices():
    chunks, chunking = plan_chunks((10, 32, 48), "2.5d", (16, 16), 0.25, 4, None)
    assert chunking == [4] and [c.index for c in chunks] == [0, 1, 2]
    assert [c.core for c in chunks] == [((0, 4), (0, 32), (0, 48)), ((4, 8), (0, 32), (0, 48)), ((8, 10), (0, 32), (0, 48))]
    assert all(c.region == c.core for c in chunks)  # the reader adds the neighbouring slices
    assert [c.n_voxels for c in chunks] == [4 * 32 * 48, 4 * 32 * 48, 2 * 32 * 48]
    assert [c.slices(32 * 48) for c in chunks] == [4, 4, 2] and isinstance(chunks[0].slices(32 * 48), int)


def test_3d_chunks_tile_the_volume_once_and_read_their_halo():
    shape, roi = (20, 40, 50), (8, 16, 16)
    chunks, chunking = plan_chunks(shape, "3d", roi, 0.25, 99, (8, 12, 16))
    axes = [axis_blocks(n, p, 0.25, b) for n, p, b in zip(shape, roi, (8, 12, 16))]
    assert len(chunks) == np.prod([len(a) for a in axes]) > 8 and [c.index for c in chunks] == list(range(len(chunks)))
    assert chunking == [a[0][1] - a[0][0] for a in axes] == [12, 12, 24]  # cores rounded up to whole strides (6, 12, 12)
    covered = np.zeros(shape, int)
    for c in chunks:
        (z0, z1), (y0, y1), (x0, x1) = c.core
        covered[z0:z1, y0:y1, x0:x1] += 1
        for (a, b), (lo, hi), n in zip(c.core, c.region, shape):
            assert 0 <= lo <= a < b <= hi <= n  # the region holds the core
        assert c.n_voxels == (z1 - z0) * (y1 - y0) * (x1 - x0)
    assert (covered == 1).all()
    # chunks run with x fastest: the first two differ in x only
    assert chunks[0].core[:2] == chunks[1].core[:2] and chunks[0].core[2] != chunks[1].core[2]
    assert chunks[0].slices(40 * 50) == pytest.approx(12 * 12 * 24 / 2000) and isinstance(chunks[0].slices(2000), float)
    # one size for all axes, and the default block (64, 512, 512): here one chunk holds it all
    assert plan_chunks(shape, "3d", roi, 0.25, 99, 8)[1] == [12, 12, 12]
    whole, chunking = plan_chunks(shape, "3d", roi, 0.25, 99, None)
    assert len(whole) == 1 and whole[0].core == whole[0].region == ((0, 20), (0, 40), (0, 50))


@pytest.mark.parametrize("block", [(8, 8), (8, 0, 8), 0])
def test_3d_blocks_must_be_one_or_three_positive_sizes(block):
    shown = str((block,) * 3 if isinstance(block, int) else tuple(block))
    with pytest.raises(ValueError, match=rf"block must be one size or three \(z, y, x\) sizes >= 1, got {re.escape(shown)}"):
        plan_chunks((20, 40, 50), "3d", (8, 16, 16), 0.25, 1, block)


# --- resume --------------------------------------------------------------------------------


class Stop(Exception):
    pass


def _stop_after(n):
    calls = []

    def on_chunk(index, n_chunks):
        calls.append(index)
        if len(calls) == n:
            raise Stop

    return on_chunk


@pytest.mark.parametrize(("dims", "settings"), [("2.5d", {"chunk_slices": 3, "n_adjacent": 3}), ("3d", {"block": [8, 16, 16]})])
def test_killed_run_resumes_with_the_remaining_chunks_and_identical_files(tmp_path, dims, settings):
    images = _images()
    k = settings.get("n_adjacent", 1) if dims == "2.5d" else 1
    predictor = RandomConv(SHAPE[0] * k, 3, dims)
    reference = _predict(tmp_path / "whole", predictor, images, dims, 3, save_probabilities=True, **settings)

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        _predict(out, predictor, images, dims, 3, save_probabilities=True, on_chunk=_stop_after(2), **settings)
    assert finished_chunks(out) == [0, 1]
    assert not (out / SEGMENTATION).exists() and not (out / probability_name(0)).exists()
    assert not (out / FINGERPRINT).exists()

    calls = []
    summary = _predict(out, predictor, images, dims, 3, save_probabilities=True,
                       on_chunk=lambda i, n: calls.append(i), **settings)
    n = reference["n_chunks"]
    assert summary["chunks_computed"] == n - 2 == len(calls) and summary["chunks_resumed"] == 2
    assert not set(calls) & set(range(2))  # chunks 0 and 1 were finished: not computed again
    assert _files(out) == _files(tmp_path / "whole")
    assert not (out / WORK_DIR).exists()
    np.testing.assert_allclose(summary["class_fractions"], reference["class_fractions"])


SCRIPT = '''
import sys, time
import numpy as np
import torch
from fibml.inference import predict_to_disk


class Slow(torch.nn.Module):
    def __init__(self, sleep):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.sleep = sleep

    def forward(self, x):
        time.sleep(self.sleep)
        return self.conv(x).softmax(1)


def run(out_dir, sleep):
    images = np.random.default_rng(0).random((2, 12, 24, 24), dtype=np.float32)
    return predict_to_disk(Slow(sleep), list(images), out_dir, dims="2d", patch_size=16, chunk_slices=2,
                           n_classes=2, save_probabilities=True, fingerprint={"script": 1}, progress=False)


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]))
'''


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_process_resumes_to_identical_files(tmp_path):
    script = tmp_path / "predict_slowly.py"
    script.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("predict_slowly", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(out), "0.4"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not finished_chunks(out):
            assert process.poll() is None, "the script ended before it finished a chunk"
            assert time.monotonic() < deadline, "no chunk finished within 60 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = finished_chunks(out)
    assert 1 <= len(done) < 6 and not (out / SEGMENTATION).exists()

    summary = module.run(out, 0.0)
    assert summary["chunks_computed"] == 6 - len(done) and summary["chunks_resumed"] == len(done)
    module.run(tmp_path / "whole", 0.0)
    assert _files(out) == _files(tmp_path / "whole")


def test_other_fingerprints_are_refused_unless_overwrite(tmp_path):
    images = _images()
    net = RandomConv(2, 2)

    def run(fingerprint, **kwargs):
        return _predict(tmp_path, net, images, "2d", 2, chunk_slices=5, fingerprint=fingerprint, **kwargs)

    with pytest.raises(Stop):
        run({"checkpoint": "a.ckpt"}, on_chunk=_stop_after(1))
    with pytest.raises(ValueError, match=r"(?s)\.partial.*checkpoint.*overwrite=true"):
        run({"checkpoint": "b.ckpt"})
    assert finished_chunks(tmp_path) == [0]  # refused: the work folder is untouched
    summary = run({"checkpoint": "b.ckpt"}, overwrite=True)
    assert summary["chunks_computed"] == 4  # the other run's chunk was discarded

    with pytest.raises(ValueError, match=rf"(?s){tmp_path.name}.*already holds a prediction.*overwrite=true"):
        run({"checkpoint": "a.ckpt"})
    before = (tmp_path / SEGMENTATION).read_bytes()

    def never(x):
        raise AssertionError("a finished prediction of the same fingerprint must not be recomputed")

    again = _predict(tmp_path, never, images, "2d", 2, chunk_slices=5, fingerprint={"checkpoint": "b.ckpt"})
    assert again["chunks_computed"] == 0 and again["class_fractions"] == summary["class_fractions"]
    assert (tmp_path / SEGMENTATION).read_bytes() == before

    summary = run({"checkpoint": "a.ckpt"}, overwrite=True)
    assert summary["chunks_computed"] == 4
    stored = json.loads((tmp_path / FINGERPRINT).read_text())
    assert stored["fingerprint"]["settings"] == {"checkpoint": "a.ckpt"}


def test_inputs_are_checked_before_anything_is_written(tmp_path):
    images = _images()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="channel 1 has 19 slices, channel 0 has 20"):
        predict_to_disk(identity, [images[0], images[1, :19]], out, dims="2d", patch_size=16, n_classes=2,
                        fingerprint={}, progress=False)
    with pytest.raises(TypeError, match="PredictorFactory"):
        predict_to_disk(identity, list(images), out, dims="2d", patch_size=16, n_classes=2, fingerprint={},
                        devices=["cpu", "cpu"], progress=False)
    with pytest.raises(ValueError, match="n_adjacent"):
        predict_to_disk(identity, list(images), out, dims="2.5d", n_adjacent=4, patch_size=16, n_classes=2,
                        fingerprint={}, progress=False)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_worker_processes_write_the_same_files_as_one(tmp_path):
    images = _images((2, 12, 32, 32))
    factory = ConvFactory(2, 3, "2d")
    seen = []
    one = _predict(tmp_path / "one", factory, images, "2d", 3, chunk_slices=3, save_probabilities=True)
    two = _predict(tmp_path / "two", factory, images, "2d", 3, chunk_slices=3, save_probabilities=True,
                   devices=["cpu", "cpu"], on_chunk=lambda i, n: seen.append(i))
    assert sorted(seen) == list(range(4)) and two["chunks_computed"] == 4
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert one["class_fractions"] == two["class_fractions"]


# --- lazy stacks ---------------------------------------------------------------------------


def _write_compressed(path, array):
    tifffile.imwrite(path, array, imagej=True, compression="zlib", metadata={"axes": "ZYX"})
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_lazy_stack_reads_what_read_stack_reads(tmp_path, compressed):
    array = np.random.default_rng(0).integers(0, 60000, (7, 30, 20), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    _write_compressed(path, array) if compressed else write_stack(path, array, (10.0, 5.0, 5.0))
    stack = open_stack(path)
    assert stack.contiguous is not compressed
    assert stack.shape == (7, 30, 20) and stack.dtype == np.uint16 and len(stack) == 7
    full, voxel = read_stack(path)
    assert stack.voxel_size_nm == voxel
    for z in range(7):
        np.testing.assert_array_equal(stack[z], full[z])
    np.testing.assert_array_equal(stack[-1], full[-1])
    np.testing.assert_array_equal(stack[2:6:2], full[2:6:2])
    np.testing.assert_array_equal(stack.region(3, slice(4, 9), slice(2, 17)), full[3, 4:9, 2:17])
    with pytest.raises(IndexError, match="out of range"):
        stack[7]
    clone = pickle.loads(pickle.dumps(stack))  # e.g. to a worker process: reopens the file there
    np.testing.assert_array_equal(clone[5], full[5])
    stack.close()
    clone.close()
    np.testing.assert_array_equal(stack[4], full[4])  # reopens when read again


def test_lazy_stack_reads_big_endian_files_and_strided_crops(tmp_path):
    array = np.random.default_rng(1).integers(0, 60000, (5, 23, 17), dtype=np.uint16)
    path = tmp_path / "big_endian.tif"
    tifffile.imwrite(path, array, byteorder=">")  # contiguous, not native byte order
    stack = open_stack(path)
    assert stack.contiguous and stack.file_dtype == np.dtype(">u2") and stack.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(stack[3], array[3])
    assert stack[3].dtype == np.dtype("=u2")  # returned in native byte order
    np.testing.assert_array_equal(stack[1:4], array[1:4])
    np.testing.assert_array_equal(stack[0:5:2], array[0:5:2])
    for ys, xs in [(slice(2, 20, 3), slice(1, 9)), (slice(20, 2, -4), slice(None)), (slice(5, 5), slice(0, 3)),
                   (7, slice(3, 12)), (-1, slice(None)), (slice(None), 4)]:
        np.testing.assert_array_equal(stack.region(2, ys, xs), array[2][ys, xs])
    assert stack.region(2, slice(4, 6), slice(0, 3)).base is None  # a crop holds no wider rows
    with pytest.raises(IndexError, match="row 23 is out of range"):
        stack.region(2, 23, slice(None))
    stack.close()


def test_a_2d_image_is_one_slice(tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", np.arange(12, dtype=np.uint8).reshape(3, 4))
    stack = open_stack(tmp_path / "image.tif")
    assert stack.shape == (1, 3, 4)
    np.testing.assert_array_equal(stack[0], np.arange(12).reshape(3, 4))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keep", [0.98, 0.6, 0.2])
def test_truncated_tiff_is_refused_naming_the_file(tmp_path, compressed, keep):
    array = np.random.default_rng(0).integers(0, 255, (6, 40, 32), dtype=np.uint8)
    path = tmp_path / "cut.tif"
    _write_compressed(path, array) if compressed else write_stack(path, array, 5.0)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.tif: (truncated TIFF|expected a TIFF stack)") as err:
        open_stack(path)
    assert str(path) in str(err.value)


def test_truncated_pixel_data_message(tmp_path):
    path = write_stack(tmp_path / "cut.tif", np.zeros((4, 40, 32), np.uint8))
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        offset, nbytes = tif.series[0].dataoffset, tif.series[0].nbytes
    path.write_bytes(path.read_bytes()[: offset + nbytes - 100])
    with pytest.raises(ValueError, match=rf"truncated TIFF: .*{nbytes} bytes past offset {offset}") as err:
        open_stack(path)
    assert str(path) in str(err.value) and size > offset + nbytes - 100


def test_not_a_tiff_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.tif").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.tif: expected a TIFF stack"):
        open_stack(tmp_path / "notes.tif")
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        open_stack(tmp_path / "missing.tif")


def test_dataset_stacks_open_lazily_and_must_share_a_shape(tmp_path):
    rng = np.random.default_rng(0)
    write_stack(tmp_path / "bse_1kV.tif", rng.integers(0, 255, (5, 12, 10), dtype=np.uint8), (20.0, 5.0, 5.0))
    write_stack(tmp_path / "bse_2kV.tif", rng.integers(0, 255, (5, 12, 10), dtype=np.uint8), (20.0, 5.0, 5.0))
    stacks, voxel = open_dataset_stacks(tmp_path, [1, 2])
    assert list(stacks) == [1.0, 2.0] and voxel == (20.0, 5.0, 5.0)
    assert stacks[2.0].path.name == "bse_2kV.tif" and stacks[1.0].shape == (5, 12, 10)
    with pytest.raises(FileNotFoundError, match=r"has no bse_4kV\.tif \(found: bse_1kV\.tif, bse_2kV\.tif\)"):
        open_dataset_stacks(tmp_path, [1, 4])

    write_stack(tmp_path / "bse_2kV.tif", rng.integers(0, 255, (5, 11, 10), dtype=np.uint8), (20.0, 5.0, 5.0))
    with pytest.raises(ValueError, match=r"bse_2kV\.tif is \(5, 11, 10\), bse_1kV\.tif is \(5, 12, 10\)"):
        open_dataset_stacks(tmp_path)
    write_json(tmp_path / "manifest.json", {"voxel_size_nm": [7, 3, 3]})
    write_stack(tmp_path / "bse_2kV.tif", rng.integers(0, 255, (5, 12, 10), dtype=np.uint8))
    assert open_dataset_stacks(tmp_path)[1] == (7.0, 3.0, 3.0)


def test_stack_percentiles_match_normalize_stack(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.normal(120, 30, (130, 64, 48)).clip(0, 255)).astype(np.uint8)  # 130 slices: every 2nd sampled
    stack = open_stack(write_stack(tmp_path / "stack.tif", array))
    lo, hi = stack_percentiles(stack, 1, 99)
    assert (lo, hi) == percentile_range(array.astype(np.float32)[:: percentile_step(130)], 1, 99)
    normalised = NormalizedStack(stack, lo, hi)
    expected = normalize_stack(array, 1, 99)
    for z in (0, 1, 64, 129):
        np.testing.assert_array_equal(normalised[z], expected[z])  # exactly, not just close
    np.testing.assert_array_equal(normalised.region(7, slice(3, 9), slice(0, 5)), expected[7, 3:9, 0:5])

    strided = stack_percentiles(stack, 1, 99, max_values=60_000)  # 65 x 64 x 48 sampled: every 2nd row, column
    assert abs(strided[0] - lo) <= 1 and abs(strided[1] - hi) <= 1
    with pytest.raises(ValueError, match="no contrast"):
        stack_percentiles(np.full((3, 4, 4), 7, np.uint8))


# --- bounded memory ------------------------------------------------------------------------


def test_memory_stays_bounded_for_a_stack_on_disk(tmp_path):
    # a whole-stack approach needs the float32 input (16 MB) and probabilities (2 x 16 MB);
    # chunks of 4 slices need a few slices' worth. numpy allocations are traced by tracemalloc.
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (64, 256, 256), dtype=np.uint8)
    stack = open_stack(write_stack(tmp_path / "bse_1kV.tif", array, 5.0))
    channel = NormalizedStack(stack, *stack_percentiles(stack))
    whole_probabilities = 2 * array.size * 4

    def pointwise(x):
        p = x.mean(1, keepdim=True)
        return torch.cat([p, 1 - p], 1)

    tracemalloc.start()
    try:
        summary = predict_to_disk(pointwise, [channel], tmp_path / "out", dims="2d", patch_size=128, chunk_slices=4,
                                  n_classes=2, save_probabilities=True, voxel_size_nm=5.0, fingerprint={},
                                  progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary["n_chunks"] == 16
    assert peak < whole_probabilities / 4, f"peak {peak / 2**20:.1f} MiB"
    segmentation, voxel = read_stack(tmp_path / "out" / SEGMENTATION)
    assert segmentation.shape == array.shape and voxel == (5.0, 5.0, 5.0)


# --- writing without memory maps ------------------------------------------------------------


def test_stack_file_writes_slices_and_blocks_in_any_order(tmp_path):
    shape, voxel = (6, 20, 24), (40.0, 5.0, 5.0)
    rng = np.random.default_rng(0)
    path = tmp_path / "out.tif"
    reference = np.zeros(shape, np.float32)
    with create_stack_file(path, shape, np.float32, voxel) as out:
        assert isinstance(out, StackFile) and out.shape == shape and out.dtype == np.float32
        writes = [
            (slice(4, 6), rng.random((2, 20, 24))),  # whole slices (float64: cast like numpy)
            ((slice(0, 3), slice(5, 12), slice(3, 17)), rng.random((3, 7, 14))),  # a 3D block core
            ((slice(1, 4), slice(12, 20), slice(0, 24)), rng.random((3, 8, 24))),  # full-width rows
            ((slice(3, 4),), rng.random((1, 20, 24))),  # one slice, as the engine indexes it
            ((2, slice(0, 2), slice(20, 24)), rng.random((2, 4))),  # ints drop an axis
            ((slice(0, 6), slice(0, 1), slice(0, 24)), 0.25),  # broadcast
            ((slice(0, 3), slice(5, 12), slice(3, 17)), rng.random((3, 7, 14))),  # rewritten
        ]
        for key, value in writes:
            out[key] = value
            reference[key] = value
        out.flush()
        with pytest.raises(ValueError):
            out[0:2] = np.zeros((3, 20, 24))
        with pytest.raises(IndexError, match="step 1"):
            out[0:6:2] = 0
        with pytest.raises(IndexError, match="out of range"):
            out[6] = 0
    array, stored_voxel = read_stack(path)
    np.testing.assert_array_equal(array, reference)
    assert stored_voxel == voxel
    lazy = open_stack(path)
    assert lazy.voxel_size_nm == voxel and lazy.contiguous
    np.testing.assert_array_equal(lazy[0:6], reference)
    np.testing.assert_array_equal(lazy.region(2, slice(4, 13), slice(2, 18)), reference[2, 4:13, 2:18])

    # reopened (a resumed run, a worker process) and pickled: writes land in the same file
    again = open_stack_file(path, shape)
    assert again.offset == lazy.offset and again.shape == shape
    clone = pickle.loads(pickle.dumps(again))
    again[5, 3:4, 0:24] = 9.0
    clone[0:1] = 7.0
    reference[5, 3:4], reference[0] = 9.0, 7.0
    again.close()
    clone.close()
    np.testing.assert_array_equal(read_stack(path)[0], reference)
    lazy.close()


def test_stack_file_uint8_matches_write_stack_and_keeps_the_imagej_large_file_layout(tmp_path):
    array = np.random.default_rng(2).integers(0, 4, (5, 16, 12), dtype=np.uint8)
    with create_stack_file(tmp_path / "piecewise.tif", array.shape, np.uint8, 5.0) as out:
        for z in (3, 0, 4, 1, 2):
            out[z : z + 1] = array[z]
    np.testing.assert_array_equal(read_stack(tmp_path / "piecewise.tif")[0], array)
    with tifffile.TiffFile(tmp_path / "piecewise.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == 5.0

    # over 4 GB (sparse: only what is written takes space): ImageJ's one-IFD layout
    shape = (3, 40_000, 40_000)
    big = tmp_path / "big.tif"
    with create_stack_file(big, shape, np.uint8, (10.0, 5.0, 5.0)) as out:
        out[2, 39_990:40_000, 100:200] = 7
        out[1:3, 5:7] = 9
    assert big.stat().st_size > 4 * 2**30
    stack = open_stack(big)
    assert stack.shape == shape and stack.voxel_size_nm == (10.0, 5.0, 5.0)
    np.testing.assert_array_equal(stack.region(2, slice(39_989, 40_000), slice(99, 201))[1:, 1:-1], 7)
    assert stack.region(2, slice(39_989, 40_000), slice(99, 201)).sum() == 7 * 10 * 100
    np.testing.assert_array_equal(stack.region(1, slice(4, 8), slice(0, 2)), [[0, 0], [9, 9], [9, 9], [0, 0]])
    with tifffile.TiffFile(big) as tif:
        assert tif.is_imagej and len(tif.pages) == 1 and tif.series[0].shape == shape
    stack.close()


RSS_SCRIPT = '''
import json, sys
import numpy as np
import torch
from fibml.inference import NormalizedStack, predict_to_disk
from fibml.io import open_stack


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


conv = torch.nn.Conv2d(1, 2, 1)  # class 0 where the pixel is >= 128, class 1 below
with torch.no_grad():
    conv.weight.copy_(torch.tensor([4.0, -4.0]).reshape(2, 1, 1, 1))
    conv.bias.copy_(torch.tensor([-2.0, 2.0]))


def net(x):
    return conv(x).softmax(1)


path, out, patch = sys.argv[1], sys.argv[2], int(sys.argv[3])
settings = dict(dims="2d", patch_size=patch, chunk_slices=2, n_classes=2, save_probabilities=False,
                fingerprint={}, progress=False)
with torch.no_grad():
    # a first run in memory: what torch and MONAI allocate once belongs to the baseline
    predict_to_disk(net, [np.zeros((2, patch, patch), np.float32)], out + "-warm-up", **settings)
    baseline = status("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak since start counts: a bound from above
    summary = predict_to_disk(net, [NormalizedStack(open_stack(path), 0, 255)], out, **settings)
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "n_chunks": summary["n_chunks"]}))
'''


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS / VmHWM from /proc (Linux)")
def test_reading_and_writing_do_not_grow_the_resident_memory_with_the_files(tmp_path):
    # Pages of memory-mapped files count in a process's resident set (RSS): predicting a stack
    # read and written through memory maps grows the peak RSS by the sizes of the input and
    # of the segmentation. Positioned reads and writes keep it at one chunk's working memory.
    # A 1024 x 512 x 512 uint8 stack (268 MB), written slice by slice, predicted in a fresh
    # process (earlier tests do not count) with one window per slice (patch = slice: fast).
    shape = (1024, 512, 512)
    path = tmp_path / "bse_1kV.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.integers(0, 256, shape[1:], dtype=np.uint8) for _ in range(shape[0])),
                     shape=shape, dtype=np.uint8, imagej=True, metadata={"axes": "ZYX"})
    size = path.stat().st_size
    script = tmp_path / "predict_big.py"
    script.write_text(RSS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "out"), str(shape[1])],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["baseline"]
    assert measured["n_chunks"] == shape[0] // 2
    assert growth < size / 3, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB while predicting a {size / 2**20:.0f} MiB stack "
        f"(baseline {measured['baseline'] / 2**20:.0f} MiB)"
    )

    segmentation = open_stack(tmp_path / "out" / SEGMENTATION)
    image = open_stack(path)
    assert segmentation.shape == shape and segmentation.dtype == np.uint8
    for z in (0, 511, 1023):
        np.testing.assert_array_equal(segmentation[z], image[z] < 128)
    segmentation.close()
    image.close()
