"""Stages 2-5 of one image, from its patch features, and what every stage path shares.

:class:`ImageResult` is what stages 1-5 leave of an image (patch-grid maps and segment
embeddings, never full-size images); :class:`Timer` sums the seconds of each stage. The
uncached path (:func:`napari_datus.pipeline.segment_image`) and the cached one
(:mod:`napari_datus.cached_stages`) both partition and embed through
:func:`partition_features` and :func:`embed_segments`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_datus.core.embeddings import crop_cls_embeddings, pooled_token_embeddings
from napari_datus.core.errors import DatusError
from napari_datus.core.features import PatchFeatures
from napari_datus.core.graph import adjacency
from napari_datus.core.partition import louvain
from napari_datus.core.segments import Segments, split_segments
from napari_datus.params import Params

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone
    from napari_datus.core.lazy_backbone import LazyBackbone

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
