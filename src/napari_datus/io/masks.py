"""Ground-truth decoding (index masks, SUIM colour masks) and atomic mask writing."""

from __future__ import annotations

import colorsys
import io
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_datus.core.atomic import atomic_path
from napari_datus.core.choices import GT_FORMATS
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED
from napari_datus.io.images import read_array

SUIM8_NAMES = ["BW", "HD", "PF", "WR", "RO", "RI", "FV", "SR"]
SUIM6_NAMES = ["HD", "RO", "FV", "RI", "WR", "BW+PF+SR"]
# SUIM colour code (4R + 2G + B) -> paper's 6-class index.
SUIM8_TO_SUIM6 = np.array([5, 0, 5, 4, 1, 3, 2, 5], dtype=np.uint8)
# Colour of each suim8 class, RGB (bit pattern of the code).
SUIM8_COLOURS = np.array([[(c >> 2 & 1) * 255, (c >> 1 & 1) * 255, (c & 1) * 255]
                          for c in range(8)], dtype=np.uint8)
# Colour drawn for each suim6 class: the SUIM colour of its (first) source class.
SUIM6_COLOURS = SUIM8_COLOURS[[1, 4, 6, 5, 3, 0]]
# Label masks are long runs of one value: zlib's run-length strategy encodes them about 40%
# faster than the default and smaller too (measured on 640x480 masks of a 16x16 grid:
# 2.2 against 3.6 ms and 1.5 against 1.7 KB, uint16). Pillow hands compress_type to zlib.
PNG_OPTIONS = {"format": "PNG", "compress_type": zlib.Z_RLE}
# matplotlib's tab10 as 8-bit RGB (no matplotlib import needed): cluster and class colours.
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
# Palette of cluster masks (PASCAL VOC style: the file holds ids, viewers show colours):
# tab10 cycled over the ids, unlabelled (255) black.
CLUSTER_PALETTE = np.array(TAB10, dtype=np.uint8)[np.arange(256) % len(TAB10)]
CLUSTER_PALETTE[255] = 0


