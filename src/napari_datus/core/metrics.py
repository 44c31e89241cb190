"""Evaluation (paper IV-C): one dataset confusion matrix, Hungarian matching, scores.

Conventions: predictions are cluster ids ``0..K-1`` with ``255`` = unlabelled; ground
truth is class ids ``0..C-1`` with an ignore value that is left out everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED


@dataclass
class Confusion:
    """Pixel counts accumulated over a dataset.

    Attributes
    ----------
    matrix : (K, C) int64
        Labelled predicted pixels: rows = clusters, columns = true classes.
    unlabelled_per_class : (C,) int64
        True-class counts of pixels the prediction left unlabelled.
    """

    k: int
    c: int
    matrix: np.ndarray = field(init=False)
    unlabelled_per_class: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.k, self.c), dtype=np.int64)
        self.unlabelled_per_class = np.zeros(self.c, dtype=np.int64)

    def grow(self, c: int) -> None:
        """Widen to ``c`` classes (index ground truth learns C from the data)."""
        if c > self.c:
            self.matrix = np.pad(self.matrix, ((0, 0), (0, c - self.c)))
            self.unlabelled_per_class = np.pad(self.unlabelled_per_class, (0, c - self.c))
            self.c = c

    def add(self, pred: np.ndarray, gt: np.ndarray, ignore: int | None = None) -> None:
        """Count one image.

        Parameters
        ----------
        pred : (H, W) uint8 cluster ids, 255 = unlabelled
        gt : (H, W) int class ids; ``ignore`` pixels are skipped
        """
        if pred.shape != gt.shape:
            raise DatusError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        keep = np.ones(gt.shape, dtype=bool) if ignore is None else gt != ignore
        p = pred[keep].astype(np.int64)
        g = gt[keep].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.c):
            raise DatusError(f"ground truth holds class {g.max()} outside 0..{self.c - 1}")
        labelled = p != UNLABELLED
        if labelled.any() and p[labelled].max() >= self.k:
            raise DatusError(f"prediction holds cluster {p[labelled].max()} outside 0..{self.k-1}")
        self.matrix += np.bincount(p[labelled] * self.c + g[labelled],
                                   minlength=self.k * self.c).reshape(self.k, self.c)
        self.unlabelled_per_class += np.bincount(g[~labelled], minlength=self.c)


def hungarian(matrix: np.ndarray) -> dict[int, int | None]:
    """One-to-one cluster -> class mapping maximising matched pixels.

    Works for K < C, K = C and K > C; clusters left over map to ``None``.
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(matrix, maximize=True)
    mapping: dict[int, int | None] = {k: None for k in range(matrix.shape[0])}
    mapping.update({int(r): int(c) for r, c in zip(rows, cols)})
    return mapping


def majority(matrix: np.ndarray) -> dict[int, int | None]:
    """Many-to-one mapping: each cluster to its most frequent class (None if empty)."""
    return {k: (int(np.argmax(row)) if row.sum() else None) for k, row in enumerate(matrix)}


def scores(matrix: np.ndarray, mapping: dict[int, int | None],
           extra_fn: np.ndarray | None = None) -> dict:
    """mIoU, pixel accuracy, mean F1 and per-class IoU/F1 under a mapping.

    Parameters
    ----------
    matrix : (K, C) int
    mapping : cluster -> class or None
    extra_fn : (C,) int, optional
        Ground-truth pixels to count as missed on top of ``matrix`` (unlabelled pixels,
        for the strict figure).

    Returns
    -------
    dict with ``miou``, ``pixel_accuracy``, ``mean_f1``, ``per_class_iou``,
    ``per_class_f1`` (``None`` for a class with neither truth nor prediction).
    """
    k, c = matrix.shape
    predicted = np.zeros((c, c), dtype=np.int64)
    for cluster, cls in mapping.items():
        if cls is not None:
            predicted[cls] += matrix[cluster]
    gt_total = matrix.sum(axis=0) + (0 if extra_fn is None else extra_fn)
    tp = np.diag(predicted)
    fp = predicted.sum(axis=1) - tp
    fn = gt_total - tp
    iou: list[float | None] = []
    f1: list[float | None] = []
    for i in range(c):
        if tp[i] + fp[i] + fn[i] == 0:
            iou.append(None)
            f1.append(None)
        else:
            iou.append(float(tp[i] / (tp[i] + fp[i] + fn[i])))
            f1.append(float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])))
    total = gt_total.sum()
    return {
        "miou": _mean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_f1": _mean(f1),
        "per_class_iou": iou,
        "per_class_f1": f1,
    }


def evaluate(confusion: Confusion, class_names: list[str]) -> dict:
    """The metrics.json block for one set of masks (``"initial"`` or ``"denoised"``).

    The paper figure drops unlabelled pixels; ``strict`` counts them wrong; ``coverage``
    is the labelled fraction of evaluated pixels.
    """
    matrix = confusion.matrix
    if len(class_names) != matrix.shape[1]:
        raise DatusError(f"{len(class_names)} class names for {matrix.shape[1]} classes")
    mapping = hungarian(matrix)
    paper = scores(matrix, mapping)
    strict = scores(matrix, mapping, extra_fn=confusion.unlabelled_per_class)
    labelled = int(matrix.sum())
    total = labelled + int(confusion.unlabelled_per_class.sum())
    many = majority(matrix)
    many_paper = scores(matrix, many)
    many_strict = scores(matrix, many, extra_fn=confusion.unlabelled_per_class)
    return {
        **{key: paper[key] for key in ("miou", "pixel_accuracy", "mean_f1", "per_class_iou",
                                       "per_class_f1")},
        "confusion": matrix.tolist(),
        "unlabelled_per_class": confusion.unlabelled_per_class.tolist(),
        "mapping": _json_mapping(mapping),
        "coverage": labelled / total if total else 0.0,
        "strict": {key: strict[key] for key in ("miou", "pixel_accuracy", "mean_f1",
                                                "per_class_iou")},
        "many_to_one": {
            **{key: many_paper[key] for key in ("miou", "pixel_accuracy", "mean_f1",
                                                "per_class_iou")},
            "mapping": _json_mapping(many),
            "strict": {key: many_strict[key] for key in ("miou", "pixel_accuracy", "mean_f1")},
        },
    }


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else 0.0


def _json_mapping(mapping: dict[int, int | None]) -> dict[str, int | None]:
    return {str(k): v for k, v in sorted(mapping.items())}
