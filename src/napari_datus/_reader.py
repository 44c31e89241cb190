"""npe2 reader: DatUS run folders, their mask PNGs, and SUIM colour masks.

* A run folder (``datus run`` output, a napari run's ``out`` folder or an export: a folder
  with ``run.json``) opens as an Image layer ``"<image>"`` per image with its stage layers
  ``"<image> pseudo mask"`` etc. (:func:`napari_datus.saved_run.run_layers`); a damaged
  file is left out with a notification, a damaged record declines the folder with one.
* A PNG in a run's ``pseudo_masks/`` or ``denoised/`` opens as Labels, cluster ``c`` as
  ``c + 1`` (0 = unlabelled), like the pipeline widget's layers.
* A SUIM colour mask (PNG, BMP) opens as a Labels layer named by class. The layer holds
  the SUIM colour code (``suim8``: 0 BW ... 7 SUIM SR), drawn in the SUIM colours, with the
  class names as layer features so napari's status bar shows them.

Anything else is declined (the reader returns None), so napari falls back to its own
readers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_array
from napari_datus.io.masks import SUIM8_COLOURS, SUIM8_NAMES, decode_suim
from napari_datus.runs.read import RunFolder, is_run_folder, read_run
from napari_datus.saved_run import is_run_mask, mask_layer, run_layers

LayerData = tuple[np.ndarray, dict[str, Any], str]
SUFFIXES = (".png", ".bmp")


def suim_labels_kwargs(name: str) -> dict[str, Any]:
    """Layer keyword arguments for ``suim8`` class codes: SUIM colours and class names."""
    colours = {code: tuple(rgb / 255.0) for code, rgb in enumerate(SUIM8_COLOURS)}
    return {
        "name": name,
        "colormap": {**colours, None: "transparent"},
        "features": {"index": np.arange(len(SUIM8_NAMES)), "class": list(SUIM8_NAMES)},
        "metadata": {"gt_format": "suim8"},
    }


def read_suim_masks(paths: Sequence[str | Path]) -> np.ndarray:
    """Decode SUIM colour masks as class codes.

    Returns
    -------
    (H, W) uint8 for one file, (N, H, W) uint8 for several of one size

    Raises
    ------
    DatusError
        If a file is not a SUIM colour mask or the sizes differ.
    """
    masks = [decode_suim(read_array(p, keep_palette=False), "suim8", name=str(p))
             for p in paths]
    if len({m.shape for m in masks}) > 1:
        raise DatusError("SUIM masks of different sizes cannot be stacked: "
                         + ", ".join(f"{Path(p).name} {m.shape}" for p, m in zip(paths, masks)))
    return masks[0] if len(masks) == 1 else np.stack(masks)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for run folders, a run's mask PNGs or SUIM colour masks, else None.

    A run folder is probed by its record alone (nothing is decoded until napari reads);
    one whose record is damaged is declined with a notification saying why.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(is_run_folder(p) for p in paths):
        try:
            folders = [read_run(p) for p in paths]
        except DatusError as exc:
            _notify(f"napari-datus cannot open this run folder: {exc}")
            return None
        return lambda _path: [layer for folder in folders for layer in with_runs(folder)]
    if paths and all(is_run_mask(p) for p in paths):
        return lambda _path: _mask_layers(paths)
    if not paths or any(Path(p).suffix.lower() not in SUFFIXES for p in paths):
        return None
    try:
        codes = read_suim_masks(paths)
    except DatusError:
        return None
    # Named as ground truth, so it never clashes with the image of the same stem.
    name = (f"{Path(paths[0]).stem} ground truth" if len(paths) == 1
            else f"{Path(paths[0]).parent.name} ground truth")

    def reader(_path: Any) -> list[LayerData]:
        return [(codes, suim_labels_kwargs(name), "labels")]

    return reader


def with_runs(folder: RunFolder) -> list[LayerData]:
    """A run folder's layers, each stage layer carrying the run the docks work on (metrics,
    segment QA, class table, Export). What cannot be shown or rebuilt is left out, and one
    notification says what and why: a folder that cannot be rebuilt as runs (a stage folder
    missing, say) still opens for viewing."""
    from napari_datus._widgets.layers import FOLDER_KEY, METADATA_KEY
    from napari_datus._widgets.reopen import reopened_folder_run, reopened_runs

    notes: list[str] = []
    if folder.missing:
        notes.append(f"{len(folder.missing)} images of the run have no pseudo mask:"
                     f" {', '.join(folder.missing[:3])}")
    runs: dict = {}
    try:
        classes = ClassMap.load(folder.out)
    except DatusError as exc:
        # Export would write a new class table over the damaged one: view only.
        classes, damaged = None, exc
    else:
        damaged = None
    try:
        if damaged is not None:
            raise damaged
        runs = reopened_runs(folder, classes)
    except DatusError as exc:
        notes.append(f"opened for viewing only (no metrics, QA or export): {exc}")
    if len(runs) > 1:
        # Shown one image at a time: only the first image's files are read now.
        folder_run = reopened_folder_run(folder, runs)
        layers = run_layers(folder, classes, notes, [folder_run.stem(0)])
        layers[-1][1].setdefault("metadata", {})[FOLDER_KEY] = folder_run
        notes.append(f"{len(folder_run)} images, shown one at a time: step through them"
                     " with ◀/▶ in the DatUS pipeline dock (Plugins > DatUS pipeline)")
    else:
        layers = run_layers(folder, classes, notes)
    for _data, kwargs, _kind in layers:
        run = runs.get(kwargs.get("metadata", {}).get("stem"))
        if run is not None and kwargs["name"].startswith(f"{run.image_name} "):
            kwargs["metadata"][METADATA_KEY] = run
    if notes:
        _notify(f"{folder.out.name}: " + "; ".join(notes[:3])
                + (f" (and {len(notes) - 3} more)" if len(notes) > 3 else ""))
    return layers


def _mask_layers(paths: list[str]) -> list[LayerData]:
    """The mask PNGs that can be read, as Labels layers; one notification for the rest."""
    layers, failed = [], []
    for p in paths:
        try:
            layers.append(mask_layer(p))
        except DatusError as exc:
            failed.append(str(exc))
    if failed:
        _notify("; ".join(failed[:3]))
    return layers


def _notify(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)
