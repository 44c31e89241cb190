"""What the widgets compute, without Qt: image stacks, layer arrays, metrics, segment QA.

Layer conventions (DESIGN 6): napari draws label 0 transparent, so the pseudo-mask
layer holds cluster ``c`` as ``c + 1`` with 0 = unlabelled, the partitions layer holds
community ``p`` as ``p + 1``, segments hold their id (noise 0) and the noise layer is 1
where noise. Files keep the ``datus run`` conventions; :mod:`.export` converts back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from napari_datus.class_carry import Carry
from napari_datus.class_map import ClassMap
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.embeddings import masked_crops
from napari_datus.core.errors import DatusError
from napari_datus.core.features import resize_image
from napari_datus.core.metrics import evaluate
from napari_datus.core.pseudolabel import upsample_nearest
from napari_datus.evaluation import VOID, GroundTruthFormat, Scorer
from napari_datus.io.images import to_rgb_uint8
from napari_datus.io.masks import to_layer_labels
from napari_datus.pipeline import DatasetResult, Progress

LAYER_SUFFIXES = ("partitions", "segments", "noise", "pseudo mask")
DENOISED = "de-noised"


@dataclass
class ImageStack:
    """An image layer's data seen as a dataset.

    Attributes
    ----------
    images : (N, H, W) or (N, H, W, C) array, a view of the layer data
    stems : one name per image
    is_stack : False when the layer is one 2D image (layers then drop the N axis)
    """

    images: np.ndarray
    stems: list[str]
    is_stack: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W)"""
        return tuple(int(s) for s in self.images.shape[:3])


def image_stack(data: np.ndarray, rgb: bool, name: str,
                stems: list[str] | None = None) -> ImageStack:
    """Read an Image layer's data as ``N`` images.

    Parameters
    ----------
    data : (H, W), (H, W, C) with ``rgb``, (N, H, W) or (N, H, W, C) with ``rgb``
    rgb : the layer's ``rgb`` flag (last axis is colour)
    name : layer name, for messages and default stems
    stems : file stems from the layer metadata, used when there is one per image
    """
    spatial = np.ndim(data) - int(rgb)
    if spatial not in (2, 3):
        raise DatusError(f"layer {name!r} has shape {np.shape(data)}: choose a 2D gray or RGB"
                         " image, or a stack (N, H, W[, 3]) of them")
    images = np.asarray(data)
    is_stack = spatial == 3
    if not is_stack:
        images = images[None]
    n = images.shape[0]
    if not stems or len(stems) != n:
        stems = [name] if not is_stack else [f"{name}_{i:04d}" for i in range(n)]
    return ImageStack(images=images, stems=list(stems), is_stack=is_stack)


