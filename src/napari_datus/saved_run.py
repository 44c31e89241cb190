"""A napari run saved in the ``datus run`` layout, and any run folder read back as layers.

:func:`save_run` writes what ``datus run`` writes (partitions, segments, pseudo masks,
run.json last) for a :class:`~napari_datus.pipeline.DatasetResult` whose images are files,
with the user's edited masks in place of the computed ones and a record of the edits.
:func:`run_layers` reads a run folder (from the CLI, the widget or an export) as napari layer
data: per image an Image layer ``"<image>"`` and its stage layers ``"<image> pseudo mask"``
etc., in the layer conventions (DESIGN 6), each read from disk only when napari draws it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from PIL import Image as PILImage

from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_array, read_image
from napari_datus.io.masks import read_cluster_mask, to_layer_labels
from napari_datus.outputs import (
    DENOISED_DIR,
    PARTITIONS_DIR,
    PSEUDO_DIR,
    SEGMENTS_DIR,
    command_line,
    folder_lock,
    package_versions,
    read_json,
    run_folder,
    write_class_masks,
    write_grid_outputs,
    write_json,
    write_pseudo_mask,
)
from napari_datus.pipeline import DatasetResult

LayerData = tuple[Any, dict[str, Any], str]
# Stage folders read back, with the layer suffix and how a file value becomes a label.
STAGE_LAYERS = (
    (PARTITIONS_DIR, "partitions", "plus_one"),
    (SEGMENTS_DIR, "segments", "as_is"),
    (SEGMENTS_DIR, "noise", "noise"),
    (PSEUDO_DIR, "pseudo mask", "clusters"),
    (DENOISED_DIR, "de-noised", "clusters"),
)
SAVED_RUN_KEY = "datus_saved_run"


def save_run(out: Path, result: DatasetResult, images: dict[str, Path],
             provenance: dict[str, Any], edited: dict[str, np.ndarray] | None = None,
             classes: ClassMap | None = None, class_masks: bool = False,
             grid: dict[str, int] | None = None) -> Path:
    """Write a run in the ``datus run`` layout.

    Parameters
    ----------
    result : every image's stages and clusters
    images : stem -> image file, for run.json ``inputs``
    provenance : the backbone's weights source and hash (``Backbone.provenance()``)
    edited : stem -> (H, W) uint8 pseudo mask (255 = unlabelled) as the user edited it
    classes : the user's class map, saved as ``classes.json``
    class_masks : also write every mask through the class map (class ids and colours)
    grid : the backbone's ``patch_size`` and ``input_size``, for reopening the run

    Returns
    -------
    The run.json path, written last.
    """
    started = time.perf_counter()
    edited = edited or {}
    with run_folder(out) as run_id:
        edits = {}
        for index, r in enumerate(result.results):
            write_grid_outputs(out, r.stem, r.partition, r.segments.valid, r.shape)
            computed = result.pseudo_mask(index, None if result.params.refine == "none"
                                          else read_image(images[r.stem]))
            mask = edited.get(r.stem, computed)
            write_pseudo_mask(out, r.stem, mask)
            if class_masks and classes is not None:
                write_class_masks(out, r.stem, mask, classes)
            changed = int((mask != computed).sum())
            if changed:
                edits[r.stem] = {"pixels": changed}
        if classes is not None:
            classes.save(out)
        return write_json(out / "run.json", {
            "run_id": run_id,
            "command": command_line(),
            "params": {**result.params.to_dict(), **provenance,
                       "clusters": max(result.params.clusters,
                                       classes.n_clusters if classes else 0)},
            "versions": package_versions(),
            "timings": {**result.timings, "save": time.perf_counter() - started},
            "segments": result.segment_counts(),
            "images": [r.stem for r in result.results],
            "skipped": [vars(s) for s in result.skipped],
            "inputs": {r.stem: {"image": str(Path(images[r.stem]).resolve()), "gt": None}
                       for r in result.results},
            "gt": None,
            "edits": edits,
            "grid": grid,
        })


def save_edits(out: Path, masks: dict[str, np.ndarray], edits: dict[str, int]) -> None:
    """Write edited pseudo masks into a saved run and record the edits in its run.json.

    Parameters
    ----------
    masks : stem -> (H, W) uint8 pseudo mask (255 = unlabelled) to write
    edits : stem -> edited pixels, for every image that has edits now
    """
    with folder_lock(out):
        run = read_json(out / "run.json")
        for stem, mask in masks.items():
            write_pseudo_mask(out, stem, mask)
        run["edits"] = {stem: {"pixels": pixels} for stem, pixels in sorted(edits.items())}
        write_json(out / "run.json", run)


def is_run_folder(path: str | Path) -> bool:
    """True for a folder holding a finished run (its run.json)."""
    return Path(path).is_dir() and (Path(path) / "run.json").is_file()


def run_layers(out: str | Path) -> list[LayerData]:
    """Layer data for every image of a run folder: the image, then its stage layers.

    Raises
    ------
    DatusError
        If run.json is missing or unreadable, or lists no image.
    """
    out = Path(out)
    run = read_json(out / "run.json")
    inputs = run.get("inputs") or {}
    stems = [s for s in run.get("images") or [] if (out / PSEUDO_DIR / f"{s}.png").is_file()]
    if not stems:
        raise DatusError(f"{out / 'run.json'} lists no image with a pseudo mask")
    classes = ClassMap.load(out)
    layers: list[LayerData] = []
    for index, stem in enumerate(stems):
        # Images differ in size and would cover each other: the first one shows at first.
        shown = index == 0
        image = Path((inputs.get(stem) or {}).get("image") or "")
        if image.is_file():
            layers.append((lazy_read(image, read_image, np.uint8, rgb=True),
                           {"name": stem, "rgb": True, "visible": shown}, "image"))
        for folder, suffix, rule in STAGE_LAYERS:
            path = out / folder / f"{stem}.png"
            if path.is_file():
                meta = {SAVED_RUN_KEY: str(out.resolve()), "stem": stem}
                # Masks the user may paint are arrays; the rest load when first drawn.
                data = (_clusters(path) if rule == "clusters"
                        else lazy_read(path, _LABEL_RULES[rule], _LABEL_DTYPES[rule]))
                kwargs = {"name": f"{stem} {suffix}", "metadata": meta,
                          "visible": shown and suffix == "pseudo mask", "opacity": 0.6}
                if rule == "clusters" and classes is not None:
                    colours, features = classes.layer_style(int(data.max(initial=0)))
                    kwargs.update(colormap=colours, features=features)
                layers.append((data, kwargs, "labels"))
    return layers


def mask_layer(path: str | Path) -> LayerData:
    """A run's pseudo-mask (or de-noised) PNG as a Labels layer: cluster ``c`` as ``c + 1``."""
    path = Path(path)
    return (_clusters(path), {"name": f"{path.stem} {_suffix_of(path)}", "opacity": 0.6},
            "labels")


