"""Regenerate docs/images/folder.png: a folder of SUIM images of mixed sizes run as one dataset.

Opens napari first, then the "DatUS pipeline" dock as a user does, types a folder and an
output folder, presses Run with the default weights, steps to the third image and takes a
screenshot; prints the run's time. Needs a display and the shared SUIM test images::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1800x1100x24" \
        python scripts/folder_screenshot.py [IMAGES_DIR] [OUT_DIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
SUIM = ROOT.parent / "shared" / "data" / "suim_test" / "images"
MIXED = ["d_r_122_", "d_r_129_", "d_r_144_", "d_r_166_", "d_r_345_", "d_r_384_", "d_r_465_",
         "d_r_547_"]
SHOT = ROOT / "docs" / "images" / "folder.png"


def wait(done) -> float:
    start = time.perf_counter()
    while not done():
        QApplication.processEvents()
        time.sleep(0.02)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    images = Path(argv[0]) if argv else Path(tempfile.mkdtemp()) / "images"
    if not argv:
        images.mkdir()
        for stem in MIXED:
            shutil.copy(SUIM / f"{stem}.jpg", images)
    out = Path(argv[1]) if len(argv) > 1 else images.parent / "run"
    viewer = napari.Viewer(title="napari-datus: a folder as one dataset")
    viewer.window.resize(1750, 1050)
    _, pipeline = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    pipeline.folder_panel.folder.setText(str(images))
    pipeline.folder_panel.out.setText(str(out))
    pipeline.run()
    seconds = wait(lambda: pipeline._worker is None)
    print(f"{len(pipeline.folders.run)} images, run and save: {seconds:.1f} s"
          f" ({pipeline.status.text()})")
    for _ in range(2):
        pipeline.folder_panel.next.click()
    print(f"showing: {pipeline.folder_panel.position.text()}")
    viewer.reset_view()
    wait(lambda: True)
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(SHOT), canvas_only=False, flash=False)
    print(f"wrote {SHOT.relative_to(ROOT)}; saved run in {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
