"""A backbone known by its cheap facts, whose model is built only when something runs it.

A re-run whose features are all cached needs the backbone's identity (for the cache keys) and
its geometry (patch size, token width), never its model. :class:`LazyBackbone` gives both
without importing torch or timm:

* **identity** (:func:`weights_identity`): for weights from a file, the embedded default or
  ``--weights FILE``, the file's sha256 (pinned for the default, hashed for a user's file)
  with the architecture and the options the model is created with. Hub weights have no file
  to hash here, so their identity is the hash of the built model's state dict.
* **geometry** (:class:`BackboneFacts`): a small JSON descriptor per identity in the feature
  cache, recorded the first time the model is built and checked against the model whenever
  it is built again.
* **device type**: as asked; ``auto`` is CPU without importing torch where no GPU device
  node exists (:func:`gpu_ruled_out`), else torch decides.

The model itself is built once, on first use of :attr:`LazyBackbone.model`, by
:func:`~napari_datus.core.backbone.load_backbone`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from napari_datus.core.choices import default_model
from napari_datus.core.errors import DatusError, SetupError
from napari_datus.core.model_ref import (
    DEFAULT_INPUT_SIZE,
    WeightsRef,
    check_device,
    gpu_ruled_out,
    model_options,
    resolve_weights,
    weights_identity,
)

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone

@dataclass(frozen=True)
class BackboneFacts:
    """The geometry the pipeline reads from a backbone (all ints, in pixels or channels)."""

    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    input_size: int

    @classmethod
    def from_dict(cls, data: Any) -> BackboneFacts | None:
        """Facts from a descriptor's JSON object, or None if it is not a valid one."""
        if not isinstance(data, dict):
            return None
        values = {f.name: data.get(f.name) for f in fields(cls)}
        if not all(type(v) is int for v in values.values()):
            return None
        facts = cls(**values)
        positive = (facts.patch_size, facts.embed_dim, facts.input_size)
        return facts if min(positive) > 0 and facts.num_prefix_tokens >= 0 else None

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneFacts:
        """The facts of a built backbone."""
        return cls(backbone.patch_size, backbone.embed_dim, backbone.num_prefix_tokens,
                   backbone.input_size)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class FactsStore(Protocol):
    """Where descriptors live (:class:`~napari_datus.cache.FeatureCache` is one)."""

    def backbone_facts(self, identity: str) -> dict | None: ...

    def put_backbone_facts(self, identity: str, facts: dict) -> None: ...


def device_name(device: str) -> str:
    """The device ``device`` resolves to, importing torch only when a GPU may be present."""
    check_device(device)
    if device != "auto":
        return device
    if gpu_ruled_out():
        return "cpu"
    from napari_datus.core.backbone import resolve_device

    return str(resolve_device(device))


class LazyBackbone:
    """Stands in for a :class:`~napari_datus.core.backbone.Backbone` and builds it on first
    use of :attr:`model` (or :attr:`device`); the other attributes come without it.

    Parameters
    ----------
    model, weights, device, input_size, **model_kwargs
        As for :func:`~napari_datus.core.backbone.load_backbone`.
    facts : FactsStore, optional
        Descriptors of the geometry (the feature cache); without one the geometry needs the
        model.
    """

    def __init__(self, model: str | None = None, weights: str | os.PathLike | None = None,
                 device: str = "auto", facts: FactsStore | None = None,
                 input_size: int = DEFAULT_INPUT_SIZE, **model_kwargs: Any) -> None:
        check_device(device)
        self.name = model or default_model()
        self._weights, self._device, self._store = weights, device, facts
        self._input_size, self._model_kwargs = input_size, model_kwargs
        self._built: Backbone | None = None
        self._lock = threading.Lock()

    @cached_property
    def ref(self) -> WeightsRef:
        """Where the weights come from (a user's file is hashed here, once)."""
        try:
            return resolve_weights(self.name, self._weights)
        except DatusError as exc:
            raise SetupError(str(exc)) from exc

    @cached_property
    def weights_id(self) -> str | None:
        """:func:`weights_identity` of file weights; None for hub weights."""
        if self.ref.sha256 is None:
            return None
        return weights_identity(self.name, self.ref.sha256,
                                model_options(self._input_size, **self._model_kwargs))

    @cached_property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``."""
        return self.device_name.split(":")[0]

    @cached_property
    def device_name(self) -> str:
        """The device the model runs on, e.g. ``cpu`` or ``cuda:1``."""
        return str(self._built.device) if self._built is not None else device_name(self._device)

    @property
    def built(self) -> bool:
        """Whether the model has been built."""
        return self._built is not None

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded().model

    @property
    def device(self) -> torch.device:
        return self.loaded().device

    @property
    def patch_size(self) -> int:
        return self.facts.patch_size

    @property
    def embed_dim(self) -> int:
        return self.facts.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.facts.num_prefix_tokens

    @property
    def input_size(self) -> int:
        return self.facts.input_size

    @property
    def weights(self) -> str | None:
        return None if self.ref.path is None else str(self.ref.path)

    @property
    def weights_source(self) -> str:
        return self.ref.source

    @property
    def weights_sha256(self) -> str | None:
        return self.ref.sha256

    def provenance(self) -> dict[str, str | None]:
        """Where the weights came from, for run.json ``params``."""
        return {"weights_source": self.weights_source, "weights_sha256": self.weights_sha256,
                "weights_file": self.weights}

    @cached_property
    def facts(self) -> BackboneFacts:
        """The geometry: from the descriptor where there is one, else from the model."""
        if self.weights_id is not None and self._store is not None and self._built is None:
            stored = BackboneFacts.from_dict(self._store.backbone_facts(self.weights_id))
            if stored is not None:
                return stored
        return BackboneFacts.of(self.loaded())

    def loaded(self) -> Backbone:
        """The built backbone (built here on the first call, once across threads).

        Raises
        ------
        DatusError
            If the model's geometry differs from the descriptor this backbone already
            answered with (a damaged descriptor: it is rewritten, so a new run works).
        """
        with self._lock:
            if self._built is None:
                try:
                    self._built = self._build()
                except SetupError:
                    raise
                except DatusError as exc:
                    raise SetupError(str(exc)) from exc
        return self._built

    def _build(self) -> Backbone:
        from napari_datus.core.backbone import load_backbone

        backbone = load_backbone(self.name, self._weights, self._device, self._input_size,
                                 **self._model_kwargs)
        if backbone.weights_id is not None and backbone.weights_id != self.weights_id:
            raise DatusError(f"weights file {self.weights} changed during the run")
        facts = BackboneFacts.of(backbone)
        if self.weights_id is not None and self._store is not None:
            self._store.put_backbone_facts(self.weights_id, facts.to_dict())
        answered = self.__dict__.get("facts")
        if answered is not None and answered != facts:
            raise DatusError(f"the cached description of model {self.name} did not match the"
                             " model (a damaged cache file); it has been corrected: run again")
        return backbone


def loaded(backbone: Backbone | LazyBackbone) -> Backbone:
    """The built backbone behind ``backbone`` (itself if already built)."""
    return backbone.loaded() if isinstance(backbone, LazyBackbone) else backbone
