"""The widgets on the SUIM sample with the real shared DINOv2 weights (skips without them)."""

from __future__ import annotations

import pytest

from napari_datus._widgets.layers import run_of

from .conftest import errors, run_and_wait

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_real_backbone_on_the_sample(qtbot, viewer, sample, pipeline, metrics, notifications,
                                     shared_backbone):
    pipeline._backbone_factory = lambda *_key: shared_backbone
    pipeline.resolution.setValue(224)
    pipeline.clusters.setValue(6)
    pipeline.tau.setValue(5)
    run_and_wait(qtbot, pipeline)
    shown = metrics.compute()

    assert errors(notifications) == []
    run = run_of(viewer.layers["suim pseudo mask"])
    assert run.result.segment_counts()["valid"] >= 6
    assert viewer.layers["suim pseudo mask"].data.shape == (5, 480, 640)
    initial = shown["initial"]
    assert initial["coverage"] > 0.5
    assert 0 < initial["miou"] <= 1 and initial["strict"]["miou"] <= initial["miou"]
