"""npe2 writer: save a Labels layer as an index mask (PNG for 2D, TIFF for any shape).

The layer's values are written as they are (no convention change): use the DatUS
pipeline widget's Export for files in the ``datus run`` conventions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_datus.core.errors import DatusError
from napari_datus.io.masks import write_index_mask


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one Labels layer.

    Parameters
    ----------
    path : target ``.png`` (2D masks only) or ``.tif``/``.tiff`` (any shape)
    data : (H, W) or (N, H, W) non-negative integer labels
    attributes : napari layer attributes (unused: the file holds ids only)

    Returns
    -------
    The paths written.
    """
    labels = np.asarray(data)
    target = Path(path)
    if labels.min(initial=0) < 0:
        raise DatusError(f"{target.name}: labels are negative; index masks hold ids >= 0")
    if target.suffix.lower() == ".png":
        if labels.ndim != 2:
            raise DatusError(f"{target.name}: PNG holds one 2D mask but the layer has shape"
                             f" {labels.shape}; save stacks as .tif")
        return [str(write_index_mask(target, labels))]
    return [str(_write_tiff(target, labels))]


def _write_tiff(path: Path, labels: np.ndarray) -> Path:
    """Atomic TIFF write: a temporary file in the same folder renamed over ``path``."""
    dtype = np.min_scalar_type(int(labels.max(initial=0)))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tif.tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, labels.astype(dtype))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
