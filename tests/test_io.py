"""TIFF stacks and dataset folders: round trips, voxel sizes, errors that name files, atomicity, cache."""

import json
import os

import numpy as np
import pytest
import tifffile

import fibml
import fibml.io.dataset
import fibml.synth.dataset
from fibml.channels import channel_key, channel_label
from fibml.io import (
    read_dataset,
    read_stack,
    stack_name,
    write_dataset,
    write_json,
    write_stack,
)
from fibml.synth.dataset import cached_dataset, generate_dataset

VOXEL = (10.0, 2.5, 3.0)  # anisotropic (z, y, x) nm


def _images(shape=(8, 12, 16), voltages=(1, 2, 4), seed=0):
    rng = np.random.default_rng(seed)
    return {float(v): rng.random(shape, dtype=np.float32) * v for v in voltages}


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_stack_round_trip_keeps_values_and_voxel_size(tmp_path, dtype):
    rng = np.random.default_rng(1)
    array = (rng.random((5, 12, 9)) * 200).astype(dtype)
    path = write_stack(tmp_path / "stack.tif", array, VOXEL)
    back, voxel = read_stack(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    assert voxel == pytest.approx(VOXEL, rel=1e-6)


def test_stack_float64_and_bool_are_stored_compactly(tmp_path):
    write_stack(tmp_path / "f.tif", np.full((2, 4, 4), 0.25), 2.5)
    write_stack(tmp_path / "b.tif", np.eye(4, dtype=bool)[None].repeat(3, 0), 2.5)
    f, voxel = read_stack(tmp_path / "f.tif")
    b, _ = read_stack(tmp_path / "b.tif")
    assert f.dtype == np.float32 and np.all(f == 0.25)
    assert voxel == pytest.approx((2.5, 2.5, 2.5), rel=1e-6)  # scalar voxel size -> isotropic
    assert b.dtype == np.uint8 and b.shape == (3, 4, 4) and b.sum() == 12


def test_2d_tiff_reads_as_one_slice(tmp_path):
    image = np.arange(30, dtype=np.uint16).reshape(5, 6)
    tifffile.imwrite(tmp_path / "plane.tif", image)
    stack, voxel = read_stack(tmp_path / "plane.tif")
    assert stack.shape == (1, 5, 6)
    np.testing.assert_array_equal(stack[0], image)
    assert voxel is None


def test_tiff_without_voxel_size_gives_none(tmp_path):
    write_stack(tmp_path / "novoxel.tif", np.zeros((3, 4, 5), np.float32), None)
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 4, 5), np.float32))
    assert read_stack(tmp_path / "novoxel.tif")[1] is None
    assert read_stack(tmp_path / "plain.tif")[1] is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_stack_raises_naming_the_file(tmp_path, bad):
    array = np.ones((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    write_stack(tmp_path / "broken.tif", array, VOXEL)
    with pytest.raises(ValueError, match=r"broken\.tif.*1 NaN or inf"):
        read_stack(tmp_path / "broken.tif")


def test_read_stack_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.tif"):
        read_stack(tmp_path / "nothere.tif")


def test_write_stack_rejects_2d(tmp_path):
    with pytest.raises(ValueError, match="z, y, x"):
        write_stack(tmp_path / "x.tif", np.zeros((4, 4)), VOXEL)
    assert not (tmp_path / "x.tif").exists()


def test_stack_name():
    assert stack_name(2) == "bse_2kV.tif"
    assert stack_name(1.5) == "bse_1.5kV.tif"
    assert stack_name("se2_1kV") == "se2_1kV.tif"
    assert stack_name("bse_4kV") == "bse_4kV.tif"


def test_channel_keys_voltages_and_detector_names():
    assert channel_key(2) == channel_key("2") == channel_key("bse_2kV") == 2.0
    assert channel_key("inlens_1kV") == "inlens_1kV"
    assert channel_label(4.0) == "4kV" and channel_label("se2_1kV") == "se2_1kV"
    for bad in ("se2", "1 kV", "se2-1kV"):
        with pytest.raises(ValueError, match="not an image channel"):
            channel_key(bad)


def test_detector_stacks_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = {"se2_1kV": rng.random((4, 6, 8), dtype=np.float32), "inlens_1kV": rng.random((4, 6, 8), dtype=np.float32),
              2.0: rng.random((4, 6, 8), dtype=np.float32)}
    folder = write_dataset(tmp_path / "ds", images, VOXEL, labels=np.zeros((4, 6, 8), np.uint8))
    assert sorted(p.name for p in folder.glob("*.tif")) == ["bse_2kV.tif", "inlens_1kV.tif", "labels.tif", "se2_1kV.tif"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["voltages_kV"] == [1.0, 2.0]
    assert manifest["channels"] == ["2kV", "inlens_1kV", "se2_1kV"]
    ds = read_dataset(folder)
    assert ds.voltages == [2.0, "inlens_1kV", "se2_1kV"]
    np.testing.assert_array_equal(ds.stack(["se2_1kV", "bse_2kV"]), np.stack([images["se2_1kV"], images[2.0]]))
    with pytest.raises(FileNotFoundError, match=r"no inlens_2kV\.tif \(found: bse_2kV\.tif, inlens_1kV\.tif, se2_1kV\.tif\)"):
        read_dataset(folder, ["inlens_2kV"])


def test_dataset_round_trip(tmp_path):
    images = _images()
    labels = (images[1.0] > 0.5).astype(np.uint8)
    folder = write_dataset(tmp_path / "ds", images, VOXEL, labels=labels, manifest={"seed": 3, "material": "Au"})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["bse_1kV.tif", "bse_2kV.tif", "bse_4kV.tif", "labels.tif", "manifest.json"]

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["voxel_size_nm"] == list(VOXEL)
    assert manifest["shape"] == [8, 12, 16]
    assert manifest["voltages_kV"] == [1.0, 2.0, 4.0]
    assert manifest["files"] == ["bse_1kV.tif", "bse_2kV.tif", "bse_4kV.tif", "labels.tif"]
    assert manifest["seed"] == 3 and manifest["material"] == "Au"
    assert manifest["fibml_version"] == fibml.__version__

    ds = read_dataset(folder, require_labels=True)
    assert ds.voltages == [1.0, 2.0, 4.0]
    assert ds.voxel_size_nm == pytest.approx(VOXEL)
    assert ds.shape == (8, 12, 16)
    for v, image in images.items():
        np.testing.assert_array_equal(ds.images[v], image)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.uint8
    assert ds.manifest["seed"] == 3
    stacked = ds.stack([4, 1])
    assert stacked.shape == (2, 8, 12, 16) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[0], images[4.0])

    # a subset of the voltages
    assert read_dataset(folder, voltages=[2]).voltages == [2.0]


def test_read_dataset_voxel_size_from_tiff_without_manifest(tmp_path):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(2,)), VOXEL)
    (folder / "manifest.json").unlink()
    ds = read_dataset(folder)
    assert ds.voxel_size_nm == pytest.approx(VOXEL, rel=1e-6)
    assert ds.labels is None and ds.manifest == {}


