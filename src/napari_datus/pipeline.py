"""Orchestration of the DatUS stages for a dataset, as generators.

Stages 1-5 run per image (:func:`segment_image`; the stages themselves are in
:mod:`napari_datus.stages`, their cached path in :mod:`napari_datus.cached_stages`),
stage 6 over the whole dataset (:func:`cluster`, from :mod:`napari_datus.clustering`, and
:func:`pseudo_mask`). :func:`segment_dataset` and :func:`run` are generators that yield a
:class:`Progress` after every image, so a napari ``thread_worker`` reports progress and
cancels at the next yield, and the command line drives the same code with a progress bar.
Only patch-grid results and embeddings are kept per image, never full-size images.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_datus.cache import FeatureCache
from napari_datus.cached_stages import CachedInputs, segment_cached
from napari_datus.clustering import cluster
from napari_datus.core.blas import one_blas_thread
from napari_datus.core.errors import DatusError, SetupError
from napari_datus.core.features import (
    PatchFeatures,
    check_resolution,
    extract_features,
    extract_features_batch,
    resize_image,
)
from napari_datus.core.lazy_backbone import LazyBackbone
from napari_datus.core.pseudolabel import (
    fill_unlabelled,
    paint_grid,
)
from napari_datus.core.refine import refine_mask
from napari_datus.params import Params, check_graph_memory
from napari_datus.stages import ImageResult, Timer, check_image_size, segment_features

if TYPE_CHECKING:
    from napari_datus.core.backbone import Backbone

    AnyBackbone = Backbone | LazyBackbone

# Images per keys forward. bf16 weights on AMX: 13.9 ms per image at batch 8 against 24 at
# batch 1 (issue 22); larger batches gain little and hold more resized images.
FEATURE_BATCH = 8


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
        return segment_cached(stem, lambda: image, backbone, params, timer, cache)
    check_image_size(image.shape, backbone.patch_size, stem or "image")
    with timer("keys"):
        resized = resize_image(image, params.resolution)
        features = extract_features(backbone, resized, params.precision)
    return segment_features(features, params, (int(image.shape[0]), int(image.shape[1])),
                            stem, timer, backbone, resized)


ImageSource = tuple[str, Callable[[], np.ndarray]]


def segment_source(stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                   params: Params, timer: Timer | None = None,
                   cache: FeatureCache | None = None) -> ImageResult:
    """Stages 1-5 for one source ``(stem, load)``, through the cache when one is given."""
    timer = timer or Timer()
    if cache is not None and cache.enabled:
        return segment_cached(stem, load, backbone, params, timer, cache)
    with timer("read"):
        image = load()
    return segment_image(image, backbone, params, stem, timer)


def segment_dataset(
    sources: Iterable[ImageSource], total: int, backbone: AnyBackbone, params: Params,
    timer: Timer | None = None, cache: FeatureCache | None = None,
) -> Generator[Progress, None, tuple[list[ImageResult], list[Skipped]]]:
    """Stages 1-5 over a dataset, the keys forward in batches.

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
    Progress with ``result`` set after each image, in input order.

    Returns
    -------
    (results, skipped): an image whose loader raises DatusError is skipped, not fatal.

    Sources go in chunks of :func:`feature_batch` consecutive sources; the cache misses of
    a chunk share one ViT forward. A reader thread looks up and decodes the next chunk while
    this one runs (decoding releases the GIL), so ``read`` seconds overlap the others.
    """
    params.validate()
    check_resolution(params.resolution, backbone.patch_size)
    timer = timer or Timer()
    results: list[ImageResult] = []
    skipped: list[Skipped] = []
    chunks = source_chunks(sources, feature_batch(params))
    with ThreadPoolExecutor(1, thread_name_prefix="datus-read") as reader:
        ahead = _read_ahead(reader, chunks, backbone, params, cache)
        try:
            while ahead is not None:
                prepared, seconds = ahead.result()
                ahead = _read_ahead(reader, chunks, backbone, params, cache)
                add_seconds(timer, seconds)
                with one_blas_thread():
                    forward_chunk(prepared, backbone, params, timer)
                for item in prepared:
                    try:
                        with one_blas_thread():
                            result = item.finish(timer)
                    except SetupError:
                        raise
                    except DatusError as exc:
                        skipped.append(Skipped(file=item.stem, reason=str(exc)))
                        yield Progress("segments", item.index, total, item.stem)
                        continue
                    results.append(result)
                    yield Progress("segments", item.index, total, item.stem, result)
        finally:
            if ahead is not None:
                ahead.cancel()
    return results, skipped


def feature_batch(params: Params) -> int:
    """Images per keys forward: ``params.batch_size``, at most :data:`FEATURE_BATCH`."""
    return max(1, min(params.batch_size, FEATURE_BATCH))


Chunk = list[tuple[int, ImageSource]]


def source_chunks(sources: Iterable[ImageSource], size: int) -> Iterator[Chunk]:
    """``(index, source)`` pairs (index from 1) in lists of ``size`` consecutive sources."""
    numbered = enumerate(sources, start=1)
    while chunk := list(islice(numbered, size)):
        yield chunk


@dataclass
class Prepared:
    """One source ready for its turn: its stage inputs, or the error that stops it."""

    index: int
    stem: str
    inputs: CachedInputs | ImageInputs | None = None
    error: DatusError | None = None

    @property
    def needs_forward(self) -> bool:
        return self.inputs is not None and self.inputs.needs_forward

    def finish(self, timer: Timer) -> ImageResult:
        """Stages 1-5 (what the cache and the batched forward left), timed on ``timer``;
        raises the error met while preparing, in this source's turn."""
        if self.error is not None:
            raise self.error
        self.inputs.timer = timer
        return self.inputs.finish()


