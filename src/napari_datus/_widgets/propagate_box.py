"""The "Propagate" box of the "DatUS pipeline" dock: the images of a folder run the user
corrected (painted, reassigned) label the others, one new Labels layer per image.

The classifier trains on the corrected images' class masks (the class table maps each
cluster to its class; unassigned pixels are not labelled) and their cached patch features
(:mod:`napari_datus.propagation`), in a worker with progress. The corrected images, the
user's edits and the pseudo-mask layers are left as they are; each other image gets a
layer ``"<image> propagated"`` of class ids (class ``c`` as label ``c + 1``, in the class
colours), shown for the image on screen and hidden for the others. Discarding the layers
undoes it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial

import napari
import numpy as np
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QGroupBox, QPushButton, QVBoxLayout

from napari_datus._widgets.folder_controller import FolderController
from napari_datus._widgets.folder_run import FolderRun
from napari_datus._widgets.jobs import RunFailed, reported
from napari_datus.cache import FeatureCache
from napari_datus.class_map import ClassMap
from napari_datus.core.propagate import PropagateConfig
from napari_datus.core.pseudolabel import UNLABELLED
from napari_datus.params import Params
from napari_datus.pipeline import Progress
from napari_datus.propagation import ImageFeatures, iter_propagate_images

SUFFIX = "propagated"
BackboneLoader = Callable[[Params, int], Generator]


def corrected_masks(folder_run: FolderRun) -> dict[str, np.ndarray]:
    """stem -> (H, W) uint8 class ids of every image with edits (255: unlabelled or
    unassigned), through the folder's class table."""
    return {stem: folder_run.class_map.class_mask(mask)
            for stem, mask in folder_run.edited_masks().items()}


def class_colormap(classes: ClassMap) -> dict:
    """Colours of a class-id layer's labels ``c + 1`` (0 transparent)."""
    colours: dict = {0: "transparent", None: (0.5, 0.5, 0.5, 1.0)}
    for c, label in enumerate(classes.classes):
        colours[c + 1] = (*(v / 255 for v in label.colour), 1.0)
    return colours


class PropagateBox(QGroupBox):
    """The Propagate button and the job it starts."""

    def __init__(self, viewer: napari.Viewer, folders: FolderController,
                 load_backbone: BackboneLoader, cache: FeatureCache) -> None:
        super().__init__("Propagate corrections")
        self.viewer, self.folders = viewer, folders
        self.load_backbone, self.cache = load_backbone, cache
        self.worker: GeneratorWorker | None = None
        self.button = QPushButton("Propagate")
        self.button.setObjectName("propagate_button")
        self.button.setToolTip("train on the folder images you corrected (painted or"
                               " reassigned) and label every other image as a new layer"
                               " '<image> propagated'; your edits stay as they are")
        self.button.clicked.connect(self.start)
        QVBoxLayout(self).addWidget(self.button)

    def start(self) -> GeneratorWorker | None:
        """Start propagating in a worker; None (after a notification) if nothing to do."""
        folder_run = self.folders.run
        if folder_run is None:
            show_error("Propagate: run a folder of images first")
            return None
        self.folders.keep_edits()  # the image on screen counts as corrected too
        masks = corrected_masks(folder_run)
        targets = [folder_run.stem(i) for i in range(len(folder_run))
                   if folder_run.stem(i) not in masks]
        if not masks or not any((m != UNLABELLED).any() for m in masks.values()):
            show_error("Propagate: correct some images first (paint, or reassign segments"
                       " to classes)")
            return None
        if not targets:
            show_info("Propagate: every image is corrected already")
            return None
        params = folder_run.result.params
        segments = {r.stem: r.segments.valid for r in folder_run.result.results}
        work = partial(self._work, folder_run.files, params, segments, masks,
                       len(folder_run.class_map.classes), targets)
        worker = thread_worker(reported, start_thread=False)(work)
        bar = progress(total=len(targets), desc="DatUS propagate")
        colours = class_colormap(folder_run.class_map)
        worker.yielded.connect(partial(_advance, bar))
        worker.returned.connect(partial(self._show, colours))
        worker.finished.connect(bar.close)
        worker.finished.connect(partial(self.button.setEnabled, True))
        worker.finished.connect(partial(setattr, self, "worker", None))
        self.button.setEnabled(False)
        self.worker = worker
        worker.start()
        return worker

    def _work(self, files, params: Params, segments, masks, n_classes: int,
              targets: list[str]):
        backbone = yield from self.load_backbone(params, len(targets))
        features = ImageFeatures(files, params, backbone, self.cache, PropagateConfig(),
                                 segments)
        # The run's own refinement: nearest for a run without one, else its guided filter
        # on the class scores.
        refine = "none" if params.refine == "none" else "guided-soft"
        return (yield from iter_propagate_images(features, masks, n_classes, targets, refine))

    def _show(self, colours: dict, result: dict[str, np.ndarray] | RunFailed) -> None:
        if isinstance(result, RunFailed):
            show_error(result.message)
            return
        folder_run = self.folders.run
        shown = folder_run.stem(folder_run.index) if folder_run is not None else None
        for stem, mask in result.items():
            data = np.where(mask == UNLABELLED, 0, mask.astype(np.uint16) + 1).astype(np.uint8)
            name = f"{stem} {SUFFIX}"
            if name in self.viewer.layers:  # a new propagation replaces the earlier one
                layer = self.viewer.layers[name]
                layer.data = data
            else:
                layer = self.viewer.add_labels(data, name=name, visible=stem == shown,
                                               opacity=0.6)
            layer.colormap = colours
        show_info(f"propagated the corrections to {len(result)} images")


def _advance(bar: progress, event: Progress) -> None:
    if event.stage == "propagate":
        bar.update(event.index - bar.n)
    bar.set_description(f"DatUS {event.stage}")

