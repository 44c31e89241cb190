"""On-disk cache of the per-image DatUS stages, so changing K or tau skips the ViT.

Three kinds of entry, one ``.npz`` file each, under ``DATUS_CACHE_DIR`` (default: the
user cache folder)::

    features/     PatchFeatures of one image (stage 1, the ViT forward)
    partition/    Louvain partition of the patch grid and the image size (stages 2-3)
    embeddings/   embeddings of connected components, by component id (stage 5)

Keys (:class:`StageKeys`) chain: the features key hashes the image content, the backbone's
weights and geometry, the resolution and the package version; the partition key adds every
per-image setting except tau and the embedding; the embeddings key adds the embedding. A
setting added to :class:`~napari_datus.pipeline.Params` later is therefore in the partition
key unless listed in :data:`NOT_IN_PARTITION_KEY`: a new setting costs a cache miss, never a
stale hit. Segments are not stored: splitting a cached partition for a given tau takes about
a millisecond, less than reading a file. Components are numbered independently of tau, so a
new tau embeds only the components no earlier tau made valid.

Writes are atomic (temporary file, then ``os.replace``), so concurrent dask workers may
share one folder; an unreadable entry counts as a miss and is rewritten. A folder that
cannot be written is reported once with a :class:`CacheWarning` and the run goes on uncached.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import weakref
import zipfile
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs
import torch

from napari_datus import __version__
from napari_datus.core.backbone import Backbone
from napari_datus.core.features import PatchFeatures
from napari_datus.io.images import read_image

if TYPE_CHECKING:
    from napari_datus.pipeline import Params

CACHE_ENV = "DATUS_CACHE_DIR"
# Bump when a stage's output changes for the same inputs, to orphan old entries.
CACHE_FORMAT = 1
# Params fields that cannot change a partition: dataset-level k-means settings, settings
# of later per-image stages (they go in the embeddings key or are recomputed), and what
# the backbone fingerprint and features key already hold.
NOT_IN_PARTITION_KEY = frozenset({
    "clusters", "n_init", "embedding_norm", "size_weighted", "fill_noise",
    "tau", "embedding", "batch_size", "model", "weights", "device", "resolution",
})
# Reading an entry that is truncated, not an npz or missing arrays raises one of these.
_BAD_ENTRY = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
_EMPTY = np.zeros(0)
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


class CacheWarning(UserWarning):
    """The cache cannot be used (e.g. its folder is not writable); the run goes on without."""


@dataclass(frozen=True)
class ImageFile:
    """A source loader a cache identifies by the file's bytes, without decoding the image."""

    path: Path

    def __call__(self) -> np.ndarray:
        """The image as ``(H, W, 3) uint8`` RGB."""
        return read_image(self.path)


def file_sources(paths: list[Path]) -> list[tuple[str, ImageFile]]:
    """Pipeline sources ``(stem, load)`` for image files."""
    return [(Path(p).stem, ImageFile(Path(p))) for p in paths]


@dataclass(frozen=True)
class StageKeys:
    """Cache keys (hex digests) of one image's per-image stages."""

    features: str
    partition: str
    embeddings: str


def digest(*parts: Any) -> str:
    """A short hex digest of strings, numbers and byte strings."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def image_key(image: np.ndarray) -> str:
    """Content key of a decoded image, ``(H, W, 3) uint8``."""
    image = np.ascontiguousarray(image)
    return digest("pixels", image.shape, image.dtype.str, image.tobytes())


def file_key(path: Path) -> str:
    """Content key of an image file's bytes (the decoder is fixed by the package version)."""
    return digest("file", Path(path).suffix.lower(), Path(path).read_bytes())


def backbone_fingerprint(backbone: Backbone) -> str:
    """Hash of a backbone's weights, geometry and device type.

    The weights are hashed once per model object (about 0.2 s for ViT-S/14), so weights
    changed in place afterwards go unnoticed: load a new model instead.
    """
    model = backbone.model
    if model not in _FINGERPRINTS:
        h = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(raw)
        _FINGERPRINTS[model] = h.hexdigest()[:32]
    # bf16 autocast on CUDA gives other features than float32 on CPU.
    return digest(_FINGERPRINTS[model], backbone.name, backbone.patch_size, backbone.embed_dim,
                  backbone.num_prefix_tokens, backbone.input_size, backbone.device.type)


def stage_keys(content: str, backbone: Backbone, params: Params) -> StageKeys:
    """The keys of one image's stages.

    Parameters
    ----------
    content : str
        :func:`image_key` or :func:`file_key` of the image.
    """
    features = digest(CACHE_FORMAT, __version__, content, backbone_fingerprint(backbone),
                      params.resolution)
    settings = sorted((k, v) for k, v in asdict(params).items() if k not in NOT_IN_PARTITION_KEY)
    partition = digest(features, settings)
    return StageKeys(features, partition, digest(partition, params.embedding))


