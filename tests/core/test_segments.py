import numpy as np

from napari_datus.core.segments import connected_components, split_components, split_segments


def test_community_in_two_blobs_becomes_two_segments():
    partition = np.zeros((6, 6), dtype=int)
    partition[:, 3:] = 1
    partition[0:2, 0:2] = 2
    partition[4:6, 4:6] = 2
    comps = connected_components(partition)
    assert comps[0, 0] != comps[5, 5]
    assert len(np.unique(comps)) == 4


def test_diagonal_neighbours_are_one_segment():
    partition = np.eye(4, dtype=int)
    comps = connected_components(partition)
    assert len(np.unique(comps[partition == 1])) == 1


def test_tau_threshold_five_is_noise_six_is_valid():
    partition = np.zeros((8, 8), dtype=int)
    partition[0, 0:5] = 1
    partition[7, 0:6] = 2
    seg = split_segments(partition, tau=5)
    assert (seg.valid[0, 0:5] == 0).all()
    assert (seg.valid[7, 0:6] > 0).all()
    assert seg.n_noise == 1
    assert seg.n_valid == 2
    assert sorted(seg.sizes.tolist()) == [6, 64 - 11]


def test_valid_ids_are_consecutive_and_sizes_match():
    rng = np.random.default_rng(1)
    partition = rng.integers(0, 3, (16, 16))
    seg = split_segments(partition, tau=2)
    ids = np.unique(seg.valid[seg.valid > 0])
    np.testing.assert_array_equal(ids, np.arange(1, seg.n_valid + 1))
    np.testing.assert_array_equal(np.bincount(seg.valid.ravel())[1:], seg.sizes)


def test_stored_components_split_as_the_partition_does():
    partition = np.random.default_rng(2).integers(0, 4, (16, 16))
    for tau in (0, 2, 5):
        a, b = split_segments(partition, tau), split_components(connected_components(partition),
                                                                tau)
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_array_equal(a.sizes, b.sizes)
        assert a.n_noise == b.n_noise
