"""Orchestration of the DatUS stages for a dataset, as generators.

Stages 1-5 run per image (:func:`segment_image`), stage 6 over the whole dataset
(:func:`cluster`, :func:`pseudo_mask`). :func:`segment_dataset` and :func:`run` are
generators that yield a :class:`Progress` after every image, so a napari
``thread_worker`` reports progress and cancels at the next yield, and the command
line drives the same code with a progress bar. Only patch-grid results and
embeddings are kept per image, never full-size images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from napari_datus.core.backbone import Backbone, default_model, default_weights, load_backbone
from napari_datus.core.embeddings import (
    EMBEDDINGS,
    crop_cls_embeddings,
    pooled_token_embeddings,
)
from napari_datus.core.errors import DatusError
from napari_datus.core.features import (
    PatchFeatures,
    check_resolution,
    extract_features,
    resize_image,
)
from napari_datus.core.graph import AFFINITIES, adjacency
from napari_datus.core.partition import PARTITIONS, louvain
from napari_datus.core.pseudolabel import (
    cluster_segments,
    fill_unlabelled,
    paint_grid,
    upsample_nearest,
)
from napari_datus.core.segments import Segments, split_segments
from napari_datus.core.whitening import EMBEDDING_NORMS, normalise_embeddings

STAGES = ("read", "keys", "graph", "partition", "segments", "embeddings", "kmeans", "write")


@dataclass
class Params:
    """Every setting that changes a DatUS result (recorded in run.json)."""

    model: str = field(default_factory=default_model)
    weights: str | None = field(default_factory=default_weights)
    resolution: int = 224
    clusters: int = 6
    tau: int = 5
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    affinity: str = "keys-nobias"
    partition: str = "igraph"
    embedding: str = "pooled-tokens"
    n_init: int = 10
    self_loops: bool = False
    # Dataset-wide normalisation of segment embeddings before k-means (core.whitening).
    embedding_norm: str = "l2"
    # Weight each segment by its size in k-means, so the objective counts patches, not segments.
    size_weighted: bool = False
    # Label noise patches with their nearest segment's cluster (coverage 1 before de-noising).
    fill_noise: bool = False

    def validate(self) -> None:
        """Raise one DatusError naming the first bad setting."""
        choices = {"affinity": AFFINITIES, "partition": PARTITIONS, "embedding": EMBEDDINGS,
                   "embedding_norm": EMBEDDING_NORMS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DatusError(f"unknown {name} {getattr(self, name)!r}:"
                                 f" choose one of {', '.join(allowed)}")
        for name in ("resolution", "clusters", "batch_size", "n_init"):
            if getattr(self, name) < 1:
                raise DatusError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.tau < 0:
            raise DatusError(f"tau must be >= 0, got {self.tau}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageResult:
    """Stages 1-5 for one image, on its patch grid.

    Attributes
    ----------
    stem : str
    shape : (H, W) of the original image
    partition : (g, g) int32 Louvain community per patch
    segments : Segments
    embeddings : (n, D) float32, one row per valid segment
    """

    stem: str
    shape: tuple[int, int]
    partition: np.ndarray
    segments: Segments
    embeddings: np.ndarray


@dataclass
class Progress:
    """One step of a run: ``stage`` ``index``/``total``, with the finished image if any."""

    stage: str
    index: int
    total: int
    stem: str = ""
    result: ImageResult | None = None

    @property
    def message(self) -> str:
        return f"{self.stage} {self.index}/{self.total}" + (f" ({self.stem})" if self.stem else "")


@dataclass
class Skipped:
    """An input left out of a run, and why."""

    file: str
    reason: str


@dataclass
class DatasetResult:
    """A finished run: per-image results, each segment's cluster, timings and skips."""

    results: list[ImageResult]
    clusters: list[np.ndarray]
    timings: dict[str, float]
    skipped: list[Skipped]
    params: Params

    def pseudo_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 initial pseudo mask of image ``index``, 255 = unlabelled."""
        return pseudo_mask(self.results[index], self.clusters[index], self.params.fill_noise)

    def segment_counts(self) -> dict[str, float]:
        """Valid and noise segment counts, and the valid fraction (paper Table II)."""
        valid = sum(r.segments.n_valid for r in self.results)
        noise = sum(r.segments.n_noise for r in self.results)
        return {"valid": valid, "noise": noise,
                "valid_fraction": valid / (valid + noise) if valid + noise else 0.0}


class Timer:
    """Seconds per stage, summed over images."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {stage: 0.0 for stage in STAGES}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def check_image_size(shape: tuple[int, ...], patch_size: int, name: str) -> None:
    """Refuse images smaller than two patches a side: they hold no segment worth having."""
    if min(shape[:2]) < 2 * patch_size:
        raise DatusError(f"{name} is {shape[1]}x{shape[0]} pixels, smaller than two"
                         f" {patch_size}-pixel patches a side")


def segment_image(image: np.ndarray, backbone: Backbone, params: Params, stem: str = "",
                  timer: Timer | None = None) -> ImageResult:
    """Stages 1-5 on one image.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    backbone : Backbone
    params : Params
    stem : str
        Name for messages and outputs.
    timer : Timer, optional
        Accumulates seconds per stage.
    """
    timer = timer or Timer()
    check_image_size(image.shape, backbone.patch_size, stem or "image")
    with timer("keys"):
        resized = resize_image(image, params.resolution)
        features = extract_features(backbone, resized)
    return segment_features(features, params, (int(image.shape[0]), int(image.shape[1])),
                            stem, timer, backbone, resized)


