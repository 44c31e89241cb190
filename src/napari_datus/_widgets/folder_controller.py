"""Runs over a folder of images for the "DatUS pipeline" dock: the worker's job, showing one
image at a time, stepping, keeping and saving the user's edits."""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from napari.layers import Layer
from napari.utils.notifications import show_info

from napari_datus._widgets.class_view import carried_map
from napari_datus._widgets.folder_panel import FolderPanel
from napari_datus._widgets.folder_run import Edit, FolderRun
from napari_datus._widgets.layers import FOLDER_KEY, show_folder_image
from napari_datus._widgets.model import WidgetRun
from napari_datus._widgets.qt import on_destroyed
from napari_datus.cache import FeatureCache, file_sources
from napari_datus.class_carry import Carry
from napari_datus.io.dataset import list_images
from napari_datus.io.masks import to_file_labels
from napari_datus.params import Params
from napari_datus.pipeline import Progress, run
from napari_datus.runs.save import save_edits, save_run

if TYPE_CHECKING:
    from napari_datus.core.backbone import Backbone

BackboneLoader = Callable[[Params, int], Generator[Progress, None, "Backbone"]]


class FolderController:
    """The folder run shown in a viewer, and the jobs that make and save it."""

    def __init__(self, viewer: napari.Viewer, panel: FolderPanel) -> None:
        self.viewer = viewer
        self.panel = panel
        self.run: FolderRun | None = None
        self._running = False
        panel.step.connect(self.step)
        inserted = viewer.layers.events.inserted
        inserted.connect(self._on_inserted)
        on_destroyed(panel, partial(inserted.disconnect, self._on_inserted))
        for layer in list(viewer.layers):  # a run folder opened before the dock was
            self.adopt(layer)

    def adopt(self, layer: Layer) -> bool:
        """Show the folder run of a reopened run folder that ``layer`` carries (from the
        npe2 reader) one image at a time, with the navigator; True if it carried one."""
        folder_run = layer.metadata.pop(FOLDER_KEY, None)
        if folder_run is None or self._running:
            return False
        # Run then re-runs this folder into this run folder, as after a folder run.
        self.panel.folder.setText(str(folder_run.folder))
        self.panel.out.setText(str(folder_run.out))
        self.show(folder_run, folder_run.index)
        return True

    def _on_inserted(self, event) -> None:
        self.adopt(event.value)

    @staticmethod
    def files(folder: Path) -> list[Path]:
        """The folder's images (DatusError when there are none)."""
        return list_images(folder)

    def work(self, folder: Path, files: list[Path], params: Params, out: Path | None,
             load_backbone: BackboneLoader, cache: FeatureCache,
             kept: dict[str, Edit], earlier: FolderRun | None = None,
             ) -> Generator[Progress, None, FolderRun]:
        """Worker thread: every stage over the folder, one k-means, then the saved run.

        ``kept`` are edits of an earlier run of the folder that the user chose to keep: each
        pixel keeps its class; an edit whose image changed size is dropped with a
        notification. The classes of ``earlier`` (the run this one replaces) are kept, each
        new cluster in the class whose pixels it covers most.
        """
        backbone = yield from load_backbone(params, len(files))
        result = yield from run(file_sources(files), len(files), params, backbone, cache)
        folder_run = FolderRun(folder, {f.stem: f for f in files}, result, backbone.patch_size,
                               backbone.input_size, weights=backbone.provenance(), out=out)
        carry = None
        if earlier is not None:
            carry = Carry.between([(earlier.result, result)])
            classes, note = carried_map(earlier.class_map, earlier.result.params.clusters,
                                        params.clusters, carry)
            folder_run.class_map.set_to(classes)
            if note:
                show_info(note)
        folder_run.edits = _compatible(folder_run, kept, carry)
        if out is not None:
            yield Progress("saving", 0, 1)
            save_run(out, result, folder_run.files, folder_run.weights,
                     folder_run.edited_masks(), folder_run.class_map, grid=folder_run.grid)
        return folder_run

    def show(self, folder_run: FolderRun, index: int = 0) -> None:
        """Show a new folder run from image ``index``, in place of the one shown."""
        shown = self._shown_stem()
        self.run = folder_run
        self._show(index, shown)

    def set_running(self, running: bool) -> None:
        """No stepping while a run goes: a step saves the edits into the folder that run is
        replacing."""
        self._running = running
        if self.run is not None:
            self._enable_steps()

    def step(self, delta: int) -> None:
        """Keep the edits of the image on screen, then show the previous or next image."""
        if self.run is None or self._running:
            return
        index = self.run.index + delta
        if 0 <= index < len(self.run):
            self.keep_edits()
            self._show(index, self._shown_stem())

    def keep_edits(self) -> int:
        """Record the on-screen image's edits (and save them with the run); returns the edited
        pixels of the whole folder run."""
        folder_run = self.run
        if folder_run is None:
            return 0
        index = folder_run.index
        name = f"{folder_run.stem(index)} pseudo mask"
        if name in self.viewer.layers:
            labels = np.asarray(self.viewer.layers[name].data)
            folder_run.record_edit(index, labels)
            if folder_run.out is not None:
                save_edits(folder_run.out, {folder_run.stem(index): to_file_labels(labels)})
        return sum(edit.pixels for edit in folder_run.edits.values())

    def shows(self, run: WidgetRun) -> bool:
        """True when ``run`` is the view of the folder run's image on screen."""
        folder_run = self.run
        return (folder_run is not None and run.image_name == folder_run.stem(folder_run.index)
                and run.result.results[0] is folder_run.result.results[folder_run.index])

    def save_job(self, out: Path, class_masks: bool = False) -> Callable[[], Path]:
        """Saving the whole folder run, with every edit and the class map, in the ``datus
        run`` layout (with the annotations in class ids and colours on request).

        What is saved is frozen here, on the main thread (a Reassign may change clusters
        while the saving runs); the returned call builds the masks and writes them, on any
        thread, and returns the run.json path.
        """
        self.keep_edits()
        return partial(_save, out, self.run.frozen(), class_masks)

    def _show(self, index: int, shown: str | None) -> None:
        folder_run = self.run
        _view, image = show_folder_image(self.viewer, folder_run, index, shown)
        height, width = image.data.shape[:2]
        edit = folder_run.edits.get(folder_run.stem(index))
        note = f", {edit.pixels} edited pixels" if edit else ""
        self.panel.show_position(index, len(folder_run),
                                 f"{folder_run.stem(index)} ({width}x{height}{note})")
        self._enable_steps()

    def _enable_steps(self) -> None:
        index, total = self.run.index, len(self.run)
        self.panel.previous.setEnabled(not self._running and index > 0)
        self.panel.next.setEnabled(not self._running and index < total - 1)

    def _shown_stem(self) -> str | None:
        return None if self.run is None else self.run.stem(self.run.index)