def test_write_dataset_shape_mismatch_names_both_files(tmp_path):
    images = _images()
    images[4.0] = images[4.0][:6]
    with pytest.raises(ValueError, match=r"bse_4kV\.tif has 6 slices, bse_1kV\.tif has 8"):
        write_dataset(tmp_path / "ds", images, VOXEL)
    labels = np.zeros((8, 12, 15), np.uint8)
    with pytest.raises(ValueError, match=r"labels\.tif has 15 columns, bse_1kV\.tif has 16"):
        write_dataset(tmp_path / "ds", _images(), VOXEL, labels=labels)
    assert not (tmp_path / "ds").exists()


def test_read_dataset_shape_mismatch_names_both_files(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    write_stack(folder / "bse_1kV.tif", np.zeros((8, 12, 16), np.float32), VOXEL)
    write_stack(folder / "bse_2kV.tif", np.zeros((6, 12, 16), np.float32), VOXEL)
    with pytest.raises(ValueError, match=r"bse_2kV\.tif has 6 slices, bse_1kV\.tif has 8"):
        read_dataset(folder)
    write_stack(folder / "bse_2kV.tif", np.zeros((8, 12, 16), np.float32), VOXEL)
    write_stack(folder / "labels.tif", np.zeros((8, 11, 16), np.uint8), VOXEL)
    with pytest.raises(ValueError, match=r"labels\.tif has 11 rows, bse_1kV\.tif has 12"):
        read_dataset(folder)


def test_missing_voltage_names_it_and_lists_the_found(tmp_path):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(1, 4)), VOXEL)
    with pytest.raises(FileNotFoundError, match=r"no bse_2kV\.tif \(found: bse_1kV\.tif, bse_4kV\.tif\)"):
        read_dataset(folder, voltages=[1, 2])


def test_folder_without_stacks(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image stack"):
        read_dataset(tmp_path / "empty")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere")


def test_require_labels_without_labels(tmp_path):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(2,)), VOXEL)
    assert read_dataset(folder).labels is None
    with pytest.raises(FileNotFoundError, match=r"no labels\.tif"):
        read_dataset(folder, require_labels=True)


def test_invalid_manifest_json(tmp_path):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(2,)), VOXEL)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: not valid JSON"):
        read_dataset(folder)


