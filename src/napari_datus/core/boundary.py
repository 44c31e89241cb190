"""Boundary F1: how well the edges of a mask follow the edges of the ground truth.

Region scores (mIoU, pixel accuracy) barely move when an edge is off by half a patch, so
edge-aware refinement (:mod:`napari_datus.core.refine`) is judged by the boundary F1 of
Csurka et al. (BMVC 2013, "What is a good evaluation measure for semantic
segmentation?"): a predicted boundary pixel is correct when a ground-truth boundary pixel
lies within a tolerance (default 1% of the image diagonal), and the other way round for
recall. Labels are compared as they are: with a one-to-one cluster-to-class matching two
clusters never share a class, so cluster edges are class edges (unlabelled, 255, is a
label of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_datus.core.errors import DatusError

# Tolerance as a fraction of the image diagonal (about 8 pixels on a 640x480 image).
TOLERANCE_FRACTION = 0.01


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from the pixel to the right or below.

    Parameters
    ----------
    labels : (H, W) int

    Returns
    -------
    (H, W) bool; the last row and column are boundary pixels only through their left or
    upper neighbour's difference (image borders are never edges)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DatusError(f"boundaries need a 2-D label image, got shape {labels.shape}")
    edge = np.zeros(labels.shape, dtype=bool)
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    # Mark both sides of every change, so thin structures keep an edge on each side.
    edge[:, :-1] |= right
    edge[:, 1:] |= right
    edge[:-1, :] |= down
    edge[1:, :] |= down
    return edge


def tolerance_pixels(shape: tuple[int, int], fraction: float = TOLERANCE_FRACTION) -> float:
    """The match distance in pixels for an image of ``shape`` (H, W)."""
    return float(fraction * np.hypot(shape[0], shape[1]))


def _near(edges: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    """How many pixels of ``edges`` lie within ``tolerance`` of a pixel of ``other``."""
    if not edges.any():
        return 0
    if not other.any():
        return 0
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~other)
    return int((distance[edges] <= tolerance).sum())


@dataclass
class BoundaryCounts:
    """Matched and total boundary pixels of one image (or summed over several).

    Attributes
    ----------
    matched_pred : predicted boundary pixels near a ground-truth boundary
    pred : predicted boundary pixels
    matched_gt : ground-truth boundary pixels near a predicted boundary
    gt : ground-truth boundary pixels
    """

    matched_pred: int = 0
    pred: int = 0
    matched_gt: int = 0
    gt: int = 0

    @property
    def precision(self) -> float:
        return self.matched_pred / self.pred if self.pred else float(self.gt == 0)

    @property
    def recall(self) -> float:
        return self.matched_gt / self.gt if self.gt else float(self.pred == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def boundary_counts(pred: np.ndarray, gt: np.ndarray,
                    fraction: float = TOLERANCE_FRACTION) -> BoundaryCounts:
    """Boundary matches of one mask against its ground truth.

    Parameters
    ----------
    pred : (H, W) int labels (cluster ids, 255 = unlabelled)
    gt : (H, W) int class ids (void pixels, e.g. -1, count as a label of their own)
    fraction : tolerance as a fraction of the image diagonal

    Returns
    -------
    BoundaryCounts (an image where neither has a boundary scores precision = recall = 1)
    """
    if pred.shape != gt.shape:
        raise DatusError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    tol = tolerance_pixels(pred.shape, fraction)
    pb, gb = boundaries(pred), boundaries(gt)
    return BoundaryCounts(matched_pred=_near(pb, gb, tol), pred=int(pb.sum()),
                          matched_gt=_near(gb, pb, tol), gt=int(gb.sum()))


@dataclass
class BoundaryScore:
    """Boundary F1 over a dataset: the mean of per-image F1 (Csurka et al.'s BF score).

    Attributes
    ----------
    fraction : tolerance as a fraction of each image's diagonal
    per_image : F1 of each image added, in order
    total : counts summed over images (for a pooled precision and recall)
    """

    fraction: float = TOLERANCE_FRACTION
    per_image: list[float] = field(default_factory=list)
    total: BoundaryCounts = field(default_factory=BoundaryCounts)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Score one image; returns its boundary F1."""
        counts = boundary_counts(pred, gt, self.fraction)
        self.per_image.append(counts.f1)
        for name in ("matched_pred", "pred", "matched_gt", "gt"):
            setattr(self.total, name, getattr(self.total, name) + getattr(counts, name))
        return counts.f1

    def result(self) -> dict:
        """``{"f1", "precision", "recall", "tolerance", "images"}``: ``f1`` is the mean of
        per-image F1, precision and recall are pooled over all boundary pixels."""
        return {"f1": float(np.mean(self.per_image)) if self.per_image else 0.0,
                "precision": self.total.precision, "recall": self.total.recall,
                "tolerance": self.fraction, "images": len(self.per_image)}
