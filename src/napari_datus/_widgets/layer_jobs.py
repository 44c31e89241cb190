"""The worker jobs of image layers (no Qt): one layer (an image or a stack), or several
selected Image layers as one dataset, with one k-means over the segments of all of them
and each layer's result layers beside it at its own size."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import napari
from napari.layers import Image

from napari_datus._widgets.class_view import carried_map, carry_classes
from napari_datus._widgets.edits import Edit, with_edits
from napari_datus._widgets.layers import add_result_layers, run_of, stack_of
from napari_datus._widgets.model import (
    ImageStack,
    WidgetRun,
    carry_metrics,
    denoise,
    layer_arrays,
)
from napari_datus.cache import FeatureCache
from napari_datus.class_carry import Carry
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.params import Params
from napari_datus.pipeline import DatasetResult, Progress, array_sources, run

if TYPE_CHECKING:
    from napari_datus.core.backbone import Backbone

BackboneLoader = Callable[[Params, int], Generator[Progress, None, "Backbone"]]


def work_layer(name: str, stack: ImageStack, params: Params, config: DenoiseConfig | None,
               scored: WidgetRun | None, load_backbone: BackboneLoader, cache: FeatureCache,
               ) -> Generator[Progress | TrainProgress, None, tuple[WidgetRun, dict, str | None]]:
    """Worker thread: every stage, de-noising when asked, the metrics against the ground
    truth ``scored`` (the run being replaced) was scored with, then the layer arrays.

    Returns
    -------
    The run, its layer arrays and a note on the class table carried over (or None).
    """
    backbone = yield from load_backbone(params, stack.shape[0])
    result = yield from run(array_sources(stack.images, stack.stems), stack.shape[0], params,
                            backbone, cache)
    widget_run = WidgetRun(name, stack, result, backbone.patch_size, backbone.input_size,
                           weights=backbone.provenance())
    if config is not None:
        widget_run.denoised = yield from denoise(widget_run, config)
    classes_note = None
    if scored is not None:
        carry_metrics(widget_run, scored)
        classes_note = carry_classes(widget_run, scored)
    yield Progress("building layers", 0, 1)
    return widget_run, layer_arrays(widget_run), classes_note


def selected_images(viewer: napari.Viewer, chosen: WidgetRun | None = None) -> list[Image]:
    """The Image layers selected in the layer list, in layer-list order; with none selected,
    the image layers of the set the ``chosen`` run belongs to (a re-run of the set)."""
    selected = [layer for layer in viewer.layers
                if isinstance(layer, Image) and layer in viewer.layers.selection]
    if selected or chosen is None:
        return selected
    return [viewer.layers[r.image_name] for r in chosen.group
            if r.image_name in viewer.layers and isinstance(viewer.layers[r.image_name], Image)]


def set_stacks(layers: list[Image]) -> list[ImageStack]:
    """Each layer as a one-image stack; a DatusError names a layer that is not one image."""
    if not layers:
        raise DatusError("select the Image layers to segment together in the layer list")
    stacks = [stack_of(layer) for layer in layers]
    for layer, stack in zip(layers, stacks):
        if stack.is_stack:
            raise DatusError(f"layer {layer.name!r} is a stack of {stack.shape[0]} images:"
                             " select single images to segment together, or run the stack"
                             " by itself")
    return stacks


def set_runs(viewer: napari.Viewer, layers: list[Image]) -> list[WidgetRun]:
    """The runs the layers' result layers hold now (a layer not run yet has none)."""
    runs = [run_of(viewer.layers[f"{layer.name} pseudo mask"])
            if f"{layer.name} pseudo mask" in viewer.layers else None for layer in layers]
    return [r for r in runs if r is not None]


def work_set(stacks: list[ImageStack], params: Params, load_backbone: BackboneLoader,
             cache: FeatureCache, earlier: dict[str, WidgetRun],
             ) -> Generator[Progress, None, list[tuple[WidgetRun, dict]]]:
    """Worker thread: every stage over the layers' images, one k-means, then one run view
    and its layer arrays per layer. ``earlier`` (layer name -> run it replaces) gives the
    class table and the ground truth to score against again."""
    names = [stack.stems[0] for stack in stacks]
    backbone = yield from load_backbone(params, len(stacks))
    result = yield from run(array_sources([s.images[0] for s in stacks], names),
                            len(stacks), params, backbone, cache)
    positions = {r.stem: i for i, r in enumerate(result.results)}
    runs, classes = [], None
    for name, stack in zip(names, stacks):
        i = positions.get(name)
        one = DatasetResult([] if i is None else [result.results[i]],
                            [] if i is None else [result.clusters[i]], result.timings,
                            [s for s in result.skipped if s.file == name], params)
        runs.append(WidgetRun(name, stack, one, backbone.patch_size, backbone.input_size,
                              weights=backbone.provenance(), class_map=classes))
        classes = runs[0].class_map  # one table for the whole set
    previous = next(iter(earlier.values()), None)
    if previous is not None:
        carry = Carry.between([(earlier[r.image_name].result, r.result) for r in runs
                               if r.image_name in earlier])
        carried, _note = carried_map(previous.class_map, previous.result.params.clusters,
                                     params.clusters, carry)
        classes.set_to(carried)
        for widget_run in runs:
            widget_run.carry = carry
    yield Progress("building layers", 0, 1)
    out = []
    for widget_run in runs:
        widget_run.group = runs
        if widget_run.image_name in earlier:
            carry_metrics(widget_run, earlier[widget_run.image_name])
        out.append((widget_run, layer_arrays(widget_run)))
    return out


def show_set(viewer: napari.Viewer, layers: list[Image], views: list[tuple[WidgetRun, dict]],
             kept: dict[str, dict[int, Edit]]) -> None:
    """Add (or update) every layer's result layers, with the kept edits painted over."""
    for layer, (widget_run, arrays) in zip(layers, views):
        widget_run.pristine = arrays["pseudo mask"].copy()
        arrays["pseudo mask"] = with_edits(arrays["pseudo mask"], kept.get(layer.name, {}),
                                            widget_run)
        add_result_layers(viewer, widget_run, arrays, layer)
    viewer.layers.selection = set(layers)  # the set stays selected for the next run
