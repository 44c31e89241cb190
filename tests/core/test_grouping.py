import numpy as np
import pytest

from napari_datus.core.errors import DatusError
from napari_datus.core.grouping import (
    adjusted_rand_index,
    merge_centres,
    overcluster_merge,
    overclusterings,
    restart_seeds,
)
from napari_datus.core.pseudolabel import cluster_segments


def blobs(rng, centres, n=30, spread=0.02):
    """Rows scattered around each centre, L2-normalised, with their blob index."""
    x = np.vstack([rng.normal(0, spread, (n, len(c))) + c for c in centres])
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(len(centres)), n)


def test_merge_joins_the_closest_centres_first():
    centres = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    groups = merge_centres(centres, 3)
    assert groups[0] == groups[1]
    assert len({groups[0], groups[2], groups[3]}) == 3
    np.testing.assert_array_equal(groups, [0, 0, 1, 2])  # numbered by first centre


def test_merge_edge_cases():
    centres = np.eye(3)
    np.testing.assert_array_equal(merge_centres(centres, 3), [0, 1, 2])
    np.testing.assert_array_equal(merge_centres(centres, 1), [0, 0, 0])
    with pytest.raises(DatusError, match="cannot merge"):
        merge_centres(centres, 4)


def test_a_varied_class_ends_in_one_cluster_and_a_far_one_stays_apart(rng):
    # Three modes of one broad "background" near each other, one distant "object".
    base = np.array([1.0, 0.0, 0.0, 0.0])
    modes = [base, base + [0, 0.35, 0, 0], base + [0, 0, 0.35, 0], np.array([0, 0, 0, 1.0])]
    x, blob = blobs(rng, modes)
    labels = overcluster_merge(x, 2, overcluster=8, seed=0, n_init=4)
    assert labels.dtype == np.uint8
    assert len(set(labels[blob < 3])) == 1
    assert labels[blob == 3][0] != labels[0] and len(set(labels[blob == 3])) == 1


def test_same_seed_same_labels_and_small_overcluster_is_plain_kmeans(rng):
    x, _ = blobs(rng, np.eye(4), n=10)
    a = overcluster_merge(x, 3, overcluster=12, seed=5, n_init=2)
    np.testing.assert_array_equal(a, overcluster_merge(x, 3, overcluster=12, seed=5, n_init=2))
    np.testing.assert_array_equal(overcluster_merge(x, 3, overcluster=3, seed=1, n_init=2),
                                  cluster_segments(x, 3, seed=1, n_init=2))


def test_overcluster_larger_than_the_segments_is_capped(rng):
    x, _ = blobs(rng, np.eye(3), n=3)
    labels = overcluster_merge(x, 3, overcluster=100, seed=0, n_init=1)
    assert set(labels) == {0, 1, 2}


def test_merge_matches_scikit_learn_average_linkage(rng):
    from sklearn.cluster import AgglomerativeClustering

    from napari_datus.core.partition import relabel_by_appearance

    for k in (2, 3, 7, 19):
        centres = rng.normal(size=(20, 6))
        expected = AgglomerativeClustering(n_clusters=k, metric="cosine",
                                           linkage="average").fit(centres).labels_
        np.testing.assert_array_equal(merge_centres(centres, k), relabel_by_appearance(expected))


def test_adjusted_rand_index_matches_scikit_learn(rng):
    from sklearn.metrics import adjusted_rand_score

    cases = [(np.zeros(5), np.zeros(5)), (np.arange(4), np.arange(4)),
             (np.zeros(4), np.arange(4)), (np.array([0]), np.array([3]))]
    for _ in range(100):
        n = int(rng.integers(2, 50))
        cases.append((rng.integers(0, int(rng.integers(1, 6)), n),
                      rng.integers(0, int(rng.integers(1, 6)), n)))
    for a, b in cases:
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_kept_overclusterings_give_the_labels_of_a_fresh_run(rng):
    x, _ = blobs(rng, np.eye(5), n=12, spread=0.2)
    weights = rng.uniform(1, 5, x.shape[0])
    fine = overclusterings(x, 16, seed=2, n_init=2, weights=weights)
    assert fine.shape == (5, x.shape[0]) and fine.dtype == np.uint8
    for labels, seed in zip(fine, restart_seeds(2, 5)):
        np.testing.assert_array_equal(labels, cluster_segments(x, 16, seed, 2, weights))
    for k in (2, 3, 4):
        np.testing.assert_array_equal(
            overcluster_merge(x, k, 16, seed=2, n_init=2, weights=weights, fine=fine),
            overcluster_merge(x, k, 16, seed=2, n_init=2, weights=weights))
