"""predict.py on whole stacks: lazy inputs, registration, chunked prediction, report, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fibml.io import read_stack, write_stack
from fibml.metrics.anisotropy import anisotropy_report
from fibml.pipelines.predict import ReconstructSettings, predict
from fibml.pipelines.train import train
from fibml.synth.dataset import generate_dataset
from tests.conftest import FAST_TRAIN, TINY_STRUCTURE, compose_config

VOLTAGES = (1, 2, 4)


@pytest.fixture(scope="module")
def model_run(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny three-voltage 2D model (one epoch: what it predicts matters less than how)."""
    root = tmp_path_factory.mktemp("predict_run")
    cfg = compose_config("train", FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "data.voltages=[1,2,4]",
                                                "trainer.max_epochs=1", "evaluate=false"], root)
    train(cfg)
    return Path(cfg.paths.output_dir)


def _predict(run, source, out, tmp_path, *overrides):
    cfg = compose_config("predict", [f"ckpt_path={run}", f"input={source}", f"output={out}", "inference.device=cpu",
                                     "inference.chunk_slices=8", "report_crop=32", *overrides], tmp_path / "hydra")
    return predict(cfg)


def _copy_dataset(dataset: Path, to: Path) -> Path:
    shutil.copytree(dataset, to)
    return to


@pytest.mark.slow
def test_predict_writes_segmentation_report_and_sections(model_run, tiny_dataset, tmp_path):
    out = _predict(model_run, tiny_dataset, tmp_path / "out", tmp_path)
    segmentation, voxel = read_stack(out / "segmentation.tif")
    assert segmentation.shape == (40, 48, 48) and voxel == (2.5, 2.5, 2.5)
    info = json.loads((out / "prediction.json").read_text())
    assert info["shape"] == [40, 48, 48] and info["chunks"] == 5 and info["chunks_computed"] == 5
    assert info["class_fractions"][1] == pytest.approx((segmentation == 1).mean())
    assert info["anisotropy_crop"] == [32, 32, 32]  # the central crop of the segmentation written
    crop = anisotropy_report(segmentation[4:36, 8:40, 8:40], voxel, phase=1)
    assert info["anisotropy"] == {k: pytest.approx(crop[key], rel=1e-9, nan_ok=True)
                                  for k, key in {"e_TPCF": "e_tpcf", "e_LPF": "e_lpf", "e_D": "e_d"}.items()}
    report = (out / "report.md").read_text()
    assert "fraction of class 1 (solid)" in report and "slices/s" in report and "e_TPCF" in report
    assert (out / "sections.png").stat().st_size > 10_000
    assert not (out / ".partial").exists()

    # the same command again recomputes nothing; a list of TIFFs gives the same segmentation
    again = _predict(model_run, tiny_dataset, tmp_path / "out", tmp_path)
    repeated = json.loads((again / "prediction.json").read_text())
    assert repeated["chunks_computed"] == 0 and repeated["slices_per_second"] == info["slices_per_second"] > 0
    files = "[" + ",".join(str(tiny_dataset / f"bse_{v}kV.tif") for v in VOLTAGES) + "]"
    listed = _predict(model_run, files, tmp_path / "listed", tmp_path)
    np.testing.assert_array_equal(read_stack(listed / "segmentation.tif")[0], segmentation)

    # two worker processes, each building the net from the checkpoint: the same segmentation
    two = _predict(model_run, tiny_dataset, tmp_path / "two", tmp_path, "inference.devices=[cpu,cpu]")
    np.testing.assert_array_equal(read_stack(two / "segmentation.tif")[0], segmentation)

    # a sub-volume: the same slices as the whole run (2D: no context across slices)
    part = _predict(model_run, tiny_dataset, tmp_path / "part", tmp_path, "z_range=[10,23]")
    np.testing.assert_array_equal(read_stack(part / "segmentation.tif")[0], segmentation[10:23])


