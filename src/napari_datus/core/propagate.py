"""Label propagation: a classifier on the patch features of a few labelled images labels
every patch of the others.

Labels are class masks at image size (255 = not labelled). Each patch of the ``g x g``
grid the ViT saw (the image resized to ``T x T``, so a patch covers ``H/g x W/g`` pixels)
gets the class counts of its pixels (:func:`patch_counts`); a patch whose pixels are
mostly labelled trains the classifier with its majority class (:func:`training_set`). The
fitted :class:`Propagator` gives per-patch class scores for any image; optionally the
scores are averaged within the image's unsupervised segments (:func:`segment_vote`), and
the argmax grid reaches image size by the run's refinement (:func:`scores_to_mask`).

Pure: numpy and scikit-learn (imported when a classifier is fitted).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_datus.core.blas import one_blas_thread
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.core.refine import (
    EPS,
    MAX_SIDE,
    RADIUS_PATCHES,
    _downscale,
    guided_filter,
    refine_mask,
    upsample_bilinear,
)

# linear: multinomial logistic regression on standardised tokens (the baseline);
# balanced: the same with class weights inversely proportional to class frequency;
# mlp: one hidden layer of 256 ReLU units.
CLASSIFIERS = ("linear", "balanced", "mlp")
# What a patch is described by: the final normed tokens; those and the last block's keys;
# or the tokens with their context (the mean token of the 3x3 patches around and of the
# whole image), so a patch is judged with what surrounds it.
FEATURES = ("tokens", "tokens+keys", "tokens+context")
# How the patch scores reach image size (scores_to_mask); the default measured best on
# suim_dev (docs/propagation.md).
REFINES = ("none", "guided", "guided-soft")
DEFAULT_REFINE = "guided-soft"


@dataclass(frozen=True)
class PropagateConfig:
    """Settings of one propagation (recorded beside its metrics).

    Attributes
    ----------
    classifier : one of :data:`CLASSIFIERS`
    features : one of :data:`FEATURES`
    segment_vote : weight in [0, 1] of the segment mean of the scores (0: patches alone)
    min_labelled : fraction of a patch's pixels that must be labelled for it to train
    c : inverse L2 regularisation of the logistic regressions
    alpha : L2 penalty of the MLP
    seed : seeds every random step (the MLP's initialisation and batches)
    """

    # Chosen on suim_dev with benchmarks/propagate.py (docs/propagation.md): class weights
    # and strong regularisation (C = 0.003: 32.5 against 26.0 mIoU at C = 1 for a plain
    # probe), half of each patch's scores from its segment's mean.
    classifier: str = "balanced"
    features: str = "tokens"
    segment_vote: float = 0.5
    min_labelled: float = 0.5
    c: float = 0.003
    alpha: float = 1e-2
    seed: int = 0

    def validate(self) -> None:
        """One DatusError naming the first bad setting."""
        if self.classifier not in CLASSIFIERS:
            raise DatusError(f"unknown classifier {self.classifier!r}: choose one of"
                             f" {', '.join(CLASSIFIERS)}")
        if self.features not in FEATURES:
            raise DatusError(f"unknown features {self.features!r}: choose one of"
                             f" {', '.join(FEATURES)}")
        if not 0.0 <= self.segment_vote <= 1.0:
            raise DatusError(f"segment vote must be in 0..1, got {self.segment_vote}")
        if not 0.0 < self.min_labelled <= 1.0:
            raise DatusError(f"min labelled must be in (0, 1], got {self.min_labelled}")
        if self.c <= 0:
            raise DatusError(f"C must be positive, got {self.c}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def patch_features(tokens: np.ndarray, keys: np.ndarray | None, kind: str) -> np.ndarray:
    """``(g*g, D')`` float32 description of each patch by ``kind`` (:data:`FEATURES`).

    ``tokens`` and ``keys`` are ``(g*g, D)``, patches in row-major order.
    """
    tokens = np.asarray(tokens, dtype=np.float32)
    if kind == "tokens":
        return tokens
    if kind == "tokens+context":
        return np.hstack([tokens, neighbourhood_mean(tokens),
                          np.broadcast_to(tokens.mean(axis=0), tokens.shape)])
    if keys is None:
        raise DatusError("tokens+keys features need the patch keys")
    return np.hstack([tokens, keys]).astype(np.float32)


def neighbourhood_mean(tokens: np.ndarray) -> np.ndarray:
    """(g*g, D) mean of each patch's 3x3 neighbourhood on the grid (clipped at borders)."""
    g = int(round(np.sqrt(len(tokens))))
    grid = tokens.reshape(g, g, -1)
    padded = np.pad(grid, ((1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones((g, g, 1), dtype=np.float32), ((1, 1), (1, 1), (0, 0)))
    total = sum(padded[i:i + g, j:j + g] for i in range(3) for j in range(3))
    count = sum(ones[i:i + g, j:j + g] for i in range(3) for j in range(3))
    return (total / count).reshape(g * g, -1).astype(np.float32)


def patch_counts(labels: np.ndarray, grid: int, n_classes: int) -> np.ndarray:
    """Class counts of the pixels under each patch, not-labelled pixels in a last column.

    Parameters
    ----------
    labels : (H, W) integer class ids 0..C-1, 255 = not labelled
    grid : side g of the patch grid (the image is resized to a square before the ViT)
    n_classes : C

    Returns
    -------
    (g*g, C + 1) int64, patches in row-major order
    """
    h, w = labels.shape
    rows = np.minimum(np.arange(h) * grid // h, grid - 1)
    cols = np.minimum(np.arange(w) * grid // w, grid - 1)
    patch = rows[:, None] * grid + cols[None, :]
    ids = np.where(labels == UNLABELLED, n_classes, labels).astype(np.int64)
    flat = (patch * (n_classes + 1) + ids).ravel()
    return np.bincount(flat, minlength=grid * grid * (n_classes + 1)).reshape(
        grid * grid, n_classes + 1)


def training_set(features: list[np.ndarray], counts: list[np.ndarray],
                 min_labelled: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Training patches of the labelled images: each mostly-labelled patch and its majority
    class.

    Parameters
    ----------
    features : per image, (g*g, D) float32
    counts : per image, (g*g, C + 1) from :func:`patch_counts`
    min_labelled : labelled fraction of a patch's pixels needed to train on it

    Returns
    -------
    X (n, D) float32 and y (n,) int64
    """
    xs, ys = [], []
    for feats, count in zip(features, counts):
        labelled = count[:, :-1].sum(axis=1)
        keep = (labelled > 0) & (labelled >= min_labelled * count.sum(axis=1))
        xs.append(feats[keep])
        ys.append(np.argmax(count[keep, :-1], axis=1))
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
    if not y.size:
        raise DatusError("no patch is labelled enough to learn from (label more pixels)")
    return np.vstack(xs).astype(np.float32), y.astype(np.int64)


class Propagator:
    """A fitted patch classifier: ``scores(X)`` gives (n, C) class probabilities.

    Classes absent from the training patches get score 0.
    """

    def __init__(self, config: PropagateConfig, n_classes: int) -> None:
        config.validate()
        self.config, self.n_classes = config, n_classes

    def fit(self, x: np.ndarray, y: np.ndarray) -> Propagator:
        """Fit on (n, D) float32 features and (n,) class ids; returns self."""
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.classes = np.unique(y)
        if self.classes.size == 1:
            self.model = None  # one class seen: every patch is that class
            return self
        from sklearn.exceptions import ConvergenceWarning

        self.model = make_pipeline(StandardScaler(), self._estimator())
        # One BLAS thread: these matrices are small, and a thread pool that spins on a
        # shared CPU made the fit of 20 images' patches 8 s instead of a fraction of one.
        with warnings.catch_warnings(), one_blas_thread():
            # A fixed iteration budget is the setting, not a fault to report per run.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y)
        return self

    def _estimator(self):
        cfg = self.config
        if cfg.classifier == "mlp":
            from sklearn.neural_network import MLPClassifier

            return MLPClassifier(hidden_layer_sizes=(256,), alpha=cfg.alpha, max_iter=200,
                                 early_stopping=False, random_state=cfg.seed)
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=cfg.c, max_iter=500, random_state=cfg.seed,
                                  class_weight="balanced" if cfg.classifier == "balanced"
                                  else None)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, C) float32 class probabilities of (n, D) patches."""
        out = np.zeros((len(x), self.n_classes), dtype=np.float32)
        if self.model is None:
            out[:, self.classes[0]] = 1.0
        else:
            with one_blas_thread():
                out[:, self.classes] = self.model.predict_proba(x)
        return out


def segment_vote(scores: np.ndarray, segments: np.ndarray, weight: float) -> np.ndarray:
    """Blend each patch's scores with the mean scores of its unsupervised segment.

    Parameters
    ----------
    scores : (g*g, C) float
    segments : (g, g) int, 0 = noise (noise patches keep their own scores), 1..n valid
    weight : share of the segment mean, 0..1

    Returns
    -------
    (g*g, C) float32
    """
    scores = np.asarray(scores, dtype=np.float32)
    if weight == 0:
        return scores
    ids = segments.ravel().astype(np.int64)
    n = int(ids.max(initial=0)) + 1
    sums = np.zeros((n, scores.shape[1]), dtype=np.float64)
    np.add.at(sums, ids, scores)
    sizes = np.bincount(ids, minlength=n)[:, None]
    means = (sums / np.maximum(sizes, 1)).astype(np.float32)[ids]
    blended = (1 - weight) * scores + weight * means
    return np.where((ids > 0)[:, None], blended, scores)


def scores_to_mask(scores: np.ndarray, grid: int, shape: tuple[int, int],
                   refine: str = "none", image: np.ndarray | None = None) -> np.ndarray:
    """The image-size class mask of per-patch scores.

    Parameters
    ----------
    scores : (g*g, C) float
    grid : g
    shape : (H, W) of the image
    refine : how the grid reaches image size: ``none`` (nearest upsampling of the argmax),
        ``guided`` (the run's refinement, :func:`~napari_datus.core.refine.refine_mask`, of
        the argmax) or ``guided-soft`` (the same guided filter on the class scores
        themselves, so an uncertain patch border moves the edge less than a sure one)
    image : (H, W, 3) uint8, needed by the guided refinements

    Returns
    -------
    (H, W) uint8 class ids, every pixel labelled
    """
    if refine == "guided-soft":
        return refine_scores(np.asarray(scores, np.float32).reshape(grid, grid, -1), image)
    labels = np.argmax(scores, axis=1).astype(np.uint8).reshape(grid, grid)
    return refine_mask(labels, shape, refine, image)


def refine_scores(scores: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(g, g, C) class scores to an (H, W) uint8 argmax mask whose edges follow ``image``:
    bilinear upsampling and the colour guided filter of :mod:`napari_datus.core.refine`,
    with its window and regularisation."""
    if image is None:
        raise DatusError("guided refinement needs the image")
    shape = (int(image.shape[0]), int(image.shape[1]))
    guide = _downscale(image[..., :3], MAX_SIDE)
    soft = upsample_bilinear(scores, guide.shape[:2])
    radius = max(1, int(round(RADIUS_PATCHES * guide.shape[0] / scores.shape[0])))
    small = np.argmax(guided_filter(guide, soft, radius, EPS), axis=-1).astype(np.uint8)
    return small if small.shape == shape else upsample_nearest(small, shape)


def keep_labels(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A labelled image's mask: its labels where given, the prediction elsewhere.
    (H, W) uint8."""
    return np.where(labels == UNLABELLED, predicted, labels).astype(np.uint8)
