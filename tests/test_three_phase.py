"""Three phases from two detector signals: the synthetic data set, the U-Net and the baselines."""

import csv
import json
from pathlib import Path

import pytest
import torch

from fibml.io import read_dataset, read_stack
from fibml.metrics.confusion import segmentation_scores
from fibml.pipelines.evaluate import evaluate
from fibml.pipelines.train import train
from tests.conftest import FAST_TRAIN, compose_config


def test_two_detector_dataset_folder(tiny_electrode):
    manifest = json.loads((tiny_electrode / "manifest.json").read_text())
    assert manifest["channels"] == ["inlens_1kV", "se2_1kV"] and manifest["voltages_kV"] == [1.0]
    assert manifest["phases"] == ["pore", "active material", "carbon binder"]
    dataset = read_dataset(tiny_electrode, ["se2_1kV", "inlens_1kV"])
    assert sorted(int(v) for v in set(dataset.labels.ravel().tolist())) == [0, 1, 2]
    # the chamber detector sees the pore background, the in-lens detector hardly: pores brighter in SE2
    pore = dataset.labels == 0
    solid = dataset.labels == 1
    se2, inlens = dataset.images["se2_1kV"], dataset.images["inlens_1kV"]
    assert se2[pore].mean() / se2[solid].mean() > 2 * inlens[pore].mean() / inlens[solid].mean()


def test_unet_trains_on_three_phases_and_reports_each(tiny_electrode, tmp_path):
    cfg = compose_config("train", FAST_TRAIN + ["experiment=three_phase", f"data.data_dir={tiny_electrode}"], tmp_path)
    metrics, objects = train(cfg)
    assert objects["model"].probabilities(torch.zeros(1, 2, 32, 32)).shape == (1, 3, 32, 32)  # two detectors in, three phases out
    row = (Path(cfg.paths.output_dir) / "metrics.md").read_text()
    for column in ("awe %", "IoU pore", "IoU active material", "IoU carbon binder"):
        assert f" {column} " in row, column
    assert "ResidualUNet 2d, se2_1kV+inlens_1kV" in row
    # the table's scores are those of the saved prediction against the three-phase truth
    run = Path(cfg.paths.output_dir)
    with open(run / "metrics.csv") as f:
        (scored,) = list(csv.DictReader(f))
    z0, z1 = (int(v) for v in scored["split"].split("z ")[1].rstrip(")").split("-"))
    prediction, _ = read_stack(run / "prediction.tif")
    truth = read_dataset(tiny_electrode).labels[z0 : z1 + 1]
    scores = segmentation_scores(prediction, truth, n_classes=3)
    assert float(scored["awe %"]) == pytest.approx(scores["awe"], rel=1e-9)
    assert metrics["test/awe %"] == pytest.approx(scores["awe"], rel=1e-6)
    for phase, iou in zip(("pore", "active material", "carbon binder"), scores["iou"]):
        assert float(scored[f"IoU {phase}"]) == pytest.approx(iou, rel=1e-9, nan_ok=True), phase


def test_labels_beyond_the_model_classes_are_refused(tiny_electrode, tmp_path):
    cfg = compose_config("train", FAST_TRAIN + ["experiment=three_phase", f"data.data_dir={tiny_electrode}",
                                                "model.n_classes=2"], tmp_path)
    with pytest.raises(ValueError, match=r"labels.tif holds phase labels 0..2, but the model predicts n_classes=2: "
                                         r"set model.n_classes=3"):
        train(cfg)


@pytest.mark.slow
def test_baselines_on_two_detectors_rank_as_in_the_paper(tiny_electrode, tmp_path):
    cfg = compose_config("evaluate", [
        "method=[double_threshold,triple_threshold,random_forest]", f"data_dir={tiny_electrode}",
        "method.double_threshold.inputs=[[se2_1kV]]", "method.triple_threshold.inputs=[[se2_1kV]]",
        "method.random_forest.inputs=[[se2_1kV,inlens_1kV],[se2_1kV]]", "method.random_forest.segmenter.n_estimators=16",
    ], tmp_path)
    rows = {r["method"]: r for r in evaluate(cfg)}
    print({name: round(row["awe %"], 2) for name, row in rows.items()})
    awe = {name: row["awe %"] for name, row in rows.items()}
    assert list(awe) == ["double threshold, se2_1kV", "triple threshold, se2_1kV",
                         "random forest, se2_1kV+inlens_1kV", "random forest, se2_1kV"]
    assert rows["double threshold, se2_1kV"]["IoU carbon binder"] >= 0  # one IoU per named phase
    # both detectors beat one, and the forest beats the thresholds
    assert awe["random forest, se2_1kV+inlens_1kV"] < awe["random forest, se2_1kV"] < awe["triple threshold, se2_1kV"]
    assert awe["triple threshold, se2_1kV"] <= awe["double threshold, se2_1kV"]
