"""Stage 1: resize an image, run the ViT once, keep last-block keys and final patch tokens.

torch is imported by the functions that compute, not by this module: a run whose features
are all cached reads :class:`PatchFeatures` without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_datus.core.choices import PRECISIONS
from napari_datus.core.errors import DatusError

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PatchFeatures:
    """What one ViT forward gives for one image.

    Attributes
    ----------
    keys : (g*g, D) float32
        Last-block attention keys of the patch tokens, all heads concatenated,
        *including* the qkv bias (the paper's keys).
    key_bias : (D,) float32
        The key part of the last block's qkv bias (zeros if the model has none).
    tokens : (g*g, D) float32
        Final normed patch tokens (prefix tokens dropped).
    grid : int
        Side ``g`` of the patch grid.
    queries, values : (g*g, D) float32 or None
        Last-block attention queries and values of the patch tokens, *without* their
        qkv bias (for the ``queries``/``values`` affinities; None when not captured).
    """

    keys: np.ndarray
    key_bias: np.ndarray
    tokens: np.ndarray
    grid: int
    queries: np.ndarray | None = None
    values: np.ndarray | None = None


def check_resolution(resolution: int, patch_size: int) -> None:
    """Raise unless ``resolution`` is a positive multiple of ``patch_size``."""
    if resolution <= 0 or resolution % patch_size:
        raise DatusError(
            f"resolution {resolution} is not a multiple of the model's patch size {patch_size}"
            f" (try {max(1, round(resolution / patch_size)) * patch_size})"
        )


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """Resize an RGB image to a square, bicubic with antialiasing.

    Parameters
    ----------
    image : (H, W, 3) uint8
    size : int

    Returns
    -------
    (3, size, size) float32 tensor in [0, 1]
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    t = F.interpolate(t[None], size=(size, size), mode="bicubic", antialias=True,
                      align_corners=False)
    return t[0].clamp_(0.0, 1.0)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise ``(..., 3, H, W)`` floats in [0, 1]."""
    mean = batch.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = batch.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (batch - mean) / std


def uses_bf16(device_type: str, precision: str = "auto") -> bool:
    """Whether the ViT runs under bf16 autocast: ``bf16`` always, ``fp32`` never, ``auto``
    on CUDA only (about half the forward time there)."""
    if precision not in PRECISIONS:
        raise DatusError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (see :func:`uses_bf16`)."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=uses_bf16(device.type, precision))


def extract_features(backbone: Backbone, image: torch.Tensor,
                     precision: str = "auto") -> PatchFeatures:
    """Run the ViT on one resized image and read keys and tokens.

    Parameters
    ----------
    backbone : Backbone
    image : (3, T, T) float tensor in [0, 1]
        ``T`` must be a multiple of the patch size.
    precision : ``auto``, ``fp32`` or ``bf16`` (:func:`uses_bf16`)

    Returns
    -------
    PatchFeatures
    """
    import torch

    size = image.shape[-1]
    check_resolution(size, backbone.patch_size)
    grid = size // backbone.patch_size
    model = backbone.model
    qkv = model.blocks[-1].attn.qkv
    captured: list[torch.Tensor] = []
    handle = qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode(), autocast(backbone.device, precision):
            tokens = model.forward_features(normalize(image[None].to(backbone.device)))
    finally:
        handle.remove()
    dim = backbone.embed_dim
    prefix = backbone.num_prefix_tokens
    qkv_out = captured[0][0, prefix:].float().cpu().numpy()
    bias = (qkv.bias.detach().float().cpu().numpy() if qkv.bias is not None
            else np.zeros(3 * dim, dtype=np.float32))
    return PatchFeatures(
        keys=np.ascontiguousarray(qkv_out[:, dim : 2 * dim], dtype=np.float32),
        key_bias=bias[dim : 2 * dim],
        tokens=np.ascontiguousarray(tokens[0, prefix:].float().cpu().numpy()),
        grid=grid,
        queries=np.ascontiguousarray(qkv_out[:, :dim] - bias[:dim], dtype=np.float32),
        values=np.ascontiguousarray(qkv_out[:, 2 * dim :] - bias[2 * dim :], dtype=np.float32),
    )
