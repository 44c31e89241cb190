"""The Propagate box: a folder run's corrected images label the others as new layers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_datus._widgets.propagate_box import PropagateBox
from tests.test_propagation import two_colour

from .conftest import errors, run_and_wait

SPLITS = (24, 48, 40)


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, split in enumerate(SPLITS):
        Image.fromarray(two_colour(split, i)[0]).save(images / f"im{i}.png")
    return images


@pytest.fixture
def box(viewer, pipeline):
    widget = PropagateBox(viewer, pipeline.folders, pipeline._load_backbone, pipeline._cache)
    viewer.window.add_dock_widget(widget, name="propagate")
    return widget


def paint_truth(viewer, stem: str, index: int) -> np.ndarray:
    """Paint the whole pseudo mask: red as cluster 0 (label 1), blue as cluster 1."""
    layer = viewer.layers[f"{stem} pseudo mask"]
    truth = two_colour(SPLITS[index], index)[1]
    layer.data = np.where(truth == 1, 1, 2).astype(layer.data.dtype)
    return layer.data.copy()


def test_corrected_images_label_the_other_one(qtbot, viewer, pipeline, box, folder,
                                              notifications):
    pipeline.folder_panel.folder.setText(str(folder))
    run_and_wait(qtbot, pipeline)
    painted = {"im0": paint_truth(viewer, "im0", 0)}
    pipeline.folders.step(1)
    painted["im1"] = paint_truth(viewer, "im1", 1)
    worker = box.start()
    assert worker is not None
    qtbot.waitUntil(lambda: box.worker is None, timeout=60_000)
    assert not errors(notifications)
    names = [layer.name for layer in viewer.layers]
    assert "im2 propagated" in names and "im0 propagated" not in names
    propagated = viewer.layers["im2 propagated"]
    truth = two_colour(SPLITS[2], 2)[1]
    # Class 0 (cluster 0's class) is label 1: the red part.
    assert (propagated.data == np.where(truth == 1, 1, 2)).mean() > 0.9
    assert not propagated.visible  # im1 is on screen
    # The corrected images and their edits are left alone.
    assert set(pipeline.folders.run.edits) == {"im0", "im1"}
    assert np.array_equal(viewer.layers["im1 pseudo mask"].data, painted["im1"])


def test_without_corrections_nothing_starts(qtbot, viewer, pipeline, box, folder,
                                            notifications):
    pipeline.folder_panel.folder.setText(str(folder))
    run_and_wait(qtbot, pipeline)
    assert box.start() is None
    assert any("correct some images first" in m for m in errors(notifications))
