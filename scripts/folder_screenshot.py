"""Regenerate docs/images/folder.png and classes.png: a folder of SUIM images of mixed sizes
run as one dataset, then its clusters named as classes.

Opens napari first, then the "DatUS pipeline" dock as a user does, types a folder and an
output folder, presses Run with the default weights, steps to the third image and takes a
screenshot; prints the run's time. Then opens "DatUS metrics" and names the clusters in its
class table by typing, as an annotator who looked at them would: each cluster is named after
the SUIM class most of its pixels have in these images' ground truth (which stands in for
the annotator's eye here; the widget itself is given no ground truth), clusters of one class
merged. Needs a display and the shared SUIM test images::

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
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_datus.io.masks import SUIM8_COLOURS, SUIM8_NAMES

ROOT = Path(__file__).resolve().parents[1]
SUIM = ROOT.parent / "shared" / "data" / "suim_test" / "images"
MIXED = ["d_r_122_", "d_r_129_", "d_r_144_", "d_r_166_", "d_r_345_", "d_r_384_", "d_r_465_",
         "d_r_547_"]
SHOT = ROOT / "docs" / "images" / "folder.png"
CLASSES_SHOT = ROOT / "docs" / "images" / "classes.png"


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
    name_classes(viewer, pipeline, images)
    settle()
    viewer.screenshot(str(CLASSES_SHOT), canvas_only=False, flash=False)
    print(f"wrote {CLASSES_SHOT.relative_to(ROOT)}; classes.json saved in {out}")
    viewer.close()
    return 0


def settle() -> None:
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)


def majority_classes(folder_run, gt_dir: Path) -> list[int]:
    """The SUIM8 class most pixels of each cluster have, over the folder's images."""
    from napari_datus.io.masks import read_ground_truth

    k = folder_run.result.params.clusters
    counts = np.zeros((k, len(SUIM8_NAMES)), dtype=np.int64)
    for i in range(len(folder_run)):
        mask = folder_run.result.pseudo_mask(i)
        truth = read_ground_truth(gt_dir / f"{folder_run.stem(i)}.png", "suim8")
        labelled = mask != 255
        np.add.at(counts, (mask[labelled], truth[labelled]), 1)
    return [int(row.argmax()) for row in counts]


def name_classes(viewer, pipeline, images: Path) -> None:
    """Type class names and clusters into the class table of the metrics dock."""
    _, metrics = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS metrics")
    folder_run = pipeline.folders.run
    metrics.run_layer.setCurrentText(f"{folder_run.stem(folder_run.index)} pseudo mask")
    metrics._on_run_changed()
    majority = majority_classes(folder_run, SUIM.parent / "masks")
    names = sorted(set(majority))
    table = metrics.classes.table
    # Keep one row per class found, named and coloured as SUIM; the rest are removed.
    while table.rowCount() > len(names):
        table.setCurrentCell(table.rowCount() - 1, 0)
        metrics.classes.remove_selected()
    run = metrics.current_run()
    for row, code in enumerate(names):
        table.item(row, 0).setText(SUIM8_NAMES[code])
        run.class_map.recolour(row, tuple(int(v) for v in SUIM8_COLOURS[code]))
        clusters = [c for c, m in enumerate(majority) if m == code]
        table.item(row, 2).setText(", ".join(map(str, clusters)))
    metrics.classes.refresh()
    print("classes:", {SUIM8_NAMES[code]: [c for c, m in enumerate(majority) if m == code]
                       for code in names})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
