"""Time the napari Propagate action (issue 21) on a folder run from a warm feature cache.

Usage, under a display (``xvfb-run -a``)::

    DATUS_CACHE_DIR=/work/cache-dev xvfb-run -a -s "-screen 0 1600x1000x24" \\
        python benchmarks/propagate_napari.py ../shared/data/suim_test/images \\
        ../shared/data/suim_test/masks 20 docs/images/propagated_napari.png

Runs the folder in the pipeline dock, names the classes as suim6, paints N images (every
k-th by name) with their ground truth, presses Propagate and times it to the last layer;
scores the propagated layers against the ground truth and saves a screenshot.
"""
import sys
import time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_datus._widgets import PipelineWidget
from napari_datus.class_map import ClassMap, LabelClass
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.masks import SUIM6_COLOURS, SUIM6_NAMES
from napari_datus.propagation import identity_block

images, masks, n, shot = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
viewer = napari.Viewer()
dock = PipelineWidget(viewer)
viewer.window.add_dock_widget(dock, name="DatUS pipeline")


def wait(done):
    while not done():
        QApplication.processEvents()
        time.sleep(0.005)


dock.folder_panel.folder.setText(images)
t = time.perf_counter()
dock.run_button.click()
wait(lambda: dock._worker is None)
print(f"folder run (warm cache): {time.perf_counter() - t:.1f} s")
run = dock.folders.run
gt = GroundTruthFormat("suim6")
run.class_map.set_to(ClassMap([LabelClass(name, tuple(int(v) for v in c))
                               for name, c in zip(SUIM6_NAMES, SUIM6_COLOURS)],
                              list(range(6))))
stems = sorted(run.stem(i) for i in range(len(run)))
chosen = stems[:: max(1, len(stems) // n)][:n]
truth = {}
for i in range(len(run)):
    stem = run.stem(i)
    truth[stem] = gt.read(f"{masks}/{stem}.png")
    if stem in chosen:
        painted = (np.where(truth[stem] < 0, 0, truth[stem] + 1)).astype(np.uint8)
        run.record_edit(i, painted)
        if i == run.index:  # the image on screen: paint its layer, as a user would
            viewer.layers[f"{stem} pseudo mask"].data = painted
t = time.perf_counter()
dock.propagator.start()
wait(lambda: dock.propagator.worker is None)
seconds = time.perf_counter() - t
layers = [layer for layer in viewer.layers if layer.name.endswith(" propagated")]
scorer = Scorer(6, gt, boundaries=True)
for layer in layers:
    stem = layer.name[: -len(" propagated")]
    scorer.add(stem, (np.asarray(layer.data).astype(np.int64) - 1).clip(0).astype(np.uint8),
               truth[stem])
block = identity_block(scorer, SUIM6_NAMES, SUIM6_NAMES)
print(f"Propagate: {len(chosen)} corrected, {len(layers)} layers added in {seconds:.1f} s;"
      f" mIoU {block['miou']:.3f} PAcc {block['pixel_accuracy']:.3f}"
      f" BF1 {block['boundary']['f1']:.3f}")
shown = run.stem(run.index)
if f"{shown} propagated" not in viewer.layers:
    dock.folders.step(1)
    shown = run.stem(run.index)
for layer in viewer.layers:  # the image and its propagated layer only
    layer.visible = layer.name in (shown, f"{shown} propagated")
viewer.window.resize(1400, 900)
viewer.reset_view()
viewer.screenshot(shot, canvas_only=False)
print("screenshot", shot, "of", shown)
