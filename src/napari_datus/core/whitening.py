"""Dataset-wide normalisation of segment embeddings before k-means (``embedding_norm``).

k-means measures Euclidean distance, so the few directions with the largest variance
decide the clusters. ``standardise`` gives every feature dimension unit variance;
``pca-whiten`` also decorrelates them. Both end with an L2 normalisation so the
clustering stays on the unit sphere, like the plain ``l2`` embeddings.
"""

from __future__ import annotations

import numpy as np

from napari_datus.core.choices import EMBEDDING_NORMS
from napari_datus.core.embeddings import l2_normalize
from napari_datus.core.errors import DatusError


def standardise(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean, unit variance per column, then L2-normalised rows.

    Parameters
    ----------
    x : (M, D) float

    Returns
    -------
    (M, D) float32
    """
    x = np.asarray(x, dtype=np.float64)
    return l2_normalize((x - x.mean(axis=0)) / (x.std(axis=0) + eps))


def pca_whiten(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """PCA whitening, then L2-normalised rows.

    Parameters
    ----------
    x : (M, D) float
    eps : float
        Added to each component's variance as a fraction of the largest one, so
        near-empty directions are not blown up into pure noise.

    Returns
    -------
    (M, min(M, D)) float32
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    variance = sing**2 / max(x.shape[0] - 1, 1)
    scale = 1.0 / np.sqrt(variance + eps * variance.max(initial=0.0) + 1e-12)
    return l2_normalize((centred @ vt.T) * scale)


def normalise_embeddings(x: np.ndarray, method: str = "l2") -> np.ndarray:
    """Apply one of :data:`EMBEDDING_NORMS` to all segments of a dataset, ``(M, D)`` rows."""
    if method == "l2":
        return l2_normalize(np.asarray(x, dtype=np.float64))
    if method == "standardise":
        return standardise(x)
    if method == "pca-whiten":
        return pca_whiten(x)
    raise DatusError(f"unknown embedding_norm {method!r}: choose one of"
                     f" {', '.join(EMBEDDING_NORMS)}")
