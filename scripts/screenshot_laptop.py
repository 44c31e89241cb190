"""Regenerate docs/images/laptop_1366x768.png: both DatUS docks in a 1366x768 napari window.

Opens napari at a laptop's screen size, then "DatUS pipeline" and "DatUS metrics" from the
plugin's widget contributions as the Plugins menu does, runs the pipeline on the SUIM sample
with the default weights (the embedded DINOv2 ViT-S/14, or ``DATUS_WEIGHTS`` when set) and
scores it against the sample's ground truth (suim6). Prints whether Run, Export… and
Compute metrics are on screen. Needs a display at least that large::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1366x768x24" \\
        python scripts/screenshot_laptop.py [OUT.png]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication, QScrollArea, QWidget

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "laptop_1366x768.png"
SIZE = (1366, 768)


def settle(seconds: float = 1.0) -> None:
    """Process Qt events for a while: docks and the canvas take a few rounds to lay out."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def on_screen(button: QWidget) -> bool:
    """True when the whole button shows inside the window, not hidden, cut or scrolled off."""
    window = button.window()
    corner = button.mapTo(window, button.rect().topLeft())
    inside = window.rect().contains(corner) and window.rect().contains(
        corner + button.rect().bottomRight())
    return button.isVisible() and inside and button.visibleRegion().boundingRect() == button.rect()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    # Only error toasts: a toast would cover part of the picture.
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    viewer = napari.Viewer(title="napari-datus")
    viewer.window._qt_window.resize(*SIZE)
    viewer.open_sample("napari-datus", "suim")
    _dock, pipeline = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    _dock, metrics = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")
    pipeline.run()
    while pipeline._worker is not None:
        settle(0.1)
    metrics.gt_layer.setCurrentText("suim ground truth")
    metrics.gt_format.setCurrentText("suim6")
    metrics.compute()
    # Scrolled down to the per-class table, as a user checking the scores does.
    metrics.findChild(QScrollArea).ensureWidgetVisible(metrics.table)
    viewer.layers["suim pseudo mask"].opacity = 0.55
    viewer.reset_view()
    settle()
    window = viewer.window._qt_window
    print(f"window {window.width()}x{window.height()}")
    for name, button in (("Run", pipeline.run_button), ("Export…", pipeline.exporter.button),
                         ("Compute metrics", metrics.compute_button)):
        print(f"{name}: {'on screen' if on_screen(button) else 'NOT on screen'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