@dataclass
class WidgetRun:
    """A finished run over an image layer, shared by the widgets through layer metadata.

    Attributes
    ----------
    image_name : name of the image layer, the prefix of every result layer
    stack : ImageStack
    result : DatasetResult from :func:`napari_datus.pipeline.run`
    patch_size, input_size : the backbone's, for segment crops
    denoised : per stack image, (H, W) uint8 de-noised cluster ids (None if skipped);
        None when de-noising did not run
    metrics : ``{"initial": ..., "denoised": ...}`` blocks of ``core.metrics.evaluate``
        against the last ground truth, as in metrics.json
    gt : (N, H, W) class ids of that ground truth, kept so metrics follow reassignments
    gt_format : its format (``index``, ``suim6``, ``suim8``)
    class_names : its classes
    weights : the backbone's :meth:`~napari_datus.core.backbone.Backbone.provenance`
    pristine : the pseudo-mask layer's labels as computed, before any edit
    class_map : the user's classes and the class of each cluster (default: one class per
        cluster); a folder run's image views and a layer set's runs hold the one map of the
        folder or set, so it is changed in place (:meth:`ClassMap.set_to`), never replaced
    scored : digest (:func:`masks_digest`) of the pseudo masks ``metrics`` were computed
        from: the metrics are out of date when the layer's masks differ
    carry : how this run's clusters cover those of the run it replaced (None for a first
        run): the user's edits of that run follow it here
    out : the run folder the run is saved in (its class map is saved there), or None
    group : the runs of a layer set (several image layers, one k-means), this one included;
        empty for a run of its own
    """

    image_name: str
    stack: ImageStack
    result: DatasetResult
    patch_size: int
    input_size: int
    denoised: list[np.ndarray | None] | None = None
    weights: dict[str, str | None] = field(default_factory=dict)
    pristine: np.ndarray | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    gt: np.ndarray | None = None
    gt_format: str = "index"
    class_names: list[str] = field(default_factory=list)
    class_map: ClassMap | None = None
    scored: str | None = None
    carry: Carry | None = field(default=None, repr=False, compare=False)
    out: Path | None = None
    group: list[WidgetRun] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._positions = {r.stem: i for i, r in enumerate(self.result.results)}
        if self.class_map is None:
            self.class_map = ClassMap.per_cluster(self.result.params.clusters)

    def __setattr__(self, name: str, value) -> None:
        # The map is shared by the run's views: a new one here would leave them the old one.
        if name == "class_map" and getattr(self, "class_map", None) is not None:
            raise AttributeError("a run's class map is changed in place: use"
                                 " run.class_map.set_to(other)")
        super().__setattr__(name, value)

    @property
    def n_clusters(self) -> int:
        """Cluster labels the masks may hold: K, plus clusters made by reassigning a
        segment to a class that had none."""
        return max(self.result.params.clusters, self.class_map.n_clusters)

    def layer_name(self, suffix: str) -> str:
        return f"{self.image_name} {suffix}"

    def position(self, index: int) -> int | None:
        """Position in ``result.results`` of stack image ``index`` (None if it was skipped)."""
        return self._positions.get(self.stack.stems[index])

    def pseudo_mask(self, index: int) -> np.ndarray | None:
        """(H, W) uint8 initial pseudo mask of stack image ``index``, 255 = unlabelled."""
        position = self.position(index)
        if position is None:
            return None
        # Edge refinement follows the image, so it needs the pixels.
        image = None if self.result.params.refine == "none" else stack_rgb(self.stack, index)
        return self.result.pseudo_mask(position, image)


def layer_arrays(run: WidgetRun) -> dict[str, np.ndarray]:
    """Full-size arrays for every result layer, keyed by layer suffix.

    Returns
    -------
    dict suffix -> (N, H, W) array, or (H, W) for a single image; images that the
    pipeline skipped stay 0. Dtypes: partitions/segments the smallest unsigned type that
    holds their ids, the others uint8. ``"de-noised"`` only when de-noising ran.
    """
    n, height, width = run.stack.shape
    grids: dict[str, list[np.ndarray | None]] = {suffix: [] for suffix in LAYER_SUFFIXES}
    for index in range(n):
        position = run.position(index)
        r = None if position is None else run.result.results[position]
        grids["partitions"].append(None if r is None else r.partition.astype(np.int64) + 1)
        grids["segments"].append(None if r is None else r.segments.valid)
        grids["noise"].append(None if r is None else (r.segments.valid == 0).astype(np.uint8))
        mask = run.pseudo_mask(index)
        grids["pseudo mask"].append(None if mask is None else to_layer_labels(mask))
    if run.denoised is not None:
        grids[DENOISED] = [None if m is None else to_layer_labels(m) for m in run.denoised]
    arrays = {}
    for suffix, per_image in grids.items():
        top = max((int(g.max(initial=0)) for g in per_image if g is not None), default=0)
        dtype = np.min_scalar_type(top) if suffix in ("partitions", "segments") else np.uint8
        out = np.zeros((n, height, width), dtype=dtype)
        for index, grid in enumerate(per_image):
            if grid is not None:
                out[index] = upsample_nearest(grid, (height, width))
        arrays[suffix] = out if run.stack.is_stack else out[0]
    return arrays


def denoise(run: WidgetRun, config: DenoiseConfig,
            ) -> Generator[TrainProgress | Progress, None, list[np.ndarray | None]]:
    """Stage 7 on the run's images: train on (image, initial pseudo mask), predict each image.

    Yields TrainProgress per training step and Progress per predicted image.

    Returns
    -------
    Per stack image, (H, W) uint8 cluster ids with every pixel labelled (None if skipped).
    """
    n = run.stack.shape[0]
    indices = [i for i in range(n) if run.position(i) is not None]
    pairs = [(run.stack.stems[i], partial(stack_rgb, run.stack, i),
              partial(run.pseudo_mask, i)) for i in indices]
    index_of = {run.stack.stems[i]: i for i in indices}
    masks: list[np.ndarray | None] = [None] * n

    def keep(stem: str, mask: np.ndarray) -> None:
        masks[index_of[stem]] = mask

    # Imported here: it imports torch and torchvision, seconds the dock should not wait for.
    from napari_datus.denoising import denoise_pairs

    yield from denoise_pairs(pairs, run.n_clusters, config, keep)
    return masks


