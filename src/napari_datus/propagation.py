"""Propagate a few images' class labels to every image of a run (``datus propagate``).

Reads the run through :mod:`napari_datus.runs` and its patch features through the feature
cache (a warm cache runs no ViT); trains :class:`~napari_datus.core.propagate.Propagator`
on the labelled images; writes ``propagated/<stem>.png`` for every image of the run (class
ids at the image's size, every pixel labelled; a labelled image keeps its labels and gets
the prediction only where it was not labelled). With ground truth in the run,
``metrics.json`` gains ``"propagated"``: the masks of the images that were *not* labelled,
scored with the labels' class identity (no Hungarian matching). Files are staged and
swapped in by :class:`~napari_datus.runs.write.RunWriter`, so the run stays valid for
``datus denoise`` and reopening.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from napari_datus.cache import FeatureCache, ImageFile
from napari_datus.cached_stages import CachedInputs, segment_cached
from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.core.metrics import scores
from napari_datus.core.propagate import (
    DEFAULT_REFINE,
    REFINES,
    PropagateConfig,
    Propagator,
    keep_labels,
    patch_counts,
    patch_features,
    scores_to_mask,
    segment_vote,
    training_set,
)
from napari_datus.core.pseudolabel import UNLABELLED
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.dataset import list_images
from napari_datus.io.images import image_size, read_array, read_image
from napari_datus.io.masks import (
    TAB10,
    class_colours,
    class_names,
    decode_index,
    decode_suim,
    write_index_mask,
)
from napari_datus.outputs import write_json
from napari_datus.params import Params
from napari_datus.pipeline import Progress, drive
from napari_datus.runs import read as runs_read
from napari_datus.runs.layout import METRICS_FILE, image_file
from napari_datus.runs.read import RunFolder
from napari_datus.runs.write import RunWriter
from napari_datus.stages import Timer

PROPAGATED_DIR = "propagated"
LABEL_FORMATS = ("index", "suim6", "suim8")


@dataclass
class Labels:
    """The labels a propagation trains on.

    Attributes
    ----------
    names : class names, class id = position
    colours : (C, 3) uint8 RGB per class
    masks : stem -> (H, W) uint8 class ids, 255 = not labelled
    """

    names: list[str]
    colours: np.ndarray
    masks: dict[str, np.ndarray]

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 palette of the written masks (class colours, the rest black)."""
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: len(self.names)] = self.colours
        return palette


@dataclass
class PropagateResult:
    """A finished propagation: files written, images trained on, metrics, seconds."""

    written: list[Path]
    labelled: list[str]
    metrics: dict | None
    seconds: float


def run_params(folder: RunFolder) -> Params:
    """The run's settings as recorded (provenance keys left out)."""
    names = {f.name for f in fields(Params)}
    return Params(**{k: v for k, v in folder.record.params.items() if k in names})


def read_labels(folder: RunFolder, labels_dir: str | Path, fmt: str) -> Labels:
    """Read and check every label file before any work; DatusError naming the first bad one.

    A label file must be named by an image of the run, have that image's size and hold
    only classes of the table (``index``: ids below the ``classes.json`` count, or any id
    below 255 without one; 255 = not labelled); at least one pixel must be labelled.
    """
    if fmt not in LABEL_FORMATS:
        raise DatusError(f"unknown label format {fmt!r}: choose one of {', '.join(LABEL_FORMATS)}")
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise DatusError(f"label folder not found: {labels_dir}")
    try:
        files = list_images(labels_dir)
    except DatusError as exc:
        raise DatusError(f"labels: {exc}") from exc
    table = ClassMap.load(labels_dir) if fmt == "index" else None
    masks = {}
    for path in files:
        if path.stem not in folder.stems:
            raise DatusError(f"label file {path.name}: the run in {folder.out} has no image"
                             f" {path.stem!r}")
        image = folder.image(path.stem)
        if image is None:
            raise DatusError(f"label file {path.name}: the image file of {path.stem!r} is gone")
        mask = _decode(path, fmt, table)
        size = image_size(image)
        if mask.shape != size:
            raise DatusError(f"label file {path.name} is {mask.shape[1]}x{mask.shape[0]} but"
                             f" its image {image.name} is {size[1]}x{size[0]}")
        masks[path.stem] = mask
    if not any((m != UNLABELLED).any() for m in masks.values()):
        raise DatusError(f"no labelled pixel in {labels_dir} (255 means not labelled)")
    if table is not None:
        names = [c.name for c in table.classes]
        colours = np.array([c.colour for c in table.classes], dtype=np.uint8)
    elif fmt == "index":
        n = 1 + max(int(m[m != UNLABELLED].max(initial=0)) for m in masks.values())
        names = class_names("index", n)
        colours = np.array([TAB10[i % len(TAB10)] for i in range(n)], dtype=np.uint8)
    else:
        names, colours = class_names(fmt), class_colours(fmt)
    return Labels(names, colours, masks)


