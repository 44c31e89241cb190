"""Stage 1: resize an image, run the ViT once, keep last-block keys and final patch tokens.

torch is imported by the functions that compute, not by this module: a run whose features
are all cached reads :class:`PatchFeatures` without it.
"""

from __future__ import annotations

import copy
import platform
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
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


# x86 CPU flags (Linux /proc/cpuinfo) of the instructions that make bf16 matrix products
# fast: AMX tiles or AVX512-BF16. Without them bf16 is emulated and slower than float32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
_MODEL_LOCK = threading.Lock()
# Low-precision copies of a model, per model object and dtype: the float32 model stays as
# loaded (another precision, the crop forwards and the widget's other runs use it).
_CAST_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (:data:`BF16_CPU_FLAGS`).

    Read from ``/proc/cpuinfo`` without importing torch (a fully cached run computes its
    cache keys, which hold the precision, without torch); elsewhere torch's own CPU checks.
    """
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = None
    if text is not None:
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), [])
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def effective_precision(device_type: str, precision: str = "auto") -> str:
    """The arithmetic the ViT runs in: ``fp32``, ``bf16`` or ``fp16``.

    ``fp32`` and ``bf16`` are what they say; ``auto`` is bf16 on a CPU with bf16 matrix
    instructions (:func:`cpu_has_fast_bf16`: about 4x float32 there, features within
    0.9999 cosine), bf16 on a CUDA device that has it, else fp16, and float32 on any other
    CPU. The feature cache keys and run.json hold this, not the setting.
    """
    if precision not in PRECISIONS:
        raise DatusError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if cuda_has_bf16() else "fp16"
    return "bf16" if device_type == "cpu" and cpu_has_fast_bf16() else "fp32"


@cache
def cuda_has_bf16() -> bool:
    """Whether the CUDA device computes in bf16 (compute capability 8.0 and later)."""
    import torch

    return torch.cuda.is_bf16_supported()


def uses_bf16(device_type: str, precision: str = "auto") -> bool:
    """Whether the ViT runs in bf16 (:func:`effective_precision`)."""
    return effective_precision(device_type, precision) == "bf16"


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of an effective precision (``fp32``, ``bf16``, ``fp16``)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast to the effective 16-bit precision on ``device``, for forwards of the float32
    model (the crop forwards); disabled where the effective precision is float32."""
    import torch

    used = effective_precision(device.type, precision)
    return torch.autocast(device_type=device.type, dtype=torch_dtype(used if used != "fp32"
                                                                     else "bf16"),
                          enabled=used != "fp32")


def forward_model(backbone: Backbone, precision: str = "auto") -> torch.nn.Module:
    """The module the keys forward runs: the backbone's model, or a copy of it with weights
    in the effective 16-bit precision (made once per model and dtype, about half the float32
    model's memory). Weights and inputs in bf16, not autocast: autocast casts the weights of
    every linear layer again at every forward, which costs a third of the bf16 forward."""
    model = backbone.model
    used = effective_precision(backbone.device_type, precision)
    if used == "fp32":
        return model
    with _MODEL_LOCK:
        copies = _CAST_MODELS.setdefault(model, {})
        if used not in copies:
            copies[used] = _without_hooks(copy.deepcopy(model)).to(torch_dtype(used)).eval()
        return copies[used]


def _without_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with no forward hooks: a deep copy takes the hooks someone had registered
    on the original at that moment, which would then live on in the copy for good."""
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return model


def extract_features(backbone: Backbone, image: torch.Tensor,
                     precision: str = "auto") -> PatchFeatures:
    """Run the ViT on one resized image and read keys and tokens.

    Parameters
    ----------
    backbone : Backbone
    image : (3, T, T) float tensor in [0, 1]
        ``T`` must be a multiple of the patch size.
    precision : ``auto``, ``fp32`` or ``bf16`` (:func:`effective_precision`)

    Returns
    -------
    PatchFeatures
    """
    return extract_features_batch(backbone, [image], precision)[0]


def extract_features_batch(backbone: Backbone, images: Sequence[torch.Tensor],
                           precision: str = "auto") -> list[PatchFeatures]:
    """One ViT forward over a batch of resized images; their keys and tokens.

    Parameters
    ----------
    backbone : Backbone
    images : sequence of (3, T, T) float tensors in [0, 1], all of one size ``T``, a
        multiple of the patch size
    precision : ``auto``, ``fp32`` or ``bf16`` (:func:`effective_precision`)

    Returns
    -------
    list of PatchFeatures, in the order of ``images``. A batch's products round a little
    differently from single forwards (bf16: token cosine to batch 1 above 0.9999).
    """
    import torch

    if not images:
        return []
    size = images[0].shape[-1]
    check_resolution(size, backbone.patch_size)
    grid = size // backbone.patch_size
    model = forward_model(backbone, precision)
    dtype = next(model.parameters()).dtype
    qkv = model.blocks[-1].attn.qkv
    captured: list[torch.Tensor] = []
    handle = qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = backbone.device
    try:
        with torch.inference_mode():
            batch = torch.stack(list(images))
            if device.type == "cuda":
                # Pinned host memory: the copy runs asynchronously with the queued work.
                batch = batch.pin_memory().to(device, non_blocking=True)
            tokens = model.forward_features(normalize(batch.to(device)).to(dtype))
            prefix = backbone.num_prefix_tokens
            # One device-to-host copy for the whole batch (a sync per image on CUDA else).
            qkv_out = captured[0][:, prefix:].float().cpu().numpy()
            tokens = tokens[:, prefix:].float().cpu().numpy()
    finally:
        handle.remove()
    dim = backbone.embed_dim
    bias = (qkv.bias.detach().float().cpu().numpy() if qkv.bias is not None
            else np.zeros(3 * dim, dtype=np.float32))
    return [PatchFeatures(
        keys=np.ascontiguousarray(out[:, dim : 2 * dim], dtype=np.float32),
        key_bias=bias[dim : 2 * dim].copy(),
        tokens=np.ascontiguousarray(tok, dtype=np.float32),
        grid=grid,
        queries=np.ascontiguousarray(out[:, :dim] - bias[:dim], dtype=np.float32),
        values=np.ascontiguousarray(out[:, 2 * dim :] - bias[2 * dim :], dtype=np.float32),
    ) for out, tok in zip(qkv_out, tokens)]
