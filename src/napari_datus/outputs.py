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
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.io.masks import colourise, write_colour_mask, write_index_mask, write_json_atomic

PARTITIONS_DIR = "partitions"
SEGMENTS_DIR = "segments"
PSEUDO_DIR = "pseudo_masks"
PSEUDO_COLOUR_DIR = "pseudo_masks_colour"
VERSIONED_PACKAGES = ("napari-datus", "torch", "torchvision", "timm", "numpy", "scipy",
                      "scikit-learn", "networkx", "python-louvain", "igraph")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".datus-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DatusError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc


def write_grid_outputs(out: Path, stem: str, partition: np.ndarray, segments: np.ndarray,
                       shape: tuple[int, int]) -> None:
    """Write the partition and segment maps of one image at its original size.

    Parameters
    ----------
    partition : (g, g) int community ids
    segments : (g, g) int, 0 = noise, 1..n valid
    shape : (H, W) of the original image
    """
    write_index_mask(out / PARTITIONS_DIR / f"{stem}.png", upsample_nearest(partition, shape))
    write_index_mask(out / SEGMENTS_DIR / f"{stem}.png", upsample_nearest(segments, shape))


def write_pseudo_mask(out: Path, stem: str, mask: np.ndarray, folder: str = PSEUDO_DIR) -> Path:
    """Write an ``(H, W) uint8`` cluster mask (255 = unlabelled)."""
    return write_index_mask(out / folder / f"{stem}.png", mask.astype(np.uint8))


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


def command_line() -> str:
    """The command that started this process, for provenance."""
    return " ".join(sys.argv)
