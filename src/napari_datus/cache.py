"""On-disk cache of the per-image DatUS stages, so changing K or tau skips the ViT.

Three kinds of entry, one ``.npz`` file each, under ``DATUS_CACHE_DIR`` (default: the
user cache folder)::

    features/     PatchFeatures of one image (stage 1, the ViT forward)
    partition/    Louvain partition of the patch grid, its connected components and the
                  image size (stages 2-4, before the tau threshold)
    embeddings/   embeddings of connected components, by component id (stage 5)

Keys (:class:`StageKeys`) chain: the features key hashes the image content, the backbone's
weights and device type (:func:`backbone_fingerprint`), the package version and the
``features`` settings; the partition key adds the ``graph`` settings; the embeddings key
adds the ``embedding`` settings. Each :class:`~napari_datus.params.Params` field names its
stage, so a new setting lands in the right key by its declaration. Segments are not
stored: splitting the stored components for a given tau is one ``bincount``. Components are
numbered independently of tau, so a new tau embeds only the components no earlier tau made
valid.

A fourth folder, ``backbones/``, holds one small JSON descriptor of a model's geometry per
weights identity, so that a :class:`~napari_datus.core.lazy_backbone.LazyBackbone` answers
without building its model when every feature it would compute is already here.

Writes are atomic (:func:`~napari_datus.core.atomic.atomic_path`), so concurrent dask workers
may share one folder. An entry that is unreadable, not a regular file (a FIFO would block the
read forever) or holds arrays of another shape or dtype than the caller expects counts as a
miss and is rewritten. A folder that cannot be written is reported once with a
:class:`CacheWarning` and the run goes on uncached; so is an entry that cannot be replaced
(a non-empty folder in its place), which alone goes uncached.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
import weakref
import zipfile
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np
import platformdirs

from napari_datus import __version__
from napari_datus.core.atomic import atomic_path
from napari_datus.core.choices import CACHE_ENV
from napari_datus.core.features import PatchFeatures, effective_precision
from napari_datus.io.images import read_image

if TYPE_CHECKING:
    import torch

    from napari_datus.core.backbone import Backbone
    from napari_datus.core.lazy_backbone import LazyBackbone
    from napari_datus.params import Params

# Bump when a stage's output changes for the same inputs, to orphan old entries.
# 2: partition entries hold the connected components too.
# 3: images are decoded as displayed (EXIF orientation applied).
# 4: the key holds the effective precision (auto resolved); bf16 means bf16 weights and
#    inputs, not autocast; the keys forward runs in batches.
CACHE_FORMAT = 4
# Reading an entry that is truncated, not an npz or missing arrays raises one of these.
_BAD_ENTRY = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
BACKBONES = "backbones"


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


class StoredPartition(NamedTuple):
    """A cached partition: ``(g, g) int32`` communities, ``(H, W)`` image size and ``(g, g)
    int32`` connected components (:func:`~napari_datus.core.segments.connected_components`).
    """

    partition: np.ndarray
    shape: tuple[int, int]
    components: np.ndarray


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


def backbone_fingerprint(backbone: Backbone | LazyBackbone) -> str:
    """Hash of a backbone's weights and device type.

    Weights loaded from a file are known by the file's identity (``weights_id``: its sha256,
    the architecture and the model options), without the model. Any other model is known by
    a hash of its state dict and geometry, taken once per model object (about 0.2 s for
    ViT-S/14), so weights changed in place afterwards go unnoticed: load a new model instead.
    """
    identity = backbone.weights_id
    if identity is None:
        identity = digest(_state_dict_hash(backbone.model), backbone.name, backbone.patch_size,
                          backbone.embed_dim, backbone.num_prefix_tokens, backbone.input_size)
    # CUDA kernels round differently from CPU ones, whatever the precision.
    return digest(identity, backbone.device_type)


def _state_dict_hash(model: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes, bytes), memoised per module."""
    if model not in _FINGERPRINTS:
        import torch

        h = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(raw)
        _FINGERPRINTS[model] = h.hexdigest()[:32]
    return _FINGERPRINTS[model]


