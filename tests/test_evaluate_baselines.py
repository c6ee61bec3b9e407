"""python evaluate.py method=...: classical baselines in the same table as the networks."""

import csv
from pathlib import Path

import numpy as np
import pytest

from fibml.io import read_dataset, read_stack
from fibml.metrics.anisotropy import anisotropy_report
from fibml.metrics.confusion import segmentation_scores
from fibml.pipelines.evaluate import evaluate
from tests.conftest import compose_config

ANISOTROPY_KEYS = {"e_tpcf": "e_TPCF", "e_lpf": "e_LPF", "e_d": "e_D"}  # anisotropy_report key -> table column


@pytest.mark.slow
def test_kmeans_alone_on_a_dataset_one_row_per_voltage(tiny_dataset, tmp_path):
    cfg = compose_config("evaluate", ["method=kmeans", f"data_dir={tiny_dataset}"], tmp_path)
    rows = evaluate(cfg)
    assert [r["method"] for r in rows] == ["k-means (k=3), 1 kV", "k-means (k=3), 2 kV", "k-means (k=3), 4 kV"]
    # the row is the score of what k-means gives on the test block: recompute it from the saved prediction
    out = Path(cfg.paths.output_dir)
    prediction, _ = read_stack(out / "k-means_k_3_1_kV" / "prediction.tif")
    labels = read_dataset(tiny_dataset).labels
    z0, z1 = (int(v) for v in rows[0]["split"].split("z ")[1].rstrip(")").split("-"))
    scores = segmentation_scores(prediction, labels[z0 : z1 + 1])
    assert rows[0]["MP %"] == pytest.approx(scores["mp"]) and rows[0]["awe %"] == pytest.approx(scores["awe"])
    assert rows[0]["IoU solid"] == pytest.approx(scores["iou"][1])
    # the anisotropy columns are those of the prediction's solid (label 1), and the truth's of its own
    for key, value in anisotropy_report(prediction, (2.5, 2.5, 2.5), phase=1).items():
        if key in ANISOTROPY_KEYS:
            assert rows[0][ANISOTROPY_KEYS[key]] == pytest.approx(value, rel=1e-9), key
    with open(out / "comparison.csv") as f:
        table = {r["measure"]: r for r in csv.DictReader(f)}
    truth = anisotropy_report(labels[z0 : z1 + 1], (2.5, 2.5, 2.5), phase=1)
    for key, column in ANISOTROPY_KEYS.items():
        assert float(table[column]["ground truth"]) == pytest.approx(truth[key], rel=1e-9), column
    assert rows[2]["MP %"] > rows[0]["MP %"]  # shine-through grows with voltage (Table 3)
    for name in ("metrics.md", "comparison.md", "comparison.png", "tpcf.png", "slices.png"):
        assert (out / name).is_file(), name


def test_fitted_baselines_learn_only_from_the_training_block(tiny_dataset, tmp_path):
    cfg = compose_config("evaluate", [
        "method=[double_threshold,random_forest]", f"data_dir={tiny_dataset}", "method.double_threshold.inputs=[[1]]",
        "method.random_forest.inputs=[all]", "method.random_forest.segmenter.n_estimators=8",
        "baseline_training.n_slices=2", "baseline_training.pixels_per_class=300",
    ], tmp_path)
    rows = {r["method"]: r for r in evaluate(cfg)}
    assert set(rows) == {"double threshold, 1 kV", "random forest, 1+2+4 kV"}
    assert rows["double threshold, 1 kV"]["rule"].count("|") == 4  # phase | t1 | phase | t2 | phase
    forest = rows["random forest, 1+2+4 kV"]
    assert forest["MDS"] > 0.8 and forest["MP %"] < rows["double threshold, 1 kV"]["MP %"]
    out = Path(cfg.paths.output_dir) / "random_forest_1+2+4_kV"
    table = (out / "feature_importances.md").read_text()
    assert "edge" in table and "smoothing" in table
    assert (out / "feature_importances_per_class.md").is_file() and (out / "feature_importances.png").is_file()


