"""The file layout of a run folder: folder names and the path of each per-image file.

::

    OUT/partitions/<stem>.png             Louvain community per pixel (uint16; TIFF above 65535)
    OUT/segments/<stem>.png               0 = noise, 1..n = valid segment ids
    OUT/pseudo_masks/<stem>.png           uint8 cluster id 0..K-1, 255 = unlabelled
    OUT/pseudo_masks_computed/<stem>.png  the pseudo mask as computed, for edited images only
    OUT/pseudo_masks_colour/<stem>.png    SUIM colours of the matched classes (SUIM ground truth)
    OUT/denoised/<stem>.png               de-noised cluster ids
    OUT/class_masks/<stem>.png, OUT/class_masks_colour/<stem>.png, OUT/classes.json   annotations
    OUT/exported_images/<stem>.png        the images of a napari export
    OUT/run.json, OUT/metrics.json, OUT/metrics.csv

Every per-image file has the original image's height and width. Stems are plain file
names: a stem that could name a path outside its folder is refused.
"""

from __future__ import annotations

from pathlib import Path

from napari_datus.core.errors import DatusError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"
CLASSES_FILE = "classes.json"
PARTITIONS_DIR = "partitions"
SEGMENTS_DIR = "segments"
PSEUDO_DIR = "pseudo_masks"
COMPUTED_DIR = "pseudo_masks_computed"
PSEUDO_COLOUR_DIR = "pseudo_masks_colour"
DENOISED_DIR = "denoised"
CHECKPOINT_DIR = "denoise_checkpoints"
EXPORTED_IMAGES_DIR = "exported_images"
CLASS_MASKS_DIR = "class_masks"
CLASS_COLOUR_DIR = "class_masks_colour"
# Per-image folders, in the order a summary names them.
IMAGE_FOLDERS = (PARTITIONS_DIR, SEGMENTS_DIR, PSEUDO_DIR, COMPUTED_DIR, PSEUDO_COLOUR_DIR,
                 DENOISED_DIR, CLASS_MASKS_DIR, CLASS_COLOUR_DIR, EXPORTED_IMAGES_DIR)
# Where a run works before its files are swapped in, and where the replaced run waits.
STAGING_PREFIX = ".datus-staging-"
BACKUP_PREFIX = ".datus-replaced-"


def check_stem(stem: object) -> str:
    """``stem`` if it is a plain file name; DatusError otherwise (a path, ``..``, empty)."""
    if (not isinstance(stem, str) or not stem or stem in (".", "..") or "/" in stem
            or "\\" in stem or "\0" in stem):
        raise DatusError(f"image name {stem!r} is not a plain file name")
    return stem


def image_file(folder: str, stem: str) -> str:
    """The run-relative path (POSIX) of one image's file in ``folder``."""
    return f"{folder}/{check_stem(stem)}.png"


def in_run(out: Path, relative: str) -> Path:
    """``out / relative`` for a run-relative path, refused if it leaves ``out``."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatusError(f"{relative!r} is not a path inside the run folder {out}")
    return Path(out) / path


def written_names(files: list[str]) -> list[str]:
    """``run.json`` and the folders and top-level files among run-relative ``files``, as a
    summary names them (``pseudo_masks/``, ``metrics.json``, ...)."""
    tops = {f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files}
    order = {f"{name}/": i for i, name in enumerate(IMAGE_FOLDERS)}
    return [RUN_FILE, *sorted(tops, key=lambda t: (order.get(t, len(order)), t))]
