"""Dock widget "DatUS pipeline": settings, Run/Cancel in a worker thread, export.

The widget only gathers settings and turns results into layers: the work is
:func:`napari_datus.pipeline.run` (and :func:`model.denoise`) in a napari
``thread_worker``, which yields after every image, so Cancel stops within one image and
the UI never waits on the model. Layers are added only when a run returns, so a
cancelled or failed run leaves none behind.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import napari
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QWidget,
)

from napari_datus._widgets.edits import (
    Edit,
    ask_keep_edits,
    ask_overwrite_edits,
    layer_edits,
    with_edits,
)
from napari_datus._widgets.export_box import ExportBox
from napari_datus._widgets.folder_controller import FolderController
from napari_datus._widgets.folder_panel import FolderPanel
from napari_datus._widgets.folder_run import FolderRun
from napari_datus._widgets.jobs import RunFailed, reported
from napari_datus._widgets.layer_jobs import (
    selected_images,
    set_runs,
    set_stacks,
    show_set,
    work_layer,
    work_set,
)
from napari_datus._widgets.layers import LAYER_TERMS, add_result_layers, run_of, stack_of
from napari_datus._widgets.model import WidgetRun
from napari_datus._widgets.propagate_box import PropagateBox
from napari_datus._widgets.qt import (
    LayerCombo,
    exit_cleanly,
    fixed_top,
    scrolled,
    tab_page,
)
from napari_datus._widgets.settings_form import SettingsForm
from napari_datus.cache import FeatureCache
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.pipeline import Params, Progress
from napari_datus.runs.read import user_work
from napari_datus.runs.write import check_writable

if TYPE_CHECKING:
    from napari_datus.core.backbone import Backbone

BackboneKey = tuple[str, str | None, str]
Event = Progress | TrainProgress
# A spin box sends one change per arrow click or digit typed: wait this long after the
# last one before a live re-run, so dragging from K=6 to K=9 costs one run, not three.
LIVE_DELAY_MS = 300
# Settings a live re-run may change: with the feature cache they cost k-means (and, for
# tau, the segment split and new components' embeddings), never the ViT or Louvain.
LIVE_SETTINGS = Params.fields_of("segments", "clustering")


class PipelineWidget(QWidget):
    """Run DatUS on an Image layer (one 2D image, or a stack that is the dataset)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        exit_cleanly()
        self.viewer = napari_viewer
        # Tests swap in a tiny random ViT here; it is called as factory(model, weights, device).
        self._backbone_factory: Callable[[str, str | None, str], Backbone] = _load_backbone
        self._backbones: dict[BackboneKey, Backbone] = {}
        # Features, partitions and embeddings on disk: a re-run with another K or tau skips
        # the ViT and Louvain ($DATUS_CACHE_DIR; disabled by itself if not writable).
        self._cache = FeatureCache()
        self._worker = None
        self._progress: progress | None = None
        self._live_pending = False
        # Edits of the replaced run the user chose to keep: stack index -> Edit.
        self._kept_edits: dict[int, Edit] = {}
        self._kept_set_edits: dict[str, dict[int, Edit]] = {}
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_rerun)
        self._build()

    # ---- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        self.image = LayerCombo(self.viewer, lambda layer: isinstance(layer, Image))
        self.together = QCheckBox("selected image layers as one dataset")
        self.together.setObjectName("selected_layers")
        self.together.setToolTip("select several Image layers in the layer list (any sizes):"
                                 " one k-means over all their segments, result layers beside"
                                 " each image")
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow(self.together)
        self.settings = SettingsForm(self, self._schedule_live_rerun)
        # The fields, as attributes of the dock too: scripts and tests set them.
        s = self.settings
        (self.model, self.weights, self.device, self.resolution, self.clusters, self.tau,
         self.seed, self.refine, self.denoise, self.epochs, self.live) = (
            s.model, s.weights, s.device, s.resolution, s.clusters, s.tau, s.seed, s.refine,
            s.denoise, s.epochs, s.live)
        self.folder_panel = FolderPanel()
        self.folders = FolderController(self.viewer, self.folder_panel)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setToolTip(LAYER_TERMS)
        self.run_button.setToolTip(LAYER_TERMS)
        self.exporter = ExportBox(self.viewer, self.current_run, self.folders,
                                  self._may_replace)
        self.export_index, self.export_classes = self.exporter.index, self.exporter.classes
        self.propagator = PropagateBox(self.viewer, self.folders, self._load_backbone,
                                       self._cache)
        open_metrics = QPushButton("Metrics…")
        open_metrics.setToolTip("open the DatUS metrics dock: scores against ground truth,"
                                " the class table and segment QA")
        open_metrics.clicked.connect(self._open_metrics)
        buttons = QHBoxLayout()
        for button in (self.run_button, self.cancel_button, self.exporter.button, open_metrics):
            buttons.addWidget(button)

        # The settings go in tabs below; what a user presses stays on screen above them.
        self.tabs = QTabWidget()
        self.tabs.addTab(scrolled(tab_page(self.settings)), "Settings")
        self.tabs.addTab(scrolled(tab_page(self.folder_panel, self.propagator)), "Folder")
        self.tabs.addTab(scrolled(tab_page(self.exporter)), "Export")
        top = fixed_top(self, self.tabs)
        top.addLayout(form)
        top.addLayout(buttons)
        top.addWidget(self.folder_panel.navigator)
        top.addWidget(self.status)

    # ---- settings -----------------------------------------------------------------------

    def params(self) -> Params:
        """The pipeline settings shown in the widget (the rest keep Params' defaults)."""
        return self.settings.params()

    def denoise_config(self) -> DenoiseConfig | None:
        """De-noising settings, or None when it is off."""
        return self.settings.denoise_config()

    # ---- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Start the pipeline on the folder, or else the chosen image layer, in a worker."""
        if self._worker is not None:
            return
        folder = self.folder_panel.folder_path()
        layer = self.image.layer()
        together = folder is None and self.together.isChecked()
        layers = selected_images(self.viewer, self.current_run()) if together else []
        try:
            params = self.params()
            params.validate()
            config = self.denoise_config()
            if config is not None:
                config.validate()
            if folder is not None:
                files = self.folders.files(folder)
                if self.folder_panel.out_path() is not None:
                    check_writable(self.folder_panel.out_path())
                    if not self._may_replace(self.folder_panel.out_path()):
                        return
            elif together:
                stacks = set_stacks(layers)
            else:
                stack = stack_of(layer)
        except DatusError as exc:
            show_error(str(exc))
            return
        keep = self._edits_to_keep()
        if keep is None:
            return
        if folder is not None:
            if config is not None:
                show_info("de-noising runs on image layers; for a folder use datus denoise"
                          " on the saved run")
            kept = self.folders.run.edits if keep and self.folders.run is not None else {}
            work = partial(reported, partial(self.folders.work, folder, files, params,
                                              self.folder_panel.out_path(),
                                              self._load_backbone, self._cache, kept,
                                              self.folders.run))
            self._start(work, partial(self._on_returned, self._show_folder), len(files))
            return
        if together:
            earlier = {r.image_name: r for r in set_runs(self.viewer, layers)}
            self._kept_set_edits = ({name: layer_edits(self.viewer, r)
                                     for name, r in earlier.items()} if keep else {})
            work = partial(reported, partial(work_set, stacks, params, self._load_backbone,
                                              self._cache, earlier))
            self._start(work, partial(self._on_returned, partial(self._show_set, layers)),
                        len(stacks))
            return
        # The run this one replaces, read here because layers belong to the main thread.
        scored = self.current_run()
        self._kept_edits = layer_edits(self.viewer, scored) if keep else {}
        work = partial(reported, partial(work_layer, layer.name, stack, params, config, scored,
                                          self._load_backbone, self._cache))
        self._start(work, partial(self._on_returned, partial(self._show_layer, layer)),
                    stack.shape[0])

    def _start(self, work: Callable, returned: Callable, total: int) -> None:
        worker = thread_worker(work, start_thread=False)()
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(returned)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._progress = progress(total=total, desc="DatUS")
        self._set_running(True)
        self.status.setText("starting…")
        worker.start()

    def _edits_to_keep(self) -> bool | None:
        """Whether a new run keeps the user's edits of the current one: asks when there are
        any; None when the user cancels."""
        if self.folder_panel.folder_path():
            pixels = self.folders.keep_edits()
        else:
            runs = (set_runs(self.viewer, selected_images(self.viewer, self.current_run()))
                    if self.together.isChecked() else [self.current_run()])
            pixels = sum(edit.pixels for run in runs
                         for edit in layer_edits(self.viewer, run).values())
        if not pixels:
            return False
        return self._ask_about_edits(pixels)

    def _may_replace(self, out: Path, run: WidgetRun | FolderRun | None = None) -> bool:
        """False when ``out`` holds a saved run with edits that the run written there does
        not carry and the user chose not to overwrite them.

        ``run`` is the run written (by default the folder run): one saved in or reopened
        from ``out`` carries that folder's edits in its layers.
        """
        run = run if run is not None else self.folders.run
        own = (run is not None and run.out is not None
               and Path(run.out).resolve() == Path(out).resolve())
        if own:
            return True
        try:
            work = user_work(out)
        except DatusError as exc:
            show_error(str(exc))
            return False
        return not work or self._ask_overwrite(out, work.edited_pixels)

    def _ask_overwrite(self, out: Path, pixels: int) -> bool:
        """Overwrite (True) or keep (False) a saved run's edits, asked in a dialog."""
        return ask_overwrite_edits(self, out, pixels)

    def _ask_about_edits(self, pixels: int) -> bool | None:
        """Keep (True), discard (False) or cancel (None), asked in a dialog."""
        return ask_keep_edits(self, pixels)

    def _schedule_live_rerun(self) -> None:
        """Restart the debounce timer when K or tau changes and a live re-run is due."""
        if self._live_rerun_due():
            self._live_timer.start()

    def _live_rerun_due(self) -> bool:
        """True when the chosen image has a finished run that differs from the settings shown
        only in K or tau (so the re-run is cheap), with live re-runs on and de-noising off."""
        previous = self.current_run()
        if not self.live.isChecked() or self.denoise.isChecked() or previous is None:
            return False
        if layer_edits(self.viewer, previous):
            self.status.setText("the pseudo mask has edits: press Run to re-run with the new"
                                " settings (you will be asked whether to keep them)")
            return False
        old, new = previous.result.params, self.params()
        others_kept = old == replace(new, **{name: getattr(old, name) for name in LIVE_SETTINGS})
        return old != new and others_kept

    def _live_rerun(self) -> None:
        """Run now, or as soon as the run in progress has finished."""
        if self._worker is not None:
            self._live_pending = True
        elif self._live_rerun_due():
            self.run()

    def cancel(self) -> None:
        """Stop the run at the next image; layers of the unfinished run are never added."""
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("cancelling after the current image…")

    def _load_backbone(self, params: Params, total: int) -> Generator[Event, None, Backbone]:
        """The cached backbone for (model, weights, device), loaded on first use."""
        key = (params.model, params.weights, params.device)
        if key not in self._backbones:
            yield Progress("loading model", 0, total)
            # Keep one model: a re-run with the same backbone reuses it, another replaces it.
            self._backbones = {key: self._backbone_factory(*key)}
        return self._backbones[key]

    def _on_progress(self, event: Event) -> None:
        if isinstance(event, TrainProgress):
            stage = f"denoise epoch {event.epoch}/{event.epochs}"
            done, total = (event.epoch - 1) * event.steps + event.step, event.epochs * event.steps
        else:
            stage, done, total = event.stage, event.index, event.total
        self.status.setText(event.message)
        bar = self._progress
        if bar is None:  # a progress event queued before the run finished
            return
        bar.total = max(total, 1)
        bar.set_description(f"DatUS {stage}")
        bar.update(done - bar.n)  # stages restart the count; update() also notifies napari

    def _on_returned(self, show: Callable, out) -> None:
        """A job's result: ``show`` puts it on screen and returns the status line and the
        inputs the pipeline skipped."""
        if isinstance(out, RunFailed):
            self.status.setText("failed")
            show_error(out.message)
            return
        line, skipped = show(out)
        self.status.setText(line)
        for item in skipped:
            show_warning(f"skipped {item.file}: {item.reason}")

    def _show_layer(self, image: Layer, out: tuple[WidgetRun, dict, str | None]) -> tuple:
        widget_run, arrays, classes_note = out
        widget_run.pristine = arrays["pseudo mask"].copy()
        arrays["pseudo mask"] = with_edits(arrays["pseudo mask"], self._kept_edits, widget_run)
        if classes_note:
            show_info(classes_note)
        add_result_layers(self.viewer, widget_run, arrays, image)
        counts = widget_run.result.segment_counts()
        return (f"done: {widget_run.stack.shape[0]} image(s), {counts['valid']} valid and"
                f" {counts['noise']} noise segments ({counts['valid_fraction']:.0%} valid)",
                widget_run.result.skipped)

    def _show_set(self, layers: list[Layer], out: list[tuple[WidgetRun, dict]]) -> tuple:
        show_set(self.viewer, layers, out, self._kept_set_edits)
        counts = [widget_run.result.segment_counts() for widget_run, _arrays in out]
        return (f"done: {len(out)} image layers as one dataset,"
                f" {sum(c['valid'] for c in counts)} valid and"
                f" {sum(c['noise'] for c in counts)} noise segments",
                [s for widget_run, _arrays in out for s in widget_run.result.skipped])

    def _show_folder(self, out: FolderRun) -> tuple:
        self.folders.show(out)
        counts = out.result.segment_counts()
        saved = f"; saved in {out.out}" if out.out is not None else ""
        return (f"done: {len(out)} image(s) of {out.folder.name}, {counts['valid']} valid"
                f" and {counts['noise']} noise segments{saved}", out.result.skipped)

    def _on_aborted(self) -> None:
        self.status.setText("cancelled: no layers were added")
        show_info("DatUS run cancelled: no layers were added")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._progress = None
        self._worker = None
        self._set_running(False)
        if self._live_pending:
            self._live_pending = False
            self._live_timer.start()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.folders.set_running(running)

    # ---- export and metrics -------------------------------------------------------------

    def current_run(self) -> WidgetRun | None:
        """The run whose layers belong to the chosen image, if it has been run."""
        image = self.image.layer()
        if image is None:
            return None
        name = f"{image.name} pseudo mask"
        return run_of(self.viewer.layers[name]) if name in self.viewer.layers else None

    def export(self, folder: str | Path) -> list[Path]:
        """Export the chosen image's run (see :class:`ExportBox`); returns the files written."""
        return self.exporter.export(folder)

    def _open_metrics(self) -> None:
        self.viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")


def _load_backbone(model: str, weights: str | None, device: str) -> Backbone:
    """:func:`~napari_datus.core.backbone.load_backbone`, imported on the first run: torch
    and timm take seconds to import, which opening the dock should not cost."""
    from napari_datus.core.backbone import load_backbone

    return load_backbone(model, weights, device)
