"""The metrics dock's ground-truth field on a reopened run: never a photo by default, and a
ground-truth mask opened by hand is chosen, not the image whose name it shares (the reader
names a SUIM mask after its file: "<stem> [1]" beside the image "<stem>")."""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image, Labels

from napari_datus._widgets import MetricsWidget
from napari_datus._widgets.export import export_run
from napari_datus._widgets.layers import run_of

from .conftest import errors, run_and_wait

MASKS = Path(__file__).resolve().parents[2] / "src/napari_datus/sample_data/masks"


def reopened_run(qtbot, viewer, pipeline, tmp_path, make_napari_viewer):
    """A viewer holding the sample's run, exported and opened again as a run folder."""
    run_and_wait(qtbot, pipeline)
    out = tmp_path / "run"
    export_run(viewer, run_of(viewer.layers["suim pseudo mask"]), out)
    reopened = make_napari_viewer()
    reopened.open(str(out), plugin="napari-datus")
    return reopened


def test_a_reopened_run_has_no_ground_truth_by_default(
        qtbot, viewer, sample, pipeline, tmp_path, make_napari_viewer, notifications):
    reopened = reopened_run(qtbot, viewer, pipeline, tmp_path, make_napari_viewer)
    assert any(isinstance(layer, Image) and layer.rgb for layer in reopened.layers)
    metrics = MetricsWidget(reopened)
    reopened.window.add_dock_widget(metrics, name="DatUS metrics")

    assert metrics.run_layer.layer() is not None
    assert metrics.gt_layer.layer() is None  # was the RGB photo, scored as SUIM colours
    assert metrics.gt_format.currentText() == "index"
    assert metrics.compute() is None
    assert errors(notifications) == ["choose a ground-truth layer (Labels, or an RGB image"
                                     " of SUIM colours)"]


def test_a_mask_opened_by_hand_becomes_the_ground_truth(
        qtbot, viewer, sample, pipeline, tmp_path, make_napari_viewer):
    reopened = reopened_run(qtbot, viewer, pipeline, tmp_path, make_napari_viewer)
    metrics = MetricsWidget(reopened)
    reopened.window.add_dock_widget(metrics, name="DatUS metrics")
    image = metrics.run_layer.layer().name.removesuffix(" pseudo mask")

    layers = reopened.open(str(MASKS / f"{image}.png"), plugin="napari-datus")

    assert isinstance(layers[0], Labels)
    assert metrics.gt_layer.layer() is layers[0]
    assert metrics.gt_format.currentText() == "suim6"
    assert metrics.compute() is not None
