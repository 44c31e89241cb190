"""Stage 2: the patch affinity graph (paper eq. 1), built vectorised.

Affinity variants (``--affinity``):

``paper``
    Raw last-block keys, binary edge iff ``k_i . k_j > 0``. Right for DINO v1; with
    DINOv2 keys every product is positive (the qkv key bias is a shared offset) and
    the graph is complete.
``keys-nobias``
    Keys without the qkv key bias, ``k = W_k x``, same binary rule. Attention is
    invariant to that bias, so it carries no information about the patch.
``keys-centred``
    Keys minus their per-image mean, same binary rule.
``weighted``
    Keys without bias, edge weight ``max(k_i . k_j, 0)`` instead of 1.
``queries`` / ``values``
    Last-block queries or values without their qkv bias, binary rule.
``tokens``
    Final normed patch tokens minus their per-image mean, binary rule: the features
    the segments are later embedded with; centring removes the LayerNorm offset that
    every token shares (the analogue of the key bias).
``tokens-knn`` / ``keys-knn``
    Centred tokens, or keys without bias: edge iff one patch is among the other's
    ``knn`` most cosine-similar patches. Unlike a fixed threshold, this does not depend
    on the features' offset or scale (what broke the paper's rule for DINOv2) and fixes
    the graph's density, so Louvain finds finer communities.
"""

from __future__ import annotations

import numpy as np

from napari_datus.core.choices import AFFINITIES
from napari_datus.core.errors import DatusError
from napari_datus.core.features import PatchFeatures

KNN_SOURCES = {"tokens-knn": "tokens", "keys-knn": "keys-nobias"}


def affinity_keys(features: PatchFeatures, affinity: str) -> np.ndarray:
    """The key vectors an affinity variant compares.

    Returns
    -------
    (N, D) float32, N = g*g
    """
    affinity = KNN_SOURCES.get(affinity, affinity)
    if affinity == "paper":
        return features.keys
    if affinity in ("keys-nobias", "weighted"):
        return features.keys - features.key_bias[None, :]
    if affinity == "keys-centred":
        return features.keys - features.keys.mean(axis=0, keepdims=True)
    if affinity == "tokens":
        return features.tokens - features.tokens.mean(axis=0, keepdims=True)
    if affinity in ("queries", "values"):
        vectors = getattr(features, affinity)
        if vectors is None:
            raise DatusError(f"affinity {affinity!r} needs {affinity} in the patch features;"
                             " extract them with core.features.extract_features")
        return vectors
    raise DatusError(f"unknown affinity {affinity!r}: choose one of {', '.join(AFFINITIES)}")


def knn_adjacency(vectors: np.ndarray, k: int) -> np.ndarray:
    """Symmetric binary k-nearest-neighbour graph by cosine similarity, no self-loops.

    Parameters
    ----------
    vectors : (N, D) float
    k : int
        Neighbours per node (capped at N - 1); an edge exists if either end chose it.

    Returns
    -------
    (N, N) float32 with 1 on edges
    """
    n = vectors.shape[0]
    k = min(k, n - 1)
    adj = np.zeros((n, n), dtype=np.float32)
    if k < 1:
        return adj
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    np.put_along_axis(adj, nearest, 1.0, axis=1)
    return np.maximum(adj, adj.T)


def adjacency(features: PatchFeatures, affinity: str = "keys-nobias",
              self_loops: bool = False, knn: int = 16) -> np.ndarray:
    """Adjacency matrix of the patch graph.

    Parameters
    ----------
    features : PatchFeatures
    affinity : str
        One of :data:`AFFINITIES`.
    self_loops : bool
        Keep the diagonal (the public implementation does); off by default because a
        patch's edge to itself says nothing about grouping and inflates tiny communities.
    knn : int
        Neighbours per patch for the ``*-knn`` affinities.

    Returns
    -------
    (N, N) float32, symmetric; 0 = no edge, binary variants hold 1 on edges.
    """
    keys = affinity_keys(features, affinity).astype(np.float64)
    if affinity in KNN_SOURCES:
        adj = knn_adjacency(keys, knn)
        if self_loops:
            np.fill_diagonal(adj, 1.0)
        return adj
    dots = keys @ keys.T
    if affinity == "weighted":
        adj = np.maximum(dots, 0.0).astype(np.float32)
    else:
        adj = (dots > 0).astype(np.float32)
    if not self_loops:
        np.fill_diagonal(adj, 0.0)
    return adj
