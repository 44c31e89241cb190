"""Listing image folders and pairing ground truth with images by file stem."""

from __future__ import annotations

from pathlib import Path

from napari_datus.core.errors import DatusError
from napari_datus.io.images import IMAGE_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted by name.

    Raises
    ------
    DatusError
        If the folder is missing, holds no image, or two files share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatusError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise DatusError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DatusError(f"two images share the stem {p.stem!r}: {stems[p.stem].name}"
                             f" and {p.name}; outputs are named by stem")
        stems[p.stem] = p
    return files


def match_ground_truth(images: list[Path], gt_folder: str | Path) -> dict[str, Path]:
    """Ground-truth file for each image stem that has one.

    Returns
    -------
    dict stem -> ground-truth path (images without one are absent)

    Raises
    ------
    DatusError
        If the folder is missing or two ground-truth files share a stem.
    """
    gt_folder = Path(gt_folder)
    if not gt_folder.is_dir():
        raise DatusError(f"ground-truth folder not found: {gt_folder}")
    by_stem: dict[str, Path] = {}
    for p in sorted(gt_folder.iterdir()):
        if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or p.name.startswith("."):
            continue
        if p.stem in by_stem:
            raise DatusError(f"two ground-truth files share the stem {p.stem!r}:"
                             f" {by_stem[p.stem].name} and {p.name}; keep one")
        by_stem[p.stem] = p
    return {img.stem: by_stem[img.stem] for img in images if img.stem in by_stem}
