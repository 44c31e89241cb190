"""A folder run has one class table, seen by every image of it, and the docks follow its
images as the user steps; stepping waits while a run is going."""

from __future__ import annotations

import json
import threading
from functools import partial

import pytest

from napari_datus._widgets import folder_controller
from napari_datus._widgets.layers import run_of
from napari_datus.cache import file_sources
from napari_datus.io.masks import SUIM6_NAMES
from tests.conftest import SUIM_MASKS

from .conftest import RUN_TIMEOUT_MS, run_and_wait
from .test_folder_run import mixed_folder  # noqa: F401 (fixture)


def run_folder(qtbot, pipeline, folder, out):
    pipeline.folder_panel.folder.setText(str(folder))
    pipeline.folder_panel.out.setText(str(out))
    run_and_wait(qtbot, pipeline)
    return pipeline.folders.run


@pytest.mark.shared
def test_fill_from_ground_truth_is_the_table_of_the_whole_folder(
        qtbot, viewer, pipeline, metrics, mixed_folder, tmp_path):  # noqa: F811
    folder_run = run_folder(qtbot, pipeline, mixed_folder, tmp_path / "run")
    stem = folder_run.stem(0)
    viewer.open(str(SUIM_MASKS / f"{stem}.png"), plugin="napari-datus")
    metrics.run_layer.setCurrentText(f"{stem} pseudo mask")
    metrics.gt_layer.setCurrentText(viewer.layers[-1].name)
    metrics.gt_format.setCurrentText("suim6")
    metrics.compute()
    metrics.classes.prefill.click()
    assert [c.name for c in folder_run.class_map.classes] == SUIM6_NAMES

    pipeline.folder_panel.next.click()
    second = run_of(viewer.layers[f"{folder_run.stem(1)} pseudo mask"])
    assert [c.name for c in second.class_map.classes] == SUIM6_NAMES
    assert metrics.classes.table.rowCount() == len(SUIM6_NAMES)
    export = tmp_path / "export"
    assert pipeline.export(export)
    saved = json.loads((export / "classes.json").read_text())
    assert [c["name"] for c in saved["classes"]] == SUIM6_NAMES


@pytest.mark.shared
def test_the_metrics_dock_follows_the_image_stepped_to(
        qtbot, viewer, pipeline, metrics, mixed_folder, tmp_path):  # noqa: F811
    folder_run = run_folder(qtbot, pipeline, mixed_folder, tmp_path / "run")
    pipeline.folder_panel.next.click()
    stem = folder_run.stem(1)
    assert metrics.run_layer.currentText() == f"{stem} pseudo mask"
    assert metrics.current_run() is run_of(viewer.layers[f"{stem} pseudo mask"])
    assert metrics.classes.table.rowCount() == 3
    pipeline.folder_panel.previous.click()
    assert metrics.run_layer.currentText() == f"{folder_run.stem(0)} pseudo mask"
    assert metrics.classes.table.rowCount() == 3


@pytest.mark.shared
def test_no_stepping_while_a_run_goes(qtbot, viewer, pipeline, tmp_path, monkeypatch,
                                      mixed_folder):  # noqa: F811
    out = tmp_path / "run"
    folder_run = run_folder(qtbot, pipeline, mixed_folder, out)
    gate = threading.Event()

    def gated(files):
        first, *rest = file_sources(files)

        def wait_then(load):
            gate.wait(timeout=30)
            return load()
        return [first] + [(stem, partial(wait_then, load)) for stem, load in rest]

    monkeypatch.setattr(folder_controller, "file_sources", gated)
    panel = pipeline.folder_panel
    pipeline.run_button.click()
    try:
        assert pipeline._worker is not None
        assert not panel.next.isEnabled() and not panel.previous.isEnabled()
        pipeline.folders.step(1)  # a step now would write into the folder being replaced
        assert pipeline.folders.run is folder_run and folder_run.index == 0
    finally:
        gate.set()
    qtbot.waitUntil(lambda: pipeline._worker is None, timeout=RUN_TIMEOUT_MS)
    assert pipeline.folders.run is not folder_run
    assert panel.next.isEnabled() and not panel.previous.isEnabled()
