"""Louvain backends: the fast igraph graph is the same graph, with the reference's modularity."""

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_datus.core.partition import louvain, modularity, relabel_by_appearance, to_igraph


def planted(n: int = 60, groups: int = 3, p_in: float = 0.6, p_out: float = 0.1,
            seed: int = 0) -> np.ndarray:
    """A symmetric 0/1 adjacency with ``groups`` denser blocks (no self-loops)."""
    rng = np.random.default_rng(seed)
    group = np.arange(n) % groups
    p = np.where(group[:, None] == group[None, :], p_in, p_out)
    upper = np.triu(rng.random((n, n)) < p, 1)
    return (upper | upper.T).astype(np.float32)


def dense_adjacency(adj: np.ndarray, graph) -> np.ndarray:
    weights = graph.es["weight"] if "weight" in graph.es.attributes() else [1.0] * graph.ecount()
    out = np.zeros(adj.shape)
    for (i, j), w in zip(graph.get_edgelist(), weights):
        out[i, j] = out[j, i] = w
    return out


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loops", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 3.0])  # dense (matrix build), sparse (edge list)
def test_igraph_graph_is_the_adjacency(weighted, loops, threshold, rng):
    keys = rng.standard_normal((30, 5))
    dots = keys @ keys.T
    adj = np.where(dots > threshold, dots if weighted else 1.0, 0.0).astype(np.float32)
    if not loops:
        np.fill_diagonal(adj, 0)
    graph = to_igraph(adj)
    assert not graph.is_directed()
    assert ("weight" in graph.es.attributes()) == weighted
    np.testing.assert_allclose(dense_adjacency(adj, graph), adj, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_igraph_reaches_the_reference_modularity(seed):
    adj = planted(seed=seed)
    fast = modularity(adj, louvain(adj, seed, "igraph"))
    reference = modularity(adj, louvain(adj, seed, "python-louvain"))
    assert fast >= 0.99 * reference > 0


def test_modularity_matches_networkx():
    import networkx as nx

    adj = planted()
    adj[np.diag_indices(60)] = 1.0  # self-loops, counted the networkx way
    labels = louvain(adj, 0)
    communities = [set(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    expected = nx.algorithms.community.modularity(nx.from_numpy_array(adj), communities)
    assert modularity(adj, labels) == pytest.approx(expected)


def test_seeded_and_leaves_the_global_random_state_alone():
    adj = planted()
    random.seed(123)
    before = random.random()
    random.seed(123)
    first = louvain(adj, seed=5)
    assert random.random() == before
    np.testing.assert_array_equal(first, louvain(adj, seed=5))


def test_threads_get_the_same_partitions_as_a_loop():
    graphs = [planted(seed=s) for s in range(8)]
    serial = [louvain(a, seed=s) for s, a in enumerate(graphs)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(louvain, graphs, range(8)))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_graph_without_edges_gives_singletons():
    np.testing.assert_array_equal(louvain(np.zeros((4, 4))), np.arange(4))


def test_relabel_by_appearance():
    np.testing.assert_array_equal(relabel_by_appearance(np.array([7, 7, 2, 9, 2])),
                                  [0, 0, 1, 2, 1])
