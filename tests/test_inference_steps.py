"""The steps of predict_to_disk on their own: the checked plan (DiskPlan), the resume ledger
(open / resume / commit / finalise) and the inference settings parsed once from a config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from fibml.config import CONFIG_DIR
from fibml.inference import (
    FINGERPRINT,
    SEGMENTATION,
    WORK_DIR,
    InferenceSettings,
    ResumeLedger,
    finished_chunks,
    plan_prediction,
    probability_name,
)
from fibml.io import read_stack


def _plan(**overrides):
    channels = [np.zeros((10, 24, 20), np.float32)] * 2
    settings = {"dims": "2.5d", "patch_size": 16, "n_adjacent": 3, "chunk_slices": 4, "n_classes": 3,
                "save_probabilities": True, "voxel_size_nm": 2.5} | overrides
    return plan_prediction(channels, **settings)


def test_plan_settles_chunks_files_and_the_fingerprint_layout():
    plan = _plan()
    assert [c.core[0] for c in plan.chunks] == [(0, 4), (4, 8), (8, 10)]
    assert plan.files == [probability_name(0), probability_name(1), probability_name(2), SEGMENTATION]
    assert plan.layout == {"shape": [10, 24, 20], "dims": "2.5d", "patch": [16, 16], "overlap": 0.5, "n_adjacent": 3,
                           "chunking": [4], "n_classes": 3, "save_probabilities": True, "voxel_size_nm": [2.5] * 3}
    # slices_per_batch=None: as many slices as keep the float32 input batch under 256 MB, at most a chunk
    assert plan.slices_per_batch == 4
    assert _plan(dims="2d").layout["n_adjacent"] == 1


@pytest.mark.parametrize(("setting", "message"), [
    ({"n_adjacent": 4}, "n_adjacent must be a positive odd number, got 4"),
    ({"overlap": 1.0}, "overlap must be >= 0 and < 1"),
    ({"chunk_slices": 0}, "chunk_slices must be >= 1"),
    ({"n_classes": 300}, "n_classes must be 1 .. 256"),
    ({"dims": "4d"}, "dims must be one of"),
])
def test_plan_refuses_bad_settings_naming_them(setting, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _plan(**setting)


def test_ledger_opens_commits_resumes_and_finalises(tmp_path):
    plan = _plan(save_probabilities=False)
    out = tmp_path / "out"
    ledger = ResumeLedger(out, {"settings": {"a": 1}}, plan.files)
    assert ledger.open(plan.shape, plan.voxel, len(plan.chunks)) is None  # set up anew
    assert (out / WORK_DIR / SEGMENTATION).is_file() and ledger.committed() == {}

    ledger.done_file(0, "cpu").commit(1, [5, 6, 7], 0.25)
    assert finished_chunks(out) == [1]
    # a second run with the same fingerprint resumes: chunk 1 stays committed, nothing is recreated
    again = ResumeLedger(out, {"settings": {"a": 1}}, plan.files)
    assert again.open(plan.shape, plan.voxel, len(plan.chunks)) is None
    assert again.committed() == {1: {"class_counts": [5, 6, 7], "seconds": 0.25}}
    # another fingerprint is refused, naming the setting that differs, unless overwrite
    with pytest.raises(ValueError, match=r"other settings \(differing: settings.a\)"):
        ResumeLedger(out, {"settings": {"a": 2}}, plan.files).open(plan.shape, plan.voxel, len(plan.chunks))

    summary = again.finalise({"n_chunks": 3, "class_fractions": [0.5, 0.5]})
    assert not (out / WORK_DIR).exists() and summary["paths"]["segmentation"] == out / SEGMENTATION
    assert read_stack(out / SEGMENTATION)[1] == (2.5, 2.5, 2.5)
    stored = json.loads((out / FINGERPRINT).read_text())
    assert stored["fingerprint"] == {"settings": {"a": 1}} and stored["summary"]["n_chunks"] == 3
    # finished: the next open returns the stored summary and touches nothing
    assert ResumeLedger(out, {"settings": {"a": 1}}, plan.files).open(plan.shape, plan.voxel, 3) == stored["summary"]
    ResumeLedger(out, {"settings": {"a": 2}}, plan.files).open(plan.shape, plan.voxel, 3, overwrite=True)
    assert not (out / FINGERPRINT).exists() and (out / WORK_DIR / SEGMENTATION).is_file()


def test_inference_settings_take_their_defaults_from_the_yaml_file():
    yaml = OmegaConf.load(CONFIG_DIR / "inference" / "default.yaml")
    settings = InferenceSettings.from_config({"sw_batch_size": 4})
    assert settings.sw_batch_size == 4
    assert (settings.overlap, settings.slices_per_batch, settings.chunk_slices, settings.reuse_memory) == (
        yaml.overlap, yaml.slices_per_batch, yaml.chunk_slices, yaml.reuse_memory)
    assert InferenceSettings.from_config(OmegaConf.create({"devices": ["cpu", "cpu"]})).device_list() == ["cpu", "cpu"]


def test_inference_settings_name_a_misspelt_key():
    with pytest.raises(ValueError, match="inference.chunk_slice is not an inference setting: did you mean "
                                         "inference.chunk_slices"):
        InferenceSettings.from_config({"chunk_slice": 4})
    with pytest.raises(ValueError, match="inference.precision must be 32 or bf16, got '16'"):
        InferenceSettings.from_config({"precision": 16})
    with pytest.raises(ValueError, match="inference.devices must be null, all, or a list"):
        InferenceSettings.from_config({"devices": "cuda:0"}).device_list()