def _drifted_dataset(tmp_path: Path) -> tuple[Path, np.ndarray, dict]:
    """40 slices cut from one 112 x 112 image per voltage at a drifting 96 x 96 window (the same
    drift for every voltage: they are imaged together) plus a constant offset per voltage. One
    image for every slice: a structure that changes with z moves its cross-sections sideways
    (oblique ligaments), which no correlation can tell from drift (tests/test_registration.py
    measures the accuracy)."""
    big = generate_dataset(tmp_path / "big", shape=(40, 112, 112), voxel_size_nm=2.5, voltages=list(VOLTAGES),
                           structure=TINY_STRUCTURE, imaging={}, seed=3, progress=False)
    rng = np.random.default_rng(0)
    drift = np.clip(np.cumsum(rng.integers(-1, 2, size=(40, 2)), axis=0), -6, 6)
    drift[0] = 0
    offsets = {1: np.array([2, -1]), 2: np.array([0, 0]), 4: np.array([-1, 2])}
    folder = tmp_path / "drifted"
    folder.mkdir()
    for v in VOLTAGES:
        stack, voxel = read_stack(big / f"bse_{v}kV.tif")
        crops = [stack[20, 8 + dy : 104 + dy, 8 + dx : 104 + dx] for dy, dx in drift + offsets[v]]
        write_stack(folder / f"bse_{v}kV.tif", np.stack(crops), voxel)
    return folder, drift, offsets


@pytest.mark.slow
def test_registration_recovers_the_drift_and_its_shifts_can_be_reapplied(model_run, tmp_path):
    folder, drift, offsets = _drifted_dataset(tmp_path)
    out = _predict(model_run, folder, tmp_path / "registered", tmp_path, "registration.enabled=true")
    from fibml.data.registration import read_shifts_csv

    table = read_shifts_csv(out / "shifts.csv")
    for v in VOLTAGES:
        # slice z was cut at drift[z] + offset: moving it by that (relative to the 2 kV slice 0) aligns it
        expected = drift + offsets[v] - offsets[2]
        assert np.abs(table[float(v)] - expected).max() < 0.5, v
    info = json.loads((out / "prediction.json").read_text())
    assert info["registration"]["max_shift_px"] == pytest.approx(max(np.abs(t).max() for t in table.values()))

    again = _predict(model_run, folder, tmp_path / "reapplied", tmp_path,
                     f"registration.shifts_csv={out / 'shifts.csv'}")
    np.testing.assert_array_equal(read_stack(again / "segmentation.tif")[0], read_stack(out / "segmentation.tif")[0])


@pytest.mark.slow
def test_registration_is_applied_before_prediction(model_run, tmp_path):
    """A known drift in, an aligned segmentation out: every slice of the drifted stack shows the
    same image, so once registered each must be segmented as that image is (the undrifted stack,
    cut at the 2 kV reference window), away from the borders where the shifts bring in grey."""
    folder, drift, offsets = _drifted_dataset(tmp_path)
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    for v in VOLTAGES:  # every channel registered onto the 2 kV slice 0, which was cut at (8, 8)
        assert not drift[0].any() and not offsets[2].any()
        big, voxel = read_stack(tmp_path / "big" / f"bse_{v}kV.tif")
        write_stack(aligned / f"bse_{v}kV.tif", np.repeat(big[None, 20, 8:104, 8:104], len(drift), axis=0), voxel)
    def solid_probability(source, name, *overrides):  # continuous: any net that looks at its input moves it
        out = _predict(model_run, source, tmp_path / name, tmp_path, "save_probabilities=true", *overrides)
        return read_stack(out / "probability_class1.tif")[0]

    truth = solid_probability(aligned, "truth")
    registered = solid_probability(folder, "registered", "registration.enabled=true")
    unregistered = solid_probability(folder, "raw")
    inner = (slice(None), slice(24, 72), slice(24, 72))  # 16 px beyond the largest shift (8 px) on each side

    def correlation(p):
        return np.corrcoef(p[inner].ravel(), truth[inner].ravel())[0, 1]

    assert truth[inner].std() > 0.003  # the probabilities follow the structure
    assert correlation(registered) > 0.97 and correlation(unregistered) < 0.8  # the drift shows when not undone
    assert np.abs(registered[inner] - truth[inner]).mean() < 0.25 * np.abs(unregistered[inner] - truth[inner]).mean()