def test_write_dataset_refuses_existing_folder_unless_overwrite(tmp_path):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(1,)), VOXEL)
    (folder / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_dataset(folder, _images(voltages=(2,)), VOXEL)
    assert read_dataset(folder).voltages == [1.0]  # untouched

    write_dataset(folder, _images(voltages=(2,)), VOXEL, overwrite=True)
    assert read_dataset(folder).voltages == [2.0]
    assert not (folder / "stale.txt").exists()  # replaced as a whole, not merged
    assert not (folder / "bse_1kV.tif").exists()


def _fail_on_second_call(monkeypatch):
    real = fibml.io.dataset.write_stack
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(fibml.io.dataset, "write_stack", flaky)  # where write_dataset looks it up
    return calls


def test_write_dataset_is_atomic(tmp_path, monkeypatch):
    calls = _fail_on_second_call(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "ds", _images(), VOXEL)
    assert len(calls) == 2  # it did fail midway, after one stack was written
    assert os.listdir(tmp_path) == []  # neither the folder nor a temporary one remains


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path / "ds", _images(voltages=(1,)), VOXEL)
    _fail_on_second_call(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(folder, _images(), VOXEL, overwrite=True)
    assert os.listdir(tmp_path) == ["ds"]
    assert read_dataset(folder).voltages == [1.0]


def test_write_json_is_atomic_and_handles_numpy(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3), "p": tmp_path})
    assert json.loads(path.read_text()) == {"x": 1.5, "v": [0, 1, 2], "p": str(tmp_path)}
    with pytest.raises(TypeError, match="cannot write object"):
        write_json(tmp_path / "b.json", {"x": object()})
    assert sorted(os.listdir(tmp_path)) == ["a.json"]  # no temp file left by the failure


GENERATOR = {
    "shape": [24, 32, 32],
    "voxel_size_nm": 2.5,
    "voltages": [1, 4],
    # a plain dotted path, not a Hydra `_target_` (see generate_dataset's docstring)
    "structure": {"function": "fibml.synth.microstructure.leveled_wave", "wavelength_nm": 20, "solid_fraction": 0.3},
    "imaging": {},
    "seed": 0,
}


def test_generate_dataset_writes_a_readable_folder(tmp_path):
    folder = generate_dataset(tmp_path / "synth", **GENERATOR, progress=False)
    ds = read_dataset(folder, require_labels=True)
    assert ds.voltages == [1.0, 4.0]
    assert ds.shape == (24, 32, 32)
    assert ds.voxel_size_nm == (2.5, 2.5, 2.5)
    assert ds.labels.mean() == pytest.approx(0.3, abs=0.01)
    assert set(np.unique(ds.labels)) == {0, 1}
    assert ds.manifest["solid_fraction"] == pytest.approx(ds.labels.mean())
    assert ds.manifest["parameters"]["structure"]["function"].endswith("leveled_wave")
    # gold is brighter than epoxy at every voltage; shine-through erodes the contrast at 4 kV
    contrast = {v: image[ds.labels == 1].mean() - image[ds.labels == 0].mean() for v, image in ds.images.items()}
    assert contrast[4.0] > 0.005
    assert contrast[1.0] > 2 * contrast[4.0]


def test_generate_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="voltages is empty"):
        generate_dataset(tmp_path / "a", **{**GENERATOR, "voltages": []}, progress=False)
    structure = {"_target_": "fibml.synth.microstructure.leveled_wave", "wavelength_nm": 20, "solid_fraction": 0.3}
    with pytest.raises(ValueError, match="structure needs a 'function'"):
        generate_dataset(tmp_path / "b", **{**GENERATOR, "structure": structure}, progress=False)
    assert os.listdir(tmp_path) == []


def test_cached_dataset_generates_once(tmp_path, monkeypatch):
    folder = cached_dataset(tmp_path, GENERATOR, progress=False)
    ds = read_dataset(folder, require_labels=True)
    assert ds.labels.mean() == pytest.approx(0.3, abs=0.01)
    mtime = (folder / "manifest.json").stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("cached_dataset regenerated a dataset that was in the cache")

    monkeypatch.setattr(fibml.synth.dataset, "generate_dataset", must_not_run)
    assert cached_dataset(tmp_path, dict(GENERATOR), progress=False) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime
    monkeypatch.undo()

    other = cached_dataset(tmp_path, {**GENERATOR, "seed": 1}, progress=False)
    assert other != folder and other.parent == folder.parent
    labels_other = read_dataset(other).labels
    assert labels_other.mean() == pytest.approx(0.3, abs=0.01)
    assert np.mean(labels_other != ds.labels) > 0.2  # really another structure
