"""Tests for the random-forest baseline (fibml.baselines.forest) on small volumes with known answers."""

import numpy as np
import pytest
from scipy import ndimage

from fibml.baselines import forest
from fibml.baselines.common import UNLABELLED, sparse_labels
from fibml.baselines.forest import (
    FEATURE_GROUPS,
    RandomForestSegmenter,
    feature_halo,
    filter_features,
)

SHAPE = (12, 32, 32)
SMALL_FOREST = {"n_estimators": 10, "max_depth": 8, "n_jobs": 1}


def blobs(shape=SHAPE, n_levels=2, sigma=2.0, seed=0) -> np.ndarray:
    """uint8 phases 0 .. n_levels-1 from a smooth random field cut at its quantiles (equal volumes);
    sigma (voxels) may be per axis: (0, s, s) gives slices independent of each other."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma, mode="wrap")
    return np.digitize(field, np.quantile(field, np.linspace(0, 1, n_levels + 1)[1:-1])).astype(np.uint8)


def render(levels: np.ndarray, values, noise=0.05, seed=1) -> np.ndarray:
    """float32 image: voxel of level i gets values[i] plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return (np.asarray(values, dtype=float)[levels] + rng.normal(0, noise, levels.shape)).astype(np.float32)


def two_detector_volume():
    """Three phases; phase 2 is mid-grey like phase 1 at detector 0 and dark like phase 0 at detector 1,
    so neither detector alone tells it apart, the pair does."""
    solid, kind = blobs(seed=0), blobs(seed=10)  # independent: where phase 2 lies says nothing about phase 1
    truth = np.where(solid == 1, 1 + kind, 0).astype(np.uint8)
    images = np.stack([render(truth, [0.1, 0.5, 0.5], seed=1), render(truth, [0.1, 0.9, 0.1], seed=2)])
    return images, truth


def milling_volume(shape=SHAPE):
    """The phase of a voxel is whether the voxel below it (z + 1) is bright; every slice is an
    independent pattern, so nothing in slice z itself tells its phase (mirrored at the last slice)."""
    bright = blobs(shape, sigma=(0, 2, 2), seed=3)
    truth = np.concatenate([bright[1:], bright[-1:]])
    return render(bright, [0.2, 0.8], seed=4), truth


def accuracy(predicted, truth, z) -> float:
    return float((predicted[z] == truth[z]).mean())


# --- the forest learns what the features make learnable ----------------------------------------------


def test_two_detectors_tell_apart_what_one_cannot():
    images, truth = two_detector_volume()
    labels = sparse_labels(truth, z_range=range(2, 10), n_slices=2, pixels_per_class=None)  # slices 2 and 9
    unseen = [z for z in range(SHAPE[0]) if z not in (2, 9)]
    both = RandomForestSegmenter(**SMALL_FOREST).fit(images, labels).predict(images)
    one = RandomForestSegmenter(**SMALL_FOREST).fit(images[0], labels).predict(images[0])
    assert accuracy(both, truth, unseen) > 0.95
    assert accuracy(one, truth, unseen) < 0.85  # phases 1 and 2 look alike at detector 0 (0.77)
    assert both.dtype == np.uint8 and both.shape == SHAPE
    assert set(np.unique(both)) == {0, 1, 2}


def test_z_neighbour_features_learn_the_milling_progress():
    images, truth = milling_volume()
    labels = sparse_labels(truth, z_range=range(10), n_slices=3, pixels_per_class=None)  # slices 0, 4/5, 9
    unseen = [z for z in range(SHAPE[0] - 1) if not (labels[z] != UNLABELLED).any()]
    tailored = RandomForestSegmenter(z_neighbours=True, **SMALL_FOREST).fit(images, labels)
    plain = RandomForestSegmenter(z_neighbours=False, **SMALL_FOREST).fit(images, labels)
    assert accuracy(tailored.predict(images), truth, unseen) > 0.95
    assert accuracy(plain.predict(images), truth, unseen) < 0.65  # a coin toss: slice z says nothing

    groups = tailored.feature_importances()
    assert groups[0]["group"] == "z-neighbour" and groups[0]["importance"] > 0.5
    per_class = tailored.class_importances(images, labels, n_repeats=2, max_samples=1000)
    for phase in (0, 1):
        rows = [row for row in per_class if row["class"] == phase]
        assert rows[0]["group"] == "z-neighbour"
        assert rows[0]["importance"] > 0.3 and rows[0]["recall"] > 0.95
        assert all(abs(row["importance"]) < 0.1 for row in rows[1:])  # nothing else matters


