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


def random_grids(n: int = 300, seed: int = 0):
    """Random label grids, half of them blocky (large runs), of random sides and counts."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        g, k = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        grid = rng.integers(0, k, (g, g))
        if i % 2:
            blocks = rng.integers(0, k, (g // 4 + 1, g // 4 + 1))
            grid = np.kron(blocks, np.ones((4, 4), dtype=int))[:g, :g]
        yield grid


def test_components_are_scikit_images_8_connected_labels_in_raster_order():
    from scipy import ndimage

    for grid in random_grids():
        components = connected_components(grid)
        assert components.dtype == np.int32 and components.min() == 1
        # Numbered by first appearance in raster order.
        _, first = np.unique(components.ravel(), return_index=True)
        assert np.all(np.diff(first) > 0)
        # Each component lies in one community and is one 8-connected piece of it.
        for c in range(1, int(components.max()) + 1):
            inside = components == c
            assert len(np.unique(grid[inside])) == 1
            assert ndimage.label(inside, structure=np.ones((3, 3)))[1] == 1
        # And every community's pieces are all there.
        for community in np.unique(grid):
            pieces = ndimage.label(grid == community, structure=np.ones((3, 3)))[1]
            assert len(np.unique(components[grid == community])) == pieces
