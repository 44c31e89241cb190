import numpy as np
import pytest

from napari_datus.core.errors import DatusError
from napari_datus.core.propagate import (
    PropagateConfig,
    Propagator,
    keep_labels,
    patch_counts,
    patch_features,
    scores_to_mask,
    segment_vote,
    training_set,
)


def test_patch_counts_count_each_patchs_pixels_per_class_and_unlabelled():
    labels = np.array([[0, 0, 1, 1],
                       [0, 255, 1, 1],
                       [2, 2, 255, 255],
                       [2, 2, 255, 0]], dtype=np.uint8)
    counts = patch_counts(labels, grid=2, n_classes=3)
    assert counts.shape == (4, 4)
    assert counts.tolist() == [[3, 0, 0, 1], [0, 4, 0, 0], [0, 0, 4, 0], [1, 0, 0, 3]]


def test_patch_counts_of_a_non_square_image_follow_the_square_resize():
    labels = np.zeros((4, 8), dtype=np.uint8)
    labels[:, 4:] = 1  # right half: the right column of a 2x2 grid
    counts = patch_counts(labels, grid=2, n_classes=2)
    assert counts[:, :2].tolist() == [[8, 0], [0, 8], [8, 0], [0, 8]]


def test_training_set_keeps_mostly_labelled_patches_with_their_majority_class():
    labels = np.array([[0, 0, 1, 1],
                       [0, 255, 1, 0],
                       [255, 255, 255, 255],
                       [255, 2, 255, 255]], dtype=np.uint8)
    counts = patch_counts(labels, 2, 3)
    feats = np.arange(8, dtype=np.float32).reshape(4, 2)
    x, y = training_set([feats], [counts], min_labelled=0.5)
    assert y.tolist() == [0, 1]  # the bottom patches are mostly unlabelled
    assert x.tolist() == feats[:2].tolist()


def test_training_set_without_a_labelled_patch_is_one_clear_error():
    counts = patch_counts(np.full((4, 4), 255, dtype=np.uint8), 2, 2)
    with pytest.raises(DatusError, match="no patch is labelled enough"):
        training_set([np.zeros((4, 3), np.float32)], [counts])


@pytest.mark.parametrize("classifier", ["linear", "balanced", "mlp"])
def test_propagator_separates_two_feature_clusters(classifier, rng):
    centres = rng.normal(size=(3, 16)) * 4
    y = rng.integers(0, 2, 200) * 2  # classes 0 and 2 seen, 1 never
    x = (centres[y] + rng.normal(size=(200, 16))).astype(np.float32)
    model = Propagator(PropagateConfig(classifier=classifier, seed=0), 3).fit(x, y)
    test_y = np.array([0, 2] * 20)
    scores = model.scores((centres[test_y] + rng.normal(size=(40, 16))).astype(np.float32))
    assert scores.shape == (40, 3)
    assert (np.argmax(scores, axis=1) == test_y).mean() > 0.95
    assert (scores[:, 1] == 0).all()


def test_propagator_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    config = PropagateConfig(classifier="mlp", seed=3)
    a = Propagator(config, 2).fit(x, y).scores(x)
    b = Propagator(config, 2).fit(x, y).scores(x)
    assert np.array_equal(a, b)


def test_one_class_seen_labels_everything_that_class():
    x = np.zeros((5, 4), np.float32)
    model = Propagator(PropagateConfig(), 3).fit(x, np.full(5, 1))
    assert np.argmax(model.scores(x), axis=1).tolist() == [1] * 5


def test_segment_vote_blends_within_segments_and_leaves_noise_alone():
    scores = np.array([[1, 0], [1, 0], [0, 1], [0.2, 0.8]], dtype=np.float32)
    segments = np.array([[1, 1], [1, 0]])
    voted = segment_vote(scores, segments, weight=1.0)
    assert np.allclose(voted[:3], [[2 / 3, 1 / 3]] * 3)
    assert np.allclose(voted[3], [0.2, 0.8])
    assert np.array_equal(segment_vote(scores, segments, 0.0), scores)


def test_scores_to_mask_labels_every_pixel_at_image_size():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    mask = scores_to_mask(scores, 2, (6, 10))
    assert mask.shape == (6, 10) and mask.dtype == np.uint8
    assert mask[0, 0] == 0 and mask[0, 9] == 1 and mask[5, 0] == 0 and mask[5, 9] == 1


def test_scores_to_mask_guided_follows_the_image_edge():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 37:] = 255  # the edge lies inside the right patch column of a 2x2 grid
    scores = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    mask = scores_to_mask(scores, 2, (64, 64), "guided", image)
    assert (mask[:, :34] == 0).all() and (mask[:, 40:] == 1).all()


def test_scores_to_mask_guided_soft_follows_the_image_edge():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 37:] = 255
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.9, 0.1], [0.4, 0.6]], dtype=np.float32)
    mask = scores_to_mask(scores, 2, (64, 64), "guided-soft", image)
    assert (mask[:, :34] == 0).all() and (mask[:, 40:] == 1).all()


def test_keep_labels_fills_only_the_unlabelled_pixels():
    labels = np.array([[0, 255], [255, 2]], dtype=np.uint8)
    predicted = np.ones((2, 2), dtype=np.uint8)
    assert keep_labels(predicted, labels).tolist() == [[0, 1], [1, 2]]


def test_patch_features_concatenate_keys_on_request():
    tokens, keys = np.ones((4, 3)), np.zeros((4, 2))
    assert patch_features(tokens, keys, "tokens").shape == (4, 3)
    assert patch_features(tokens, keys, "tokens+keys").shape == (4, 5)


@pytest.mark.parametrize("kw, message", [({"classifier": "svm"}, "unknown classifier"),
                                         ({"segment_vote": 2.0}, "segment vote"),
                                         ({"features": "pixels"}, "unknown features")])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(DatusError, match=message):
        PropagateConfig(**kw).validate()