def test_label_values_are_kept_and_unlabelled_voxels_ignored():
    images, truth = two_detector_volume()
    labels = sparse_labels(truth, n_slices=2, pixels_per_class=200)
    labels[labels == 1] = 7  # phase values need not be consecutive
    labels[labels == 2] = UNLABELLED  # phase 2 unlabelled: the forest knows two phases only
    model = RandomForestSegmenter(**SMALL_FOREST).fit(images, labels)
    np.testing.assert_array_equal(model.classes_, [0, 7])
    predicted = model.predict(images)
    assert set(np.unique(predicted)) == {0, 7}
    known = truth < 2
    assert accuracy(predicted == 7, truth == 1, known) > 0.95
    assert model.predict_proba(images).shape == (2, *SHAPE)


# --- chunked prediction is exact ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, sigmas, shape",
    [("2d", (0.7, 1.6, 3.5), (12, 24, 24)), ("3d", (0.7, 1.0), (24, 12, 12))],  # 3D halo 6: chunks cut on both sides
)
def test_chunked_prediction_equals_whole_volume(dims, sigmas, shape):
    truth = blobs(shape, seed=5)
    images = np.stack([render(truth, [0.3, 0.7], noise=0.2, seed=6), render(truth, [0.6, 0.4], noise=0.2, seed=7)])
    labels = sparse_labels(truth, n_slices=2, pixels_per_class=100)
    model = RandomForestSegmenter(dims=dims, sigmas=sigmas, chunk_slices=shape[0], n_estimators=5, max_depth=6,
                                  n_jobs=1).fit(images, labels)
    whole_proba, whole = model.predict_proba(images), model.predict(images)
    whole_features = model.chunk_features(images, 0, shape[0])
    model.chunk_slices = 3
    np.testing.assert_array_equal(model.predict(images), whole)
    np.testing.assert_allclose(model.predict_proba(images), whole_proba, rtol=0, atol=1e-7)
    chunked = np.concatenate([model.chunk_features(images, z, z + 3) for z in range(0, shape[0], 3)], axis=1)
    np.testing.assert_array_equal(chunked, whole_features)  # bitwise
    assert 0.05 < whole.mean() < 0.95  # both phases predicted: the comparison is not trivial

    model.halo -= 1  # one slice short of the rule: the chunk seams show
    chunked = np.concatenate([model.chunk_features(images, z, z + 3) for z in range(0, shape[0], 3)], axis=1)
    assert not np.array_equal(chunked, whole_features)


def test_fit_filters_only_the_labelled_slices_and_their_halo(monkeypatch):
    images, truth = two_detector_volume()
    labels = sparse_labels(truth, z_range=range(2, 10), n_slices=2, pixels_per_class=50)  # slices 2 and 9
    blocks = []
    compute = forest.FeaturePlan.compute
    monkeypatch.setattr(
        forest.FeaturePlan, "compute", lambda self, block, *a: blocks.append(block.shape[1]) or compute(self, block, *a)
    )
    model = RandomForestSegmenter(**SMALL_FOREST).fit(images, labels)
    assert blocks == [3, 3]  # slices 1-3 and 8-10: 2D halo of one slice for the z-neighbours
    z, y, x = np.nonzero(labels != UNLABELLED)
    whole = model.chunk_features(images, 0, SHAPE[0])
    np.testing.assert_array_equal(model.features_at(images, z, y, x), whole[:, z, y, x].T)


def test_same_seed_same_result_whatever_the_thread_count():
    images, truth = two_detector_volume()
    labels = sparse_labels(truth, n_slices=2, pixels_per_class=300)
    proba = [
        RandomForestSegmenter(n_estimators=6, seed=seed, n_jobs=n_jobs, max_training_samples=500)
        .fit(images, labels)
        .predict_proba(images)
        for seed, n_jobs in ((0, 1), (0, 2), (1, 1))
    ]
    np.testing.assert_array_equal(proba[0], proba[1])
    assert not np.array_equal(proba[0], proba[2])


