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

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_datus.cache import FeatureCache
from napari_datus.cached_stages import segment_cached
from napari_datus.clustering import cluster
from napari_datus.core.blas import one_blas_thread
from napari_datus.core.errors import DatusError, SetupError
from napari_datus.core.features import (
    check_resolution,
    extract_features,
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
        except SetupError:
            raise
        except DatusError as exc:
            skipped.append(Skipped(file=stem, reason=str(exc)))
            yield Progress("segments", index, total, stem)
            continue
        results.append(result)
        yield Progress("segments", index, total, stem, result)
    return results, skipped


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
