"""npe2 writer: save a Labels layer as an index mask (PNG for 2D, TIFF for any shape).

DatUS cluster layers (``"<image> pseudo mask"`` and ``"<image> de-noised"`` of a run,
or of a run folder opened in napari) are written in the ``datus run`` convention that the
pipeline dock's Export uses: cluster ``c`` as ``c``, unlabelled as 255. Any other Labels
layer is written as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_datus.core.atomic import atomic_path
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import CLUSTER_PALETTE, to_file_labels, write_index_mask

MAX_ID = int(np.iinfo(np.uint32).max)
# Metadata keys of DatUS result layers: a run in the widgets, a run folder in the reader.
RUN_KEYS = ("datus", "datus_saved_run")
CLUSTER_SUFFIXES = (" pseudo mask", " de-noised")
MAX_PNG_ID = int(np.iinfo(np.uint16).max)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one Labels layer.

    Parameters
    ----------
    path : target ``.png`` (2D masks, ids <= 65535) or ``.tif``/``.tiff`` (any shape)
    data : (H, W) or (N, H, W) non-negative whole-number labels, ids <= 4294967295
    attributes : napari layer attributes: ``name`` and ``metadata`` tell a DatUS cluster
        layer, whose labels ``c + 1`` (0 = unlabelled) are written as ``c`` (255)

    Returns
    -------
    The paths written.

    Raises
    ------
    DatusError
        If the folder is missing or the values are not ids the chosen file can hold.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise DatusError(f"cannot write {target.name}: folder {target.parent} does not exist")
    ids = _as_ids(np.asarray(data), target.name)
    cluster = is_cluster_layer(attributes)
    if cluster:
        ids = to_file_labels(ids, target.name)
    if target.suffix.lower() == ".png":
        # A cluster mask is written as Export writes it: a palette PNG of the cluster ids.
        return [str(_write_png(target, ids, CLUSTER_PALETTE if cluster else None))]
    return [str(_write_tiff(target, ids))]


def is_cluster_layer(attributes: dict) -> bool:
    """True for a DatUS pseudo-mask or de-noised layer (by its name and metadata)."""
    metadata = attributes.get("metadata") or {}
    return (any(key in metadata for key in RUN_KEYS)
            and str(attributes.get("name", "")).endswith(CLUSTER_SUFFIXES))


def _as_ids(labels: np.ndarray, name: str) -> np.ndarray:
    """Check that labels are ids a mask file holds, without changing any value.

    Returns
    -------
    Same shape, the smallest unsigned integer dtype holding the largest id.
    """
    if labels.size == 0:
        raise DatusError(f"{name}: the layer is empty (shape {labels.shape}); nothing to write")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise DatusError(f"{name}: labels hold NaN or infinite values; index masks hold ids")
        fractional = labels[labels % 1 != 0]
        if fractional.size:
            raise DatusError(f"{name}: labels hold non-integer values such as {fractional[0]};"
                             " index masks hold whole-number ids")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise DatusError(f"{name}: labels of dtype {labels.dtype} are not ids")
    if labels.min() < 0:
        raise DatusError(f"{name}: labels are negative; index masks hold ids >= 0")
    top = labels.max()
    if top > MAX_ID:
        raise DatusError(f"{name}: label {int(top)} is above {MAX_ID}, the largest id"
                         " a mask file holds (uint32)")
    return labels.astype(np.min_scalar_type(int(top)))


def _write_png(path: Path, ids: np.ndarray, palette: np.ndarray | None = None) -> Path:
    if ids.ndim != 2:
        raise DatusError(f"{path.name}: PNG holds one 2D mask but the layer has shape"
                         f" {ids.shape}; save stacks as .tif")
    top = int(ids.max())
    # write_index_mask would silently switch the file to .tif; the user asked for .png.
    if top > MAX_PNG_ID:
        raise DatusError(f"{path.name}: label {top} is above {MAX_PNG_ID}, the largest id"
                         " a PNG holds (16-bit); save as .tif instead")
    return write_index_mask(path, ids, palette)


def _write_tiff(path: Path, ids: np.ndarray) -> Path:
    try:
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, ids)
    except OSError as exc:
        raise DatusError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
