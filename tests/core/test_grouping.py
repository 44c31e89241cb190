import numpy as np
import pytest

from napari_datus.core.errors import DatusError
from napari_datus.core.grouping import merge_centres, overcluster_merge


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
    from napari_datus.core.pseudolabel import cluster_segments

    np.testing.assert_array_equal(overcluster_merge(x, 3, overcluster=3, seed=1, n_init=2),
                                  cluster_segments(x, 3, seed=1, n_init=2))


def test_overcluster_larger_than_the_segments_is_capped(rng):
    x, _ = blobs(rng, np.eye(3), n=3)
    labels = overcluster_merge(x, 3, overcluster=100, seed=0, n_init=1)
    assert set(labels) == {0, 1, 2}
