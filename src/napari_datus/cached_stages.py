"""Stages 1-5 of one image through the feature cache, running only what the cache misses.

A stored partition skips the ViT, graph and Louvain (and, for a file, decoding it); a new tau
re-splits the stored connected components and embeds only components never embedded before.
What is stored, and under which keys: :mod:`napari_datus.cache`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from napari_datus.cache import (
    FeatureCache,
    ImageFile,
    StageKeys,
    StoredPartition,
    file_key,
    image_key,
    stage_keys,
)
from napari_datus.core.features import PatchFeatures, extract_features, resize_image
from napari_datus.core.segments import Segments, connected_components, split_components
from napari_datus.io.images import check_pixel_limit
from napari_datus.params import Params
from napari_datus.stages import (
    ImageResult,
    Timer,
    check_image_size,
    embed_segments,
    partition_features,
)

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone
    from napari_datus.core.lazy_backbone import LazyBackbone

    AnyBackbone = Backbone | LazyBackbone


class CachedInputs:
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
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the decoded image."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @cached_property
    def resized(self) -> torch.Tensor:
        with self.timer("keys"):
            return resize_image(self.image, self.params.resolution)

    def prepare_forward(self) -> None:
        """Decode and resize the image ahead of a batched forward, keeping only its size
        and the resized copy (a batch waiting its turn holds no full-size images)."""
        _ = self.shape, self.resized
        self.__dict__.pop("image", None)

    def finish(self) -> ImageResult:
        """Stages 1-5 of this source (:func:`segment_inputs`)."""
        return segment_inputs(self)

    @cached_property
    def stored_partition(self) -> StoredPartition | None:
        """The cached partition of this source, or None on a miss (read once)."""
        with self.timer("cache"):
            return self.cache.partition(self.keys.partition, grid=self.grid)

    @cached_property
    def stored_features(self) -> PatchFeatures | None:
        """The cached patch features of this source, or None on a miss (read once)."""
        with self.timer("cache"):
            return self.cache.features(self.keys.features, grid=self.grid,
                                       dim=self.backbone.embed_dim)

    @property
    def needs_forward(self) -> bool:
        """Whether stages 1-5 will run the ViT: neither the partition nor the features are
        stored (a new tau whose components need embedding may still run it later)."""
        return self.stored_partition is None and self.stored_features is None

    @cached_property
    def features(self) -> PatchFeatures:
        if self.stored_features is not None:
            return self.stored_features
        with self.timer("keys"):
            features = extract_features(self.backbone, self.resized, self.params.precision)
        self.set_features(features)
        return features

    def set_features(self, features: PatchFeatures) -> None:
        """Give this source the features a batched forward computed, and store them."""
        self.__dict__["features"] = features
        with self.timer("cache"):
            self.cache.put_features(self.keys.features, features)


def segment_cached(stem: str, load: Callable[[], np.ndarray], backbone: AnyBackbone,
                    params: Params, timer: Timer, cache: FeatureCache) -> ImageResult:
    """Stages 1-5 for one source, running only the stages the cache misses.

    A stored partition skips the ViT, graph and Louvain (and, for an :class:`ImageFile`,
    the decoding); its stored components are split for this tau and only components never
    embedded before are embedded.
    """
    return segment_inputs(CachedInputs(stem, load, backbone, params, timer, cache))


def segment_inputs(inputs: CachedInputs) -> ImageResult:
    """:func:`segment_cached` for a source's :class:`CachedInputs` (whose features a batched
    forward may have set)."""
    params, timer, cache = inputs.params, inputs.timer, inputs.cache
    stored = inputs.stored_partition
    if stored is None:
        partition = partition_features(inputs.features, params, timer)
        shape = inputs.shape
        with timer("segments"):
            components = connected_components(partition)
        with timer("cache"):
            cache.put_partition(inputs.keys.partition, partition, shape, components)
    else:
        partition, shape, components = stored
        if isinstance(inputs.load, ImageFile):
            # The file was never decoded, so the pixel limit is checked here.
            check_pixel_limit(inputs.load.path, shape)
    with timer("segments"):
        segments = split_components(components, params.tau)
    with timer("embeddings"):
        embeddings = cached_embeddings(inputs, segments)
    return ImageResult(stem=inputs.stem, shape=shape, partition=partition, segments=segments,
                       embeddings=embeddings)


def cached_embeddings(inputs: CachedInputs, segments: Segments) -> np.ndarray:
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
