"""Both docks fit a laptop screen: their contents scroll instead of growing the window."""

import pytest
from qtpy.QtWidgets import QApplication, QScrollArea


@pytest.mark.parametrize("width, height", [(1366, 768), (1920, 1080)])
def test_both_docks_fit_the_screen(viewer, width, height):
    _, pipeline = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    _, metrics = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")
    window = viewer.window._qt_window
    window.resize(width, height)
    for _ in range(10):
        QApplication.processEvents()
    assert window.minimumSizeHint().height() <= height
    assert window.height() <= height
    for dock in (pipeline, metrics):
        scroll = dock.findChild(QScrollArea)
        # Nothing clipped on the right: the contents fit the dock's width.
        assert not scroll.horizontalScrollBar().isVisible(), type(dock).__name__
