"""Dock widget "DatUS metrics": scores against ground truth, confusion heatmap, segment QA.

Every figure comes from :mod:`napari_datus.core.metrics` (through
:func:`model.compute_metrics`). The widget reads the run from the result layers'
metadata, so it works for any run in the viewer, whichever widget started it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from functools import partial

import napari
import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_datus._widgets.class_table import ClassTable
from napari_datus._widgets.class_view import is_untouched, matching_classes
from napari_datus._widgets.layers import LAYER_TERMS, paint_clusters, run_of
from napari_datus._widgets.model import (
    SegmentInfo,
    WidgetRun,
    ground_truth,
    masks_digest,
    reassign,
    score,
    segment_at,
    segment_crop,
)
from napari_datus._widgets.qt import (
    ConfusionCanvas,
    LayerCombo,
    exit_cleanly,
    fixed_top,
    on_destroyed,
    scrolled,
    set_image,
)
from napari_datus._widgets.scores_table import ScoresTable
from napari_datus._widgets.suim_names import full_name, legend
from napari_datus.core.choices import GT_FORMATS
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import to_file_labels
from napari_datus.runs.save import save_classes

# The terms of the summary and the table, for their tooltips (docs/napari.md says more).
METRIC_TERMS = (
    "Hungarian matching: each cluster is matched to at most one class so that the most"
    " pixels agree; unmatched clusters count as wrong.\n"
    "mIoU: mean over classes of intersection over union of matched clusters and classes.\n"
    "pixel accuracy: share of labelled pixels whose matched class is right.\n"
    "coverage: share of pixels the pseudo mask labels (noise segments stay unlabelled).\n"
    "strict: the same figures with unlabelled pixels counted as wrong.")
BLOCK_TITLES = {"initial": "initial pseudo masks", "denoised": "de-noised masks"}
OUT_OF_DATE = ("out of date: the pseudo mask changed since these were computed (painting, a"
               " re-run with kept edits); press Compute metrics")


class MetricsWidget(QWidget):
    """Metrics of a DatUS run against a ground-truth layer, and per-segment QA."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        exit_cleanly()
        self.viewer = napari_viewer
        self._selected: tuple[WidgetRun, SegmentInfo] | None = None
        self._watched: Layer | None = None
        self._build()
        self._on_run_changed()  # opened after a run: show it at once
        on_destroyed(self, partial(self._watch, None))
        callbacks = self.viewer.mouse_drag_callbacks
        callbacks.append(self._on_click)
        on_destroyed(self, partial(_remove, callbacks, self._on_click))

    # ---- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        self.run_layer = LayerCombo(self.viewer, _is_pseudo_mask)
        self.run_layer.setToolTip(LAYER_TERMS)
        self.run_layer.currentTextChanged.connect(lambda _name: self._on_run_changed())
        # Never a photo by default (a reopened run holds only photos and results): the
        # user picks an RGB image of SUIM colours by hand.
        self.gt_layer = LayerCombo(self.viewer, _is_ground_truth, prefer=_looks_like_gt,
                                   fallback=False)
        self.gt_format = QComboBox()
        self.gt_format.addItems(GT_FORMATS)
        self.gt_layer.currentTextChanged.connect(lambda _name: self._guess_format())
        self._guess_format()
        self.compute_button = QPushButton("Compute metrics")
        self.compute_button.clicked.connect(self.compute)

        form = QFormLayout()
        form.addRow("pseudo mask", self.run_layer)
        form.addRow("ground truth", self.gt_layer)
        form.addRow("format", self.gt_format)

        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setToolTip(METRIC_TERMS)
        self.table = ScoresTable(METRIC_TERMS)
        self.heatmap = ConfusionCanvas()
        self.legend = QLabel("")  # the SUIM codes spelled out
        self.legend.setWordWrap(True)

        # Choosing and computing stay on screen; the results below scroll.
        content = QWidget()
        layout = QVBoxLayout(content)
        top = fixed_top(self, scrolled(content))
        top.addLayout(form)
        top.addWidget(self.compute_button)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addWidget(self.heatmap)
        layout.addWidget(self.legend)
        self.classes = ClassTable(self.current_run, self._classes_changed)
        layout.addWidget(self.classes)
        layout.addWidget(self._qa_box())
        layout.addStretch()

    def _qa_box(self) -> QGroupBox:
        box = QGroupBox("Segment QA")
        self.segment_info = QLabel("Select a DatUS result layer and click a pixel"
                                   " (pan/zoom mode).")
        self.segment_info.setWordWrap(True)
        self.crop = QLabel()
        self.new_class = QComboBox()
        self.new_class.setObjectName("reassign_class")
        self.new_class.setToolTip("The class the segment moves to; no other cluster changes")
        self.reassign_button = QPushButton("Reassign")
        self.reassign_button.setEnabled(False)
        self.reassign_button.clicked.connect(self.reassign)
        row = QHBoxLayout()
        row.addWidget(QLabel("class"))
        row.addWidget(self.new_class, 1)
        row.addWidget(self.reassign_button)
        layout = QVBoxLayout(box)
        layout.addWidget(self.segment_info)
        layout.addWidget(self.crop)
        layout.addLayout(row)
        return box

    def _guess_format(self) -> None:
        """SUIM layers default to the paper's 6-class protocol, others to index."""
        layer = self.gt_layer.layer()
        suim = layer is not None and (layer.metadata.get("gt_format") == "suim8"
                                      or (isinstance(layer, Image) and layer.rgb))
        self.gt_format.setCurrentText("suim6" if suim else "index")

    def _on_run_changed(self, _event=None) -> None:
        """Another pseudo-mask layer was chosen, or the chosen one got a new run's data."""
        self._watch(self.run_layer.layer())
        run = self.current_run()
        if self._selected is not None and self._selected[0] is not run:
            self._selected = None
            self.reassign_button.setEnabled(False)
            self.segment_info.setText("The run changed: click a segment again.")
            self.crop.clear()
        self._show(run)
        self.classes.refresh()

    def _watch(self, layer: Layer | None) -> None:
        """Follow ``layer``'s data events (a re-run updates its layers in place)."""
        if layer is self._watched:
            return
        if self._watched is not None:
            self._watched.events.data.disconnect(self._on_run_changed)
            self._watched.events.labels_update.disconnect(self._on_painted)
            self._watched.events.name.disconnect(self._on_renamed)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._on_run_changed)
            layer.events.labels_update.connect(self._on_painted)
            layer.events.name.connect(self._on_renamed)

    def _on_painted(self, _event=None) -> None:
        """The user painted the chosen pseudo mask (napari says so after writing the
        pixels): the metrics may be out of date. Once shown so, a stroke checks no more."""
        run = self.current_run()
        if run is not None and run.metrics and self.table.isEnabled():
            self._show(run)

    def _on_renamed(self, _event=None) -> None:
        """A folder run's step renames the layers of the image shown before: follow them."""
        if self._watched is not None:
            self.run_layer.refresh(select=self._watched.name)

    # ---- metrics ------------------------------------------------------------------------

    def current_run(self) -> WidgetRun | None:
        return run_of(self.run_layer.layer())

    def compute(self) -> dict[str, dict] | None:
        """Score the chosen run against the chosen ground truth and show it.

        Returns the metrics blocks (``initial``, ``denoised``), or None after a notification.
        """
        run, layer = self.current_run(), self.gt_layer.layer()
        try:
            if run is None:
                raise DatusError("no DatUS result to score: run the DatUS pipeline first")
            if layer is None:
                raise DatusError("choose a ground-truth layer (Labels, or an RGB image of"
                                 " SUIM colours)")
            fmt = self.gt_format.currentText()
            gt, names = ground_truth(layer.data, isinstance(layer, Labels),
                                     bool(getattr(layer, "rgb", False)), fmt,
                                     layer.metadata.get("gt_format"))
            untouched = is_untouched(run)
            metrics = score(run, gt, fmt, names, self._edited_masks(run))
        except DatusError as exc:
            show_error(str(exc))
            return None
        if untouched:  # the matching pre-fills the table; the user's own table stays
            run.class_map.set_to(matching_classes(run))
        self._show(run)
        self._classes_changed(run)
        self.classes.refresh()
        return metrics

    def _show(self, run: WidgetRun | None) -> None:
        """Fill summary, per-class table and heatmap from ``run.metrics`` (or clear them)."""
        has_metrics = run is not None and bool(run.metrics)
        # Without metrics the empty table and heatmap would push the class table down.
        self.table.setVisible(has_metrics)
        self.heatmap.setVisible(has_metrics)
        self.legend.setText(legend(run.class_names) if has_metrics else "")
        if not has_metrics:
            self.summary.setText("" if run is None else "No metrics yet: choose ground truth"
                                 " and press Compute metrics (the class table below works"
                                 " without).")
            self.table.setRowCount(0)
            self.heatmap.clear()
            return
        stale = self._out_of_date(run)
        self.summary.setText("\n".join(([OUT_OF_DATE] if stale else []) + summary_lines(run)))
        # Greyed, not hidden: the user still sees what the last Compute metrics gave.
        self.table.setEnabled(not stale)
        self.heatmap.setEnabled(not stale)
        initial = run.metrics["initial"]
        self.table.show_rows([
            (name, _pct(initial["per_class_iou"][c]), _pct(initial["per_class_f1"][c]),
             _pct(initial["strict"]["per_class_iou"][c]),
             ", ".join(k for k, m in initial["mapping"].items() if m == c) or "-")
            for c, name in enumerate(run.class_names)])
        self.heatmap.show_confusion(np.asarray(initial["confusion"]), initial["mapping"],
                                    run.class_names)

    # ---- segment QA ---------------------------------------------------------------------

    def _on_click(self, viewer: napari.Viewer, event) -> Generator[None, None, None]:
        """Inspect the segment under a click (not a pan) on an active DatUS result layer."""
        layer = viewer.layers.selection.active
        run = run_of(layer)
        # A closed dock widget lingers, hidden, until deleted: it must not react then.
        if run is None or self.isHidden() or getattr(layer, "mode", "") != "pan_zoom":
            return
        yield
        if event.type == "mouse_move":  # a pan: napari keeps calling until release
            while event.type == "mouse_move":
                yield
            return
        self.inspect(run, layer.world_to_data(event.position))

    def inspect(self, run: WidgetRun, position) -> SegmentInfo | None:
        """Show the segment under a data position ``(row, col)`` or ``(index, row, col)``."""
        coords = [int(np.round(x)) for x in position]
        index, row, col = coords if run.stack.is_stack else (0, *coords)
        try:
            info = segment_at(run, index, row, col)
            crop = segment_crop(run, info)
        except DatusError as exc:
            self.segment_info.setText(str(exc))
            return None
        self._selected = (run, info)
        self.segment_info.setText(self._describe(run, info))
        set_image(self.crop, crop)
        self._fill_classes(run, info)
        self.reassign_button.setEnabled(info.valid)
        return info

    def _fill_classes(self, run: WidgetRun, info: SegmentInfo) -> None:
        """The reassign choices: the run's classes, the segment's own selected."""
        self.new_class.clear()
        for c in run.class_map.classes:
            self.new_class.addItem(c.name)
            self.new_class.setItemData(self.new_class.count() - 1, full_name(c.name),
                                       Qt.ItemDataRole.ToolTipRole)
        current = None if info.cluster is None else run.class_map.class_of(info.cluster)
        if current is not None:
            self.new_class.setCurrentIndex(current)

    def reassign(self) -> None:
        """Move the inspected segment to the chosen class (the class's cluster, or a new
        cluster made for it); mask and metrics follow, no other cluster changes."""
        if self._selected is None or self.new_class.currentIndex() < 0:
            return
        run, info = self._selected
        try:
            cluster = run.class_map.cluster_for(self.new_class.currentIndex())
            pixels = reassign(run, info.index, info.segment, cluster)
        except DatusError as exc:
            show_error(str(exc))
            return
        name = run.layer_name("pseudo mask")
        if name in self.viewer.layers and run_of(self.viewer.layers[name]) is run:
            layer = self.viewer.layers[name]
            # Only the segment's pixels, through napari's edit history: painting elsewhere
            # stays, and Ctrl+Z undoes the reassignment.
            where = np.nonzero(pixels)
            if run.stack.is_stack:
                where = (np.full(len(where[0]), info.index), *where)
            layer.data_setitem(where, cluster + 1)
        if run.gt is not None:
            score(run, run.gt, run.gt_format, run.class_names, self._edited_masks(run))
            if run is self.current_run():
                self._show(run)
        self._classes_changed(run)
        self.classes.refresh()
        self._selected = (run, replace(info, cluster=cluster))
        self.segment_info.setText(self._describe(run, self._selected[1]))

    def _out_of_date(self, run: WidgetRun) -> bool:
        """True when the run's pseudo-mask layer no longer holds the masks its metrics were
        computed from."""
        masks = self._edited_masks(run)
        return masks is not None and masks_digest(masks) != run.scored

    def _edited_masks(self, run: WidgetRun) -> list[np.ndarray] | None:
        """The run's pseudo masks as the layer holds them (edits included), file convention."""
        name = run.layer_name("pseudo mask")
        if name not in self.viewer.layers or run_of(self.viewer.layers[name]) is not run:
            return None
        data = np.asarray(self.viewer.layers[name].data)
        stack = data if run.stack.is_stack else data[None]
        return [to_file_labels(labels) if run.position(i) is not None else None
                for i, labels in enumerate(stack)]

    @staticmethod
    def _describe(run: WidgetRun, info: SegmentInfo) -> str:
        stem = run.stack.stems[info.index]
        kind = f"valid segment {info.segment}" if info.valid else "noise"
        text = f"{stem}: {kind}, {info.patches} patches (component {info.component})"
        if info.cluster is not None:
            class_id = run.class_map.class_of(info.cluster)
            name = "unassigned" if class_id is None else run.class_map.classes[class_id].name
            text += f", cluster {info.cluster} -> {name}"
        return text

    def _classes_changed(self, run: WidgetRun) -> None:
        """Repaint the run's layers by class, and save the map with a saved run."""
        paint_clusters(self.viewer, run)
        if run.out is not None:
            try:
                save_classes(run.out, run.class_map)
            except DatusError as exc:
                show_error(f"the classes were not saved in {run.out}: {exc}")