def stage_keys(content: str, backbone: Backbone | LazyBackbone, params: Params) -> StageKeys:
    """The keys of one image's stages.

    Parameters
    ----------
    content : str
        :func:`image_key` or :func:`file_key` of the image.
    """
    features = digest(CACHE_FORMAT, __version__, content, backbone_fingerprint(backbone),
                      feature_settings(params, backbone.device_type))
    partition = digest(features, params.settings_of("graph"))
    return StageKeys(features, partition, digest(partition, params.settings_of("embedding")))


def feature_settings(params: Params, device_type: str) -> list[tuple[str, Any]]:
    """The ``features`` settings of ``params`` as a key holds them: the precision as it runs
    on ``device_type`` (:func:`~napari_datus.core.features.effective_precision`), so that
    ``auto`` and the precision it resolves to share entries."""
    return [(name, effective_precision(device_type, value) if name == "precision" else value)
            for name, value in params.settings_of("features")]


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

    def features(self, key: str, grid: int | None = None,
                 dim: int | None = None) -> PatchFeatures | None:
        """Cached patch features, or None on a miss.

        ``grid`` and ``dim``, where given, are the patch grid side and token width the
        features must have; an entry of another geometry counts as a miss.
        """
        arrays = self._read("features", key)
        return None if arrays is None else _as_features(arrays, grid, dim)

    def put_features(self, key: str, features: PatchFeatures) -> None:
        """Store patch features (fields that are None are left out)."""
        arrays = {f.name: getattr(features, f.name) for f in fields(features)}
        self._write("features", key, {k: np.asarray(v) for k, v in arrays.items()
                                      if v is not None})

    def partition(self, key: str, grid: int | None = None) -> StoredPartition | None:
        """The cached partition, its components and image size, or None on a miss.

        ``grid``, where given, is the side ``g`` the partition must have.
        """
        arrays = self._read("partition", key)
        if arrays is None or not _is_partition(arrays, grid):
            return None
        height, width = (int(v) for v in arrays["shape"])
        return StoredPartition(arrays["partition"].astype(np.int32), (height, width),
                               arrays["components"].astype(np.int32))

    def put_partition(self, key: str, partition: np.ndarray, shape: tuple[int, int],
                      components: np.ndarray) -> None:
        """Store a partition, its connected components and the size of its image."""
        self._write("partition", key, {"partition": partition, "shape": np.asarray(shape),
                                       "components": components})

    def embeddings(self, key: str, dim: int | None = None) -> ComponentEmbeddings:
        """The component embeddings stored so far (empty on a miss).

        ``dim``, where given, is the embedding width the stored vectors must have.
        """
        arrays = self._read("embeddings", key)
        if arrays is None or not _is_embeddings(arrays, dim):
            return ComponentEmbeddings()
        return ComponentEmbeddings(arrays["ids"], arrays["vectors"])

    def put_embeddings(self, key: str, stored: ComponentEmbeddings) -> None:
        """Store all component embeddings of an image (replacing the entry)."""
        if stored.vectors is not None:
            self._write("embeddings", key, {"ids": stored.ids, "vectors": stored.vectors})

    def overclusterings(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """Stored overclusterings (:mod:`napari_datus.clustering`) of this ``(R, M)``
        shape, uint8, or None on a miss."""
        arrays = self._read("overclusterings", key)
        labels = None if arrays is None else arrays.get("labels")
        return labels if _fits(labels, shape, np.uint8) else None

    def put_overclusterings(self, key: str, labels: np.ndarray) -> None:
        """Store ``(R, M) uint8`` overclusterings."""
        self._write("overclusterings", key, {"labels": np.asarray(labels, dtype=np.uint8)})

    def backbone_facts(self, identity: str) -> dict | None:
        """The descriptor of a model's geometry stored under its weights identity, or None.

        See :class:`~napari_datus.core.lazy_backbone.BackboneFacts` for its fields.
        """
        if not self.enabled:
            return None
        try:
            f = _open_regular(self.root / BACKBONES / f"{identity}.json")
            if f is None:
                return None
            with f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return None  # missing or damaged: the model is built and the file rewritten
        return data if isinstance(data, dict) else None

    def put_backbone_facts(self, identity: str, facts: dict) -> None:
        """Store the descriptor of a model's geometry (a JSON object of ints)."""
        if not self.enabled:
            return
        path = self.root / BACKBONES / f"{identity}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(facts, sort_keys=True) + "\n")
        except OSError as exc:
            self._give_up(f"cannot write to the cache folder {self.root}"
                          f" ({exc.strerror or exc}); going on without the cache")

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def _read(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        try:
            f = _open_regular(self._path(kind, key))
            if f is None:
                return None  # not a regular file: the write replaces it
            with f, np.load(f, allow_pickle=False) as npz:
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
            _remove_empty_folder(path)
            # np.savez appends ".npz" to a path without it; a file object keeps tmp's name.
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        except OSError as exc:
            if path.is_dir():
                warnings.warn(f"cache entry {path} is a folder and cannot be replaced; that"
                              " entry is recomputed on every run", CacheWarning, stacklevel=3)
                return
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


def _open_regular(path: Path) -> BinaryIO | None:
    """``path`` opened for binary reading if it is a regular file, else None.

    Opening non-blocking lets a FIFO open without waiting for a writer, and ``fstat`` of the
    open file leaves no window for one to be swapped in after a check by name.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _remove_empty_folder(path: Path) -> None:
    """Remove an empty folder where an entry goes, as ``os.replace`` cannot replace one."""
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: left to the user, _write warns


def _fits(array: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> bool:
    """True for an array of exactly this shape and dtype."""
    return array is not None and array.shape == shape and array.dtype == dtype


def _is_int(array: np.ndarray | None, ndim: int) -> bool:
    """True for an integer array with ``ndim`` dimensions."""
    return array is not None and array.ndim == ndim and np.issubdtype(array.dtype, np.integer)


def _as_features(arrays: dict[str, np.ndarray], grid: int | None,
                 dim: int | None) -> PatchFeatures | None:
    """PatchFeatures from an entry's arrays, or None when they do not fit each other or
    ``grid``/``dim``: ``(g*g, D)`` float32 keys, tokens, queries and values, ``(D,)`` float32
    key bias and a scalar integer grid ``g``."""
    side, bias = arrays.get("grid"), arrays.get("key_bias")
    if not _is_int(side, 0) or bias is None or bias.ndim != 1 or bias.dtype != np.float32:
        return None
    side, width = int(side), bias.shape[0]
    if side <= 0 or (grid is not None and side != grid) or (dim is not None and width != dim):
        return None
    values: dict[str, Any] = {"grid": side, "key_bias": bias}
    for f in fields(PatchFeatures):
        if f.name not in values:
            values[f.name] = array = arrays.get(f.name)
            optional = array is None and f.default is not MISSING
            if not optional and not _fits(array, (side * side, width), np.float32):
                return None
    return PatchFeatures(**values)


def _is_partition(arrays: dict[str, np.ndarray], grid: int | None) -> bool:
    """True for a square integer ``(g, g)`` partition (``g == grid`` where given), integer
    components of its shape and a positive ``(H, W)`` integer image size."""
    partition, shape = arrays.get("partition"), arrays.get("shape")
    components = arrays.get("components")
    if not (_is_int(partition, 2) and _is_int(components, 2) and _is_int(shape, 1)
            and shape.size == 2):
        return False
    side = grid if grid is not None else partition.shape[0]
    return (partition.shape == components.shape == (side, side) and side > 0
            and bool((shape > 0).all()))


def _is_embeddings(arrays: dict[str, np.ndarray], dim: int | None) -> bool:
    """True for ``(m,)`` integer ids and ``(m, D)`` float32 vectors (``D == dim`` where
    given)."""
    ids, vectors = arrays.get("ids"), arrays.get("vectors")
    if not _is_int(ids, 1) or vectors is None or vectors.ndim != 2:
        return False
    return _fits(vectors, (ids.shape[0], vectors.shape[1] if dim is None else dim), np.float32)
