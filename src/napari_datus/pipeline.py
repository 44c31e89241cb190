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
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import ThreadpoolController

from napari_datus.cache import FeatureCache, ImageFile, StageKeys, file_key, image_key, stage_keys
from napari_datus.clustering import cluster
from napari_datus.core.embeddings import (
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
from napari_datus.core.graph import adjacency
from napari_datus.core.lazy_backbone import LazyBackbone
from napari_datus.core.partition import louvain
from napari_datus.core.pseudolabel import (
    fill_unlabelled,
    paint_grid,
    upsample_nearest,
)
from napari_datus.core.refine import refine_mask
from napari_datus.core.segments import (
    Segments,
    connected_components,
    split_components,
    split_segments,
)
from napari_datus.params import Params, check_graph_memory

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone

    AnyBackbone = Backbone | LazyBackbone

STAGES = ("read", "keys", "graph", "partition", "segments", "embeddings", "kmeans", "write")


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

    def pseudo_mask(self, index: int, image: np.ndarray | None = None) -> np.ndarray:
        """(H, W) uint8 initial pseudo mask of image ``index``, 255 = unlabelled.

        ``image`` ((H, W, 3) uint8) is needed when ``params.refine`` is not ``none``.
        """
        return pseudo_mask(self.results[index], self.clusters[index], self.params.fill_noise,
                           self.params.refine, image)

    def segment_counts(self) -> dict[str, float]:
        """Valid and noise segment counts, and the valid fraction (paper Table II)."""
        valid = sum(r.segments.n_valid for r in self.results)
        noise = sum(r.segments.n_noise for r in self.results)
        return {"valid": valid, "noise": noise,
                "valid_fraction": valid / (valid + noise) if valid + noise else 0.0}


class Timer:
    """Seconds per stage, summed over images.

    Stages may nest (the cached path decodes an image only inside the stage that needs
    it): an inner stage's seconds count for the inner stage only.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {stage: 0.0 for stage in STAGES}
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._nested.pop()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
            if self._nested:
                self._nested[-1] += elapsed


def check_image_size(shape: tuple[int, ...], patch_size: int, name: str) -> None:
    """Refuse images smaller than two patches a side: they hold no segment worth having."""
    if min(shape[:2]) < 2 * patch_size:
        raise DatusError(f"{name} is {shape[1]}x{shape[0]} pixels, smaller than two"
                         f" {patch_size}-pixel patches a side")


def segment_image(image: np.ndarray, backbone: AnyBackbone, params: Params, stem: str = "",
                  timer: Timer | None = None, cache: FeatureCache | None = None) -> ImageResult:
    """Stages 1-5 on one image.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    backbone : Backbone or LazyBackbone
    params : Params
    stem : str
        Name for messages and outputs.
    timer : Timer, optional
        Accumulates seconds per stage.
    cache : FeatureCache, optional
        Reuse stored features, partitions and embeddings; store what is computed.
    """
    timer = timer or Timer()
    if cache is not None and cache.enabled:
        return _segment_cached(stem, lambda: image, backbone, params, timer, cache)
    check_image_size(image.shape, backbone.patch_size, stem or "image")
    with timer("keys"):
        resized = resize_image(image, params.resolution)
        features = extract_features(backbone, resized, params.precision)
    return segment_features(features, params, (int(image.shape[0]), int(image.shape[1])),
                            stem, timer, backbone, resized)


def segment_features(features: PatchFeatures, params: Params, shape: tuple[int, int],
                     stem: str = "", timer: Timer | None = None,
                     backbone: AnyBackbone | None = None,
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
    partition = partition_features(features, params, timer)
    with timer("segments"):
        segments = split_segments(partition, params.tau)
    with timer("embeddings"):
        embeddings = embed_segments(segments.valid, params, backbone, lambda: features,
                                    lambda: resized)
    return ImageResult(stem=stem, shape=shape, partition=partition, segments=segments,
                       embeddings=embeddings)


def partition_features(features: PatchFeatures, params: Params, timer: Timer) -> np.ndarray:
    """Stages 2-3: the affinity graph and its Louvain partition, ``(g, g) int32``."""
    with timer("graph"):
        adj = adjacency(features, params.affinity, params.self_loops, params.knn)
    with timer("partition"):
        return louvain(adj, params.seed, params.partition).reshape(features.grid, features.grid)


def embed_segments(grid: np.ndarray, params: Params, backbone: AnyBackbone | None,
                   features: Callable[[], PatchFeatures],
                   resized: Callable[[], torch.Tensor | None]) -> np.ndarray:
    """Stage 5 for the segments of ``grid``.

    Parameters
    ----------
    grid : (g, g) int, 0 = not embedded, 1..n = segments
    features, resized : called only if the embedding needs them (the patch features, or
        the resized ``(3, T, T)`` image they came from).

    Returns
    -------
    (n, D) float32, L2-normalised
    """
    if params.embedding == "crop-cls":
        image = resized()
        if backbone is None or image is None:
            raise DatusError("the crop-cls embedding needs the backbone and resized image")
        return crop_cls_embeddings(backbone, image, grid, params.batch_size, params.precision)
    return pooled_token_embeddings(features().tokens, grid)


class _CachedInputs:
    """One source's cache keys, decoded image, resized image and features, each made at
    most once and only when a stage missing from the cache needs it."""

    def __init__(self, stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                 params: Params, timer: Timer, cache: FeatureCache) -> None:
        self.stem, self.load, self.backbone = stem, load, backbone
        self.params, self.timer, self.cache = params, timer, cache

    @cached_property
    def keys(self) -> StageKeys:
        with self.timer("cache"):
            # A file is known by its bytes, so a full cache hit never decodes the image.
            content = (file_key(self.load.path) if isinstance(self.load, ImageFile)
                       else image_key(self.image))
            return stage_keys(content, self.backbone, self.params)

    @property
    def grid(self) -> int:
        """Side of the patch grid the resized image makes."""
        return self.params.resolution // self.backbone.patch_size

    @cached_property
    def image(self) -> np.ndarray:
        with self.timer("read"):
            image = self.load()
        check_image_size(image.shape, self.backbone.patch_size, self.stem or "image")
        return image

    @cached_property
    def resized(self) -> torch.Tensor:
        with self.timer("keys"):
            return resize_image(self.image, self.params.resolution)

    @cached_property
    def features(self) -> PatchFeatures:
        with self.timer("cache"):
            features = self.cache.features(self.keys.features, grid=self.grid,
                                           dim=self.backbone.embed_dim)
        if features is None:
            with self.timer("keys"):
                features = extract_features(self.backbone, self.resized,
                                            self.params.precision)
            with self.timer("cache"):
                self.cache.put_features(self.keys.features, features)
        return features


def _segment_cached(stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                    params: Params, timer: Timer, cache: FeatureCache) -> ImageResult:
    """Stages 1-5 for one source, running only the stages the cache misses.

    A stored partition skips the ViT, graph and Louvain (and, for an :class:`ImageFile`,
    the decoding); its stored components are split for this tau and only components never
    embedded before are embedded.
    """
    inputs = _CachedInputs(stem, load, backbone, params, timer, cache)
    with timer("cache"):
        stored = cache.partition(inputs.keys.partition, grid=inputs.grid)
    if stored is None:
        partition = partition_features(inputs.features, params, timer)
        shape = (int(inputs.image.shape[0]), int(inputs.image.shape[1]))
        with timer("segments"):
            components = connected_components(partition)
        with timer("cache"):
            cache.put_partition(inputs.keys.partition, partition, shape, components)
    else:
        partition, shape, components = stored
    with timer("segments"):
        segments = split_components(components, params.tau)
    with timer("embeddings"):
        embeddings = _cached_embeddings(inputs, segments)
    return ImageResult(stem=stem, shape=shape, partition=partition, segments=segments,
                       embeddings=embeddings)


def _cached_embeddings(inputs: _CachedInputs, segments: Segments) -> np.ndarray:
    """``(n, D)`` embeddings of the valid segments, embedding only components not stored."""
    # Valid segment j is one connected component; the component ids do not depend on tau.
    ids = np.zeros(segments.n_valid + 1, dtype=np.int32)
    ids[segments.valid.ravel()] = segments.components.ravel()
    ids = ids[1:]
    with inputs.timer("cache"):
        stored = inputs.cache.embeddings(inputs.keys.embeddings, dim=inputs.backbone.embed_dim)
    todo = stored.missing(ids)
    if todo.size:
        lut = np.zeros(int(segments.components.max()) + 1, dtype=np.int32)
        lut[todo] = np.arange(1, todo.size + 1)
        stored.add(todo, embed_segments(lut[segments.components], inputs.params,
                                        inputs.backbone, lambda: inputs.features,
                                        lambda: inputs.resized))
        with inputs.timer("cache"):
            inputs.cache.put_embeddings(inputs.keys.embeddings, stored)
    return stored.take(ids, inputs.backbone.embed_dim)


ImageSource = tuple[str, Callable[[], np.ndarray]]


def segment_source(stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                   params: Params, timer: Timer | None = None,
                   cache: FeatureCache | None = None) -> ImageResult:
    """Stages 1-5 for one source ``(stem, load)``, through the cache when one is given."""
    timer = timer or Timer()
    if cache is not None and cache.enabled:
        return _segment_cached(stem, load, backbone, params, timer, cache)
    with timer("read"):
        image = load()
    return segment_image(image, backbone, params, stem, timer)


def segment_dataset(
    sources: Iterable[ImageSource], total: int, backbone: AnyBackbone, params: Params,
    timer: Timer | None = None, cache: FeatureCache | None = None,
) -> Generator[Progress, None, tuple[list[ImageResult], list[Skipped]]]:
    """Stages 1-5 over a dataset, one image at a time.

    Parameters
    ----------
    sources : iterable of (stem, load) where ``load()`` returns ``(H, W, 3) uint8``
        (:func:`napari_datus.cache.file_sources` for files lets a cache skip decoding)
    total : int
        Number of sources, for progress.
    cache : FeatureCache, optional
        Reuse and store per-image stage results (see :mod:`napari_datus.cache`).

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
            with one_blas_thread():
                result = segment_source(stem, load, backbone, params, timer, cache)
        except DatusError as exc:
            skipped.append(Skipped(file=stem, reason=str(exc)))
            yield Progress("segments", index, total, stem)
            continue
        results.append(result)
        yield Progress("segments", index, total, stem, result)
    return results, skipped


def one_blas_thread():
    """A context in which numpy's BLAS uses one thread.

    The per-image stages multiply small matrices; a multi-threaded OpenBLAS pool then spins
    after each call and takes the cores the next ViT forward runs on (measured on 2 cores:
    0.13 s per forward instead of 0.07). Set per image, not around the loop, so that no
    setting outlives a generator left suspended.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def pseudo_mask(result: ImageResult, clusters: np.ndarray, fill_noise: bool = False,
                refine: str = "none", image: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 initial pseudo mask at the original image size, 255 = unlabelled.

    With ``fill_noise`` noise patches take their nearest valid segment's cluster.
    ``refine`` (:func:`napari_datus.core.refine.refine_mask`) says how the patch grid
    reaches image size; ``guided`` needs ``image``, the (H, W, 3) uint8 original.
    """
    grid = paint_grid(result.segments.valid, clusters)
    if fill_noise:
        grid = fill_unlabelled(grid)
    if refine == "none":
        return upsample_nearest(grid, result.shape)
    return refine_mask(grid, result.shape, refine, image)


def run(
    sources: Iterable[ImageSource], total: int, params: Params,
    backbone: AnyBackbone | None = None, cache: FeatureCache | None = None,
) -> Generator[Progress, None, DatasetResult]:
    """Stages 1-6 over a dataset (the napari widget's entry point).

    Yields Progress per image and once for k-means; returns a DatasetResult. With a warm
    ``cache`` a change of K (or tau) re-runs only k-means (and the segment split). Without
    a ``backbone`` one is made from ``params`` (a
    :class:`~napari_datus.core.lazy_backbone.LazyBackbone`, built only if a stage needs it).
    """
    params.validate()
    timer = Timer()
    if backbone is None:
        # Built on the first cache miss: a fully cached run never loads the model.
        backbone = LazyBackbone(params.model, params.weights, params.device,
                                facts=cache if cache is not None and cache.enabled else None)
    check_graph_memory(params, backbone.patch_size)
    results, skipped = yield from segment_dataset(sources, total, backbone, params, timer,
                                                  cache)
    if not results:
        raise DatusError("no image could be processed: "
                         + "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3]))
    yield Progress("kmeans", 0, 1)
    with timer("kmeans"):
        clusters = cluster(results, params, cache)
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
