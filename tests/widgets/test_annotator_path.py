"""The annotator's path through the docks, as a user clicks it: run the sample, Fill from
ground truth, rename a class, change K, paint, change K again keeping the edits, export."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QPushButton

from napari_datus._widgets.export import export_run
from napari_datus._widgets.layers import run_of

from .conftest import errors, run_and_wait
from .test_class_table import edit_cell
from .test_classes_across_reruns import MASK, live_k


def answer(text: str) -> None:
    """Click the button ``text`` of the next question box, once it is open."""
    def click() -> None:
        box = QApplication.activeModalWidget()
        if box is None:
            QTimer.singleShot(10, click)
            return
        next(b for b in box.buttons() if b.text() == text).click()
    QTimer.singleShot(0, click)


def button(widget, text: str) -> QPushButton:
    return next(b for b in widget.findChildren(QPushButton) if b.text() == text)


def test_run_fill_rename_k_paint_keep_export(qtbot, viewer, sample, pipeline, metrics,
                                             tmp_path, notifications):
    run_and_wait(qtbot, pipeline)
    button(metrics, "Compute metrics").click()
    button(metrics, "Fill from ground truth").click()
    run = run_of(viewer.layers[MASK])
    fish = next(c for c in range(len(run.class_map.classes)) if run.class_map.clusters_of(c))
    edit_cell(metrics, fish, 0, "fish")
    assert metrics.classes.table.item(fish, 0).text() == "fish"

    run = live_k(qtbot, viewer, pipeline, 4)
    assert run.class_map.clusters_of(fish)
    layer = viewer.layers[MASK]
    before = np.array(layer.data)
    label = run.class_map.clusters_of(fish)[0] + 1
    row, col = np.argwhere(before[3, 40:-40, 40:-40] != label)[0] + 40
    layer.brush_size = 40
    layer.paint((3, row, col), label)  # a brush stroke in "fish" over something else
    painted = np.asarray(layer.data) != before
    assert painted.any()

    pipeline.clusters.setValue(5)  # no live re-run over edits: the user presses Run
    answer("Keep edits")
    run_and_wait(qtbot, pipeline)
    run = run_of(layer)
    assert run.result.params.clusters == 5
    assert "out of date" in metrics.summary.text()

    out = tmp_path / "export"
    export_run(viewer, run, out)  # what the dock's Export writes
    classes = json.loads((out / "classes.json").read_text())
    assert classes["classes"][fish]["name"] == "fish"
    for i, stem in enumerate(run.stack.stems):
        ids = np.asarray(Image.open(out / "class_masks" / f"{stem}.png"))
        assert (ids[painted[i]] == fish).all()
    assert errors(notifications) == []
