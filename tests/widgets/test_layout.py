"""Both docks fit a laptop screen: their contents scroll instead of growing the window, and
what a user presses (Run, Export…, Compute metrics) stays on screen."""

import pytest
from qtpy.QtWidgets import QApplication, QScrollArea, QWidget

from tests.widgets.conftest import run_and_wait

LAPTOP = (1366, 768)


@pytest.mark.parametrize("width, height", [LAPTOP, (1920, 1080)])
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
        for scroll in dock.findChildren(QScrollArea):
            # Nothing clipped on the right: the contents fit the dock's width.
            assert not scroll.horizontalScrollBar().isVisible(), type(dock).__name__


def fully_shown(button: QWidget) -> bool:
    """The whole button inside its window, and none of it clipped (by a scroll area, a
    squeezed dock or a hidden tab)."""
    window = button.window()
    top_left = button.mapTo(window, button.rect().topLeft())
    bottom_right = button.mapTo(window, button.rect().bottomRight())
    inside = window.rect().contains(top_left) and window.rect().contains(bottom_right)
    return (button.isVisible() and inside
            and button.visibleRegion().boundingRect() == button.rect())


@pytest.fixture
def laptop(make_napari_viewer, qtbot, tiny_backbone):
    """A shown 1366x768 window with the scored sample run and both docks, opened as the
    Plugins menu opens them."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    viewer.open_sample("napari-datus", "suim")
    _, pipeline = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    _, metrics = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")
    pipeline._backbone_factory = lambda *_key: tiny_backbone
    pipeline.resolution.setValue(64)
    pipeline.clusters.setValue(3)
    run_and_wait(qtbot, pipeline)
    metrics.gt_layer.setCurrentText("suim ground truth")
    metrics.gt_format.setCurrentText("suim6")
    assert metrics.compute() is not None
    return viewer, pipeline, metrics


def test_run_export_and_compute_metrics_are_on_a_laptop_screen(laptop, qtbot):
    viewer, pipeline, metrics = laptop
    window = viewer.window._qt_window
    buttons = (pipeline.run_button, pipeline.exporter.button, metrics.compute_button)
    # The docks share the height on the next turns of the event loop.
    qtbot.waitUntil(lambda: all(fully_shown(b) for b in buttons), timeout=5000)
    assert (window.width(), window.height()) == LAPTOP
    assert [b.text() for b in buttons] == ["Run", "Export…", "Compute metrics"]
    # Each dock keeps room for more than its buttons: the metrics body shows the scores.
    body = metrics.findChild(QScrollArea).viewport()
    assert body.height() > 4 * metrics.compute_button.height()


def test_the_scores_table_shows_whole_numbers_and_named_classes(laptop):
    _viewer, _pipeline, metrics = laptop
    table = metrics.table
    shown = sum(table.columnWidth(c) for c in range(table.columnCount()))
    assert shown <= table.viewport().width()  # no column cut off at the right
    metrics_font = table.fontMetrics()
    for row in range(table.rowCount()):
        for column in range(table.columnCount()):
            text = table.item(row, column).text()
            # Room for the text and the cell's padding: "20.8%", never "20....".
            assert table.columnWidth(column) >= metrics_font.horizontalAdvance(text) + 4, text
    names = [table.item(row, 0).text() for row in range(table.rowCount())]
    assert names == ["HD", "RO", "FV", "RI", "WR", "BW+PF+SR"]
    assert table.item(0, 0).toolTip() == "HD: human divers"
    assert "sea-floor and rocks" in table.item(5, 0).toolTip()
    for name in ("human divers", "robots", "fish and vertebrates", "reefs and invertebrates",
                 "wrecks and ruins", "background (waterbody)"):
        assert name in metrics.legend.text()
