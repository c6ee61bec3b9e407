"""Depth-weighted preprocessed images (cyclegan-simulation-domain-adaptation.txt, 2.3)."""

from __future__ import annotations

import numpy as np
import pytest

from fibml.io import read_dataset, write_dataset
from fibml.synth.imaging import shine_through_profile
from fibml.synth.preprocess import (
    depth_weighted_stack,
    depth_weights,
    formula_eta,
    preprocess_dataset,
)


def test_formula_eta_is_the_shine_through_model():
    depth = np.array([0.0, 10.0, 50.0, 190.0])
    for voltage in (1.0, 4.0):
        expected = shine_through_profile(voltage, depth, substrate="Au")
        np.testing.assert_allclose(formula_eta(79, voltage, depth), expected)
    assert formula_eta(np.array([[29], [79]]), 2.0, depth).shape == (2, 4)


def test_depth_weights_gold_over_epoxy_and_falling_with_depth():
    weights = depth_weights(formula_eta, ["epoxy", "Au"], 2.0, n_slices=12, slice_nm=2.5)
    assert weights.shape == (2, 12) and weights.min() >= 0 and weights.max() == pytest.approx(1.0)
    assert weights[1, 0] == pytest.approx(1.0) and weights[1, 0] > weights[0, 0] * 3  # gold >> epoxy at the face
    assert np.all(np.diff(weights[1]) < 0)  # deeper gold shines through less
    assert np.all(weights[1] > weights[0])  # ... but never darker than the pore
    shallow = depth_weights(formula_eta, ["epoxy", "Au"], 1.0, n_slices=12, slice_nm=2.5)
    assert shallow[1, -1] < weights[1, -1]  # at 1 kV the signal comes from nearer the face
    with pytest.raises(ValueError, match="returned shape"):
        depth_weights(lambda Z, E, d: np.zeros(3), ["epoxy", "Au"], 2.0, 4, 2.5)


def test_depth_weighted_stack_by_hand():
    # slices alternate gold / epoxy (a period of 2 slices); column x=1 is the negative of x=0
    column = np.array([1, 0, 1, 0], dtype=np.uint8)
    labels = np.stack([column, 1 - column], axis=1)[:, None, :]  # (z 4, y 1, x 2)
    weights = np.array([[0.1, 0.1, 0.1], [1.0, 0.6, 0.3]])  # (epoxy, gold) x depth 0, 1, 2
    low, span = 0.3, 1.6  # sums of the column minima, maxima - minima
    image = depth_weighted_stack(labels, weights, boundary="periodic")
    assert image.dtype == np.float32 and image.shape == labels.shape
    gold_face = (1.0 + 0.1 + 0.3 - low) / span  # 0.6875
    epoxy_face = (0.1 + 0.6 + 0.1 - low) / span  # 0.3125
    np.testing.assert_allclose(image[:, 0, 0], [gold_face, epoxy_face] * 2, rtol=1e-6)
    np.testing.assert_allclose(image[:, 0, 1], [epoxy_face, gold_face] * 2, rtol=1e-6)
    mirrored = depth_weighted_stack(labels, weights, boundary="reflect")  # slice 3, 3, 2 under the last ones
    np.testing.assert_allclose(mirrored[2:, 0, 0], [(1.0 + 0.1 + 0.1 - low) / span, (0.1 + 0.1 + 0.3 - low) / span],
                               rtol=1e-6)
    assert depth_weighted_stack(np.ones((3, 2, 2), np.uint8), weights).max() == pytest.approx(1.0)
    assert depth_weighted_stack(np.zeros((3, 2, 2), np.uint8), weights).max() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="materials"):
        depth_weighted_stack(labels + 1, weights)


def test_preprocess_dataset_writes_a_readable_dataset(tmp_path):
    rng = np.random.default_rng(0)
    labels = (rng.random((10, 8, 8)) < 0.4).astype(np.uint8)
    source = write_dataset(tmp_path / "source", {2.0: rng.random((10, 8, 8))}, (2.5, 2.0, 2.0), labels=labels,
                           manifest={"materials": ["epoxy", "Au"], "periodic": True, "seed": 7})
    out = preprocess_dataset(source, "formula", [1, 2, 4], tmp_path / "pre", n_slices=6, progress=False)
    dataset = read_dataset(out, require_labels=True)
    assert dataset.voltages == [1.0, 2.0, 4.0] and dataset.voxel_size_nm == (2.5, 2.0, 2.0)
    np.testing.assert_array_equal(dataset.labels, labels)
    manifest = dataset.manifest
    assert manifest["preprocessed"] is True and manifest["n_slices"] == 6 and manifest["slice_nm"] == 2.5
    assert manifest["boundary"] == "periodic" and manifest["materials"] == ["epoxy", "Au"] and manifest["seed"] == 7
    expected = depth_weighted_stack(labels, depth_weights(formula_eta, ["epoxy", "Au"], 2.0, 6, 2.5))
    np.testing.assert_allclose(dataset.images[2.0], expected, rtol=1e-6)
    contrast = {}
    for voltage, image in dataset.images.items():
        assert 0 <= image.min() and image.max() <= 1
        contrast[voltage] = image[labels == 1].mean() - image[labels == 0].mean()
    assert min(contrast.values()) > 0.1  # solid bright, pore dark
    assert contrast[1.0] > contrast[2.0] > contrast[4.0]  # higher voltages see more of the slices below
    with pytest.raises(FileExistsError):
        preprocess_dataset(source, "formula", [2], tmp_path / "pre", progress=False)
    arrays = preprocess_dataset(labels, formula_eta, [2], tmp_path / "from_array", voxel_size_nm=2.5, progress=False)
    assert read_dataset(arrays).manifest["source"] is None
