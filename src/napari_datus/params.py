"""The settings of a DatUS run, each tagged with the stage it first changes.

A field's ``stage`` (dataclass field metadata) says how much of a run a change to it
redoes, and everything that needs to know is derived from it: the feature cache keys
(:func:`napari_datus.cache.stage_keys`), the settings the napari widget re-runs live, and
the quality benchmark's reuse of segments. A new field must name its stage.

Stages, in pipeline order:

``backbone``
    the model and its weights (part of the backbone fingerprint).
``features``
    the ViT forward (stage 1): in the features key.
``graph``
    affinity graph and Louvain (stages 2-3): in the partition key.
``segments``
    the valid/noise split (stage 4): recomputed from a cached partition in a millisecond.
``embedding``
    segment embeddings (stage 5): in the embeddings key.
``clustering``
    dataset k-means and painting (stage 6): never cached.
``runtime``
    how the work is done, not what it gives (batch size, device).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import psutil

from napari_datus.core.choices import (
    AFFINITIES,
    EMBEDDING_NORMS,
    EMBEDDINGS,
    GROUPINGS,
    MAX_SEED,
    PARTITIONS,
    PRECISIONS,
    REFINEMENTS,
    default_model,
    default_weights,
)
from napari_datus.core.errors import DatusError

PARAM_STAGES = ("backbone", "features", "graph", "segments", "embedding", "clustering",
                "runtime")


def _setting(default: Any = None, stage: str = "", factory: Any = None) -> Any:
    """A Params field with its stage in the field metadata."""
    if stage not in PARAM_STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if factory is not None:
        return field(default_factory=factory, metadata={"stage": stage})
    return field(default=default, metadata={"stage": stage})


MAX_CLUSTERS = 254
# Dense (N, N) float64 arrays the graph stages hold at once for N patches (similarities,
# adjacency and their temporaries): the estimate behind check_graph_memory.
GRAPH_ARRAYS = 4


def check_graph_memory(params: Params, patch_size: int,
                       available: int | None = None) -> None:
    """Refuse a resolution whose patch graph would not fit in memory, before any work.

    Parameters
    ----------
    patch_size : the backbone's patch side, in pixels
    available : bytes free (default: what psutil reports as available)
    """
    patches = (params.resolution // patch_size) ** 2
    need = GRAPH_ARRAYS * 8 * patches**2
    free = psutil.virtual_memory().available if available is None else available
    if need > free:
        raise DatusError(f"resolution {params.resolution} gives {patches} patches per image,"
                         f" whose affinity graph needs about {need / 2**30:.1f} GiB; only"
                         f" {free / 2**30:.1f} GiB are free: choose a lower resolution")


@dataclass
class Params:
    """Every setting that changes a DatUS result (recorded in run.json)."""

    model: str = _setting(stage="backbone", factory=default_model)
    weights: str | None = _setting(stage="backbone", factory=default_weights)
    resolution: int = _setting(224, "features")
    clusters: int = _setting(6, "clustering")
    tau: int = _setting(5, "segments")
    # Seeds Louvain (so it is in the partition key) and k-means.
    seed: int = _setting(0, "graph")
    device: str = _setting("auto", "runtime")
    batch_size: int = _setting(32, "runtime")
    # k-NN graph of centred tokens: no threshold to break on feature offsets, finer segments
    # (docs/results.md has the measurements behind every default).
    affinity: str = _setting("tokens-knn", "graph")
    partition: str = _setting("igraph", "graph")
    embedding: str = _setting("pooled-tokens", "embedding")
    n_init: int = _setting(10, "clustering")
    self_loops: bool = _setting(False, "graph")
    # Dataset-wide normalisation of segment embeddings before k-means (core.whitening).
    embedding_norm: str = _setting("l2", "clustering")
    # Weight each segment by its size in k-means, so the objective counts patches, not segments.
    size_weighted: bool = _setting(False, "clustering")
    # Label noise patches with their nearest segment's cluster (coverage 1 before de-noising).
    fill_noise: bool = _setting(False, "clustering")
    # Neighbours per patch for the tokens-knn / keys-knn affinities.
    knn: int = _setting(16, "graph")
    # ViT arithmetic (core.features.effective_precision): auto = bf16 weights and inputs on a
    # CPU with AMX or AVX512-BF16 and on CUDA (fp16 without bf16), float32 on other CPUs.
    precision: str = _setting("auto", "features")
    # How the patch-grid pseudo mask reaches image size: "none" = nearest (the paper's),
    # "guided" = edges snapped to the image by a guided filter (core.refine).
    refine: str = _setting("none", "clustering")
    # Dataset-level grouping (core.grouping): "kmeans" = K centres (the paper's), "merge" =
    # `overcluster` centres joined to K by average linkage. merge/48 chosen on suim_dev
    # (docs/results.md): the varied background stops being split over several clusters.
    grouping: str = _setting("merge", "clustering")
    overcluster: int = _setting(48, "clustering")

    @staticmethod
    def fields_of(*stages: str) -> tuple[str, ...]:
        """Names of the fields whose stage is one of ``stages``, in declaration order."""
        unknown = set(stages) - set(PARAM_STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}")
        return tuple(f.name for f in fields(Params) if f.metadata["stage"] in stages)

    def settings_of(self, *stages: str) -> list[tuple[str, Any]]:
        """Sorted (name, value) pairs of the fields of ``stages``: a cache key's part."""
        return sorted((name, getattr(self, name)) for name in self.fields_of(*stages))

    def validate(self) -> None:
        """Raise one DatusError naming the first bad setting."""
        choices = {"affinity": AFFINITIES, "partition": PARTITIONS, "embedding": EMBEDDINGS,
                   "embedding_norm": EMBEDDING_NORMS, "precision": PRECISIONS,
                   "refine": REFINEMENTS, "grouping": GROUPINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DatusError(f"unknown {name} {getattr(self, name)!r}:"
                                 f" choose one of {', '.join(allowed)}")
        for name in ("resolution", "clusters", "batch_size", "n_init", "knn", "overcluster"):
            if getattr(self, name) < 1:
                raise DatusError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.tau < 0:
            raise DatusError(f"tau must be >= 0, got {self.tau}")
        if self.clusters > MAX_CLUSTERS:
            raise DatusError(f"clusters must be at most {MAX_CLUSTERS} (pseudo masks are 8-bit"
                             f" with 255 = unlabelled), got {self.clusters}")
        if not 0 <= self.seed <= MAX_SEED:
            raise DatusError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