def test_stacks_of_different_slice_counts_are_refused_and_nothing_is_written(model_run, tiny_dataset, tmp_path):
    folder = _copy_dataset(tiny_dataset, tmp_path / "short")
    stack, voxel = read_stack(folder / "bse_4kV.tif")
    write_stack(folder / "bse_4kV.tif", stack[:-1], voxel)
    with pytest.raises(ValueError, match=r"bse_4kV\.tif.*\(39, 48, 48\).*bse_1kV\.tif.*\(40, 48, 48\)"):
        _predict(model_run, folder, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_model_needing_other_voltages_is_refused(model_run, tiny_dataset, tmp_path):
    folder = _copy_dataset(tiny_dataset, tmp_path / "two")
    (folder / "bse_4kV.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"no bse_4kV\.tif, but .*ckpt was trained on 1kV, 2kV, 4kV"):
        _predict(model_run, folder, tmp_path / "out", tmp_path)
    with pytest.raises(ValueError, match="input lists 2 TIFF files"):
        _predict(model_run, f"[{folder / 'bse_1kV.tif'},{folder / 'bse_2kV.tif'}]", tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_truncated_tiff_is_refused_naming_it(model_run, tiny_dataset, tmp_path):
    folder = _copy_dataset(tiny_dataset, tmp_path / "cut")
    path = folder / "bse_2kV.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ValueError, match=r"bse_2kV\.tif.*truncated"):
        _predict(model_run, folder, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_an_output_holding_another_result_is_kept_unless_overwrite(model_run, tiny_dataset, tmp_path):
    out = _predict(model_run, tiny_dataset, tmp_path / "out", tmp_path, "z_range=[0,16]")
    before = (out / "segmentation.tif").read_bytes()
    with pytest.raises(ValueError, match="overwrite"):
        _predict(model_run, tiny_dataset, out, tmp_path)
    assert (out / "segmentation.tif").read_bytes() == before
    _predict(model_run, tiny_dataset, out, tmp_path, "overwrite=true")
    assert tifffile.imread(out / "segmentation.tif").shape == (40, 48, 48)


def test_reconstruct_settings_are_read_once_and_checked():
    cfg = compose_config("predict", ["ckpt_path=x", "input=y", "output=z", "reconstruct.method=nn"], Path("unused"))
    settings = ReconstructSettings.from_config(cfg.reconstruct)
    assert (settings.method, settings.ruler["band_rows"], settings.target_nm) == ("nn", 24, 10.0)
    with pytest.raises(ValueError, match="reconstruct.grid is not a setting of reconstruct"):
        ReconstructSettings.from_config({"grid": 2.5})
    with pytest.raises(ValueError, match="reconstruct.method=ml needs reconstruct.inpainting_ckpt"):
        ReconstructSettings.from_config({"enabled": True, "method": "ml"})


@pytest.mark.slow
def test_predict_takes_a_folder_of_vendor_slices(model_run, tiny_dataset, tmp_path):
    """The tiny dataset written as a Thermo Fisher slice series per voltage (uint16, a data bar
    under every slice, one series per detector voltage, numbered from 1) predicts exactly as the
    same pixels in a dataset folder; a pixel size far from training's is warned about."""
    from fibml.synth.vendor_files import write_fei_tiff

    folder, same = tmp_path / "asv", tmp_path / "same"
    folder.mkdir()
    stacks = {}
    for v in VOLTAGES:
        stack, _ = read_stack(tiny_dataset / f"bse_{v}kV.tif")
        stacks[v] = np.round((stack - stack.min()) / (stack.max() - stack.min()) * 60000).astype(np.uint16)
        for z, image in enumerate(stacks[v]):
            write_fei_tiff(folder / f"CBS {v}kV SliceImage - {z + 1}.tif", image, databar_rows=14, pixel_nm=2.5,
                           hv_kv=float(v), detector="CBS", mode="BSE")
        write_stack(same / f"bse_{v}kV.tif", stacks[v], (2.5, 2.5, 2.5))
    out = _predict(model_run, folder, tmp_path / "out", tmp_path, "acquisition.slice_thickness_nm=2.5")
    reference = _predict(model_run, same, tmp_path / "reference", tmp_path)
    segmentation, voxel = read_stack(out / "segmentation.tif")
    np.testing.assert_array_equal(segmentation, read_stack(reference / "segmentation.tif")[0])
    assert segmentation.shape == (40, 48, 48) and voxel == (2.5, 2.5, 2.5)
    info = json.loads((out / "prediction.json").read_text())
    assert info["warnings"] == [] and info["input"][0] == str(folder)

    # the slice thickness estimated from the model's segmentation of the folder: as from predict.py's
    from fibml.pipelines.ingest import ingest

    estimates = []
    for name, source in (("by_model", model_run), ("by_file", out / "segmentation.tif")):
        ingested = ingest(compose_config("ingest", [f"input={folder}", f"out={tmp_path / name}", "slice_thickness_nm=auto",
                                                    f"thickness_estimate.segmentation={source}",
                                                    "thickness_estimate.device=cpu"], tmp_path))
        estimates.append(json.loads((ingested / "manifest.json").read_text())["voxel_size_nm"][0])
    assert estimates[0] == pytest.approx(estimates[1], rel=0.02)

    coarse = _predict(model_run, folder, tmp_path / "coarse", tmp_path, "acquisition.slice_thickness_nm=9",
                      "acquisition.pixel_size_nm=9")
    warnings = json.loads((coarse / "prediction.json").read_text())["warnings"]
    assert len(warnings) == 2 and "pixel size along x is 9 nm" in warnings[1] and "trained on 2.5 nm" in warnings[1]


@pytest.mark.slow
def test_resample_presents_the_input_at_the_training_voxel_size(model_run, tiny_dataset, tmp_path):
    """A stack at 1.25 nm pixels (the 2.5 nm dataset enlarged 2x in-plane) predicted with
    inference.resample=true: the net sees it at 2.5 nm, the segmentation comes back on the 96 x 96
    grid and matches the 2.5 nm prediction enlarged the same way."""
    fine = tmp_path / "fine"
    for v in VOLTAGES:
        stack, _ = read_stack(tiny_dataset / f"bse_{v}kV.tif")
        write_stack(fine / f"bse_{v}kV.tif", stack.repeat(2, axis=1).repeat(2, axis=2), (2.5, 1.25, 1.25))
    direct = read_stack(_predict(model_run, tiny_dataset, tmp_path / "direct", tmp_path) / "segmentation.tif")[0]
    out = _predict(model_run, fine, tmp_path / "out", tmp_path, "inference.resample=true", "save_probabilities=true")
    segmentation, voxel = read_stack(out / "segmentation.tif")
    assert segmentation.shape == (40, 96, 96) and voxel == (2.5, 1.25, 1.25)
    enlarged = direct.repeat(2, axis=1).repeat(2, axis=2)
    assert (segmentation == enlarged).mean() > 0.9
    assert read_stack(out / "probability_class1.tif")[0].shape == (40, 96, 96)
    info = json.loads((out / "prediction.json").read_text())
    assert info["resampled"] == {"from_nm": [1.25, 1.25], "to_nm": [2.5, 2.5], "model_grid_yx": [48, 48]}
    assert info["warnings"] == [] and info["class_fractions"][1] == pytest.approx((segmentation == 1).mean())
    assert not (out / ".resampled").exists()
    # without resampling, the same input is warned about
    plain = _predict(model_run, fine, tmp_path / "plain", tmp_path)
    assert "1.25 nm" in json.loads((plain / "prediction.json").read_text())["warnings"][0]


@pytest.mark.slow
def test_output_format_zarr_writes_an_ome_zarr_segmentation(model_run, tiny_dataset, tmp_path):
    import zarr

    from fibml.io import read_ome_zarr

    out = _predict(model_run, tiny_dataset, tmp_path / "out", tmp_path, "output_format=zarr")
    segmentation, voxel = read_stack(out / "segmentation.tif")
    stored, scale = read_ome_zarr(out / "segmentation.ome.zarr")
    np.testing.assert_array_equal(stored, segmentation)
    assert scale == voxel == (2.5, 2.5, 2.5)
    group = zarr.open_group(str(out / "segmentation.ome.zarr"), mode="r")
    multiscale = group.attrs["multiscales"][0]
    assert multiscale["version"] == "0.4" and [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert group["0"].chunks == (40, 48, 48) and (out / "segmentation.ome.zarr" / "0" / "0" / "0" / "0").is_file()
    assert json.loads((out / "prediction.json").read_text())["ome_zarr"] == str(out / "segmentation.ome.zarr")
    with pytest.raises(ValueError, match="output_format must be tiff or zarr, got 'hdf5'"):
        _predict(model_run, tiny_dataset, tmp_path / "bad", tmp_path, "output_format=hdf5")
    assert not (tmp_path / "bad").exists()