class ImageInputs:
    """Uncached counterpart of :class:`~napari_datus.cached_stages.CachedInputs`: one
    source's size, resized image and (once the batched forward ran) features."""

    needs_forward = True

    def __init__(self, stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                 params: Params, timer: Timer) -> None:
        self.stem, self.load, self.backbone = stem, load, backbone
        self.params, self.timer = params, timer
        self.features: PatchFeatures | None = None

    def prepare_forward(self) -> None:
        """Decode, check and resize the image; keep only its size and the resized copy."""
        with self.timer("read"):
            image = self.load()
        check_image_size(image.shape, self.backbone.patch_size, self.stem or "image")
        self.shape = (int(image.shape[0]), int(image.shape[1]))
        with self.timer("keys"):
            self.resized = resize_image(image, self.params.resolution)

    def set_features(self, features: PatchFeatures) -> None:
        self.features = features

    def finish(self) -> ImageResult:
        return segment_features(self.features, self.params, self.shape, self.stem,
                                self.timer, self.backbone, self.resized)


def prepare_chunk(chunk: Chunk, backbone: AnyBackbone, params: Params,
                  cache: FeatureCache | None) -> tuple[list[Prepared], dict[str, float]]:
    """Cache look-ups, decoding and resizing of a chunk's sources, and their seconds."""
    timer = Timer()
    prepared = []
    for index, (stem, load) in chunk:
        item = Prepared(index, stem)
        try:
            item.inputs = (CachedInputs(stem, load, backbone, params, timer, cache)
                           if cache is not None and cache.enabled
                           else ImageInputs(stem, load, backbone, params, timer))
            if item.inputs.needs_forward:
                item.inputs.prepare_forward()
        except DatusError as exc:  # a SetupError too: raised in its turn
            item.inputs, item.error = None, exc
        prepared.append(item)
    return prepared, timer.seconds


def forward_chunk(prepared: list[Prepared], backbone: AnyBackbone, params: Params,
                  timer: Timer) -> None:
    """One ViT forward for every source of a chunk that needs one; gives each its features."""
    todo = [item.inputs for item in prepared if item.needs_forward]
    if not todo:
        return
    for inputs in todo:
        inputs.timer = timer
    with timer("keys"):
        features = extract_features_batch(backbone, [i.resized for i in todo],
                                          params.precision)
    for inputs, feats in zip(todo, features):
        inputs.set_features(feats)


def segment_chunk(chunk: Chunk, backbone: AnyBackbone, params: Params,
                  cache: FeatureCache | None = None, timer: Timer | None = None,
                  ) -> list[ImageResult | Skipped]:
    """Stages 1-5 of one chunk of :func:`source_chunks` in this thread (a dask task): the
    same batches, hence the same features, as :func:`segment_dataset`."""
    timer = timer or Timer()
    prepared, seconds = prepare_chunk(chunk, backbone, params, cache)
    add_seconds(timer, seconds)
    with one_blas_thread():
        forward_chunk(prepared, backbone, params, timer)
    outcomes: list[ImageResult | Skipped] = []
    for item in prepared:
        try:
            with one_blas_thread():
                outcomes.append(item.finish(timer))
        except SetupError:
            raise
        except DatusError as exc:
            outcomes.append(Skipped(file=item.stem, reason=str(exc)))
    return outcomes


def add_seconds(timer: Timer, seconds: dict[str, float]) -> None:
    """Add another timer's seconds per stage to ``timer``."""
    for stage, value in seconds.items():
        timer.seconds[stage] = timer.seconds.get(stage, 0.0) + value


def _read_ahead(reader: ThreadPoolExecutor, chunks: Iterator[Chunk], backbone: AnyBackbone,
                params: Params, cache: FeatureCache | None) -> Future | None:
    """The next chunk's :func:`prepare_chunk` on the reader thread, or None at the end."""
    chunk = next(chunks, None)
    return None if chunk is None else reader.submit(prepare_chunk, chunk, backbone, params,
                                                    cache)


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
        backbone = LazyBackbone(params.model, params.weights, params.device, facts=cache)
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
