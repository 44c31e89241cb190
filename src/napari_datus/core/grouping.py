"""Stage 6 alternative: overcluster the segments, then merge the clusters to K (``--grouping``).

k-means with K = the number of classes spends its K centres on the directions of largest
spread, so the one large, varied class of underwater scenes (water, sand, plants: the
merged background, half of all pixels) is cut into several clusters while small classes
share one. ``merge`` first runs k-means with many more centres (``overcluster``), so each
mode of the data (open water, sand, a kind of reef) gets its own small cluster, then joins
the clusters by average linkage (UPGMA) of the cosine distance between their centres until
K are left. Average linkage joins modes that are close to each other on average, so the
chain of background modes ends in one cluster, while a mode far from everything (divers,
fish) stays separate.

One overclustering is fragile (a different k-means start can let the background chain
break elsewhere: 18.2 to 22.3 mIoU over seeds on suim_dev), so ``restarts`` runs are made
from seeds derived from ``seed`` and the most typical result is kept: the one with the
largest summed adjusted Rand index against the others (a medoid partition, as in
consensus clustering). Deterministic for a seed: k-means is seeded, the linkage and the
choice have no randomness.

The overclusterings do not depend on K (:func:`overclusterings`), so a caller may keep them
and pass them back (``fine``): another K then costs only the linkage, without a k-means.
"""

from __future__ import annotations

import numpy as np

from napari_datus.core.errors import DatusError
from napari_datus.core.partition import relabel_by_appearance
from napari_datus.core.pseudolabel import cluster_segments

# Overcluster-and-merge runs per seed; the most typical is kept. Measured on suim_dev
# (T = 224, K = 6, seeds 0-2, Louvain and k-means seeded alike): one run 18.2-22.3 mIoU,
# the most typical of 5: 22.0-22.3.
RESTARTS = 5


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """The k-means seed of each overcluster-and-merge run: ``(1000 * seed + i) mod 2**32``."""
    return [(1000 * seed + i) % 2**32 for i in range(max(1, restarts))]


def overclusters(k: int, overcluster: int, segments: int) -> bool:
    """Whether ``merge`` overclusters at all: with ``overcluster <= k`` or no more segments
    than ``k`` it is plain k-means with ``k`` centres."""
    return overcluster > k and segments > k


def overclusterings(embeddings: np.ndarray, overcluster: int, seed: int = 0, n_init: int = 10,
                    weights: np.ndarray | None = None, restarts: int = RESTARTS) -> np.ndarray:
    """The K-independent half of :func:`overcluster_merge`: one k-means per restart seed.

    Parameters
    ----------
    embeddings : (M, D) float, one normalised row per valid segment
    overcluster : int, centres of each k-means (capped at M and at 254)
    seed, n_init, weights, restarts : as for :func:`overcluster_merge`

    Returns
    -------
    (R, M) uint8: the fine cluster of each segment in each of the R = ``restarts`` runs
    """
    centres = min(overcluster, embeddings.shape[0], 254)
    # One after another, each on one thread (cluster_segments): 0.07 s for 841 segments and
    # 48 centres with 10 restarts.
    return np.stack([cluster_segments(embeddings, centres, s, n_init, weights)
                     for s in restart_seeds(seed, restarts)])


def overcluster_merge(embeddings: np.ndarray, k: int, overcluster: int, seed: int = 0,
                      n_init: int = 10, weights: np.ndarray | None = None,
                      restarts: int = RESTARTS, fine: np.ndarray | None = None) -> np.ndarray:
    """The most typical of ``restarts`` overcluster-and-merge runs (module docstring).

    Parameters
    ----------
    embeddings : (M, D) float, one normalised row per valid segment
    k : int, the number of clusters wanted (1..254)
    overcluster : int, centres of the first k-means (capped at M; <= k means plain k-means)
    seed, n_init : of the k-means; run ``i`` uses seed ``(1000 * seed + i) mod 2**32``
    weights : (M,) float, optional, k-means sample weights
    restarts : int >= 1
    fine : (R, M) uint8, optional
        :func:`overclusterings` of the same embeddings and settings, computed earlier.

    Returns
    -------
    (M,) uint8 cluster id per segment
    """
    if not overclusters(k, overcluster, embeddings.shape[0]):
        return cluster_segments(embeddings, k, seed, n_init, weights)
    if fine is None:
        fine = overclusterings(embeddings, overcluster, seed, n_init, weights, restarts)
    runs = [merge_overclustering(embeddings, labels, k, s, n_init, weights)
            for labels, s in zip(fine, restart_seeds(seed, len(fine)))]
    agreement = [sum(adjusted_rand_index(a, b) for b in runs) for a in runs]
    return runs[int(np.argmax(agreement))]


def merge_overclustering(embeddings: np.ndarray, fine: np.ndarray, k: int, seed: int = 0,
                         n_init: int = 10, weights: np.ndarray | None = None) -> np.ndarray:
    """Merge one overclustering to ``k`` clusters by average linkage of its centres.

    Parameters
    ----------
    embeddings : (M, D) float
    fine : (M,) int, the overclustering
    k : int
    seed, n_init, weights : of the plain k-means used instead when ``fine`` has <= k clusters

    Returns
    -------
    (M,) uint8 cluster id per segment
    """
    used = np.unique(fine)
    if used.size <= k:
        return cluster_segments(embeddings, k, seed, n_init, weights)
    x = np.asarray(embeddings, dtype=np.float64)
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    # Centres as k-means defines them: the (weighted) mean of each cluster's members.
    sums = np.zeros((used.size, x.shape[1]))
    lut = np.searchsorted(used, fine)
    np.add.at(sums, lut, x * w[:, None])
    centres = sums / np.maximum(np.bincount(lut, weights=w), 1e-12)[:, None]
    return merge_centres(centres, k)[lut].astype(np.uint8)


def merge_centres(centres: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage (UPGMA, cosine distance) grouping of cluster centres into ``k`` groups.

    Parameters
    ----------
    centres : (J, D) float, J >= k
    k : int

    Returns
    -------
    (J,) int32 group of each centre, groups numbered by their first centre (so the
    numbering does not depend on the linkage library's order)
    """
    j = centres.shape[0]
    if not 1 <= k <= j:
        raise DatusError(f"cannot merge {j} clusters into {k}")
    if k == j:
        return np.arange(j, dtype=np.int32)
    if k == 1:
        return np.zeros(j, dtype=np.int32)
    # SciPy's linkage is what scikit-learn's AgglomerativeClustering calls for this case;
    # called directly it spares the run scikit-learn's import.
    from scipy.cluster.hierarchy import cut_tree, linkage

    tree = linkage(np.asarray(centres, dtype=np.float64), method="average", metric="cosine")
    return relabel_by_appearance(cut_tree(tree, n_clusters=k).ravel())


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie 1985), from pair counts.

    The pair-confusion form scikit-learn's ``adjusted_rand_score`` uses, so the two agree
    (tested); 1.0 where no pair of items is split differently.

    Parameters
    ----------
    a, b : (M,) int labels of the same M items
    """
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    # Python ints: pair counts of large datasets overflow int64 products.
    n = int(ia.size)
    same_both = int((table**2).sum())
    same_a = int((table.sum(axis=1) ** 2).sum())
    same_b = int((table.sum(axis=0) ** 2).sum())
    tp, fp, fn = same_both - n, same_b - same_both, same_a - same_both
    tn = n * n - same_a - same_b + same_both
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
