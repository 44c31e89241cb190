"""Writing a run's image files (:mod:`napari_datus.runs` owns where they go and run.json).

Every per-image file has the original image's height and width (layout in
:mod:`napari_datus.runs.layout`).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.io.masks import (
    CLUSTER_PALETTE,
    ID_PALETTE,
    colourise,
    write_colour_mask,
    write_index_mask,
    write_json_atomic,
)
from napari_datus.runs.layout import (
    CLASS_COLOUR_DIR,
    CLASS_MASKS_DIR,
    METRICS_FILE,
    PARTITIONS_DIR,
    PSEUDO_COLOUR_DIR,
    PSEUDO_DIR,
    SEGMENTS_DIR,
    image_file,
)

VERSIONED_PACKAGES = ("napari-datus", "torch", "torchvision", "timm", "numpy", "scipy",
                      "scikit-learn", "scikit-image", "faiss-cpu", "networkx",
                      "python-louvain", "igraph")


class BackgroundWriter:
    """Writes files on one thread beside the run: PNG encoding (zlib) releases the GIL, so
    the writes overlap the ViT and the stages after it. :meth:`wait` raises the first
    error of a write; leaving the ``with`` block waits for every write."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datus-write")
        self._pending: list[Future] = []

    def submit(self, write: Callable, *args) -> None:
        self._pending.append(self._pool.submit(write, *args))

    def wait(self) -> None:
        """Block until every write submitted so far is done; raise the first error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)


def planned_files(stems: list[str], gt: bool) -> list[str]:
    """Run-relative files ``datus run`` may write for ``stems`` (with ground truth: the
    SUIM colour masks and metrics.json too)."""
    folders = [PARTITIONS_DIR, SEGMENTS_DIR, PSEUDO_DIR] + ([PSEUDO_COLOUR_DIR] if gt else [])
    return [image_file(f, s) for f in folders for s in stems] + ([METRICS_FILE] if gt else [])


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


def command_line() -> str:
    """The command that started this process, for provenance."""
    return " ".join(sys.argv)
