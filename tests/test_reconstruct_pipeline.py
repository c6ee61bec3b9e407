"""Segmented stack + thicknesses -> isotropic volume: the pipeline and predict.py reconstruct.*"""

from pathlib import Path

import numpy as np
import pytest

from fibml.geometry import slice_positions
from fibml.io import read_stack, write_thickness_csv
from fibml.metrics.confusion import segmentation_scores
from fibml.reconstruct.pipeline import CASES, reconstruct_stack, thicknesses_from
from fibml.synth.microstructure import leveled_wave
from fibml.synth.thickness import mimic_stack, sample_thicknesses, slices_that_fit


@pytest.fixture(scope="module")
def mimicked():
    truth = leveled_wave((96, 40, 40), wavelength_nm=60, solid_fraction=0.3, voxel_size_nm=2.5, seed=2).astype(np.uint8)
    t = sample_thicknesses(40, seed=5)
    t = t[: slices_that_fit(t, truth.shape[0])]
    slices, _ = mimic_stack(truth, t)
    return truth, slices, t


def test_every_case_of_the_paper_reconstructs_the_right_grid(mimicked):
    truth, slices, t = mimicked
    positions, n_grid = slice_positions(t)
    mp = {}
    for case, (repositioning, method) in CASES.items():
        if method == "ml":
            continue
        volume = reconstruct_stack(slices, t, method=method, repositioning=repositioning)
        assert volume.dtype == np.uint8 and volume.shape[1:] == truth.shape[1:]
        if repositioning == "accurate":
            assert volume.shape[0] == n_grid
            np.testing.assert_array_equal(volume[positions], slices)  # every slice at its measured depth
        n = min(len(volume), len(truth))
        mp[case] = segmentation_scores(volume[:n], truth[:n])["mp"]
    assert mp["RCS"] < mp["RNN"] and mp["SRCS"] < mp["DNN"]


def test_ml_method_fills_only_the_unknown_rows(mimicked):
    truth, slices, t = mimicked
    positions, n_grid = slice_positions(t)
    seen = {}

    def oracle(volume, known):  # an inpainter that knows the ground truth
        seen["known"] = known.copy()
        assert (volume[~known] == 255).all() and np.array_equal(volume[known], slices)
        return truth[: len(volume)]

    volume = reconstruct_stack(slices, t, method="ml", inpainter=oracle)
    np.testing.assert_array_equal(volume, truth[:n_grid])
    np.testing.assert_array_equal(np.flatnonzero(seen["known"]), positions)
    with pytest.raises(ValueError, match="inpainting_ckpt"):
        reconstruct_stack(slices, t, method="ml")
    with pytest.raises(ValueError, match="method must be one of"):
        reconstruct_stack(slices, t, method="cubic")


def test_thicknesses_from_csv_and_ruler(tmp_path, mimicked):
    from fibml.reconstruct.ruler import add_ruler

    _, slices, t = mimicked
    write_thickness_csv(tmp_path / "thickness.csv", t)
    read, info = thicknesses_from("csv", len(t), folder=tmp_path)
    np.testing.assert_array_equal(read, t)
    with pytest.raises(ValueError, match=f"lists {len(t)} thicknesses, the stack has {len(t) + 1} slices"):
        thicknesses_from(tmp_path / "thickness.csv", len(t) + 1)
    z_nm = np.concatenate([[0.0], np.cumsum(t)[:-1]])
    wide = np.zeros((len(t), 8, 400), np.float32)  # the marks need room: a 1 um wide field of view
    images, band = add_ruler(wide, z_nm, pixel_nm=2.5, band_rows=16, noise_sigma=0.0)
    measured, info = thicknesses_from("ruler", len(t), band=images[:, band], pixel_nm=2.5,
                                      ruler={"angle_deg": 45.0, "outlier_z": None})
    assert np.abs(measured[:-1] - t[:-1]).max() < 2.5 and info["ruler_dropped_slices"] == []


