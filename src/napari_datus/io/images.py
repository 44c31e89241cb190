"""Read any common image file as ``(H, W, 3) uint8`` RGB, by one stated rule.

Conversion rule (:func:`to_rgb_uint8`):

* grayscale ``(H, W)`` or ``(H, W, 1)`` is repeated to three channels; gray+alpha
  keeps the gray channel; RGBA drops alpha;
* ``uint8`` is kept; ``bool`` becomes 0/255;
* floats whose values lie in ``[0, 1]`` are scaled by 255;
* any other dtype (16-bit, 32-bit, floats outside ``[0, 1]``) is stretched linearly
  from its 0.5th-99.5th percentile (over all channels, so colours keep their balance)
  to 0..255 and clipped; a constant image becomes 0. NaNs count as 0.

Every format has one pixel limit (:func:`max_pixels`), checked from the file header before
any pixel is decoded, so a small file claiming a huge size cannot exhaust memory.

Images are read the way they are displayed: an EXIF orientation (phones and many cameras
store portrait JPEGs sideways with orientation 6) is applied when reading, and
:func:`image_size` reports that displayed size from the header.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_datus.core.errors import DatusError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
STRETCH_PERCENTILES = (0.5, 99.5)
MAX_PIXELS_ENV = "DATUS_MAX_PIXELS"
# Pillow's DecompressionBombError threshold (2 * Image.MAX_IMAGE_PIXELS by default).
DEFAULT_MAX_PIXELS = 178_956_970
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the image upright (as PIL.ImageOps.
# exif_transpose does); 5 to 8 swap width and height.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# Where Pillow's getexif() finds an orientation without decoding the pixels.
_HEADER_METADATA = ("exif", "XML:com.adobe.xmp", "Raw profile type exif")


def max_pixels() -> int:
    """The most pixels one image may have: ``$DATUS_MAX_PIXELS``, else 178,956,970.

    Raises
    ------
    DatusError
        If the variable is set but is not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdecimal() or int(raw) < 1:
        raise DatusError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive integer number of pixels")
    return int(raw)


def read_array(path: str | Path, *, max_pixels: int | None = None,
               keep_palette: bool = True) -> np.ndarray:
    """Decode an image file as stored (no conversion); TIFF through tifffile.

    Parameters
    ----------
    path : image file
    max_pixels : refuse images with more pixels; None uses :func:`max_pixels`
    keep_palette : a palette ("P"/"PA") image as its ``(H, W) uint8`` indices (alpha
        dropped), as label masks are stored; False converts it to RGB(A), as photos need
        (:func:`read_image`); TIFF palettes are always indices

    Returns
    -------
    (H, W), (H, W, c) or, for TIFF stacks, (N, H, W[, c]) array of the stored dtype

    Raises
    ------
    DatusError
        If the file is missing, unreadable, not an image or over the pixel limit.
    """
    path = Path(path)
    if not path.is_file():
        raise DatusError(f"image file not found: {path}")
    limit = _pixel_limit(max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path, limit)
        return _read_pillow(path, limit, keep_palette)
    except DatusError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatusError(f"{path} is too large to open (Pillow's own limit, which"
                         f" {MAX_PIXELS_ENV} cannot raise): {exc}") from exc
    except Exception as exc:
        # Decoders fail on corrupt files with many exception types (fuzzing found
        # SyntaxError, zlib.error, ZeroDivisionError, TypeError, IndexError and
        # unsupported-feature errors besides OSError); each means this file cannot be read.
        raise DatusError(f"cannot read image {path}: {str(exc) or type(exc).__name__}") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the 2D image :func:`read_array` returns, from the header only
    (EXIF orientation applied; a TIFF's last two image axes).

    Raises
    ------
    DatusError
        If the file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DatusError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                return tuple(_tiff_shape(path, tif)[-2:])
        with _open_pillow(path) as img:
            return _displayed_size(img)
    except DatusError:
        raise
    except Exception as exc:
        raise DatusError(f"cannot read image {path}: {str(exc) or type(exc).__name__}") from exc


def _pixel_limit(override: int | None) -> int:
    return max_pixels() if override is None else override


def _open_pillow(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow warns from half its error threshold; our own limit is checked by the caller.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)  # lazy: reads the header only


def _orientation(img: Image.Image) -> int:
    """The image's EXIF orientation, 1 (upright) when none; read from metadata Pillow parsed
    with the header, so :func:`image_size` and the decoder agree without decoding."""
    if not any(key in img.info for key in _HEADER_METADATA):
        return 1
    return img.getexif().get(EXIF_ORIENTATION, 1)


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of an opened image once its orientation is applied."""
    width, height = img.size
    return (width, height) if _orientation(img) in (5, 6, 7, 8) else (height, width)


def _read_pillow(path: Path, limit: int, keep_palette: bool) -> np.ndarray:
    with _open_pillow(path) as img:
        _check_pixels(path, _displayed_size(img), limit)
        upright = _UPRIGHT.get(_orientation(img))
        if upright is not None:
            img = img.transpose(upright)  # decodes; keeps the mode and palette
        if keep_palette and img.mode in ("P", "PA"):
            indices = np.asarray(img)
            return indices if indices.ndim == 2 else indices[..., 0]
        if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info
                              else "RGB")
        return np.asarray(img)


def _read_tiff(path: Path, limit: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        _check_pixels(path, _tiff_shape(path, tif), limit)
        return np.asarray(tif.asarray())


def _tiff_shape(path: Path, tif: tifffile.TiffFile) -> tuple[int, ...]:
    """Image axes (N, H, W or H, W) of the series ``asarray()`` decodes."""
    if not tif.series:
        raise DatusError(f"cannot read image {path}: the TIFF holds no image")
    series = tif.series[0]
    # A colour-sample axis (RGB(A)) is not counted, as Pillow does not count channels.
    return tuple(n for n, axis in zip(series.shape, series.axes) if not (axis == "S" and n <= 4))


def _check_pixels(path: Path, shape: tuple[int, ...], limit: int) -> None:
    """Refuse an image of array ``shape`` (H, W or N, H, W) with more than ``limit`` pixels."""
    pixels = math.prod(shape)
    if pixels > limit:
        size = "x".join(str(n) for n in reversed(shape))  # width x height [x planes]
        raise DatusError(f"{path} is {size} = {pixels:,} pixels, above the limit of"
                         f" {limit:,} ({MAX_PIXELS_ENV})")


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


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as RGB (``max_pixels`` as in :func:`read_array`).

    Returns
    -------
    (H, W, 3) uint8
    """
    return to_rgb_uint8(read_array(path, max_pixels=max_pixels, keep_palette=False),
                        name=str(path))


def check_pixel_limit(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse an image of array ``shape`` (H, W) above :func:`max_pixels`, as reading it
    would (for images known from a cache without being read)."""
    _check_pixels(Path(path), tuple(shape), max_pixels())
