"""Stage 3: Louvain community detection on the patch graph, seeded.

Backends (``--partition``): ``igraph`` (C implementation of the multilevel
algorithm, fast, the default) and ``python-louvain`` (the reference, on a networkx
graph). Both maximise modularity at resolution 1.
"""

from __future__ import annotations

import random

import igraph as ig
import networkx as nx
import numpy as np
from community import community_louvain

from napari_datus.core.errors import DatusError

PARTITIONS = ("igraph", "python-louvain")


def louvain(adj: np.ndarray, seed: int = 0, backend: str = "igraph") -> np.ndarray:
    """Partition a graph into communities.

    Parameters
    ----------
    adj : (N, N) float
        Symmetric adjacency (weights; 0 = no edge).
    seed : int
        Seeds the node order Louvain visits.
    backend : str
        ``igraph`` or ``python-louvain``.

    Returns
    -------
    (N,) int32
        Community id per node, numbered 0.. in order of first appearance.
    """
    if backend == "igraph":
        labels = _louvain_igraph(adj, seed)
    elif backend == "python-louvain":
        labels = _louvain_reference(adj, seed)
    else:
        raise DatusError(f"unknown partition backend {backend!r}: choose one of {PARTITIONS}")
    return relabel_by_appearance(labels)


def relabel_by_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance, as ``(N,) int32``."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int32)


def to_igraph(adj: np.ndarray) -> ig.Graph:
    """Undirected weighted igraph from a dense adjacency, without Python loops."""
    rows, cols = np.nonzero(np.triu(adj))
    graph = ig.Graph(n=adj.shape[0], edges=np.column_stack([rows, cols]).tolist())
    graph.es["weight"] = adj[rows, cols].astype(float).tolist()
    return graph


def modularity(adj: np.ndarray, labels: np.ndarray) -> float:
    """Newman modularity of a partition at resolution 1 (self-loops counted as networkx does)."""
    graph = to_igraph(adj)
    if graph.ecount() == 0:
        return 0.0
    return float(graph.modularity(labels.tolist(), weights="weight"))


def _louvain_igraph(adj: np.ndarray, seed: int) -> np.ndarray:
    graph = to_igraph(adj)
    if graph.ecount() == 0:
        return np.arange(adj.shape[0])
    # igraph draws from Python's `random` module; a private seeded generator keeps runs
    # reproducible without touching the caller's global random state.
    previous = ig.set_random_number_generator(random.Random(seed))
    try:
        clusters = graph.community_multilevel(weights="weight", resolution=1.0)
    finally:
        ig.set_random_number_generator(previous if previous is not None else random)
    return np.asarray(clusters.membership)


def _louvain_reference(adj: np.ndarray, seed: int) -> np.ndarray:
    graph = nx.from_numpy_array(adj)
    if graph.number_of_edges() == 0:
        return np.arange(adj.shape[0])
    parts = community_louvain.best_partition(graph, resolution=1.0, random_state=seed,
                                             weight="weight")
    return np.array([parts[i] for i in range(adj.shape[0])])
