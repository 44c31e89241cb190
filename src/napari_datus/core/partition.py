"""Stage 3: Louvain community detection on the patch graph, seeded.

Backends (``--partition``): ``igraph`` (C implementation of the multilevel
algorithm, fast, the default) and ``python-louvain`` (the reference, on a networkx
graph). Both maximise modularity at resolution 1. Each backend is imported when first used.
"""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING

import numpy as np

from napari_datus.core.choices import PARTITIONS
from napari_datus.core.errors import DatusError

if TYPE_CHECKING:
    import igraph as ig

# Above this fraction of node pairs joined, igraph builds the graph faster from the dense
# matrix than from an edge list (measured: 20 ms for 1024 nodes either way at about 0.2).
EDGE_LIST_MAX_DENSITY = 0.2

# igraph's random number generator is process-wide: one seeded run at a time, so threads
# (napari workers, dask worker threads) cannot reseed it under each other.
_IGRAPH_RNG_LOCK = threading.Lock()


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
    """Undirected igraph from a dense symmetric adjacency, without Python loops.

    A 0/1 adjacency gives an unweighted graph (Louvain on it equals Louvain with unit
    weights, and skipping the weight list halves the build time); any other adjacency
    gets a ``weight`` edge attribute. The diagonal becomes self-loops. Edges are numbered
    in row-major order of the upper triangle either way.
    """
    import igraph as ig

    n = adj.shape[0]
    present = adj != 0
    if np.count_nonzero(present) <= EDGE_LIST_MAX_DENSITY * n * n:
        rows, cols = upper_edges(present)
        # Tuples, not the nested lists of .tolist(): thousands of new lists set off the
        # garbage collector, which made this step six times slower.
        graph = ig.Graph(n=n, edges=list(zip(rows.tolist(), cols.tolist())))
        # Read the weights off the edge list, not off a boolean-mask copy of the matrix.
        weights = adj[rows, cols]
        if np.all(weights == 1):
            weights = None
    else:
        # A Python pair per edge costs more than igraph's C scan of the whole matrix here.
        # "lower" reads the lower triangle column by column, i.e. the upper one row by row.
        graph = ig.Graph.Adjacency(present, mode="lower", loops="once")
        weights = None if np.array_equal(adj, present) else adj[upper_edges(present)]
    if weights is not None:
        graph.es["weight"] = weights.astype(float).tolist()
    return graph


def upper_edges(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column ``(E,) intp`` of the ``True`` cells with row <= column, row-major.

    Parameters
    ----------
    present : (N, N) bool
    """
    # flatnonzero is several times faster than nonzero(triu(...)) on a 1024 x 1024 matrix.
    rows, cols = np.divmod(np.flatnonzero(present), present.shape[1])
    upper = rows <= cols
    return rows[upper], cols[upper]


def edge_weights(graph: ig.Graph) -> str | None:
    """The weight attribute name to pass to igraph, or None for an unweighted graph."""
    return "weight" if "weight" in graph.es.attributes() else None


def modularity(adj: np.ndarray, labels: np.ndarray) -> float:
    """Newman modularity of a partition at resolution 1 (self-loops counted as networkx does)."""
    graph = to_igraph(adj)
    if graph.ecount() == 0:
        return 0.0
    return float(graph.modularity(labels.tolist(), weights=edge_weights(graph)))


def _louvain_igraph(adj: np.ndarray, seed: int) -> np.ndarray:
    import igraph as ig

    graph = to_igraph(adj)
    if graph.ecount() == 0:
        return np.arange(adj.shape[0])
    # igraph draws from Python's `random` module by default; a private seeded generator keeps
    # runs reproducible without touching the caller's global random state.
    with _IGRAPH_RNG_LOCK:
        ig.set_random_number_generator(random.Random(seed))
        try:
            clusters = graph.community_multilevel(weights=edge_weights(graph), resolution=1.0)
        finally:
            ig.set_random_number_generator(random)
    return np.asarray(clusters.membership)


def _louvain_reference(adj: np.ndarray, seed: int) -> np.ndarray:
    import networkx as nx
    from community import community_louvain

    graph = nx.from_numpy_array(adj)
    if graph.number_of_edges() == 0:
        return np.arange(adj.shape[0])
    parts = community_louvain.best_partition(graph, resolution=1.0, random_state=seed,
                                             weight="weight")
    return np.array([parts[i] for i in range(adj.shape[0])])
