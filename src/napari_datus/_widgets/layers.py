"""Turning a :class:`WidgetRun` into napari Labels layers (napari, no Qt)."""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image, Labels, Layer

from napari_datus._widgets.class_view import cluster_colormap
from napari_datus._widgets.folder_run import FolderRun
from napari_datus._widgets.model import (
    DENOISED,
    ImageStack,
    WidgetRun,
    image_stack,
    layer_arrays,
)
from napari_datus.core.errors import DatusError

METADATA_KEY = "datus"
# A reopened run folder's folder run, on the last layer the reader gives (the pipeline dock
# takes it over and shows the folder one image at a time).
FOLDER_KEY = "datus_folder"
NOISE_COLOURS = {0: "transparent", 1: "magenta", None: "transparent"}
# Only the masks show at first (the de-noised one above the initial one): stacked opaque
# label layers would hide each other.
VISIBLE = ("pseudo mask", DENOISED)
# What each result layer holds, for the dock's tooltips (napari's layer list shows a layer's
# source there and offers no place for a description).
LAYER_TERMS = (
    "Result layers, beside each image:\n"
    "<image> partitions: the Louvain communities of the patch affinity graph (stage 3).\n"
    "<image> segments: connected parts of the communities; those larger than tau patches are"
    " valid segments, the rest noise (stage 4).\n"
    "<image> noise: 1 where a patch belongs to a noise segment.\n"
    "<image> pseudo mask: the k-means cluster of every valid segment, drawn in its class's"
    " colour; unlabelled where noise (stage 6). Paint on it to correct it.\n"
    "<image> de-noised: the de-noising network's prediction, every pixel labelled (stage 7).")


def run_of(layer: Layer | None) -> WidgetRun | None:
    """The run a result layer belongs to, if any."""
    return None if layer is None else layer.metadata.get(METADATA_KEY)


def replace_layer(viewer: napari.Viewer, layer: Layer) -> Layer:
    """Add ``layer``, taking the place (and list position) of a layer of the same name."""
    if layer.name in viewer.layers:
        index = viewer.layers.index(layer.name)
        viewer.layers.pop(index)
        viewer.layers.insert(index, layer)
    else:
        viewer.layers.append(layer)
    return layer


def add_result_layers(viewer: napari.Viewer, run: WidgetRun, arrays: dict[str, np.ndarray],
                      image: Layer) -> list[Layer]:
    """Add one Labels layer per result array, aligned with the image layer, or update the
    layers of an earlier run in place.

    Parameters
    ----------
    arrays : suffix -> array from :func:`model.layer_arrays`
    image : the Image layer the run was computed on; its scale and translate are copied
    """
    added = []
    for suffix, data in arrays.items():
        name = run.layer_name(suffix)
        existing = viewer.layers[name] if name in viewer.layers else None
        if isinstance(existing, Labels) and existing.data.ndim == data.ndim:
            added.append(update_layer(existing, run, data, image))
            continue
        layer = Labels(data, name=name, scale=image.scale, translate=image.translate,
                       metadata={METADATA_KEY: run}, visible=suffix in VISIBLE, opacity=0.6)
        if suffix == "noise":
            layer.colormap = NOISE_COLOURS
        added.append(replace_layer(viewer, layer))
    paint_clusters(viewer, run)  # cluster names in the status bar, before any metrics
    return added


def update_layer(layer: Labels, run: WidgetRun, data: np.ndarray, image: Layer) -> Labels:
    """Give a result layer a new run's data, keeping the user's display settings.

    Removing a layer makes napari's canvas run the garbage collector (about 0.5 s each), so
    a re-run that replaced its layers spent seconds where k-means took milliseconds. The run
    goes into the metadata before the data, so listeners of the data event see the new run.
    """
    layer.metadata[METADATA_KEY] = run
    # Each transform assignment re-lays the whole viewer out: only when it changed.
    for attr in ("scale", "translate"):
        if not np.array_equal(getattr(layer, attr), getattr(image, attr)):
            setattr(layer, attr, getattr(image, attr))
    layer.data = data
    return layer


def paint_clusters(viewer: napari.Viewer, run: WidgetRun) -> None:
    """Draw the pseudo-mask and de-noised layers in their classes' colours, with the class
    names in the status bar (the run's class map)."""
    colours, features = cluster_colormap(run)
    for suffix in ("pseudo mask", DENOISED):
        name = run.layer_name(suffix)
        if name not in viewer.layers or run_of(viewer.layers[name]) is not run:
            continue
        layer = viewer.layers[name]
        layer.colormap = colours
        layer.features = features


def show_folder_image(viewer: napari.Viewer, folder_run: FolderRun, index: int,
                      shown: str | None = None) -> tuple[WidgetRun, Image]:
    """Show image ``index`` of a folder run: an Image layer ``"<image>"`` and its result
    layers at the image's own size, with the user's edits.

    The layers of the image shown before (stem ``shown``) are renamed and given the new
    data rather than removed, since each removal costs napari about 0.5 s.

    Returns
    -------
    The image's one-image run view, and its Image layer.
    """
    view = folder_run.view(index)
    arrays = layer_arrays(view)
    arrays["pseudo mask"] = folder_run.labels(index)
    stem = view.image_name
    if shown is not None and shown != stem:
        for old, new in [(shown, stem)] + [(f"{shown} {s}", f"{stem} {s}") for s in arrays]:
            if old in viewer.layers and new not in viewer.layers:
                layer = viewer.layers[old]
                if run_of(layer) is not None:
                    # The new view first: a dock listing result layers by their run's name
                    # (the metrics dock's pseudo-mask list) then keeps the renamed layer.
                    layer.metadata[METADATA_KEY] = view
                layer.name = new
    data = view.stack.images[0]
    if isinstance(viewer.layers[stem] if stem in viewer.layers else None, Image):
        image = viewer.layers[stem]
        image.data = data
    else:
        image = viewer.add_image(data, name=stem, rgb=True)
    add_result_layers(viewer, view, arrays, image)
    folder_run.index = index
    return view, image


def stack_of(layer: Layer | None) -> ImageStack:
    """The chosen layer as an image stack, or a DatusError saying why it cannot be one."""
    if not isinstance(layer, Image):
        raise DatusError("choose an Image layer to segment (2D gray/RGB or a stack);"
                         " Labels layers hold results, not images")
    if layer.multiscale:
        raise DatusError(f"layer {layer.name!r} is multiscale: open one resolution level")
    return image_stack(layer.data, layer.rgb, layer.name, layer.metadata.get("stems"))
