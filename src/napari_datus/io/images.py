"""Read any common image file as ``(H, W, 3) uint8`` RGB, by one stated rule.

Conversion rule (:func:`to_rgb_uint8`):

* grayscale ``(H, W)`` or ``(H, W, 1)`` is repeated to three channels; gray+alpha
  keeps the gray channel; RGBA drops alpha;
* ``uint8`` is kept; ``bool`` becomes 0/255;
* floats whose values lie in ``[0, 1]`` are scaled by 255;
* any other dtype (16-bit, 32-bit, floats outside ``[0, 1]``) is stretched linearly
  from its 0.5th-99.5th percentile (over all channels, so colours keep their balance)
  to 0..255 and clipped; a constant image becomes 0. NaNs count as 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from napari_datus.core.errors import DatusError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
STRETCH_PERCENTILES = (0.5, 99.5)


def read_array(path: str | Path) -> np.ndarray:
    """Decode an image file as stored (no conversion); TIFF through tifffile.

    Raises
    ------
    DatusError
        If the file is missing, unreadable or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DatusError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as img:
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info
                                  else "RGB")
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, tifffile.TiffFileError) as exc:
        raise DatusError(f"cannot read image {path}: {exc}") from exc


def to_rgb_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert one 2D image (gray, gray+alpha, RGB, RGBA; any dtype) to RGB uint8.

    Parameters
    ----------
    array : (H, W) or (H, W, c) with c in 1..4
    name : str
        Used in error messages.

    Returns
    -------
    (H, W, 3) uint8
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (3, 4):
        raise DatusError(f"{name} looks channels-first {a.shape}; give (H, W, C)")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] > 4:
        raise DatusError(f"{name} has shape {a.shape}: expected one 2D image"
                         " (H, W), (H, W, 3) or (H, W, 4)")
    channels = a.shape[-1]
    if channels in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=-1)
    elif channels == 4:
        a = a[..., :3]
    return _to_uint8(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if np.issubdtype(a.dtype, np.floating) and f.min() >= 0.0 and f.max() <= 1.0:
        return np.round(f * 255.0).astype(np.uint8)
    lo, hi = np.percentile(f, STRETCH_PERCENTILES)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round(np.clip((f - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Returns
    -------
    (H, W, 3) uint8
    """
    return to_rgb_uint8(read_array(path), name=str(path))
