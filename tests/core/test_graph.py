import numpy as np
import pytest

from napari_datus.core.errors import DatusError
from napari_datus.core.features import PatchFeatures
from napari_datus.core.graph import adjacency
from napari_datus.core.partition import louvain


def two_block_features(bias: float = 0.0) -> PatchFeatures:
    """Left half of a 4x4 grid has keys along e0, right half along e1 (orthogonal)."""
    keys = np.zeros((16, 4), dtype=np.float32)
    cols = np.arange(16) % 4
    keys[cols < 2, 0] = 1.0
    keys[cols >= 2, 1] = 1.0
    key_bias = np.array([0, 0, bias, 0], dtype=np.float32)
    return PatchFeatures(keys=keys + key_bias, key_bias=key_bias, tokens=keys, grid=4)


@pytest.mark.parametrize("backend", ["igraph", "python-louvain"])
def test_orthogonal_blocks_give_two_communities(backend):
    adj = adjacency(two_block_features(), "paper")
    labels = louvain(adj, seed=0, backend=backend).reshape(4, 4)
    assert len(np.unique(labels)) == 2
    assert (labels[:, :2] == labels[0, 0]).all() and (labels[:, 2:] == labels[0, 3]).all()


def test_paper_rule_is_binary_without_self_loops():
    adj = adjacency(two_block_features(), "paper")
    assert set(np.unique(adj)) == {0.0, 1.0}
    assert np.allclose(adj, adj.T) and not adj.diagonal().any()
    assert adjacency(two_block_features(), "paper", self_loops=True).diagonal().all()


def test_a_shared_key_bias_makes_the_paper_graph_complete_and_nobias_undoes_it():
    feats = two_block_features(bias=3.0)
    paper = adjacency(feats, "paper")
    assert paper.sum() == 16 * 15
    np.testing.assert_array_equal(adjacency(feats, "keys-nobias"),
                                  adjacency(two_block_features(), "paper"))


def test_centred_keys_split_the_blocks():
    feats = two_block_features(bias=3.0)
    adj = adjacency(feats, "keys-centred")
    assert adj[0, 1] == 1 and adj[0, 3] == 0


def test_weighted_edges_hold_positive_dot_products():
    feats = two_block_features()
    feats.keys[0] *= 2.0
    adj = adjacency(feats, "weighted")
    assert adj[0, 1] == pytest.approx(2.0) and adj[0, 3] == 0.0 and adj.min() >= 0


def test_unknown_affinity():
    with pytest.raises(DatusError, match="unknown affinity"):
        adjacency(two_block_features(), "magic")
