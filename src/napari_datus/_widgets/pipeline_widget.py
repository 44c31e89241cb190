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

import napari
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_datus._widgets.edits import Edit, ask_keep_edits, layer_edits, with_edits
from napari_datus._widgets.export_box import ExportBox
from napari_datus._widgets.folder_controller import FolderController
from napari_datus._widgets.folder_panel import FolderPanel
from napari_datus._widgets.folder_run import FolderRun
from napari_datus._widgets.jobs import RunFailed, reported
from napari_datus._widgets.layers import add_result_layers, run_of, stack_of
from napari_datus._widgets.model import (
    ImageStack,
    WidgetRun,
    carry_metrics,
    denoise,
    layer_arrays,
)
from napari_datus._widgets.qt import LayerCombo, scrolled_layout
from napari_datus.cache import FeatureCache
from napari_datus.core.backbone import Backbone, load_backbone
from napari_datus.core.choices import default_model, default_weights
from napari_datus.core.denoise import TrainProgress
from napari_datus.core.denoise_config import DenoiseConfig
from napari_datus.core.errors import DatusError
from napari_datus.outputs import check_writable
from napari_datus.pipeline import Params, Progress, array_sources, run

BackboneKey = tuple[str, str | None, str]
Event = Progress | TrainProgress
DEVICES = ("auto", "cpu", "cuda")
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
        self.viewer = napari_viewer
        # Tests swap in a tiny random ViT here; it is called as factory(model, weights, device).
        self._backbone_factory: Callable[[str, str | None, str], Backbone] = load_backbone
        self._backbones: dict[BackboneKey, Backbone] = {}
        # Features, partitions and embeddings on disk: a re-run with another K or tau skips
        # the ViT and Louvain ($DATUS_CACHE_DIR; disabled by itself if not writable).
        self._cache = FeatureCache()
        self._worker = None
        self._progress: progress | None = None
        self._live_pending = False
        # Edits of the replaced run the user chose to keep: stack index -> Edit.
        self._kept_edits: dict[int, Edit] = {}
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_rerun)
        self._build()

    # ---- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        defaults = Params()
        self.image = LayerCombo(self.viewer, lambda layer: isinstance(layer, Image))
        self.model = QLineEdit(default_model())
        self.model.setToolTip("timm model name; the default DINOv2 ViT-S/14 works offline,"
                              " other models need their hub weights or a weights file")
        self.weights = QLineEdit(default_weights() or "")
        self.weights.setPlaceholderText("default (offline DINOv2 for the default model)")
        self.weights.setToolTip("a local .pth/.pt/.safetensors state dict for the model's"
                                " architecture, or 'hub' for timm's pretrained weights;"
                                " empty: the embedded DINOv2 ViT-S/14 (default model) or"
                                " the hub (other models)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_weights)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights)
        weights_row.addWidget(browse)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.resolution = _spin(8, 4096, defaults.resolution,
                                "side the image is resized to; a multiple of the patch size")
        self.clusters = _spin(1, 254, defaults.clusters, "K, number of k-means clusters")
        self.tau = _spin(0, 100_000, defaults.tau, "segments of <= tau patches are noise")
        self.seed = _spin(0, 2**31 - 1, defaults.seed, "seed of Louvain and k-means")
        self.denoise = QCheckBox("de-noise with DeepLabV3")
        self.epochs = _spin(1, 1000, DenoiseConfig().epochs, "de-noising training epochs")
        self.live = QCheckBox("re-run when K or tau changes")
        self.live.setChecked(True)
        self.live.setToolTip("after a run, a new K or tau re-runs at once from the feature"
                             " cache (k-means only, no ViT); off while de-noising is on")
        for box in (self.clusters, self.tau):
            box.valueChanged.connect(self._schedule_live_rerun)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("model", self.model)
        form.addRow("weights", weights_row)
        form.addRow("device", self.device)
        form.addRow("resolution", self.resolution)
        form.addRow("K", self.clusters)
        form.addRow("tau", self.tau)
        form.addRow("seed", self.seed)
        form.addRow(self.live)
        form.addRow(self.denoise)
        form.addRow("epochs", self.epochs)
        self.folder_panel = FolderPanel()
        self.folders = FolderController(self.viewer, self.folder_panel)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = scrolled_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.folder_panel)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.exporter = ExportBox(self.viewer, self.current_run, self.folders)
        self.export_index, self.export_colour = self.exporter.index, self.exporter.colour
        layout.addWidget(self.exporter)
        open_metrics = QPushButton("Metrics and segment QA…")
        open_metrics.clicked.connect(self._open_metrics)
        layout.addWidget(open_metrics)
        layout.addStretch()

    # ---- settings -----------------------------------------------------------------------

    def params(self) -> Params:
        """The pipeline settings shown in the widget (the rest keep Params' defaults)."""
        return Params(
            model=self.model.text().strip() or default_model(),
            weights=self.weights.text().strip() or None,
            resolution=self.resolution.value(),
            clusters=self.clusters.value(),
            tau=self.tau.value(),
            seed=self.seed.value(),
            device=self.device.currentText(),
        )

    def denoise_config(self) -> DenoiseConfig | None:
        """De-noising settings, or None when it is off."""
        if not self.denoise.isChecked():
            return None
        return DenoiseConfig(epochs=self.epochs.value(), seed=self.seed.value(),
                             device=self.device.currentText())

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backbone weights", "",
                                              "State dicts (*.pth *.pt *.safetensors)")
        if path:
            self.weights.setText(path)

    # ---- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Start the pipeline on the folder, or else the chosen image layer, in a worker."""
        if self._worker is not None:
            return
        folder = self.folder_panel.folder_path()
        layer = self.image.layer()
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
                                              self._load_backbone, self._cache, kept))
            self._start(work, self._on_folder_returned, len(files))
            return
        # The run this one replaces, read here because layers belong to the main thread.
        scored = self.current_run()
        self._kept_edits = layer_edits(self.viewer, scored) if keep else {}
        work = partial(self._work, layer.name, stack, params, config, scored)
        self._start(work, partial(self._on_returned, layer), stack.shape[0])

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
        pixels = self.folders.keep_edits() if self.folder_panel.folder_path() else sum(
            edit.pixels for edit in layer_edits(self.viewer, self.current_run()).values())
        if not pixels:
            return False
        return self._ask_about_edits(pixels)

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

    def _work(self, name: str, stack: ImageStack, params: Params,
              config: DenoiseConfig | None, scored: WidgetRun | None = None,
              ) -> Generator[Event, None, tuple[WidgetRun, dict] | RunFailed]:
        """Worker thread: every stage, the metrics against the ground truth ``scored`` (the
        run being replaced) was scored with, then the layer arrays (no Qt here).

        Returns ``(WidgetRun, arrays)``, or RunFailed for a user-fixable problem (a raised
        error, or even a returned exception object, would reach napari as a traceback).
        """
        try:
            backbone = yield from self._load_backbone(params, stack.shape[0])
            result = yield from run(array_sources(stack.images, stack.stems), stack.shape[0],
                                    params, backbone, self._cache)
            widget_run = WidgetRun(name, stack, result, backbone.patch_size,
                                   backbone.input_size, weights=backbone.provenance())
            if config is not None:
                widget_run.denoised = yield from denoise(widget_run, config)
            if scored is not None:
                carry_metrics(widget_run, scored)
            yield Progress("building layers", 0, 1)
            return widget_run, layer_arrays(widget_run)
        except DatusError as exc:
            return RunFailed(str(exc))

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

    def _on_returned(self, image: Layer, out: tuple[WidgetRun, dict] | RunFailed) -> None:
        if isinstance(out, RunFailed):
            self.status.setText("failed")
            show_error(out.message)
            return
        widget_run, arrays = out
        widget_run.pristine = arrays["pseudo mask"].copy()
        arrays["pseudo mask"] = with_edits(arrays["pseudo mask"], self._kept_edits,
                                            widget_run.result.params.clusters)
        add_result_layers(self.viewer, widget_run, arrays, image)
        counts = widget_run.result.segment_counts()
        self.status.setText(f"done: {widget_run.stack.shape[0]} image(s), {counts['valid']} valid"
                            f" and {counts['noise']} noise segments"
                            f" ({counts['valid_fraction']:.0%} valid)")
        for skipped in widget_run.result.skipped:
            show_warning(f"skipped {skipped.file}: {skipped.reason}")

    def _on_folder_returned(self, out: FolderRun | RunFailed) -> None:
        if isinstance(out, RunFailed):
            self.status.setText("failed")
            show_error(out.message)
            return
        self.folders.show(out)
        counts = out.result.segment_counts()
        saved = f"; saved in {out.out}" if out.out is not None else ""
        self.status.setText(f"done: {len(out)} image(s) of {out.folder.name}, {counts['valid']}"
                            f" valid and {counts['noise']} noise segments{saved}")
        for skipped in out.result.skipped:
            show_warning(f"skipped {skipped.file}: {skipped.reason}")

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


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tip)
    return box
