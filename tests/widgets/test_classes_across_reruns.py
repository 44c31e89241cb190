"""A class is an id that follows its pixels: renamed classes and kept edits survive a K or
tau change, and the dock's metrics say when the mask changed under them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from napari_datus._widgets.export import export_run
from napari_datus._widgets.layers import run_of

from .conftest import RUN_TIMEOUT_MS, errors, run_and_wait
from .test_class_table import edit_cell, layer_class_names
from .test_metrics_widget import click

MASK = "suim pseudo mask"


def live_k(qtbot, viewer, pipeline, k: int):
    """Turn the K spin box to ``k`` and wait for the live re-run; returns the new run."""
    pipeline.clusters.setValue(k)
    qtbot.waitUntil(lambda: pipeline._worker is None and not pipeline._live_timer.isActive()
                    and run_of(viewer.layers[MASK]).result.params.clusters == k,
                    timeout=RUN_TIMEOUT_MS)
    return run_of(viewer.layers[MASK])


def names_at(layer, where: np.ndarray) -> set[str]:
    """The class names the layer shows at the pixels ``where`` ((N, H, W) bool)."""
    names = layer_class_names(layer)
    return {"unlabelled" if v == 0 else names[int(v)] for v in np.unique(layer.data[where])}


def test_a_renamed_class_keeps_its_clusters_across_k_changes(qtbot, viewer, sample, pipeline,
                                                             metrics, tmp_path, notifications):
    run_and_wait(qtbot, pipeline)
    metrics.compute()
    metrics.classes.prefill.click()
    run = run_of(viewer.layers[MASK])
    fish = next(c for c in range(len(run.class_map.classes)) if run.class_map.clusters_of(c))
    edit_cell(metrics, fish, 0, "fish")
    before = list(run.class_map.assignment)

    more = live_k(qtbot, viewer, pipeline, 4)
    assert more.class_map.classes[fish].name == "fish"
    assert more.class_map.clusters_of(fish), "the renamed class lost its clusters"
    export_run(viewer, more, tmp_path / "export")
    ids = [np.asarray(Image.open(tmp_path / "export" / "class_masks" / f"{stem}.png"))
           for stem in more.stack.stems]
    assert any((mask == fish).any() for mask in ids)

    back = live_k(qtbot, viewer, pipeline, 3)
    assert back.class_map.assignment == before  # K back to 3: the table as it was
    assert [c.name for c in back.class_map.classes][fish] == "fish"
    assert errors(notifications) == []


def test_kept_edits_keep_their_class_when_k_changes(qtbot, viewer, sample, pipeline, metrics,
                                                    notifications):
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers[MASK])
    metrics._on_run_changed()
    robot = metrics.classes.add_class("robot")
    edit_cell(metrics, 1, 0, "kelp")
    layer = viewer.layers[MASK]
    segments = viewer.layers["suim segments"]
    index, row, col = 0, *np.argwhere(segments.data[0] > 0)[0]
    segment = np.zeros(layer.data.shape, dtype=bool)
    segment[index] = segments.data[index] == segments.data[index, row, col]
    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    metrics.new_class.setCurrentIndex(robot)
    metrics.reassign_button.click()  # a new cluster 3 (label 4) for "robot"
    painted = np.zeros(layer.data.shape, dtype=bool)
    painted[2, :30, :30] = True
    layer.data[painted] = run.class_map.clusters_of(1)[0] + 1  # painted "kelp"
    assert names_at(layer, segment) == {"robot"} and names_at(layer, painted) == {"kelp"}

    pipeline._ask_about_edits = lambda pixels: True  # Keep edits
    pipeline.live.setChecked(False)
    pipeline.clusters.setValue(4)
    run_and_wait(qtbot, pipeline)
    again = run_of(layer)
    assert again is not run and again.result.params.clusters == 4
    assert names_at(layer, segment) == {"robot"}
    assert names_at(layer, painted) == {"kelp"}
    assert errors(notifications) == []


def test_metrics_say_when_the_mask_changed_since(qtbot, viewer, sample, pipeline, metrics):
    run_and_wait(qtbot, pipeline)
    metrics.compute()
    assert "out of date" not in metrics.summary.text() and metrics.table.isEnabled()
    layer = viewer.layers[MASK]
    layer.paint((0, 10, 10), 2)  # a brush stroke, as the user paints
    assert "out of date" in metrics.summary.text()
    assert not metrics.table.isEnabled()
    metrics.compute()
    assert "out of date" not in metrics.summary.text() and metrics.table.isEnabled()

    layer.paint((1, 40, 40), 1)
    pipeline._ask_about_edits = lambda pixels: True  # a re-run that keeps the painting
    pipeline.live.setChecked(False)
    pipeline.clusters.setValue(4)
    run_and_wait(qtbot, pipeline)
    assert run_of(layer).metrics, "the re-run is scored against the same ground truth"
    assert "out of date" in metrics.summary.text()