class ComponentEmbeddings:
    """Embeddings of one image's connected components, by component id.

    Parameters
    ----------
    ids : (m,) int32 component ids (``Segments.components`` numbering)
    vectors : (m, D) float32
    """

    def __init__(self, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> None:
        self.ids = np.zeros(0, dtype=np.int32) if ids is None else ids.astype(np.int32)
        self.vectors = vectors

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` (int) that have no embedding yet, in the given order."""
        return ids[~np.isin(ids, self.ids)]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``(n, D)`` vectors for ``(n,)`` new component ids."""
        self.ids = np.concatenate([self.ids, ids.astype(np.int32)])
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])

    def take(self, ids: np.ndarray, dim: int) -> np.ndarray:
        """``(len(ids), D)`` float32 embeddings of stored components, in the given order."""
        if ids.size == 0:
            return np.zeros((0, dim), dtype=np.float32)
        order = np.argsort(self.ids)
        return self.vectors[order[np.searchsorted(self.ids, ids, sorter=order)]]


class FeatureCache:
    """Per-image stage results on disk.

    Parameters
    ----------
    root : path, optional
        Cache folder; defaults to ``$DATUS_CACHE_DIR`` or the user cache folder.
    enabled : bool
        False gives a cache that stores nothing and never hits (``--no-cache``).

    Attributes
    ----------
    enabled : bool
        False when switched off or when the folder turned out not to be writable.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root or os.environ.get(CACHE_ENV)
                         or platformdirs.user_cache_dir("napari-datus")).expanduser()
        self.enabled = enabled and self._writable()

    def features(self, key: str) -> PatchFeatures | None:
        """Cached patch features, or None on a miss."""
        arrays = self._read("features", key)
        required = [f.name for f in fields(PatchFeatures) if f.default is MISSING]
        if arrays is None or not all(name in arrays for name in required):
            return None
        values = {f.name: arrays.get(f.name) for f in fields(PatchFeatures)}
        return PatchFeatures(**{**values, "grid": int(arrays["grid"])})

    def put_features(self, key: str, features: PatchFeatures) -> None:
        """Store patch features (fields that are None are left out)."""
        arrays = {f.name: getattr(features, f.name) for f in fields(features)}
        self._write("features", key, {k: np.asarray(v) for k, v in arrays.items()
                                      if v is not None})

    def partition(self, key: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Cached ``((g, g) int32 partition, (H, W) image size)``, or None on a miss."""
        arrays = self._read("partition", key)
        if arrays is None or "partition" not in arrays or arrays.get("shape", _EMPTY).size != 2:
            return None
        height, width = (int(v) for v in arrays["shape"])
        return arrays["partition"].astype(np.int32), (height, width)

    def put_partition(self, key: str, partition: np.ndarray, shape: tuple[int, int]) -> None:
        """Store a partition and the size of the image it came from."""
        self._write("partition", key, {"partition": partition, "shape": np.asarray(shape)})

    def embeddings(self, key: str) -> ComponentEmbeddings:
        """The component embeddings stored so far (empty on a miss)."""
        arrays = self._read("embeddings", key)
        if arrays is None or "ids" not in arrays or "vectors" not in arrays \
                or arrays["ids"].shape[0] != arrays["vectors"].shape[0]:
            return ComponentEmbeddings()
        return ComponentEmbeddings(arrays["ids"], arrays["vectors"])

    def put_embeddings(self, key: str, stored: ComponentEmbeddings) -> None:
        """Store all component embeddings of an image (replacing the entry)."""
        if stored.vectors is not None:
            self._write("embeddings", key, {"ids": stored.ids, "vectors": stored.vectors})

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def _read(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        try:
            with np.load(self._path(kind, key), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except FileNotFoundError:
            return None
        except _BAD_ENTRY:
            return None  # corrupt or truncated: recomputed and overwritten

    def _write(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        if not self.enabled:
            return
        path = self._path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            self._give_up(f"cannot write to the cache folder {self.root}"
                          f" ({exc.strerror or exc}); going on without the cache")

    def _writable(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            self._give_up(f"cache folder {self.root} is not writable ({exc.strerror or exc});"
                          f" running without the cache (set {CACHE_ENV} to another folder)")
            return False
        return True

    def _give_up(self, message: str) -> None:
        warnings.warn(message, CacheWarning, stacklevel=3)
        self.enabled = False