def summary_lines(run: WidgetRun) -> list[str]:
    """The headline figures of every metrics block, as shown in the widget."""
    k = run.result.params.clusters
    lines = [f"K = {k} clusters, {len(run.class_names)} classes ({run.gt_format}),"
             " Hungarian matching"]
    for key, block in run.metrics.items():
        strict = block["strict"]
        lines += [
            f"{BLOCK_TITLES[key]}: mIoU {_pct(block['miou'])}, pixel accuracy"
            f" {_pct(block['pixel_accuracy'])}, mean F1 {_pct(block['mean_f1'])}",
            f"  strict (unlabelled counted wrong): mIoU {_pct(strict['miou'])}, pixel accuracy"
            f" {_pct(strict['pixel_accuracy'])}, mean F1 {_pct(strict['mean_f1'])};"
            f" coverage {_pct(block['coverage'])}",
        ]
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _is_pseudo_mask(layer: Layer) -> bool:
    run = run_of(layer)
    return run is not None and layer.name == run.layer_name("pseudo mask")


def _is_ground_truth(layer: Layer) -> bool:
    """Labels that are not DatUS results, or Image layers (RGB SUIM colours or index)."""
    return (isinstance(layer, Labels) and run_of(layer) is None) or isinstance(layer, Image)


def _looks_like_gt(layer: Layer) -> bool:
    """Labels, or a layer a reader marked as ground truth (``gt_format``)."""
    return isinstance(layer, Labels) or "gt_format" in layer.metadata


def _remove(callbacks: list, callback) -> None:
    if callback in callbacks:
        callbacks.remove(callback)