def _decode(path: Path, fmt: str, table: ClassMap | None) -> np.ndarray:
    """One label file as (H, W) uint8 class ids, 255 = not labelled."""
    if fmt != "index":
        return decode_suim(read_array(path), fmt, name=path.name).astype(np.uint8)
    ids = decode_index(read_array(path, keep_palette=True), name=path.name)
    labelled = ids[ids != UNLABELLED]
    top = int(labelled.max(initial=0))
    if table is not None and top >= len(table.classes):
        raise DatusError(f"label file {path.name} holds class {top}, but classes.json names"
                         f" {len(table.classes)} classes (0..{len(table.classes) - 1})")
    if top >= UNLABELLED:
        raise DatusError(f"label file {path.name} holds id {top}: class ids are 0..254"
                         " (255 = not labelled)")
    return ids.astype(np.uint8)


class ImageFeatures:
    """Patch features (and segments, for the segment vote) of image files via the cache."""

    def __init__(self, files: dict[str, Path], params: Params, backbone, cache: FeatureCache,
                 config: PropagateConfig,
                 segments: dict[str, np.ndarray] | None = None) -> None:
        self.files, self.params, self.backbone = files, params, backbone
        self.cache, self.config = cache, config
        # (g, g) valid segments already in memory (a napari run), else read via the cache.
        self.segments = segments
        self.timer = Timer()

    def of(self, stem: str) -> tuple[np.ndarray, int, np.ndarray | None]:
        """``(g*g, D)`` features, grid side g and ``(g, g)`` segments (None without vote)."""
        load = ImageFile(self.files[stem])
        inputs = CachedInputs(stem, load, self.backbone, self.params, self.timer, self.cache)
        feats = inputs.features
        segments = None
        if self.config.segment_vote > 0 and self.segments is not None:
            segments = self.segments[stem]
        elif self.config.segment_vote > 0:
            segments = segment_cached(stem, load, self.backbone, self.params, self.timer,
                                      self.cache).segments.valid
        return (patch_features(feats.tokens, feats.keys, self.config.features), feats.grid,
                segments)


def run_features(folder: RunFolder, backbone, cache: FeatureCache,
                 config: PropagateConfig) -> ImageFeatures:
    """The features of a run's images, by the run's settings."""
    return ImageFeatures({s: folder.image(s) for s in folder.stems}, run_params(folder),
                         backbone, cache, config)


