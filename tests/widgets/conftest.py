"""Fixtures for the napari widgets: a viewer with the SUIM sample, docked widgets, a tiny ViT.

Run under a display: ``QT_QPA_PLATFORM=xcb xvfb-run -a pytest tests/widgets``.
"""

from __future__ import annotations

import pytest
from napari.utils.notifications import (
    ErrorNotification,
    Notification,
    NotificationSeverity,
    notification_manager,
)

from napari_datus._widgets import MetricsWidget, PipelineWidget

RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def sample(viewer):
    """The "suim" sample: (5, 480, 640, 3) image stack and its ground-truth Labels."""
    viewer.open_sample("napari-datus", "suim")
    return viewer.layers["suim"], viewer.layers["suim ground truth"]


@pytest.fixture
def pipeline(viewer, tiny_backbone) -> PipelineWidget:
    """The pipeline widget, docked, with the tiny random ViT and settings that suit it."""
    widget = PipelineWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DatUS pipeline")
    widget._backbone_factory = lambda *_key: tiny_backbone
    widget.resolution.setValue(64)
    widget.clusters.setValue(3)
    widget.tau.setValue(2)
    return widget


@pytest.fixture
def metrics(viewer) -> MetricsWidget:
    widget = MetricsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DatUS metrics")
    return widget


@pytest.fixture
def notifications():
    """Notifications shown during the test (napari's show_error/show_warning/show_info)."""
    seen: list[Notification] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def errors(notifications: list[Notification]) -> list[str]:
    """Messages of error notifications; fails if any carried a traceback (a raised exception)."""
    assert not [n for n in notifications if isinstance(n, ErrorNotification)]
    return [n.message for n in notifications if n.severity == NotificationSeverity.ERROR]


def run_and_wait(qtbot, widget: PipelineWidget) -> None:
    """Press Run and wait until the worker has finished (returned, failed or cancelled)."""
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=RUN_TIMEOUT_MS)
