"""Stage 1: resize an image, run the ViT once, keep last-block keys and final patch tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_datus.core.backbone import Backbone
from napari_datus.core.errors import DatusError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


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
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    t = F.interpolate(t[None], size=(size, size), mode="bicubic", antialias=True,
                      align_corners=False)
    return t[0].clamp_(0.0, 1.0)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise ``(..., 3, H, W)`` floats in [0, 1]."""
    return (batch - IMAGENET_MEAN.to(batch.device)) / IMAGENET_STD.to(batch.device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (halves the forward time), a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda")


@torch.inference_mode()
def extract_features(backbone: Backbone, image: torch.Tensor) -> PatchFeatures:
    """Run the ViT on one resized image and read keys and tokens.

    Parameters
    ----------
    backbone : Backbone
    image : (3, T, T) float tensor in [0, 1]
        ``T`` must be a multiple of the patch size.

    Returns
    -------
    PatchFeatures
    """
    size = image.shape[-1]
    check_resolution(size, backbone.patch_size)
    grid = size // backbone.patch_size
    qkv = backbone.model.blocks[-1].attn.qkv
    captured: list[torch.Tensor] = []
    handle = qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        x = normalize(image[None].to(backbone.device))
        with autocast(backbone.device):
            tokens = backbone.model.forward_features(x)
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