def segment_features(features: PatchFeatures, params: Params, shape: tuple[int, int],
                     stem: str = "", timer: Timer | None = None,
                     backbone: Backbone | None = None,
                     resized: torch.Tensor | None = None) -> ImageResult:
    """Stages 2-5 from one image's patch features (reused across settings by benchmarks).

    Parameters
    ----------
    features : PatchFeatures
    params : Params
    shape : (H, W) of the original image
    backbone, resized : only needed for the ``crop-cls`` embedding (the resized
        ``(3, T, T)`` image the features came from).
    """
    timer = timer or Timer()
    with timer("graph"):
        adj = adjacency(features, params.affinity, params.self_loops)
    with timer("partition"):
        partition = louvain(adj, params.seed, params.partition).reshape(features.grid,
                                                                        features.grid)
    with timer("segments"):
        segments = split_segments(partition, params.tau)
    with timer("embeddings"):
        if params.embedding == "crop-cls":
            if backbone is None or resized is None:
                raise DatusError("the crop-cls embedding needs the backbone and resized image")
            embeddings = crop_cls_embeddings(backbone, resized, segments.valid, params.batch_size)
        else:
            embeddings = pooled_token_embeddings(features.tokens, segments.valid)
    return ImageResult(stem=stem, shape=shape, partition=partition, segments=segments,
                       embeddings=embeddings)


ImageSource = tuple[str, Callable[[], np.ndarray]]


def segment_dataset(
    sources: Iterable[ImageSource], total: int, backbone: Backbone, params: Params,
    timer: Timer | None = None,
) -> Generator[Progress, None, tuple[list[ImageResult], list[Skipped]]]:
    """Stages 1-5 over a dataset, one image at a time.

    Parameters
    ----------
    sources : iterable of (stem, load) where ``load()`` returns ``(H, W, 3) uint8``
    total : int
        Number of sources, for progress.

    Yields
    ------
    Progress with ``result`` set after each image.

    Returns
    -------
    (results, skipped): an image whose loader raises DatusError is skipped, not fatal.
    """
    params.validate()
    check_resolution(params.resolution, backbone.patch_size)
    timer = timer or Timer()
    results: list[ImageResult] = []
    skipped: list[Skipped] = []
    for index, (stem, load) in enumerate(sources, start=1):
        try:
            with timer("read"):
                image = load()
            result = segment_image(image, backbone, params, stem, timer)
        except DatusError as exc:
            skipped.append(Skipped(file=stem, reason=str(exc)))
            yield Progress("segments", index, total, stem)
            continue
        results.append(result)
        yield Progress("segments", index, total, stem, result)
    return results, skipped


def cluster(results: list[ImageResult], params: Params) -> list[np.ndarray]:
    """Stage 6: k-means over every valid segment of the dataset.

    Returns
    -------
    list of (n_i,) uint8: cluster of each valid segment, per image
    """
    dim = next((r.embeddings.shape[1] for r in results if r.embeddings.size), 0)
    stacked = np.concatenate([r.embeddings for r in results if r.embeddings.size]) if dim \
        else np.zeros((0, 1), dtype=np.float32)
    if stacked.shape[0]:
        stacked = normalise_embeddings(stacked, params.embedding_norm)
    weights = (np.concatenate([r.segments.sizes for r in results]).astype(np.float64)
               if params.size_weighted else None)
    labels = cluster_segments(stacked, params.clusters, params.seed, params.n_init, weights)
    counts = [r.embeddings.shape[0] for r in results]
    return np.split(labels, np.cumsum(counts)[:-1]) if counts else []


def pseudo_mask(result: ImageResult, clusters: np.ndarray, fill_noise: bool = False) -> np.ndarray:
    """(H, W) uint8 initial pseudo mask at the original image size, 255 = unlabelled.

    With ``fill_noise`` noise patches take their nearest valid segment's cluster.
    """
    grid = paint_grid(result.segments.valid, clusters)
    if fill_noise:
        grid = fill_unlabelled(grid)
    return upsample_nearest(grid, result.shape)


def run(
    sources: Iterable[ImageSource], total: int, params: Params,
    backbone: Backbone | None = None,
) -> Generator[Progress, None, DatasetResult]:
    """Stages 1-6 over a dataset (the napari widget's entry point).

    Yields Progress per image and once for k-means; returns a DatasetResult.
    """
    params.validate()
    timer = Timer()
    if backbone is None:
        yield Progress("loading model", 0, total)
        backbone = load_backbone(params.model, params.weights, params.device)
    results, skipped = yield from segment_dataset(sources, total, backbone, params, timer)
    if not results:
        raise DatusError("no image could be processed: "
                         + "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3]))
    yield Progress("kmeans", 0, 1)
    with timer("kmeans"):
        clusters = cluster(results, params)
    yield Progress("kmeans", 1, 1)
    return DatasetResult(results, clusters, timer.seconds, skipped, params)


def drive(gen: Generator[Progress, None, Any],
          on_progress: Callable[[Progress], None] | None = None) -> Any:
    """Run a pipeline generator to the end, calling ``on_progress``; return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def array_sources(stack: np.ndarray | list[np.ndarray],
                  stems: list[str] | None = None) -> list[ImageSource]:
    """Sources for images already in memory (a stack ``(N, H, W[, C])`` or a list)."""
    from napari_datus.io.images import to_rgb_uint8

    images = list(stack)
    stems = stems or [f"{i:04d}" for i in range(len(images))]
    return [(stem, (lambda a=a, s=stem: to_rgb_uint8(a, name=s))) for stem, a in
            zip(stems, images)]
