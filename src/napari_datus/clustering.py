"""Stage 6 over a dataset: every image's valid segments grouped into K clusters.

The grouping itself is in :mod:`napari_datus.core.grouping` (``merge``, the default) and
:mod:`napari_datus.core.pseudolabel` (``kmeans``). What this module adds is the feature
cache: the overclusterings of ``merge`` do not depend on K, so they are stored, keyed by
the exact embeddings and k-means settings. A re-run with another K (the ``datus run
--clusters`` re-run, the napari K field) then only merges, without a k-means and without
importing faiss; the labels are those a fresh run computes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import numpy as np

from napari_datus.cache import FeatureCache, digest
from napari_datus.core.grouping import (
    RESTARTS,
    overcluster_merge,
    overclusterings,
    overclusters,
)
from napari_datus.core.pseudolabel import cluster_segments
from napari_datus.core.whitening import normalise_embeddings
from napari_datus.params import Params

if TYPE_CHECKING:
    from napari_datus.stages import ImageResult


def cluster(results: list[ImageResult], params: Params,
            cache: FeatureCache | None = None) -> list[np.ndarray]:
    """Stage 6: k-means (or ``grouping="merge"``: overclustering merged to K) over every
    valid segment of the dataset.

    Parameters
    ----------
    results : per-image stage 1-5 results
    params : the run's settings (clustering fields)
    cache : where ``merge`` keeps its overclusterings; None or disabled computes them

    Returns
    -------
    list of (n_i,) uint8: cluster of each valid segment, per image
    """
    stacked, weights = stacked_embeddings(results, params)
    if params.grouping == "merge":
        fine = (cached_overclusterings(stacked, weights, params, cache)
                if overclusters(params.clusters, params.overcluster, stacked.shape[0]) else None)
        labels = overcluster_merge(stacked, params.clusters, params.overcluster, params.seed,
                                   params.n_init, weights, fine=fine)
    else:
        labels = cluster_segments(stacked, params.clusters, params.seed, params.n_init, weights)
    counts = [r.embeddings.shape[0] for r in results]
    return np.split(labels, np.cumsum(counts)[:-1]) if counts else []


def stacked_embeddings(results: list[ImageResult], params: Params
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """All valid segments' embeddings, normalised as ``params.embedding_norm`` says.

    Returns
    -------
    (M, D) float32 embeddings, images in order; (M,) float64 segment sizes in patches
    when ``params.size_weighted``, else None
    """
    dim = next((r.embeddings.shape[1] for r in results if r.embeddings.size), 0)
    stacked = np.concatenate([r.embeddings for r in results if r.embeddings.size]) if dim \
        else np.zeros((0, 1), dtype=np.float32)
    if stacked.shape[0]:
        stacked = normalise_embeddings(stacked, params.embedding_norm)
    weights = (np.concatenate([r.segments.sizes for r in results]).astype(np.float64)
               if params.size_weighted else None)
    return stacked, weights


def cached_overclusterings(stacked: np.ndarray, weights: np.ndarray | None, params: Params,
                           cache: FeatureCache | None) -> np.ndarray:
    """:func:`~napari_datus.core.grouping.overclusterings` of ``stacked``, from the cache
    when an earlier run stored them.

    Returns
    -------
    (R, M) uint8, R = :data:`~napari_datus.core.grouping.RESTARTS`
    """
    if cache is None or not cache.enabled:
        return overclusterings(stacked, params.overcluster, params.seed, params.n_init,
                               weights, RESTARTS)
    # The k-means library and its version are in the key: another release may place the
    # centres elsewhere.
    key = digest("overclusterings", "faiss", faiss_version(),
                 np.ascontiguousarray(stacked).tobytes(), stacked.shape, str(stacked.dtype),
                 None if weights is None else weights.tobytes(),
                 params.overcluster, params.seed, params.n_init, RESTARTS)
    fine = cache.overclusterings(key, (RESTARTS, stacked.shape[0]))
    if fine is None:
        fine = overclusterings(stacked, params.overcluster, params.seed, params.n_init,
                               weights, RESTARTS)
        cache.put_overclusterings(key, fine)
    return fine



def faiss_version() -> str:
    """The installed faiss's version, from the package metadata (without importing faiss)."""
    for name in ("faiss-cpu", "faiss-gpu", "faiss"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    import faiss  # a build without pip metadata (conda, from source)

    return faiss.__version__