def is_run_mask(path: str | Path) -> bool:
    """True for a PNG inside a run folder's ``pseudo_masks/`` or ``denoised/``."""
    path = Path(path)
    return (path.suffix.lower() == ".png" and path.parent.name in (PSEUDO_DIR, DENOISED_DIR)
            and is_run_folder(path.parent.parent))


def _suffix_of(path: Path) -> str:
    return "de-noised" if path.parent.name == DENOISED_DIR else "pseudo mask"


def _clusters(path: Path) -> np.ndarray:
    """File convention (255 unlabelled, ``c``) to layer convention (0, ``c + 1``)."""
    return to_layer_labels(read_cluster_mask(path)).astype(np.uint16)


_LABEL_RULES = {
    "plus_one": lambda p: read_array(p).astype(np.uint32) + 1,
    "as_is": lambda p: read_array(p).astype(np.uint32),
    "noise": lambda p: (read_array(p) == 0).astype(np.uint8),
}
_LABEL_DTYPES = {"plus_one": np.uint32, "as_is": np.uint32, "noise": np.uint8}


def lazy_read(path: Path, read, dtype: type, rgb: bool = False) -> da.Array:
    """A dask array that reads ``path`` when napari first draws it (only the header now)."""
    with PILImage.open(path) as img:
        width, height = img.size
    shape = (height, width, 3) if rgb else (height, width)
    return da.from_delayed(dask.delayed(read)(path), shape=shape, dtype=dtype)