def stack_rgb(stack: ImageStack, index: int) -> np.ndarray:
    """Stack image ``index`` as (H, W, 3) uint8 RGB."""
    return to_rgb_uint8(stack.images[index], name=stack.stems[index])


def ground_truth(data: np.ndarray, is_labels: bool, rgb: bool, fmt: str,
                 layer_format: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode a ground-truth layer to class ids (the rules of :mod:`napari_datus.evaluation`).

    Parameters
    ----------
    data : Labels data (N, H, W) / (H, W), or an RGB image (N, H, W, 3) / (H, W, 3)
    is_labels : the layer is a Labels layer
    rgb : for an Image layer, its ``rgb`` flag
    fmt : ``index``, ``suim6`` or ``suim8``
    layer_format : ``"suim8"`` when a Labels layer holds SUIM colour codes (the reader's
        and sample's layers say so in their metadata)

    Returns
    -------
    (N, H, W) int64 class ids, -1 = void (one image gets N = 1), and the class names
    """
    spec = GroundTruthFormat(fmt)
    data = np.asarray(data)
    if is_labels:
        classes = spec.decode_codes(data if data.ndim == 3 else data[None], layer_format,
                                    name="ground-truth labels")
    else:
        if fmt != "index" and not rgb:
            raise DatusError("SUIM ground truth must be an RGB image layer of SUIM colours")
        stack = data if data.ndim == 3 + int(rgb) else data[None]
        classes = np.stack([spec.decode(im, name="ground-truth image") for im in stack])
    return classes, spec.names(int(classes.max(initial=VOID)) + 1)


def compute_metrics(run: WidgetRun, gt: np.ndarray, names: list[str],
                    initial: list[np.ndarray | None] | None = None) -> dict[str, dict]:
    """Initial (and de-noised) masks against ground truth, via the core's Confusion and evaluate.

    Parameters
    ----------
    gt : (N, H, W) int class ids, the image stack's shape
    names : class names (C of them)
    initial : per stack image, the (H, W) uint8 pseudo mask as the user edited it (None for
        a skipped image); default: the computed masks

    Returns
    -------
    ``{"initial": block, "denoised": block}`` (``denoised`` only when de-noising ran); each
    block has its own Hungarian matching.

    Raises
    ------
    DatusError
        If the ground truth's shape differs from the image stack's.
    """
    if gt.shape != run.stack.shape:
        raise DatusError(f"ground truth has shape {gt.shape} but the image stack"
                         f" {run.image_name!r} has {run.stack.shape} (N, H, W); ground truth"
                         " is never resized")
    masks = {"initial": initial if initial is not None
             else [run.pseudo_mask(i) for i in range(run.stack.shape[0])]}
    if run.denoised is not None:
        masks["denoised"] = run.denoised
    metrics = {}
    for key, per_image in masks.items():
        scorer = Scorer(run.n_clusters, classes=names)
        for stem, mask, truth in zip(run.stack.stems, per_image, gt):
            if mask is not None:
                scorer.add(stem, mask, truth)
        metrics[key] = evaluate(scorer.confusion, names)
    return metrics


def masks_digest(masks: list[np.ndarray | None]) -> str:
    """A digest of per-image (H, W) masks (None: a skipped image), to tell whether metrics
    were computed from the masks a layer holds now."""
    digest = hashlib.blake2b(digest_size=16)
    for mask in masks:
        digest.update(b"-" if mask is None else repr(mask.shape).encode())
        if mask is not None:
            digest.update(np.ascontiguousarray(mask, dtype=np.uint8).data)
    return digest.hexdigest()


def score(run: WidgetRun, gt: np.ndarray, fmt: str, names: list[str],
          masks: list[np.ndarray | None] | None = None) -> dict[str, dict]:
    """Score the run's pseudo masks (``masks`` as the user edited them, file convention;
    default the computed ones) against ground truth and keep the metrics, the ground truth
    and what was scored on the run (see :func:`compute_metrics`)."""
    masks = masks if masks is not None else [run.pseudo_mask(i)
                                             for i in range(run.stack.shape[0])]
    run.metrics = compute_metrics(run, gt, names, masks)
    run.gt, run.gt_format, run.class_names = gt, fmt, names
    run.scored = masks_digest(masks)
    return run.metrics


def carry_metrics(run: WidgetRun, scored: WidgetRun) -> None:
    """Score ``run`` against the ground truth an earlier run of the same stack was scored
    with, so a re-run (a new K or tau) keeps its metrics without another click.

    Nothing is carried when ``scored`` has no metrics or its ground truth does not have
    ``run``'s stack shape (the image layer's data changed since).
    """
    if scored.gt is None or not scored.metrics or scored.gt.shape != run.stack.shape:
        return
    score(run, scored.gt, scored.gt_format, scored.class_names)


@dataclass
class SegmentInfo:
    """What segment QA shows for one clicked patch.

    Attributes
    ----------
    index : image in the stack
    segment : valid segment id, 0 for noise
    component : connected component id (noise included)
    patches : size of the component in patches
    cluster : k-means cluster of a valid segment, None for noise
    """

    index: int
    segment: int
    component: int
    patches: int
    cluster: int | None

    @property
    def valid(self) -> bool:
        return self.segment > 0


def segment_at(run: WidgetRun, index: int, row: float, col: float) -> SegmentInfo:
    """The segment under pixel (row, col) of stack image ``index``."""
    n, height, width = run.stack.shape
    if not (0 <= index < n and 0 <= row < height and 0 <= col < width):
        raise DatusError(f"pixel ({row:.0f}, {col:.0f}) of image {index} is outside the image")
    position = run.position(index)
    if position is None:
        raise DatusError(f"image {run.stack.stems[index]} was skipped by the pipeline")
    r = run.result.results[position]
    grid_h, grid_w = r.segments.valid.shape
    # Same nearest rule as upsample_nearest, inverted for one pixel.
    gr = min(int((int(row) + 0.5) * grid_h / height), grid_h - 1)
    gc = min(int((int(col) + 0.5) * grid_w / width), grid_w - 1)
    segment = int(r.segments.valid[gr, gc])
    component = int(r.segments.components[gr, gc])
    patches = int((r.segments.components == component).sum())
    cluster = int(run.result.clusters[position][segment - 1]) if segment else None
    return SegmentInfo(index, segment, component, patches, cluster)


def segment_crop(run: WidgetRun, info: SegmentInfo) -> np.ndarray:
    """The masked crop of a segment, as the ``crop-cls`` embedding sees it.

    Returns
    -------
    (S, S, 3) uint8 with S the backbone's input size
    """
    r = run.result.results[run.position(info.index)]
    resized = resize_image(stack_rgb(run.stack, info.index), run.result.params.resolution)
    # A one-segment id map makes masked_crops yield exactly this component's crop.
    alone = (r.segments.components == info.component).astype(np.int32)
    crop = next(masked_crops(resized, alone, run.patch_size, run.input_size))
    return (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def reassign(run: WidgetRun, index: int, segment: int, cluster: int) -> np.ndarray:
    """Move a valid segment to another cluster.

    Returns
    -------
    (H, W) bool: the pixels of the segment as the pseudo mask shows them, which the caller
    repaints with ``cluster + 1``: the patches of the segment, or with edge refinement (or
    noise filled in) the pixels that go from its old cluster to the new one.
    """
    k = run.n_clusters
    if segment < 1:
        raise DatusError("noise has no cluster: choose a valid segment")
    if not 0 <= cluster < k:
        raise DatusError(f"cluster {cluster} is outside 0..{k - 1}")
    position = run.position(index)
    clusters = run.result.clusters[position]
    params = run.result.params
    if params.refine == "none" and not params.fill_noise:
        clusters[segment - 1] = cluster
        valid = run.result.results[position].segments.valid
        return upsample_nearest(valid == segment, run.stack.shape[1:])
    old = int(clusters[segment - 1])
    before = run.pseudo_mask(index)
    clusters[segment - 1] = cluster
    after = run.pseudo_mask(index)
    return (after == cluster) & (before == old)
