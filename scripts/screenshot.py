"""Regenerate docs/images/screenshot.png: the SUIM sample, its pseudo mask and the metrics.

Opens napari first, then the docks from the plugin menu's commands, as a user does, and runs
the real pipeline with the default weights (the embedded DINOv2 ViT-S/14, or
``DATUS_WEIGHTS`` when set); scores it against the sample's ground truth and inspects one
segment. Needs a display::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1800x1100x24" python scripts/screenshot.py
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_datus._widgets import PipelineWidget
from napari_datus._widgets.layers import run_of

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "screenshot.png"
SHOWN_IMAGE = 3  # n_l_52_: a robot and a diver in open water


def wait_until(done: Callable[[], bool]) -> float:
    """Process Qt events until ``done()``; return the seconds it took."""
    start = time.perf_counter()
    while not done():
        QApplication.processEvents()
        time.sleep(0.02)
    return time.perf_counter() - start


def wait_for(widget: PipelineWidget) -> float:
    """Process Qt events until the widget's run has finished; return the seconds it took."""
    return wait_until(lambda: widget._worker is None)


def live_k(viewer: napari.Viewer, widget: PipelineWidget, k: int) -> float:
    """Seconds from setting K until the pseudo mask shows the live re-run (debounce included)."""
    widget.clusters.setValue(k)
    layer = "suim pseudo mask"
    seconds = wait_until(lambda: run_of(viewer.layers[layer]).result.params.clusters == k)
    wait_for(widget)
    return seconds


def main() -> int:
    # Only error toasts: a toast would cover part of the picture.
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    viewer = napari.Viewer(title="napari-datus")
    viewer.window.resize(1750, 1050)
    viewer.open_sample("napari-datus", "suim")
    pipeline_dock, pipeline = viewer.window.add_plugin_dock_widget("napari-datus",
                                                                   "DatUS pipeline")
    metrics_dock, metrics = viewer.window.add_plugin_dock_widget("napari-datus",
                                                                 "DatUS metrics")
    pipeline.run()
    cold = wait_for(pipeline)
    pipeline.run()
    warm = wait_for(pipeline)
    print(f"5 images, 640x480, CPU: first run {cold:.1f} s (model load included;"
          f" weights: {run_of(viewer.layers['suim pseudo mask']).weights['weights_source']}),"
          f" re-run {warm:.1f} s (cached model)")
    metrics.compute()
    k = pipeline.clusters.value()
    seconds = [live_k(viewer, pipeline, other) for other in (k + 1, k)]
    print(f"live K re-runs {k}->{k + 1}->{k}: {seconds[0]:.2f} s, {seconds[1]:.2f} s"
          " (including the debounce delay, metrics recomputed)")

    viewer.dims.set_current_step(0, SHOWN_IMAGE)
    segments = viewer.layers["suim segments"]
    viewer.layers.selection.active = segments
    inside = np.argwhere(segments.data[SHOWN_IMAGE] > 0)
    row, col = inside[len(inside) // 2]
    metrics.inspect(run_of(segments), (SHOWN_IMAGE, row, col))
    viewer.layers.selection.active = viewer.layers["suim pseudo mask"]
    viewer.layers["suim pseudo mask"].opacity = 0.55
    viewer.reset_view()
    # The metrics dock gets most of the height, as a user who has run and now checks does.
    viewer.window._qt_window.resizeDocks([pipeline_dock, metrics_dock], [260, 760],
                                         Qt.Orientation.Vertical)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    print(f"wrote {OUT.relative_to(ROOT)}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