def _distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours whose neighbours differ: hues a golden angle apart, saturation
    and brightness alternating."""
    golden = (5 ** 0.5 - 1) / 2
    return np.array([[round(255 * v) for v in colorsys.hsv_to_rgb(
        i * golden % 1.0, 0.9 if i % 2 else 0.55, 1.0 if i % 3 else 0.7)] for i in range(n)],
        dtype=np.uint8)


# Palette of partition and segment maps: id 0 (noise in segments/) black, ids 1..255 in
# distinct colours, so an image viewer shows the ids the pixels hold.
ID_PALETTE = np.vstack([np.zeros((1, 3), dtype=np.uint8), _distinct_colours(255)])
# A channel between these values is neither "off" nor "on": not a SUIM colour.
AMBIGUOUS_CHANNEL = (64, 191)
# SUIM's own masks have up to 1.9% such pixels (f_r_1013_ of the train/val split, blended
# edges); a photo or an index mask has most of its pixels there.
MAX_AMBIGUOUS_FRACTION = 0.05


def class_names(fmt: str, n_classes: int | None = None) -> list[str]:
    """Class names of a ground-truth format (``index`` needs ``n_classes``)."""
    if fmt == "suim6":
        return list(SUIM6_NAMES)
    if fmt == "suim8":
        return list(SUIM8_NAMES)
    if fmt == "index":
        if n_classes is None:
            raise DatusError("index ground truth needs its number of classes")
        return [str(i) for i in range(n_classes)]
    raise DatusError(f"unknown ground-truth format {fmt!r}: choose one of {GT_FORMATS}")


def class_colours(fmt: str) -> np.ndarray | None:
    """(C, 3) uint8 RGB colour per class for SUIM formats, else None."""
    return {"suim6": SUIM6_COLOURS, "suim8": SUIM8_COLOURS}.get(fmt)


def decode_suim(rgb: np.ndarray, fmt: str = "suim8", name: str = "mask") -> np.ndarray:
    """Decode a SUIM RGB colour mask (a channel is on when > 127).

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    fmt : ``suim8`` (colour-code order) or ``suim6`` (paper's merged classes)

    Returns
    -------
    (H, W) uint8 class ids
    """
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise DatusError(f"{name} is not an RGB colour mask (shape {rgb.shape});"
                         " use --gt-format index for index masks")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        raise DatusError(f"{name} has dtype {rgb.dtype}: SUIM colour masks are 8-bit RGB")
    lo, hi = AMBIGUOUS_CHANNEL
    ambiguous = ((rgb > lo) & (rgb < hi)).any(axis=-1).mean()
    if ambiguous > MAX_AMBIGUOUS_FRACTION:
        raise DatusError(f"{name} has {ambiguous:.1%} pixels that are not one of the 8 SUIM"
                         " colours: not a SUIM colour mask")
    on = (rgb > 127).astype(np.uint8)
    code = on[..., 0] * 4 + on[..., 1] * 2 + on[..., 2]
    if fmt == "suim8":
        return code
    if fmt == "suim6":
        return SUIM8_TO_SUIM6[code]
    raise DatusError(f"unknown SUIM format {fmt!r}")


def decode_index(array: np.ndarray, name: str = "mask") -> np.ndarray:
    """Index ground truth as a 2D integer array (an RGB file with equal channels is allowed)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DatusError(f"{name} is a colour image, not an index mask;"
                             " use --gt-format suim6 or suim8 for SUIM colour masks")
        a = rgb[..., 0]
    if a.ndim != 2:
        raise DatusError(f"{name} has shape {a.shape}: an index mask is one 2D array")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise DatusError(f"{name} holds non-integer values: not an index mask")
        a = a.astype(np.int64)
    if a.min(initial=0) < 0:
        raise DatusError(f"{name} holds negative labels")
    return a


def to_layer_labels(mask: np.ndarray) -> np.ndarray:
    """Cluster mask file convention (255 unlabelled, ``c``) to napari layer convention
    (0 unlabelled, ``c + 1``): napari draws label 0 transparent. (H, W) uint8."""
    return np.where(mask == UNLABELLED, 0, mask.astype(np.uint16) + 1).astype(np.uint8)


def to_file_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Layer convention (0 unlabelled, ``c + 1``) back to file convention (255, ``c``),
    uint8, refusing labels a cluster mask cannot hold (``name`` says whose, in the error)."""
    if labels.max(initial=0) > UNLABELLED:
        raise DatusError(f"{name}: label {int(labels.max())} is not a DatUS cluster (at most"
                         " 254 clusters)")
    return np.where(labels == 0, UNLABELLED, labels.astype(np.int64) - 1).astype(np.uint8)


def read_cluster_mask(path: str | Path) -> np.ndarray:
    """A run's pseudo-mask or de-noised PNG (palette or gray) as (H, W) uint8 cluster ids,
    255 = unlabelled."""
    mask = read_array(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DatusError(f"{path} is not a uint8 index mask (shape {mask.shape},"
                         f" dtype {mask.dtype})")
    return mask


def read_ground_truth(path: str | Path, fmt: str = "index") -> np.ndarray:
    """Read one ground-truth file as ``(H, W)`` integer class ids (a palette index is the
    class of an index mask; a SUIM mask's palette gives its colours)."""
    array = read_array(path, keep_palette=fmt == "index")
    if fmt == "index":
        return decode_index(array, name=str(path))
    return decode_suim(array, fmt, name=str(path))


def write_index_mask(path: str | Path, labels: np.ndarray,
                     palette: np.ndarray | None = None) -> Path:
    """Atomically write an index mask: PNG (uint8 or uint16) or TIFF above 65535.

    Parameters
    ----------
    path : target ``.png``; its suffix becomes ``.tif`` when ids exceed 65535
    labels : (H, W) non-negative integers
    palette : (256, 3) uint8 colours: ids of any dtype that fit in 0..255 become an 8-bit
        palette PNG, whose pixels are still the ids (:func:`read_array` reads them back;
        image viewers show the colours); larger ids a 16-bit gray PNG

    Returns
    -------
    The path written.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DatusError(f"mask for {path.name} must be 2D, got shape {labels.shape}")
    top = int(labels.max(initial=0))
    if labels.min(initial=0) < 0:
        raise DatusError(f"mask for {path.name} holds negative ids")
    if top > np.iinfo(np.uint16).max:
        path = path.with_suffix(".tif")
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, labels.astype(np.uint32))
        _atomic_write(path, lambda f: f.write(buffer.getvalue()))
        return path
    with_palette = palette is not None and top <= np.iinfo(np.uint8).max
    dtype = np.uint8 if labels.dtype == np.uint8 or with_palette else np.uint16
    image = Image.fromarray(labels.astype(dtype))
    if with_palette:
        image.putpalette(np.asarray(palette, dtype=np.uint8).tobytes())
    _atomic_write(path, lambda f: image.save(f, **PNG_OPTIONS))
    return path


def write_colour_mask(path: str | Path, rgb: np.ndarray) -> Path:
    """Atomically write an ``(H, W, 3)`` (or ``(H, W, 4)`` RGBA) uint8 colour mask as PNG."""
    path = Path(path)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    image = Image.fromarray(rgb)  # RGB or RGBA from the last axis
    _atomic_write(path, lambda f: image.save(f, **PNG_OPTIONS))
    return path


def colourise(class_mask: np.ndarray, colours: np.ndarray,
              unlabelled_colour: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """Paint class ids with a colour table; ids outside it get ``unlabelled_colour``.

    Parameters
    ----------
    class_mask : (H, W) int
    colours : (C, 3) uint8

    Returns
    -------
    (H, W, 3) uint8
    """
    table = np.vstack([colours, np.array(unlabelled_colour, dtype=np.uint8)[None]])
    idx = np.where((class_mask >= 0) & (class_mask < len(colours)), class_mask, len(colours))
    return table[idx]


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as exc:
        raise DatusError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_json_atomic(path: str | Path, text: str) -> Path:
    """Atomically write a text file (used for run.json and metrics.json)."""
    path = Path(path)
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