def test_learning_baselines_refuse_split_all_without_other_training_data(tiny_dataset, tmp_path):
    cfg = compose_config("evaluate", ["method=triple_threshold", f"data_dir={tiny_dataset}", "split=all",
                                      "method.triple_threshold.inputs=[[2]]"], tmp_path)
    with pytest.raises(ValueError, match="baseline_training.data_dir"):
        evaluate(cfg)
    # with a labelled training dataset named, it runs (here the same volume: a user's choice)
    cfg = compose_config("evaluate", ["method=triple_threshold", f"data_dir={tiny_dataset}", "split=all",
                                      "method.triple_threshold.inputs=[[2]]", f"baseline_training.data_dir={tiny_dataset}"],
                         tmp_path / "b")
    row = evaluate(cfg)
    assert row["method"] == "triple threshold, 2 kV" and row["split"] == "all (z 0-39)"
    assert (Path(cfg.paths.output_dir) / "prediction.tif").is_file()


def test_evaluate_names_what_is_missing(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate.*kmeans"):
        evaluate(compose_config("evaluate", [], tmp_path))
    cfg = compose_config("evaluate", ["method=kmeans", f"data_dir={tiny_dataset}", "method.kmeans.inputs=[[3]]"], tmp_path)
    with pytest.raises(ValueError, match=r"names 3kV, which .* does not hold \(found: 1kV, 2kV, 4kV\)"):
        evaluate(cfg)


def test_scores_of_three_phases_carry_iou_per_phase_and_awe():
    from fibml.metrics.table import score_row

    truth = np.zeros((4, 8, 8), np.uint8)
    truth[:, :4] = 1
    truth[:, 6:] = 2
    prediction = truth.copy()
    prediction[:, 6:] = 0  # phase 2 missed entirely
    row = score_row("m", "test", range(0, 4), prediction, truth, 3, (1, 1, 1), phases=["pore", "active", "binder"])
    assert row["IoU binder"] == 0.0 and row["IoU active"] == 1.0
    # IoU pore = 16 / 32 = 0.5; fractions 1/4, 1/2, 1/4 -> awe = 100 (1 - (0.5/4 + 1/2 + 0)) = 37.5
    assert row["awe %"] == pytest.approx(37.5) and row["IoU pore"] == pytest.approx(0.5)


def test_morphology_columns_in_the_comparison_match_the_metrics_of_each_prediction(tiny_dataset, tmp_path):
    from fibml.metrics.morphology import constrictivity, geodesic_tortuosity
    from fibml.pipelines.common import slug

    cfg = compose_config("evaluate", ["method=kmeans", f"data_dir={tiny_dataset}", "morphology.enabled=true",
                                      "morphology.axes=[y,x]", "method.kmeans.inputs=[[1],[4]]"], tmp_path)
    rows = evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    for row in rows:
        assert "tau z" not in row  # only the axes asked for
        prediction, _ = read_stack(out / slug(row["method"]) / "prediction.tif")
        assert row["tau y"] == pytest.approx(geodesic_tortuosity(prediction, 0, 1, 2.5)["mean"])
        assert row["tau x"] == pytest.approx(geodesic_tortuosity(prediction, 0, 2, 2.5)["mean"])
        assert row["beta"] == pytest.approx(constrictivity(prediction, 0, 2.5, inlet="z0")["beta"])
        assert row["tau y"] >= 1.0 and 0.0 <= row["beta"] <= 1.0
    # the 4 kV k-means over-segments the solid: its pore paths differ from the 1 kV one's
    assert rows[0]["tau y"] != rows[1]["tau y"]
    # the truth's own values head the comparison table
    labels = read_dataset(tiny_dataset).labels
    z0, z1 = (int(v) for v in rows[0]["split"].split("z ")[1].rstrip(")").split("-"))
    truth = labels[z0 : z1 + 1]
    with open(out / "comparison.csv") as f:
        table = {r["measure"]: r for r in csv.DictReader(f)}
    assert float(table["tau x"]["ground truth"]) == pytest.approx(geodesic_tortuosity(truth, 0, 2, 2.5)["mean"])
    assert float(table["beta"]["ground truth"]) == pytest.approx(constrictivity(truth, 0, 2.5, inlet="z0")["beta"])
    assert float(table["tau x"][rows[1]["method"]]) == pytest.approx(rows[1]["tau x"])


def test_morphology_columns_are_nan_where_undefined_and_settings_are_checked():
    from fibml.metrics.table import morphology_columns
    from fibml.pipelines.evaluate import morphology_settings

    solid = np.ones((6, 8, 8), np.uint8)  # no pore at all
    columns = morphology_columns(solid, (2.0, 2.0, 2.0), phase=0)
    assert set(columns) == {"tau z", "tau y", "tau x", "beta"} and all(np.isnan(v) for v in columns.values())
    channel = np.ones((6, 8, 8), np.uint8)
    channel[:, 2:5, 2:5] = 0  # a straight pore channel along z
    assert morphology_columns(channel, (2.0, 2.0, 2.0), axes=["z"])["tau z"] == pytest.approx(1.0)
    # anisotropic voxels are resampled first: a pore channel stepping 3 voxels in x from slice to
    # slice, with 4 nm slices, is the same as its slices repeated twice at 2 nm (not as 2 nm slices)
    stairs = np.ones((4, 8, 16), np.uint8)
    for z in range(4):
        stairs[z, 3:5, 2 + 3 * z : 6 + 3 * z] = 0
    thick = morphology_columns(stairs, (4.0, 2.0, 2.0), axes=["z"])
    assert thick == pytest.approx(morphology_columns(np.repeat(stairs, 2, axis=0), (2.0, 2.0, 2.0), axes=["z"]))
    assert thick["tau z"] < morphology_columns(stairs, (2.0, 2.0, 2.0), axes=["z"])["tau z"]
    assert morphology_settings({"enabled": False}) is None
    assert morphology_settings({"enabled": True, "axes": ["x"], "inlet": None}) == {
        "phase": 0, "axes": ["x"], "inlet": None}
    with pytest.raises(ValueError, match="morphology.axes"):
        morphology_settings({"enabled": True, "axes": ["w"]})
    with pytest.raises(ValueError, match="morphology.inlet must be one of z0, z1"):
        morphology_settings({"enabled": True, "inlet": "q0"})


def test_otsu_on_a_folder_of_vendor_slices_scored_without_ground_truth(tiny_dataset, tmp_path):
    """evaluate.py data_dir=<slices as the microscope wrote them>: the series read with its data bar
    cut off, every slice scored by the measures that need no labels, the same as the pixels in a
    dataset folder."""
    from fibml.io import write_stack
    from fibml.synth.vendor_files import write_fei_tiff

    stack, _ = read_stack(tiny_dataset / "bse_2kV.tif")
    grey = np.round((stack - stack.min()) / (stack.max() - stack.min()) * 255).astype(np.uint8)
    folder = tmp_path / "asv"
    folder.mkdir()
    for z, image in enumerate(grey):
        write_fei_tiff(folder / f"SliceImage - {z + 1}.tif", image, databar_rows=10, pixel_nm=2.5, hv_kv=2.0,
                       detector="CBS", mode="BSE")
    write_stack(tmp_path / "same" / "bse_2kV.tif", grey, 2.5)
    rows = [
        evaluate(compose_config("evaluate", ["method=otsu", f"data_dir={source}", "split=all", *extra], tmp_path / name))
        for name, source, extra in (("a", folder, ["acquisition.slice_thickness_nm=2.5"]), ("b", tmp_path / "same", []))
    ]
    assert rows[0]["solid fraction"] == rows[1]["solid fraction"] and "MP %" not in rows[0]
    assert rows[0]["e_TPCF"] == rows[1]["e_TPCF"]
    prediction, voxel = read_stack(tmp_path / "a" / "run" / "prediction.tif")
    assert prediction.shape == (40, 48, 48) and voxel == (2.5, 2.5, 2.5)
    with pytest.raises(ValueError, match="slice thickness is in none of the files.*acquisition.slice_thickness_nm"):
        evaluate(compose_config("evaluate", ["method=otsu", f"data_dir={folder}", "split=all"], tmp_path / "c"))