def _compatible(folder_run: FolderRun, kept: dict[str, Edit],
                carry: Carry | None) -> dict[str, Edit]:
    """The kept edits that still fit (same image size), each pixel in its class in the new
    run (:meth:`Carry.translate`); pixels naming a cluster with nothing to follow drop."""
    fitting: dict[str, Edit] = {}
    for index in range(len(folder_run)):
        stem = folder_run.stem(index)
        edit = kept.get(stem)
        if edit is None:
            continue
        if edit.where.shape != folder_run.result.results[index].shape:
            show_info(f"the edits of {stem} were not kept: its image changed size")
            continue
        values = (edit.values.astype(np.int64) if carry is None
                  else carry.translate(edit.values, folder_run.class_map))
        k = max(folder_run.result.params.clusters, folder_run.class_map.n_clusters)
        valid = (values >= 0) & (values <= k)
        if not valid.all():
            show_info(f"{int((~valid).sum())} edited pixels of {stem} named a cluster with"
                      " no pixels in the earlier run and were not kept")
        where = edit.where.copy()
        where[where] = valid
        if where.any():
            fitting[stem] = Edit(where, values[valid].astype(np.uint8))
    return fitting


def _save(out: Path, folder_run: FolderRun, class_masks: bool) -> Path:
    """Save a frozen folder run (:meth:`FolderController.save_job`'s writing half)."""
    return save_run(out, folder_run.result, folder_run.files, folder_run.weights,
                    folder_run.edited_masks(), folder_run.class_map, class_masks,
                    folder_run.grid, folder_run.computed_clusters())
