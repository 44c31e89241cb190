"""The "DatUS metrics" widget: figures equal the core's, class colours, segment QA, export."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from napari_datus._widgets.layers import run_of
from napari_datus._widgets.metrics_widget import summary_lines
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.io.masks import SUIM6_COLOURS, SUIM6_NAMES, SUIM8_TO_SUIM6
from napari_datus.outputs import write_grid_outputs

from .conftest import errors, run_and_wait


def core_metrics(run, gt6: np.ndarray) -> dict:
    """The reference: the core's Confusion and evaluate on the run's pseudo masks."""
    confusion = Confusion(run.n_clusters, len(SUIM6_NAMES))
    for i in range(gt6.shape[0]):
        confusion.add(run.result.pseudo_mask(i), gt6[i])
    return evaluate(confusion, SUIM6_NAMES)


def click(viewer, metrics, position) -> None:
    """Drive the viewer mouse callback as napari does for a press and release in place."""
    event = SimpleNamespace(position=position, type="mouse_press")
    callback = metrics._on_click(viewer, event)
    next(callback)
    event.type = "mouse_release"
    next(callback, None)


def choose_other_class(run, metrics, cluster: int) -> tuple[int, int]:
    """Choose, in the reassign box, a class the cluster is not in.

    Returns the cluster the segment will get (the class's first, or a new one) and the class.
    """
    current = run.class_map.class_of(cluster)
    target = next(c for c in range(len(run.class_map.classes)) if c != current)
    metrics.new_class.setCurrentIndex(target)
    existing = run.class_map.clusters_of(target)
    return (existing[0] if existing else run.class_map.n_clusters), target


def scored(qtbot, viewer, pipeline, metrics):
    run_and_wait(qtbot, pipeline)
    assert metrics.run_layer.currentText() == "suim pseudo mask"
    assert metrics.gt_layer.currentText() == "suim ground truth"
    assert metrics.gt_format.currentText() == "suim6"
    return run_of(viewer.layers["suim pseudo mask"]), metrics.compute()


def test_metrics_shown_equal_the_core(qtbot, viewer, sample, pipeline, metrics, notifications):
    _image, gt = sample
    run, shown = scored(qtbot, viewer, pipeline, metrics)

    expected = core_metrics(run, SUIM8_TO_SUIM6[gt.data])
    assert shown["initial"] == expected
    text = metrics.summary.text()
    assert text == "\n".join(summary_lines(run))
    for key in ("miou", "pixel_accuracy", "mean_f1", "coverage"):
        assert f"{expected[key]:.1%}" in text
    assert f"mIoU {expected['strict']['miou']:.1%}" in text
    for c, name in enumerate(SUIM6_NAMES):
        assert metrics.table.item(c, 0).text() == name
        iou = expected["per_class_iou"][c]
        assert metrics.table.item(c, 1).text() == ("-" if iou is None else f"{iou:.1%}")
    assert errors(notifications) == []


def test_pseudo_mask_drawn_in_matched_class_colours(qtbot, viewer, sample, pipeline, metrics):
    run, shown = scored(qtbot, viewer, pipeline, metrics)
    layer = viewer.layers["suim pseudo mask"]
    mapping = shown["initial"]["mapping"]
    names = dict(zip(layer.features["index"], layer.features["class"]))
    for cluster, cls in mapping.items():
        label = int(cluster) + 1
        colour = layer.colormap.map(np.array([label]))[0][:3]
        if cls is None:
            assert names[label] == "unassigned"
        else:
            assert names[label] == SUIM6_NAMES[cls]
            np.testing.assert_allclose(colour, SUIM6_COLOURS[cls] / 255, atol=1e-6)
    # The layer data stays cluster-based.
    np.testing.assert_array_equal(np.unique(layer.data), np.unique(layer.data[layer.data <= 3]))


def test_ground_truth_of_another_shape(qtbot, viewer, sample, pipeline, metrics, notifications):
    run_and_wait(qtbot, pipeline)
    viewer.add_labels(np.zeros((5, 100, 100), dtype=np.uint8), name="wrong size")
    metrics.gt_layer.setCurrentText("wrong size")

    assert metrics.compute() is None
    assert any("never resized" in m for m in errors(notifications))


def test_no_run_yet(viewer, sample, metrics, notifications):
    assert metrics.compute() is None
    assert any("run the DatUS pipeline" in m for m in errors(notifications))


def test_segment_qa_and_reassign(qtbot, viewer, sample, pipeline, metrics, notifications):
    _image, gt = sample
    run, _shown = scored(qtbot, viewer, pipeline, metrics)
    segments = viewer.layers["suim segments"]
    index, row, col = 1, *np.argwhere(segments.data[1] > 0)[0]
    segment = int(segments.data[index, row, col])

    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    info = metrics._selected[1]
    r = run.result.results[index]
    assert (info.index, info.segment) == (index, segment)
    assert info.patches == r.segments.sizes[segment - 1]
    assert info.cluster == run.result.clusters[index][segment - 1]
    assert f"valid segment {segment}" in metrics.segment_info.text()
    crop = metrics.crop.pixmap()
    assert crop is not None and not crop.isNull()
    assert metrics.reassign_button.isEnabled()

    new, target = choose_other_class(run, metrics, info.cluster)
    before = list(run.class_map.assignment)
    metrics.reassign_button.click()
    pixels = upsample_nearest(r.segments.valid, (480, 640)) == segment
    assert np.all(viewer.layers["suim pseudo mask"].data[index][pixels] == new + 1)
    assert run.result.clusters[index][segment - 1] == new
    assert metrics.current_run().metrics["initial"] == core_metrics(run, SUIM8_TO_SUIM6[gt.data])
    name = run.class_map.classes[target].name
    assert f"cluster {new} -> {name}" in metrics.segment_info.text()
    # No other cluster changed class (the Hungarian matching of the new metrics may differ).
    assert run.class_map.assignment[:len(before)] == before
    assert errors(notifications) == []


def test_reassign_keeps_painting_can_be_undone_and_metrics_follow_edits(
        qtbot, viewer, sample, pipeline, metrics):
    _image, gt = sample
    run, _shown = scored(qtbot, viewer, pipeline, metrics)
    layer = viewer.layers["suim pseudo mask"]
    segments = viewer.layers["suim segments"]
    index, row, col = 1, *np.argwhere(segments.data[1] > 0)[0]
    segment = int(segments.data[index, row, col])
    pixels = segments.data[index] == segment
    painted = np.zeros_like(pixels)
    painted[~pixels] = True
    painted[:, 100:] = False
    painted[20:, :] = False  # a painted patch outside the segment
    layer.data[index][painted] = 1
    before = layer.data.copy()
    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    new, _target = choose_other_class(run, metrics, metrics._selected[1].cluster)
    metrics.reassign_button.click()
    assert np.all(layer.data[index][pixels] == new + 1)
    assert np.all(layer.data[index][painted] == 1)  # the painting is still there
    edited = [np.where(m == 0, 255, m.astype(int) - 1).astype(np.uint8) for m in layer.data]
    expected = Confusion(run.n_clusters, len(SUIM6_NAMES))
    for mask, truth in zip(edited, SUIM8_TO_SUIM6[gt.data]):
        expected.add(mask, truth)
    assert metrics.current_run().metrics["initial"] == evaluate(expected, SUIM6_NAMES)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_a_rerun_clears_the_inspected_segment(qtbot, viewer, sample, pipeline, metrics):
    run, _shown = scored(qtbot, viewer, pipeline, metrics)
    segments = viewer.layers["suim segments"]
    metrics.inspect(run, (0, *np.argwhere(segments.data[0] > 0)[0]))
    assert metrics.reassign_button.isEnabled()
    pipeline.live.setChecked(False)
    pipeline.clusters.setValue(2)
    run_and_wait(qtbot, pipeline)

    # A Reassign now would write the old run's mask over the new one.
    assert metrics._selected is None and not metrics.reassign_button.isEnabled()
    assert "click a segment again" in metrics.segment_info.text()
    new_run = run_of(viewer.layers["suim pseudo mask"])
    assert metrics.current_run() is new_run and new_run is not run


def test_metrics_opened_after_a_run_show_it(qtbot, viewer, sample, pipeline):
    from napari_datus._widgets import MetricsWidget

    run_and_wait(qtbot, pipeline)
    late = MetricsWidget(viewer)
    assert late.current_run() is run_of(viewer.layers["suim pseudo mask"])
    assert "No metrics yet" in late.summary.text()


def test_noise_segment_cannot_be_reassigned(qtbot, viewer, sample, pipeline, metrics):
    run, _shown = scored(qtbot, viewer, pipeline, metrics)
    noise = viewer.layers["suim noise"]
    hits = [(i, *np.argwhere(noise.data[i])[0]) for i in range(5) if noise.data[i].any()]
    info = metrics.inspect(run, hits[0])

    assert not info.valid and info.cluster is None
    assert "noise" in metrics.segment_info.text()
    assert not metrics.reassign_button.isEnabled()


def test_panning_does_not_inspect(qtbot, viewer, sample, pipeline, metrics):
    scored(qtbot, viewer, pipeline, metrics)
    viewer.layers.selection.active = viewer.layers["suim segments"]
    event = SimpleNamespace(position=(0, 100, 100), type="mouse_press")
    callback = metrics._on_click(viewer, event)
    next(callback)
    event.type = "mouse_move"
    next(callback)
    event.type = "mouse_release"
    next(callback, None)
    assert metrics._selected is None


def test_export_writes_the_cli_layout(qtbot, viewer, sample, pipeline, metrics, tmp_path):
    run, shown = scored(qtbot, viewer, pipeline, metrics)
    written = pipeline.export(tmp_path / "out")

    out = tmp_path / "out"
    stems = run.stack.stems
    # 3 stage masks, 2 class masks and the image each; classes, run and metrics JSON, CSV
    assert len(written) == 6 * len(stems) + 4
    reference = tmp_path / "cli"
    for i, stem in enumerate(stems):
        r = run.result.results[i]
        write_grid_outputs(reference, stem, r.partition, r.segments.valid, r.shape)
        for folder in ("partitions", "segments"):
            ours = np.asarray(Image.open(out / folder / f"{stem}.png"))
            cli = np.asarray(Image.open(reference / folder / f"{stem}.png"))
            assert ours.dtype == cli.dtype
            np.testing.assert_array_equal(ours, cli)
        pseudo = np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png"))
        np.testing.assert_array_equal(pseudo, run.result.pseudo_mask(i))
        assert pseudo.dtype == np.uint8 and (UNLABELLED in pseudo) == (pseudo == 255).any()
        classes = np.asarray(Image.open(out / "class_masks" / f"{stem}.png"))
        np.testing.assert_array_equal(classes, run.class_map.class_mask(pseudo))
        colour = np.asarray(Image.open(out / "class_masks_colour" / f"{stem}.png"))
        assert colour.shape == (480, 640, 4)  # unlabelled pixels transparent
        labelled = classes != 255
        np.testing.assert_array_equal(colour[labelled][:, :3],
                                      SUIM6_COLOURS[classes[labelled]])
        assert (colour[~labelled][:, 3] == 0).all()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["initial"]["miou"] == shown["initial"]["miou"]
    assert saved["classes"] == SUIM6_NAMES and saved["images"] == stems
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("class,initial_iou")
    assert json.loads((out / "run.json").read_text())["params"]["clusters"] == 3


def test_the_export_button_writes_in_a_worker_what_was_on_screen(
        qtbot, viewer, sample, pipeline, metrics, tmp_path, monkeypatch, notifications):
    from qtpy.QtWidgets import QFileDialog, QPushButton

    scored(qtbot, viewer, pipeline, metrics)
    now = tmp_path / "now"
    expected = sorted(p.relative_to(now) for p in pipeline.export(now))
    later = tmp_path / "later"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(later))
    button = pipeline.findChild(QPushButton, "export_button")
    layer = viewer.layers["suim pseudo mask"]
    before = np.array(layer.data)
    button.click()
    assert not button.isEnabled()  # the writing runs in a worker; napari stays usable
    layer.data[...] = 1  # painting after the click: the export keeps what was on screen
    qtbot.waitUntil(button.isEnabled, timeout=60_000)
    assert not errors(notifications)
    assert sorted(p.relative_to(later) for p in later.rglob("*")
                  if p.is_file() and p.name != ".datus.lock") == expected
    for i, stem in enumerate(run_of(layer).stack.stems):
        for folder in ("pseudo_masks", "class_masks", "partitions"):
            assert (later / folder / f"{stem}.png").read_bytes() == (
                now / folder / f"{stem}.png").read_bytes()
        np.testing.assert_array_equal(np.asarray(Image.open(later / "pseudo_masks" /
                                                            f"{stem}.png")) + 1,
                                      np.where(before[i] == 0, 256, before[i]).astype(int))
    layer.data = before


def test_an_export_is_a_run_folder_datus_denoise_accepts(qtbot, viewer, sample, pipeline,
                                                        tmp_path, capsys):
    from napari_datus.cli import main

    run_and_wait(qtbot, pipeline)
    out = tmp_path / "out"
    pipeline.export(out)
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] and set(run["inputs"]) == set(run_of(
        viewer.layers["suim pseudo mask"]).stack.stems)
    assert main(["denoise", str(out), "--denoise-epochs", "1", "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    assert len(list((out / "denoised").glob("*.png"))) == len(run["inputs"])


def test_index_void_255_is_left_out_as_in_the_cli(qtbot, viewer, sample, pipeline, metrics):
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    # Ground truth that agrees with the pseudo mask wherever it is labelled, void elsewhere.
    truth = np.stack([run.result.pseudo_mask(i) for i in range(run.stack.shape[0])])
    viewer.add_labels(truth, name="index truth")
    metrics.gt_layer.setCurrentText("index truth")
    metrics.gt_format.setCurrentText("index")
    shown = metrics.compute()
    assert shown["initial"]["miou"] == 1.0 and shown["initial"]["pixel_accuracy"] == 1.0


def test_suim_labels_above_seven_are_a_clear_error(qtbot, viewer, sample, pipeline, metrics,
                                                   notifications):
    run_and_wait(qtbot, pipeline)
    labels = np.zeros((5, 480, 640), dtype=np.uint8)
    labels[0, 0, 0] = 9
    viewer.add_labels(labels, name="codes", metadata={"gt_format": "suim8"})
    metrics.gt_layer.setCurrentText("codes")
    metrics.gt_format.setCurrentText("suim6")
    assert metrics.compute() is None
    assert any("SUIM class codes are 0..7" in m for m in errors(notifications))


def test_widgets_open_from_the_plugin_menu(viewer):
    from napari_datus._widgets import MetricsWidget, PipelineWidget

    _dock, pipeline = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    _dock, metrics = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")
    assert isinstance(pipeline, PipelineWidget)
    assert isinstance(metrics, MetricsWidget)


def test_reassign_on_a_refined_mask_changes_the_segment_as_the_mask_shows_it(
        qtbot, viewer, sample, pipeline, metrics):
    pipeline.refine.setCurrentText("guided")
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    layer = viewer.layers["suim pseudo mask"]
    segments = viewer.layers["suim segments"]
    index, row, col = 1, *np.argwhere(segments.data[1] > 0)[0]
    segment = int(segments.data[index, row, col])
    viewer.layers.selection.active = segments
    click(viewer, metrics, (index, row, col))
    old = metrics._selected[1].cluster
    new, _target = choose_other_class(run, metrics, old)
    before, mask_before = np.array(layer.data[index]), run.pseudo_mask(index)
    metrics.reassign_button.click()
    # The refined mask's pixels of the segment (they left its old cluster for the new
    # one), not its square patches; nothing else.
    shown = (run.pseudo_mask(index) == new) & (mask_before == old)
    patches = upsample_nearest(run.result.results[index].segments.valid == segment,
                               (480, 640))
    assert (shown != patches).any()
    np.testing.assert_array_equal(layer.data[index] != before, shown)
    assert (layer.data[index][shown] == new + 1).all()
