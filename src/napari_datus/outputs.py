"""The on-disk layout of a run, shared by ``datus run`` and the napari export button.

::

    OUT/partitions/<stem>.png     Louvain community per pixel (uint16; TIFF above 65535)
    OUT/segments/<stem>.png       0 = noise, 1..n = valid segment ids (uint16)
    OUT/pseudo_masks/<stem>.png   uint8 cluster id 0..K-1, 255 = unlabelled
    OUT/pseudo_masks_colour/<stem>.png   SUIM colours of the matched classes (SUIM ground truth)
    OUT/run.json, OUT/metrics.json

Every per-image file has the original image's height and width.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.io.masks import (
    CLUSTER_PALETTE,
    ID_PALETTE,
    colourise,
    write_colour_mask,
    write_index_mask,
    write_json_atomic,
)

PARTITIONS_DIR = "partitions"
SEGMENTS_DIR = "segments"
PSEUDO_DIR = "pseudo_masks"
PSEUDO_COLOUR_DIR = "pseudo_masks_colour"
DENOISED_DIR = "denoised"
CHECKPOINT_DIR = "denoise_checkpoints"
EXPORTED_IMAGES_DIR = "exported_images"  # napari exports carry their images
CLASS_MASKS_DIR = "class_masks"  # annotations: class ids of the user's class map
CLASS_COLOUR_DIR = "class_masks_colour"  # the same in the class colours
LOCK_NAME = ".datus.lock"
# Everything a run writes, run.json first: see run_folder.
RUN_LAYOUT = ("run.json", "metrics.json", PARTITIONS_DIR, SEGMENTS_DIR, PSEUDO_DIR,
              PSEUDO_COLOUR_DIR, DENOISED_DIR, CHECKPOINT_DIR, f".{DENOISED_DIR}.partial",
              f".{DENOISED_DIR}.old", EXPORTED_IMAGES_DIR, "metrics.csv", CLASS_MASKS_DIR,
              CLASS_COLOUR_DIR, "classes.json")
VERSIONED_PACKAGES = ("napari-datus", "torch", "torchvision", "timm", "numpy", "scipy",
                      "scikit-learn", "networkx", "python-louvain", "igraph")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".datus-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DatusError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc


@contextmanager
def run_folder(out: Path) -> Iterator[str]:
    """Hold ``out`` for one run: locked, emptied of an older run's outputs, ``run.json`` first.

    ``run.json`` is written last by a run and marks it complete, so it is removed before
    anything else: a run interrupted from here on leaves a folder that no reader takes for
    a finished run. Files that are not part of the layout are left alone.

    Yields
    ------
    A new run id, written into run.json and metrics.json so readers can tell that both
    belong to the same run.
    """
    with folder_lock(out):
        try:
            for name in RUN_LAYOUT:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        except OSError as exc:
            raise DatusError(f"cannot clear the older run in {out}:"
                             f" {exc.strerror or exc}") from exc
        yield uuid.uuid4().hex


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder; a second writer gets one clear error."""
    lock = FileLock(out / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise DatusError(f"another datus process is writing into {out}; wait for it or"
                         " choose another output folder") from exc
    try:
        yield
    finally:
        lock.release()


def write_grid_outputs(out: Path, stem: str, partition: np.ndarray, segments: np.ndarray,
                       shape: tuple[int, int]) -> None:
    """Write the partition and segment maps of one image at its original size.

    Parameters
    ----------
    partition : (g, g) int community ids
    segments : (g, g) int, 0 = noise, 1..n valid
    shape : (H, W) of the original image
    """
    # Palette PNGs (16-bit gray above id 255): viewers show the ids in distinct colours.
    write_index_mask(out / PARTITIONS_DIR / f"{stem}.png", upsample_nearest(partition, shape),
                     ID_PALETTE)
    write_index_mask(out / SEGMENTS_DIR / f"{stem}.png", upsample_nearest(segments, shape),
                     ID_PALETTE)


def write_pseudo_mask(out: Path, stem: str, mask: np.ndarray, folder: str = PSEUDO_DIR) -> Path:
    """Write an ``(H, W) uint8`` cluster mask (255 = unlabelled) as a palette PNG: the
    pixels are cluster ids, which image viewers show in colour."""
    return write_index_mask(out / folder / f"{stem}.png", mask.astype(np.uint8),
                            CLUSTER_PALETTE)


def write_colour_pseudo_mask(out: Path, stem: str, mask: np.ndarray,
                             mapping: dict[str, int | None], colours: np.ndarray,
                             folder: str = PSEUDO_COLOUR_DIR) -> Path:
    """Write a cluster mask in the colours of the classes its clusters matched.

    Unmatched clusters and unlabelled pixels are drawn grey.
    """
    lut = np.full(256, -1, dtype=np.int64)
    for cluster, cls in mapping.items():
        if cls is not None:
            lut[int(cluster)] = cls
    lut[UNLABELLED] = -1
    return write_colour_mask(out / folder / f"{stem}.png", colourise(lut[mask], colours))


def write_class_masks(out: Path, stem: str, mask: np.ndarray, classes) -> list[Path]:
    """Write an image's annotation: class ids (255 = unlabelled or unassigned) in
    ``class_masks/`` and the class colours in ``class_masks_colour/``.

    Parameters
    ----------
    mask : (H, W) uint8 cluster ids, 255 = unlabelled
    classes : :class:`napari_datus.class_map.ClassMap`
    """
    ids = write_index_mask(out / CLASS_MASKS_DIR / f"{stem}.png", classes.class_mask(mask),
                           classes.palette())
    colours = write_colour_mask(out / CLASS_COLOUR_DIR / f"{stem}.png",
                                classes.colour_mask(mask))
    return [ids, colours]


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json(path: Path, data: dict) -> Path:
    """Atomically write pretty JSON (no NaN allowed)."""
    return write_json_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON file written by a run, with a clear error when missing or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DatusError(f"{path} not found: is this the output folder of `datus run`?") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DatusError(f"cannot read {path}: {exc}") from exc


def saved_edit_pixels(out: Path) -> int:
    """Edited pixels recorded in the run that ``out`` holds (napari edits, saved or
    exported): a new run there would replace them. 0 when there is no such run."""
    try:
        run = json.loads((Path(out) / "run.json").read_text())
        return sum(int(edit.get("pixels", 0)) for edit in (run.get("edits") or {}).values())
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def command_line() -> str:
    """The command that started this process, for provenance."""
    return " ".join(sys.argv)
