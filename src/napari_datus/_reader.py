"""npe2 reader: DatUS run folders, their mask PNGs, and SUIM colour masks.

* A run folder (``datus run`` output, a napari run's ``out`` folder or an export: a folder
  with ``run.json``) opens as an Image layer ``"<image>"`` per image with its stage layers
  ``"<image> pseudo mask"`` etc. (:func:`napari_datus.saved_run.run_layers`).
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

from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_array
from napari_datus.io.masks import SUIM8_COLOURS, SUIM8_NAMES, decode_suim, to_layer_labels
from napari_datus.saved_run import is_run_folder, is_run_mask, mask_layer, run_layers

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
    masks = [decode_suim(read_array(p), "suim8", name=str(p)) for p in paths]
    if len({m.shape for m in masks}) > 1:
        raise DatusError("SUIM masks of different sizes cannot be stacked: "
                         + ", ".join(f"{Path(p).name} {m.shape}" for p, m in zip(paths, masks)))
    return masks[0] if len(masks) == 1 else np.stack(masks)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for a run folder, a run's mask PNGs or SUIM colour masks, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(is_run_folder(p) for p in paths):
        return _read_with(lambda: [layer for p in paths for layer in with_runs(p)])
    if paths and all(is_run_mask(p) for p in paths):
        return _read_with(lambda: [mask_layer(p) for p in paths])
    if not paths or any(Path(p).suffix.lower() not in SUFFIXES for p in paths):
        return None
    try:
        codes = read_suim_masks(paths)
    except DatusError:
        return None
    name = Path(paths[0]).stem if len(paths) == 1 else f"{Path(paths[0]).parent.name} masks"

    def reader(_path: Any) -> list[LayerData]:
        return [(codes, suim_labels_kwargs(name), "labels")]

    return reader


def with_runs(out: str | Path) -> list[LayerData]:
    """A run folder's layers, each stage layer carrying the run the docks work on (metrics,
    segment QA, class table, Export). A folder that cannot be rebuilt as runs (a stage
    folder missing, say) still opens, for viewing, and a notification says why."""
    from napari.utils.notifications import show_info

    from napari_datus._widgets.layers import METADATA_KEY
    from napari_datus._widgets.reopen import reopened_runs

    layers = run_layers(out)
    try:
        runs = reopened_runs(Path(out))
    except DatusError as exc:
        show_info(f"{Path(out).name} opened for viewing only (no metrics, QA or export): {exc}")
        return layers
    for _data, kwargs, _kind in layers:
        run = runs.get(kwargs.get("metadata", {}).get("stem"))
        if run is not None and kwargs["name"].startswith(f"{run.image_name} "):
            kwargs["metadata"][METADATA_KEY] = run
    for run in runs.values():
        # Against this, the saved mask's differences are edits (kept when you export).
        run.pristine = to_layer_labels(run.pseudo_mask(0))
    return layers


def _read_with(read: Callable[[], list[LayerData]]) -> Callable[[Any], list[LayerData]] | None:
    """A reader returning ``read()``'s layers, or None (napari tries other readers) when the
    files turn out unreadable."""
    try:
        layers = read()
    except DatusError:
        return None
    return lambda _path: layers
