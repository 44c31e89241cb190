"""The names a user can choose among, and where defaults come from, without importing torch.

The command line's parser and the settings (:mod:`napari_datus.params`) read these, so
``datus --help`` and argument errors answer at once; the stages import them from here too.
"""

from __future__ import annotations

import os

DEFAULT_MODEL = "vit_small_patch14_dinov2.lvd142m"
MODEL_ENV = "DATUS_MODEL"
WEIGHTS_ENV = "DATUS_WEIGHTS"
CACHE_ENV = "DATUS_CACHE_DIR"

AFFINITIES = ("paper", "keys-nobias", "keys-centred", "weighted", "queries", "values", "tokens",
              "tokens-knn", "keys-knn")
PARTITIONS = ("igraph", "python-louvain")
EMBEDDINGS = ("crop-cls", "pooled-tokens")
EMBEDDING_NORMS = ("l2", "standardise", "pca-whiten")
# How a patch-grid pseudo mask reaches image size: nearest (the paper's) or an edge-aware
# guided filter of the upsampled label scores (core.refine).
REFINEMENTS = ("none", "guided")
# Dataset-level grouping of segment embeddings: k-means with K centres (the paper's), or
# k-means with --overcluster centres merged to K by average linkage (core.grouping).
GROUPINGS = ("kmeans", "merge")
# ViT arithmetic: auto = bf16 weights on AMX/AVX512-BF16 CPUs and CUDA, else float32
# (core.features.effective_precision).
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
GT_FORMATS = ("index", "suim6", "suim8")
DENOISE_BACKBONES = ("mobilenet_v3_large", "resnet50")
DENOISE_OUTPUTS = ("fill", "predict")
MAX_SEED = 2**32 - 1  # numpy's RandomState (k-means) takes 32-bit seeds


def default_model() -> str:
    """The model name from ``DATUS_MODEL``, else DINOv2 ViT-S/14."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def default_weights() -> str | None:
    """The local weights file from ``DATUS_WEIGHTS``, if set."""
    return os.environ.get(WEIGHTS_ENV) or None
