"""Otsu and multi-thresholds (by hand and fitted with a depth-2 tree), sparse training labels."""

import numpy as np
import pytest

from fibml.baselines import UNLABELLED, MultiThreshold, OtsuThreshold, sparse_labels
from fibml.metrics.confusion import average_weighted_error, confusion_matrix


def _three_phase(seed=0, shape=(6, 40, 40)):
    """Grey levels: void 20 (and bright void 90 on a stripe), carbon 40, active 65; noise sd 3."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=shape).astype(np.uint8)  # 0 void, 1 active, 2 carbon
    grey = np.choose(truth, [20.0, 65.0, 40.0])
    bright = (truth == 0) & (np.arange(shape[2]) % 4 == 0)  # a quarter of the void is brighter than the solid
    grey[bright] = 90.0
    return truth, (grey + rng.normal(0, 3, shape)).astype(np.float32)


def test_otsu_separates_two_grey_levels_and_maps_dark_to_pore():
    rng = np.random.default_rng(1)
    truth = (rng.random((4, 32, 32)) < 0.3).astype(np.uint8)
    image = np.where(truth == 1, 200.0, 50.0) + rng.normal(0, 10, truth.shape)
    otsu = OtsuThreshold()
    assert otsu.needs_labels is False
    labels = otsu.fit(image).predict(image)
    assert (labels != truth).sum() <= 2  # only 4-sigma noise outliers can cross
    assert 80 < otsu.thresholds_[0] < 170  # in the gap between the two levels
    # the inverted mapping swaps the phases
    np.testing.assert_array_equal(OtsuThreshold(interval_phases=[1, 0]).predict(image), 1 - labels)


def test_multi_otsu_three_levels_and_slice_mode():
    truth, image = _three_phase()
    image[truth == 0] = 20.0  # no bright void: three clean levels
    labels = OtsuThreshold(n_phases=3, interval_phases=[0, 2, 1]).predict(image)
    assert (labels == truth).mean() > 0.99
    # slice mode: a brightness drift between slices that one global threshold cannot follow
    drift = image + np.arange(image.shape[0])[:, None, None] * 30.0
    per_slice = OtsuThreshold(n_phases=3, interval_phases=[0, 2, 1], mode="slice")
    assert (per_slice.predict(drift) == truth).mean() > 0.99
    assert per_slice.thresholds_.shape == (image.shape[0], 2)
    assert (OtsuThreshold(n_phases=3, interval_phases=[0, 2, 1]).predict(drift) == truth).mean() < 0.8


def test_multi_threshold_by_hand_follows_the_paper_intervals():
    # the paper's triple threshold: 0-27 void, 28-48 carbon, 49-76 NMC, above void again
    rule = MultiThreshold(thresholds=[27.5, 48.5, 76.5], phases=[0, 2, 1, 0])
    assert rule.needs_labels is False
    grey = np.array([[[0, 27, 28, 48, 49, 76, 77, 255]]], dtype=np.float32)
    np.testing.assert_array_equal(rule.predict(grey)[0, 0], [0, 0, 2, 2, 1, 1, 0, 0])
    assert rule.describe() == "0 | 27.5 | 2 | 48.5 | 1 | 76.5 | 0"
    # a value exactly on a threshold belongs to the interval below (g <= t)
    assert MultiThreshold(thresholds=[10.0], phases=[0, 1]).predict(np.full((1, 1, 2), 10.0))[0, 0, 0] == 0


def test_fitted_triple_threshold_finds_bright_void_and_beats_the_double():
    truth, image = _three_phase()
    train = sparse_labels(truth, range(0, 3), n_slices=2, pixels_per_class=300)
    double = MultiThreshold(n_thresholds=2).fit(image, train)
    triple = MultiThreshold(n_thresholds=3).fit(image, train)
    assert double.needs_labels and triple.needs_labels
    test = slice(3, 6)
    awe = {name: average_weighted_error(confusion_matrix(rule.predict(image)[test], truth[test], 3))
           for name, rule in (("double", double), ("triple", triple))}
    # the triple threshold learns void | carbon | active | void: thresholds near 30, 52, 77
    np.testing.assert_array_equal(triple.phases_, [0, 2, 1, 0])
    np.testing.assert_allclose(triple.thresholds_, [30, 52.5, 77.5], atol=4)
    assert awe["triple"] < 2.0
    assert len(double.thresholds_) == 2 and awe["double"] > awe["triple"] + 10  # it misses the bright void


def test_multi_threshold_errors():
    with pytest.raises(ValueError, match="strictly ascending"):
        MultiThreshold(thresholds=[5, 3])
    with pytest.raises(ValueError, match="one label .* per interval"):
        MultiThreshold(thresholds=[5, 8], phases=[0, 1])
    with pytest.raises(ValueError, match="phases without thresholds"):
        MultiThreshold(phases=[0, 1])
    with pytest.raises(RuntimeError, match="call fit"):
        MultiThreshold().predict(np.zeros((1, 4, 4)))
    image = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="no labelled voxel"):
        MultiThreshold().fit(image, np.full((2, 4, 4), UNLABELLED, np.uint8))
    with pytest.raises(ValueError, match=r"labels have shape \(2, 4, 5\)"):
        MultiThreshold().fit(image, np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="one phase only"):
        MultiThreshold().fit(image, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="channel 1 does not exist"):
        OtsuThreshold(channel=1).predict(image)
    with pytest.raises(ValueError, match="fewer than 2 distinct"):
        OtsuThreshold().predict(np.ones((2, 4, 4)))


def test_sparse_labels_stay_in_their_block_and_sample_every_phase():
    truth, _ = _three_phase(shape=(20, 30, 30))
    sparse = sparse_labels(truth, range(2, 12), n_slices=3, pixels_per_class=50, seed=3)
    labelled = np.nonzero((sparse != UNLABELLED).any(axis=(1, 2)))[0]
    np.testing.assert_array_equal(labelled, [2, 6, 11])  # evenly spaced, inside the block
    for z in labelled:
        mask = sparse[z] != UNLABELLED
        np.testing.assert_array_equal(sparse[z][mask], truth[z][mask])  # labels are the truth
        assert np.bincount(sparse[z][mask], minlength=3).tolist() == [50, 50, 50]
    whole = sparse_labels(truth, range(0, 5), n_slices=1, pixels_per_class=None)
    np.testing.assert_array_equal(whole[0], truth[0])
    assert (whole[1:] == UNLABELLED).all()
    np.testing.assert_array_equal(sparse, sparse_labels(truth, range(2, 12), n_slices=3, pixels_per_class=50, seed=3))
    with pytest.raises(ValueError, match="n_slices must be in"):
        sparse_labels(truth, range(0, 2), n_slices=3)