def test_training_sample_is_stratified_and_seeded():
    labels = np.full((4, 50, 50), UNLABELLED, dtype=np.uint8)
    labels[1] = 0
    labels[2, :, :40] = 1
    labels[2, 0, 45:] = 2  # 5 voxels: a rare phase keeps a voxel
    z, y, x = forest.sample_labelled(labels, 1000, np.random.default_rng(0))
    counts = np.bincount(labels[z, y, x], minlength=3)
    np.testing.assert_array_equal(counts, [1000 * 2500 // 4505, 1000 * 2000 // 4505, 1])
    again = forest.sample_labelled(labels, 1000, np.random.default_rng(0))
    np.testing.assert_array_equal(np.ravel_multi_index(again, labels.shape), np.ravel_multi_index((z, y, x), labels.shape))


# --- filter_features ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, n_channels, options, n_features",
    [
        ("2d", 2, {}, 87),  # 3 filtered channels x (1 + 3 sigmas x 8) + 3 x 4 z-neighbour
        ("3d", 2, {}, 105),  # 3 x (1 + 3 x 10) + 3 x 4
        ("2d", 1, {}, 29),
        ("2d", 2, {"channel_difference": False}, 58),
        ("2d", 2, {"z_neighbours": False}, 75),
        ("2d", 3, {"sigmas": (1.0,)}, 6 * (1 + 8 + 4)),  # 3 channels + 3 pairwise differences
    ],
)
def test_feature_shapes_names_and_groups(dims, n_channels, options, n_features):
    images = np.random.default_rng(0).normal(size=(n_channels, 5, 8, 9))
    features, names, groups = filter_features(images, dims=dims, **options)
    assert features.shape == (n_features, 5, 8, 9) and features.dtype == np.float32
    assert len(names) == len(set(names)) == len(groups) == n_features
    assert set(groups) <= set(FEATURE_GROUPS)
    assert ("z-neighbour" in groups) == options.get("z_neighbours", True)


def test_feature_names_follow_the_channels():
    images = np.random.default_rng(0).normal(size=(2, 4, 8, 8))
    features, names, groups = filter_features(images, channel_names=["se2", "inlens"])
    assert names[0] == "se2 raw" and groups[0] == "smoothing"
    difference = names.index("se2-inlens raw")
    np.testing.assert_allclose(features[difference], images[0] - images[1], atol=1e-6)
    assert groups[names.index("inlens gaussian s=1.6")] == "smoothing"
    assert groups[names.index("se2 gradient magnitude s=3.5")] == "edge"
    assert groups[names.index("se2-inlens hessian ev2 s=0.7")] == "texture"
    assert groups[names.index("inlens (z+1) - (z) s=0.7")] == "z-neighbour"
    with pytest.raises(ValueError, match="channel_names has 1 name"):
        filter_features(images, channel_names=["se2"])


def test_2d_features_of_a_slice_ignore_the_other_slices():
    images = np.random.default_rng(0).normal(size=(1, 10, 16, 16)).astype(np.float32)
    changed = images.copy()
    changed[0, 6] += 1.0
    for dims, slice_3_changes in (("2d", False), ("3d", True)):
        before, names, _ = filter_features(images, dims=dims)
        after, _, _ = filter_features(changed, dims=dims)
        assert np.array_equal(before[:, 3], after[:, 3]) != slice_3_changes
        below = names.index("ch0 slice below (z+1) s=0.7")
        assert not np.array_equal(before[below, 5], after[below, 5])  # slice 5 sees slice 6 below it


def test_known_feature_values():
    ramp = np.broadcast_to(0.5 * np.arange(48, dtype=np.float32), (4, 16, 48))  # intensity 0.5 per voxel along x
    constant = np.full((4, 16, 48), 3.0, dtype=np.float32)
    features, names, _ = filter_features(np.stack([constant, constant, ramp]))
    at = {name: i for i, name in enumerate(names)}
    for s in ("0.7", "1.6", "3.5"):
        np.testing.assert_allclose(features[at[f"ch0 gaussian s={s}"]], 3.0, rtol=1e-6)
        for zero in ("gradient magnitude", "difference of gaussians", "hessian ev1", "structure tensor ev1"):
            np.testing.assert_allclose(features[at[f"ch0 {zero} s={s}"]], 0.0, atol=1e-5)
        # scipy's truncated second-derivative kernel sums to -0.01 (not 0) at sigma 0.7
        np.testing.assert_allclose(features[at[f"ch0 laplacian of gaussian s={s}"]], 0.0, atol=0.01 * 3.0)
        interior = (slice(None), slice(None), slice(20, 28))  # beyond the filters' reach from the mirrored x ends
        np.testing.assert_allclose(features[at[f"ch2 gradient magnitude s={s}"]][interior], 0.5, rtol=3e-3)
        np.testing.assert_allclose(features[at[f"ch2 hessian ev1 s={s}"]][interior], 0.0, atol=1e-4)
        # structure tensor of a ramp: Sobel derivative 8 x 0.5 = 4 along x, squared, 0 along y
        np.testing.assert_allclose(features[at[f"ch2 structure tensor ev1 s={s}"]][interior], 16.0, rtol=1e-3)
        np.testing.assert_allclose(features[at[f"ch2 structure tensor ev2 s={s}"]][interior], 0.0, atol=1e-3)
    # the difference of identical channels is 0, and so is every feature of it
    assert not features[[i for i, name in enumerate(names) if name.startswith("ch0-ch1 ")]].any()

    # z-neighbours: the in-plane Gaussian of the next / previous slice, the stack ends mirrored
    images = np.random.default_rng(1).normal(size=(5, 12, 12)).astype(np.float32)
    features, names, _ = filter_features(images, sigmas=(0.7, 2.0))
    smooth = ndimage.gaussian_filter(images, (0, 0.7, 0.7), mode="reflect")
    np.testing.assert_allclose(features[names.index("ch0 gaussian s=0.7")], smooth, atol=1e-6)
    below = features[names.index("ch0 slice below (z+1) s=0.7")]
    above = features[names.index("ch0 slice above (z-1) s=0.7")]
    np.testing.assert_allclose(below, smooth[[1, 2, 3, 4, 4]], atol=1e-6)
    np.testing.assert_allclose(above, smooth[[0, 0, 1, 2, 3]], atol=1e-6)
    np.testing.assert_allclose(features[names.index("ch0 (z+1) - (z) s=0.7")], below - smooth, atol=1e-6)


def test_halo_rule():
    assert feature_halo("2d") == 1 and feature_halo("2d", z_neighbours=False) == 0
    # 3D: the DoG's 1.6 sigma = 5.6 -> radius int(22.4 + 0.5) = 22; Hessian at 3.5: 14 + 2 = 16
    assert feature_halo("3d", (0.7, 1.6, 3.5)) == 22
    assert feature_halo("3d", (1.0,), z_neighbours=False) == 6  # max(int(6.9), 4 + 2)
    assert RandomForestSegmenter(dims="3d", sigmas=(0.5,)).halo == 4  # 2 + 2 for the Hessian


# --- importances and errors ---------------------------------------------------------------------------


def test_feature_importances_sum_to_one_and_group_by_channel():
    images, truth = two_detector_volume()
    images[1] = np.random.default_rng(9).normal(size=SHAPE)  # detector 1 is pure noise now
    labels = sparse_labels(truth, n_slices=2, pixels_per_class=300)
    labels[labels == 2] = 1  # two phases that detector 0 tells apart
    model = RandomForestSegmenter(channel_names=["se2", "noise"], **SMALL_FOREST).fit(images, labels)
    by_group = model.feature_importances()
    assert sum(row["importance"] for row in by_group) == pytest.approx(1.0)
    assert [row["importance"] for row in by_group] == sorted((row["importance"] for row in by_group), reverse=True)
    by_channel = {row["channel"]: row["importance"] for row in model.feature_importances(by="channel")}
    assert sum(by_channel.values()) == pytest.approx(1.0)
    assert by_channel["se2"] > 0.5 > by_channel["noise"]
    both = model.feature_importances(by=("group", "channel"))
    assert set(both[0]) == {"group", "channel", "importance"} and len(both) == 3 * 4
    with pytest.raises(ValueError, match="by must name"):
        model.feature_importances(by="detector")


def test_errors_say_what_was_expected():
    images, truth = two_detector_volume()
    labels = sparse_labels(truth, n_slices=2, pixels_per_class=50)
    model = RandomForestSegmenter(**SMALL_FOREST)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(images)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.feature_importances()
    with pytest.raises(ValueError, match=r"labels have shape \(12, 32, 31\), the images \(z, y, x\) \(12, 32, 32\)"):
        model.fit(images, labels[:, :, :31])
    with pytest.raises(ValueError, match="no labelled voxel"):
        model.fit(images, np.full(SHAPE, UNLABELLED, dtype=np.uint8))
    model.fit(images, labels)
    with pytest.raises(ValueError, match=r"images have 1 channel\(s\), the forest was trained on 2 \(ch0, ch1\)"):
        model.predict(images[0])
    with pytest.raises(ValueError, match="dims must be one of"):
        RandomForestSegmenter(dims="2.5d")
    with pytest.raises(ValueError, match="sigmas must be"):
        RandomForestSegmenter(sigmas=(1.0, -1.0))
    with pytest.raises(ValueError, match="chunk_slices must be at least 1"):
        RandomForestSegmenter(chunk_slices=0)
    assert RandomForestSegmenter.needs_labels is True