def test_predict_reconstructs_a_mimicking_stack(tmp_path, tiny_dataset):
    """predict.py on a dataset with thickness.csv: segmentation.tif as milled, reconstruction.tif
    isotropic on the 2.5 nm grid, and what was done in prediction.json."""
    import json

    from fibml.pipelines.predict import predict
    from fibml.pipelines.train import train
    from fibml.synth.dataset import generate_dataset
    from tests.conftest import FAST_TRAIN, TINY_STRUCTURE, compose_config

    cfg = compose_config("train", FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "trainer.max_epochs=1", "evaluate=false"],
                         tmp_path / "t")
    train(cfg)
    mimic = generate_dataset(tmp_path / "mimic", shape=(40, 48, 48), voxel_size_nm=2.5, voltages=[2],
                             structure=TINY_STRUCTURE, imaging={}, seed=4, progress=False, thickness={"target_nm": 10.0})
    out = tmp_path / "out"
    pcfg = compose_config("predict", [f"ckpt_path={cfg.paths.output_dir}", f"input={mimic}", f"output={out}",
                                      "reconstruct.enabled=true", "reconstruct.method=spline", "inference.device=cpu"],
                          tmp_path / "p")
    predict(pcfg)
    segmentation, voxel = read_stack(out / "segmentation.tif")
    volume, iso = read_stack(out / "reconstruction.tif")
    truth, _ = read_stack(Path(mimic) / "labels_isotropic.tif")
    assert voxel == (10.0, 2.5, 2.5) and iso == (2.5, 2.5, 2.5) and volume.shape == truth.shape
    report = json.loads((out / "prediction.json").read_text())["reconstruction"]
    assert report["slices"] == segmentation.shape[0] and report["grid_rows"] == truth.shape[0]
    assert report["thickness_source"].endswith("thickness.csv") and report["repositioning"] == "accurate"
    pcfg.reconstruct.method = "ml"
    with pytest.raises(ValueError, match="inpainting_ckpt"):
        predict(pcfg)


def test_predict_with_a_trained_inpainting_net(tmp_path, tiny_dataset):
    """The RML path as a user runs it: an experiment=inpainting checkpoint fills the rows between
    the repositioned slices in predict.py; evaluate.py refuses it with a pointer to the right use."""
    from fibml.pipelines.evaluate import evaluate
    from fibml.pipelines.predict import predict
    from fibml.pipelines.train import train
    from fibml.synth.dataset import generate_dataset
    from tests.conftest import FAST_TRAIN, TINY_STRUCTURE, compose_config

    fast = [o for o in FAST_TRAIN if not o.startswith("data.stride")] + ["trainer.max_epochs=1", "data.val_size=8"]
    inpainting = compose_config("train", ["experiment=inpainting", f"data.data_dir={tiny_dataset}", *fast], tmp_path / "i")
    train(inpainting)
    segmenter = compose_config("train", FAST_TRAIN + [f"data.data_dir={tiny_dataset}", "trainer.max_epochs=1",
                                                      "evaluate=false"], tmp_path / "s")
    train(segmenter)
    mimic = generate_dataset(tmp_path / "mimic", shape=(40, 48, 48), voxel_size_nm=2.5, voltages=[2],
                             structure=TINY_STRUCTURE, imaging={}, seed=4, progress=False, thickness={"target_nm": 10.0})
    out = tmp_path / "out"
    predict(compose_config("predict", [
        f"ckpt_path={segmenter.paths.output_dir}", f"input={mimic}", f"output={out}", "reconstruct.enabled=true",
        "reconstruct.method=ml", f"reconstruct.inpainting_ckpt={inpainting.paths.output_dir}", "inference.device=cpu",
    ], tmp_path / "p"))
    segmentation, _ = read_stack(out / "segmentation.tif")
    volume, voxel = read_stack(out / "reconstruction.tif")
    thicknesses = np.loadtxt(Path(mimic) / "thickness.csv", delimiter=",", skiprows=1)[:, 1]
    positions, n_grid = slice_positions(thicknesses)
    assert volume.shape == (n_grid, 48, 48) and voxel == (2.5, 2.5, 2.5) and set(np.unique(volume)) <= {0, 1}
    np.testing.assert_array_equal(volume[positions], segmentation)  # the net filled only the rows between
    with pytest.raises(ValueError, match="is an inpainting model, not a segmentation"):
        evaluate(compose_config("evaluate", [f"ckpt_path={inpainting.paths.output_dir}"], tmp_path / "e"))
