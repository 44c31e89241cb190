"""A re-run read against the run it replaces: which new clusters cover the pixels of which
earlier clusters, so that the user's classes and edits follow their pixels through a K or
tau change, whatever the classes are called (no Qt).

Pixels are counted on the masks without edge refinement (the patch grids upsampled to the
image size, as :func:`~napari_datus.core.pseudolabel.upsample_nearest` does), so no image
is read: a refined edge moves a few pixels, never which cluster covers a region most.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from napari_datus.class_map import ClassMap
from napari_datus.core.pseudolabel import UNLABELLED, fill_unlabelled, paint_grid, upsample_nearest
from napari_datus.pipeline import DatasetResult, ImageResult

LABELS = 256  # cluster ids 0..254 and 255 = unlabelled


def cluster_grid(result: ImageResult, clusters: np.ndarray, fill_noise: bool) -> np.ndarray:
    """(g, g) uint8 cluster id of every patch (255 = unlabelled), as the pseudo mask has."""
    grid = paint_grid(result.segments.valid, clusters)
    return fill_unlabelled(grid) if fill_noise else grid


def pixel_counts(old: np.ndarray, new: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(256, 256) int64: pixels of an (H, W) image that are old cluster i and new cluster j,
    given the two patch grids (uint8, 255 unlabelled) upsampled to ``shape``."""
    if old.shape == new.shape:
        # One grid: each cell covers rows x columns pixels, so count cells with that weight.
        weights = np.outer(*(_repeats(size, cells) for size, cells in zip(shape, old.shape)))
        pairs, weights = old.astype(np.int64) * LABELS + new, weights.ravel()
    else:
        pairs = (upsample_nearest(old, shape).astype(np.int64) * LABELS
                 + upsample_nearest(new, shape))
        weights = None
    counts = np.bincount(pairs.ravel(), weights, minlength=LABELS * LABELS)
    return counts.astype(np.int64).reshape(LABELS, LABELS)


def _repeats(size: int, cells: int) -> np.ndarray:
    """How many of ``size`` pixels nearest upsampling gives each of ``cells`` cells."""
    index = np.minimum(((np.arange(size) + 0.5) * cells / size).astype(np.intp), cells - 1)
    return np.bincount(index, minlength=cells)


@dataclass
class Carry:
    """How the clusters of a re-run cover the pixels of the run it replaces.

    Attributes
    ----------
    counts : (256, 256) int64 pixels that were earlier cluster i and are now cluster j
    classes_of : (256,) uint8 earlier cluster -> the class it was in, as an id of the new
        run's class map (255: none), or None when the new map does not continue the earlier
        one's classes (a default table: its names say nothing)
    """

    counts: np.ndarray
    classes_of: np.ndarray | None = None

    @classmethod
    def between(cls, pairs: Iterable[tuple[DatasetResult, DatasetResult]]) -> Carry:
        """Count over every image the earlier and the new result of each pair both hold
        (matched by stem, at the same size)."""
        counts = np.zeros((LABELS, LABELS), dtype=np.int64)
        for earlier, later in pairs:
            found = {r.stem: (r, c) for r, c in zip(earlier.results, earlier.clusters)}
            for r, clusters in zip(later.results, later.clusters):
                old = found.get(r.stem)
                if old is None or old[0].shape != r.shape:
                    continue
                counts += pixel_counts(
                    cluster_grid(*old, earlier.params.fill_noise),
                    cluster_grid(r, clusters, later.params.fill_noise), r.shape)
        return cls(counts)

    def class_map(self, earlier: ClassMap, k: int) -> ClassMap:
        """The earlier map's classes (same ids, names and colours), each of the ``k`` new
        clusters in the class whose pixels it covers most (unassigned if it covers none)."""
        by_class = np.zeros((LABELS, LABELS), dtype=np.int64)
        np.add.at(by_class, earlier.lookup(), self.counts)
        by_class = by_class[:len(earlier.classes), :k]
        assignment = [int(by_class[:, c].argmax()) if by_class[:, c].any() else None
                      for c in range(k)]
        return ClassMap([replace(c) for c in earlier.classes], assignment,
                        earlier.unlabelled_colour)

    def translate(self, labels: np.ndarray, later: ClassMap) -> np.ndarray:
        """Edited pixels' layer labels of the earlier run (cluster ``c`` as ``c + 1``, 0
        unlabelled) as labels of the new run.

        An earlier cluster's class goes to the class's new cluster that covers the earlier
        cluster most (its first, or one made for it, when none does); a cluster without a
        class to the new cluster covering it most. Made clusters grow ``later``.

        Returns
        -------
        (n,) int64 new labels; -1 where the earlier label covered no pixel (nothing to follow)
        """
        labels = np.asarray(labels, dtype=np.int64)
        out = np.zeros(labels.shape, dtype=np.int64)
        for value in np.unique(labels[labels > 0]):
            out[labels == value] = self._follow(int(value) - 1, later)
        return out

    def _follow(self, cluster: int, later: ClassMap) -> int:
        """The new label of earlier cluster ``cluster`` (see :meth:`translate`)."""
        if cluster >= UNLABELLED:
            return -1
        row = self.counts[cluster, :UNLABELLED]
        class_id = None if self.classes_of is None else int(self.classes_of[cluster])
        if class_id is not None and class_id < len(later.classes):
            own = later.clusters_of(class_id)
            covering = [c for c in own if row[c] > 0]
            if covering:
                return max(covering, key=lambda c: row[c]) + 1
            return later.cluster_for(class_id) + 1
        return int(row.argmax()) + 1 if row.any() else -1
