"""Clusters become named classes in napari, with or without ground truth: the class table,
reassigning by class, the class map saved and reopened, and the annotation export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_datus._widgets.layers import run_of
from napari_datus.class_map import ClassMap
from napari_datus.io.masks import SUIM6_COLOURS, SUIM6_NAMES

from .conftest import errors, run_and_wait
from .test_folder_run import mixed_folder  # noqa: F401 (fixture)
from .test_metrics_widget import click


def edit_cell(metrics, row: int, column: int, text: str) -> None:
    """Type into a cell of the class table as a user does."""
    metrics.classes.table.item(row, column).setText(text)


def layer_class_names(layer) -> dict[int, str]:
    return dict(zip(layer.features["index"], layer.features["class"]))


def test_without_ground_truth_clusters_are_named_and_merged(qtbot, viewer, sample, pipeline,
                                                            metrics, notifications):
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    metrics._on_run_changed()
    assert metrics.classes.table.rowCount() == 3  # one class per cluster to start with
    edit_cell(metrics, 0, 0, "fish")
    edit_cell(metrics, 0, 2, "0, 2")  # cluster 2 joins cluster 0 as "fish"
    layer = viewer.layers["suim pseudo mask"]
    names = layer_class_names(layer)
    assert names[1] == names[3] == "fish" and names[2] == "cluster 1"
    colours = layer.colormap.map(np.array([1, 3]))
    np.testing.assert_allclose(colours[0], colours[1])
    assert run.class_map.assignment == [0, 1, 0]
    assert metrics.classes.table.item(2, 2).text() == ""  # class "cluster 2" lost its cluster
    assert errors(notifications) == []


def test_reassign_to_a_new_class_without_ground_truth(qtbot, viewer, sample, pipeline, metrics,
                                                      notifications):
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    metrics._on_run_changed()
    wreck = metrics.classes.add_class("wreck")
    segments = viewer.layers["suim segments"]
    index, row, col = 0, *np.argwhere(segments.data[0] > 0)[0]
    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    assert metrics.new_class.count() == 4
    metrics.new_class.setCurrentIndex(wreck)
    metrics.reassign_button.click()
    layer = viewer.layers["suim pseudo mask"]
    segment = segments.data[index] == segments.data[index, row, col]
    assert (layer.data[index][segment] == 4).all()  # a new cluster 3 (label 4) for "wreck"
    assert run.class_map.assignment == [0, 1, 2, wreck]
    assert layer_class_names(layer)[4] == "wreck"
    assert "-> wreck" in metrics.segment_info.text()
    layer.undo()
    assert not (layer.data[index][segment] == 4).any()
    assert errors(notifications) == []


def test_ground_truth_prefills_and_the_user_overrides(qtbot, viewer, sample, pipeline, metrics):
    run_and_wait(qtbot, pipeline)
    shown = metrics.compute()
    run = run_of(viewer.layers["suim pseudo mask"])
    mapping = shown["initial"]["mapping"]
    assert [c.name for c in run.class_map.classes] == SUIM6_NAMES
    assert run.class_map.assignment == [mapping[str(c)] for c in range(3)]
    edit_cell(metrics, 0, 0, "diver")
    metrics.compute()  # new metrics never overwrite the user's table
    assert run.class_map.classes[0].name == "diver"
    metrics.classes.fill_from_matching()
    assert run.class_map.classes[0].name == SUIM6_NAMES[0]


def test_the_class_table_survives_a_rerun(qtbot, viewer, sample, pipeline, metrics,
                                          notifications):
    run_and_wait(qtbot, pipeline)
    metrics._on_run_changed()
    edit_cell(metrics, 1, 0, "coral")
    pipeline.live.setChecked(False)
    pipeline.tau.setValue(pipeline.tau.value() + 1)
    run_and_wait(qtbot, pipeline)
    again = run_of(viewer.layers["suim pseudo mask"])
    assert again.class_map.classes[1].name == "coral"
    assert again.class_map.assignment == [0, 1, 2]
    pipeline.clusters.setValue(4)
    run_and_wait(qtbot, pipeline)
    other_k = run_of(viewer.layers["suim pseudo mask"])
    assert [c.name for c in other_k.class_map.classes][1] == "coral"
    assert other_k.class_map.n_clusters == 4
    assert any("K changed" in n.message for n in notifications)


@pytest.mark.shared
def test_folder_classes_are_saved_and_reopened_with_the_run(
        qtbot, viewer, pipeline, metrics, mixed_folder, tmp_path, make_napari_viewer):  # noqa: F811
    out = tmp_path / "run"
    pipeline.folder_panel.folder.setText(str(mixed_folder))
    pipeline.folder_panel.out.setText(str(out))
    run_and_wait(qtbot, pipeline)
    stem = pipeline.folders.run.stem(0)
    metrics.run_layer.setCurrentText(f"{stem} pseudo mask")
    metrics._on_run_changed()
    edit_cell(metrics, 2, 0, "sea floor")
    saved = ClassMap.load(out)
    assert saved.classes[2].name == "sea floor"
    pipeline.folder_panel.next.click()  # every image of the folder shares the class table
    second = run_of(viewer.layers[f"{pipeline.folders.run.stem(1)} pseudo mask"])
    assert second.class_map.classes[2].name == "sea floor"

    reopened = make_napari_viewer()
    reopened.open(str(out), plugin="napari-datus")
    layer = reopened.layers[f"{stem} pseudo mask"]
    assert layer_class_names(layer)[3] == "sea floor"


def test_export_annotations_then_denoise(qtbot, viewer, sample, pipeline, metrics, tmp_path,
                                         capsys):
    from napari_datus._widgets.model import compute_metrics
    from napari_datus.cli import main

    run_and_wait(qtbot, pipeline)
    metrics.compute()
    run = run_of(viewer.layers["suim pseudo mask"])
    # A class with no cluster gets a new one by reassigning a segment to it.
    segments = viewer.layers["suim segments"]
    index, row, col = 0, *np.argwhere(segments.data[0] > 0)[0]
    empty = next(c for c in range(len(SUIM6_NAMES)) if not run.class_map.clusters_of(c))
    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    metrics.new_class.setCurrentIndex(empty)
    metrics.reassign_button.click()
    layer = viewer.layers["suim pseudo mask"]
    layer.data[1, :5, :5] = 0  # painted unlabelled
    out = tmp_path / "export"
    assert pipeline.export(out)

    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == SUIM6_NAMES
    assert classes["clusters"]["3"] == empty
    for i, stem in enumerate(run.stack.stems):
        ids = np.asarray(Image.open(out / "class_masks" / f"{stem}.png"))
        expected = run.class_map.class_mask(np.where(layer.data[i] == 0, 255,
                                                     layer.data[i].astype(int) - 1))
        np.testing.assert_array_equal(ids, expected)
        colour = np.asarray(Image.open(out / "class_masks_colour" / f"{stem}.png"))
        labelled = ids != 255
        np.testing.assert_array_equal(colour[labelled][:, :3], SUIM6_COLOURS[ids[labelled]])
    assert (np.asarray(Image.open(out / "class_masks" / f"{run.stack.stems[1]}.png"))
            [:5, :5] == 255).all()
    saved = json.loads((out / "metrics.json").read_text())
    exported = [np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png"))
                for stem in run.stack.stems]
    # The metrics of the masks as exported (painting and reassigning included).
    assert saved["initial"] == compute_metrics(run, run.gt, run.class_names,
                                               exported)["initial"]
    assert json.loads((out / "run.json").read_text())["params"]["clusters"] == 4
    assert main(["denoise", str(out), "--denoise-epochs", "1", "--device", "cpu"]) == 0, \
        capsys.readouterr().err


def test_the_npe2_writer_and_export_share_one_convention(qtbot, viewer, sample, pipeline,
                                                         tmp_path):
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    layer = viewer.layers["suim pseudo mask"]
    layer.data[0, :4, :4] = 0  # painted unlabelled
    pipeline.export(tmp_path / "export")
    [saved] = layer.save(str(tmp_path / "mask.tif"), plugin="napari-datus")
    import tifffile

    written = tifffile.imread(saved)
    for i, stem in enumerate(run.stack.stems):
        exported = np.asarray(Image.open(tmp_path / "export" / "pseudo_masks" / f"{stem}.png"))
        np.testing.assert_array_equal(written[i], exported)
    assert (written[0, :4, :4] == 255).all()
    # A Labels layer of the user's own is written as it is.
    mine = viewer.add_labels(np.arange(6, dtype=np.uint8).reshape(2, 3), name="mine")
    [plain] = mine.save(str(tmp_path / "mine.png"), plugin="napari-datus")
    np.testing.assert_array_equal(np.asarray(Image.open(plain)), mine.data)


@pytest.mark.shared
def test_selected_image_layers_of_several_sizes_are_one_dataset(
        qtbot, viewer, pipeline, metrics, mixed_folder, tiny_backbone, tmp_path,  # noqa: F811
        notifications):
    from napari_datus.io.images import read_image
    from napari_datus.pipeline import array_sources, drive, run

    by_size = {Image.open(f).size: f for f in sorted(mixed_folder.iterdir())}
    files = list(by_size.values())[:3]
    layers = [viewer.add_image(read_image(f), name=f.stem, rgb=True) for f in files]
    assert len({layer.data.shape for layer in layers}) == 3
    viewer.layers.selection = set(layers)
    pipeline.findChild(type(pipeline.together), "selected_layers").setChecked(True)
    run_and_wait(qtbot, pipeline)
    assert errors(notifications) == []

    # The same clusters as one pipeline run over the three images together.
    together = drive(run(array_sources([layer.data for layer in layers],
                                       [f.stem for f in files]), 3, pipeline.params(),
                         tiny_backbone))
    runs = [run_of(viewer.layers[f"{f.stem} pseudo mask"]) for f in files]
    for i, (layer, widget_run) in enumerate(zip(layers, runs)):
        mask = viewer.layers[f"{layer.name} pseudo mask"].data
        assert mask.shape == layer.data.shape[:2]
        np.testing.assert_array_equal(widget_run.pseudo_mask(0), together.pseudo_mask(i))
        assert widget_run.group == runs and widget_run.class_map is runs[0].class_map

    # Painting on one layer, then another K: asked, and the painting stays.
    painted = viewer.layers[f"{files[1].stem} pseudo mask"]
    painted.data[:6, :6] = 2 if painted.data[0, 0] != 2 else 1
    before = painted.data[:6, :6].copy()
    pipeline._ask_about_edits = lambda pixels: True
    pipeline.live.setChecked(False)
    pipeline.clusters.setValue(4)
    run_and_wait(qtbot, pipeline)
    np.testing.assert_array_equal(viewer.layers[f"{files[1].stem} pseudo mask"].data[:6, :6],
                                  before)
    assert run_of(painted).result.params.clusters == 4

    out = tmp_path / "export"
    pipeline.image.setCurrentText(files[0].stem)
    pipeline.export(out)
    saved = json.loads((out / "run.json").read_text())
    assert sorted(saved["images"]) == sorted(f.stem for f in files)
    assert list(saved["edits"]) == [files[1].stem]
    for f, layer in zip(files, layers):
        ids = np.asarray(Image.open(out / "class_masks" / f"{f.stem}.png"))
        assert ids.shape == layer.data.shape[:2]


def test_a_matching_table_follows_the_matching_of_another_k(qtbot, viewer, sample, pipeline,
                                                            metrics, notifications):
    from napari_datus._widgets.class_view import matching_classes

    run_and_wait(qtbot, pipeline)
    metrics.compute()
    pipeline.live.setChecked(False)
    pipeline.clusters.setValue(4)
    run_and_wait(qtbot, pipeline)
    again = run_of(viewer.layers["suim pseudo mask"])
    assert again.class_map == matching_classes(again) and again.class_map.n_clusters == 4
    assert not any("K changed" in n.message for n in notifications)


@pytest.mark.shared
def test_a_reopened_run_has_metrics_qa_classes_and_export(
        qtbot, viewer, pipeline, mixed_folder, tmp_path, make_napari_viewer):  # noqa: F811
    from napari_datus._widgets import MetricsWidget, PipelineWidget
    from napari_datus.core.metrics import Confusion, evaluate
    from napari_datus.io.masks import SUIM6_NAMES, read_ground_truth
    from tests.conftest import SUIM_MASKS

    out = tmp_path / "run"
    pipeline.folder_panel.folder.setText(str(mixed_folder))
    pipeline.folder_panel.out.setText(str(out))
    run_and_wait(qtbot, pipeline)
    folder_run = pipeline.folders.run
    stem = folder_run.stem(0)

    reopened = make_napari_viewer()
    reopened.open(str(out), plugin="napari-datus")
    dock = PipelineWidget(reopened)  # takes the folder over: one image at a time
    reopened.window.add_dock_widget(dock)
    run = run_of(reopened.layers[f"{stem} pseudo mask"])
    assert run is not None and len(dock.folders.run) == len(folder_run)
    # Read back, not computed again: the same segments and clusters as the run that saved it.
    np.testing.assert_array_equal(run.result.results[0].segments.valid,
                                  folder_run.result.results[0].segments.valid)
    np.testing.assert_array_equal(run.result.clusters[0], folder_run.result.clusters[0])

    metrics = MetricsWidget(reopened)
    reopened.window.add_dock_widget(metrics)
    reopened.open(str(SUIM_MASKS / f"{stem}.png"), plugin="napari-datus")
    truth_layer = reopened.layers[-1]
    metrics.run_layer.setCurrentText(f"{stem} pseudo mask")
    metrics.gt_layer.setCurrentText(truth_layer.name)
    metrics.gt_format.setCurrentText("suim6")
    shown = metrics.compute()
    expected = Confusion(run.n_clusters, len(SUIM6_NAMES))
    expected.add(np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png")),
                 read_ground_truth(SUIM_MASKS / f"{stem}.png", "suim6"))
    assert shown["initial"] == evaluate(expected, SUIM6_NAMES)

    segments = reopened.layers[f"{stem} segments"]
    row, col = np.argwhere(np.asarray(segments.data) > 0)[0]
    info = metrics.inspect(run, (row, col))
    assert info is not None and info.valid and metrics.crop.pixmap() is not None
    current = run.class_map.class_of(info.cluster)
    metrics.new_class.setCurrentIndex(next(c for c in range(len(run.class_map.classes))
                                           if c != current))
    metrics.reassign_button.click()
    export = tmp_path / "export"
    written = dock.folders.save_job(export, class_masks=True)()  # the dock's Export
    saved = json.loads((export / "run.json").read_text())
    assert sorted(saved["images"]) == sorted(folder_run.stem(i) for i in range(len(folder_run)))
    assert list(saved["edits"]) == [stem] and written.name == "run.json"
