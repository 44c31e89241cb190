"""A run folder read back as napari layer data (no Qt, no napari).

:func:`run_layers` gives, per image, an Image layer ``"<image>"`` and its stage layers
``"<image> pseudo mask"`` etc., in the layer conventions (DESIGN 6), each read from disk
only when napari draws it. A file that cannot be shown (damaged, of another size than its
image) is left out with a note; what is intact opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.images import image_size, read_array, read_image
from napari_datus.io.masks import read_cluster_mask, to_layer_labels
from napari_datus.runs.layout import DENOISED_DIR, PARTITIONS_DIR, PSEUDO_DIR, SEGMENTS_DIR
from napari_datus.runs.read import RunFolder, is_run_folder

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


def run_layers(folder: RunFolder, classes: ClassMap | None, notes: list[str],
               stems: list[str] | None = None) -> list[LayerData]:
    """Layer data for images of a run folder: each image, then its stage layers.

    Parameters
    ----------
    folder : the run folder as read (:func:`napari_datus.runs.read.read_run`)
    classes : its class table, for the cluster layers' colours and names
    notes : receives one line per file left out, and why
    stems : the images to show (default: all of the run's)
    """
    layers: list[LayerData] = []
    for index, stem in enumerate(folder.stems if stems is None else stems):
        # Images differ in size and would cover each other: the first one shows at first.
        shown = index == 0
        image = folder.image(stem)
        size = None
        if image is not None:
            try:
                layers.append((lazy_read(image, read_image, np.uint8, rgb=True),
                               {"name": stem, "rgb": True, "visible": shown}, "image"))
                size = image_size(image)
            except DatusError as exc:
                notes.append(str(exc))
        for stage, suffix, rule in STAGE_LAYERS:
            if folder.has(stage, stem):
                try:
                    layers.append(_stage_layer(folder, stage, stem, suffix, rule, size,
                                               shown, classes))
                except DatusError as exc:
                    notes.append(str(exc))
    return layers


def _stage_layer(folder: RunFolder, stage: str, stem: str, suffix: str, rule: str,
                 size: tuple[int, int] | None, shown: bool,
                 classes: ClassMap | None) -> LayerData:
    """One stage file as a Labels layer; DatusError when it cannot be shown."""
    path = folder.file(stage, stem)
    if size is not None and image_size(path) != size:
        raise DatusError(f"{path} is not the size of its image {size[1]}x{size[0]}; left out")
    meta = {SAVED_RUN_KEY: str(folder.out.resolve()), "stem": stem}
    # Masks the user may paint are arrays; the rest load when first drawn.
    data = (_clusters(path) if rule == "clusters"
            else lazy_read(path, _LABEL_RULES[rule], _LABEL_DTYPES[rule]))
    kwargs = {"name": f"{stem} {suffix}", "metadata": meta,
              "visible": shown and suffix == "pseudo mask", "opacity": 0.6}
    if rule == "clusters" and classes is not None:
        colours, features = classes.layer_style(int(data.max(initial=0)))
        kwargs.update(colormap=colours, features=features)
    return data, kwargs, "labels"


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
    height, width = image_size(path)
    shape = (height, width, 3) if rgb else (height, width)
    return da.from_delayed(dask.delayed(read)(path), shape=shape, dtype=dtype)