def iter_propagate_images(
    features: ImageFeatures, masks: dict[str, np.ndarray], n_classes: int, targets: list[str],
    refine: str,
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Train on ``masks`` (stem -> (H, W) uint8 class ids, 255 = not labelled) and label
    the ``targets``; yields Progress; returns stem -> (H, W) uint8 class mask."""
    propagator = yield from train(masks, n_classes, features)
    out = {}
    for index, stem in enumerate(targets, start=1):
        out[stem] = predict_mask(stem, features, propagator, refine)
        yield Progress("propagate", index, len(targets), stem)
    return out


def iter_propagate(
    run_dir: str | Path, labels_dir: str | Path, label_format: str, backbone,
    cache: FeatureCache, config: PropagateConfig, refine: str = DEFAULT_REFINE,
) -> Generator[Progress, None, PropagateResult]:
    """Check, train, label every image, score, swap the files in; yields Progress.

    Parameters
    ----------
    backbone : the run's backbone (a LazyBackbone builds its model only on a cache miss)
    refine : how masks reach image size (:data:`~napari_datus.core.propagate.REFINES`)
    """
    start = time.perf_counter()
    config.validate()
    folder = runs_read.read_run(run_dir)
    if refine not in REFINES:
        raise DatusError(f"unknown refine {refine!r}: choose one of {', '.join(REFINES)}")
    lost = [s for s in folder.stems if folder.image(s) is None]
    if lost:
        raise DatusError(f"{folder.out}: the image files of {len(lost)} images are gone"
                         f" ({', '.join(lost[:3])}); propagation reads their features")
    labels = read_labels(folder, labels_dir, label_format)
    existing = runs_read.read_metrics(folder)
    features = run_features(folder, backbone, cache, config)
    with RunWriter(folder.out, update=True) as writer:
        propagator = yield from train(labels.masks, len(labels.names), features)
        scorer = _scorer(folder, labels)
        written = yield from _label_all(folder, labels, features, propagator, refine,
                                        writer, scorer)
        metrics = None
        if scorer is not None and scorer.images:
            metrics = identity_block(scorer, labels.names, existing.get("classes"))
            metrics.update(labelled=len(labels.masks), labelled_images=sorted(labels.masks),
                           settings={**config.to_dict(), "refine": refine,
                                     "label_format": label_format},
                           seconds=time.perf_counter() - start)
        if metrics is not None or "propagated" in existing:
            # A block from earlier labels would describe masks no longer on disk.
            rest = {k: v for k, v in existing.items() if k != "propagated"}
            write_json(writer.path(METRICS_FILE),
                       {**rest, "run_id": writer.run_id,
                        **({"propagated": metrics} if metrics is not None else {})})
        writer.commit(writer.old)
    return PropagateResult(written, sorted(labels.masks), metrics, time.perf_counter() - start)


def train(masks: dict[str, np.ndarray], n_classes: int, features: ImageFeatures,
          ) -> Generator[Progress, None, Propagator]:
    """Fit the classifier on the patches of the labelled images; yields Progress."""
    xs, counts = [], []
    for index, (stem, mask) in enumerate(sorted(masks.items()), start=1):
        feats, grid, _ = features.of(stem)
        xs.append(feats)
        counts.append(patch_counts(mask, grid, n_classes))
        yield Progress("train", index, len(masks), stem)
    x, y = training_set(xs, counts, features.config.min_labelled)
    return Propagator(features.config, n_classes).fit(x, y)


def _label_all(folder: RunFolder, labels: Labels, features: ImageFeatures,
               propagator: Propagator, refine: str, writer: RunWriter,
               scorer: Scorer | None) -> Generator[Progress, None, list[Path]]:
    written = []
    palette = labels.palette()
    for index, stem in enumerate(folder.stems, start=1):
        mask = predict_mask(stem, features, propagator, refine)
        if stem in labels.masks:
            mask = keep_labels(mask, labels.masks[stem])
        elif scorer is not None and folder.gt(stem) is not None:
            reason = scorer.add_file(stem, mask, folder.gt(stem))
            if reason is not None:
                warnings.warn(reason, stacklevel=2)
        relative = image_file(PROPAGATED_DIR, stem)
        write_index_mask(writer.path(relative), mask, palette)
        written.append(folder.out / relative)
        yield Progress("propagate", index, len(folder.stems), stem)
    return written


def predict_mask(stem: str, features: ImageFeatures, propagator: Propagator,
                 refine: str) -> np.ndarray:
    """(H, W) uint8 class mask of one image of the run, every pixel labelled."""
    feats, grid, segments = features.of(stem)
    scores_ = propagator.scores(feats)
    if segments is not None:
        scores_ = segment_vote(scores_, segments, features.config.segment_vote)
    path = features.files[stem]
    image = read_image(path) if refine != "none" else None
    shape = image.shape[:2] if image is not None else image_size(path)
    return scores_to_mask(scores_, grid, shape, refine, image)


def _scorer(folder: RunFolder, labels: Labels) -> Scorer | None:
    gt = folder.record.gt or {}
    if not gt.get("format"):
        return None
    return Scorer(len(labels.names), GroundTruthFormat(gt["format"], gt.get("ignore")),
                  boundaries=True)


def class_identity(label_names: list[str], gt_names: list[str]) -> tuple[dict, str]:
    """Label class -> ground-truth class: by name when every label name is a class of the
    ground truth, else by id. Returns the mapping and ``"name"`` or ``"id"``."""
    if set(label_names) <= set(gt_names):
        return {k: gt_names.index(n) for k, n in enumerate(label_names)}, "name"
    return {k: (k if k < len(gt_names) else None) for k in range(len(label_names))}, "id"


def identity_block(scorer: Scorer, label_names: list[str],
                   gt_names: list[str] | None = None) -> dict:
    """The ``"propagated"`` metrics: mIoU, pixel accuracy, mean F1, per class, boundary F1,
    the confusion (label classes x ground-truth classes) and the class identity used."""
    names = scorer.names
    if gt_names and len(gt_names) == len(names):
        names = list(gt_names)
    mapping, matched_by = class_identity(label_names, names)
    block = scores(scorer.confusion.matrix, mapping)
    return {**block, "classes": names, "confusion": scorer.confusion.matrix.tolist(),
            "mapping": {str(k): v for k, v in mapping.items()}, "matched_by": matched_by,
            "images": list(scorer.images), "boundary": scorer.boundary.result()}


def propagate_run(run_dir: str | Path, labels_dir: str | Path, label_format: str, backbone,
                  cache: FeatureCache, config: PropagateConfig, refine: str = DEFAULT_REFINE,
                  progress: Callable[[Progress], None] | None = None) -> PropagateResult:
    """:func:`iter_propagate` to the end, reporting progress."""
    return drive(iter_propagate(run_dir, labels_dir, label_format, backbone, cache, config,
                                refine), progress)
