"""Run folders written and reopened from the docks: exports into a reopened export, edits
that survive saving and reopening (issue 19, defects 1 and 4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from napari_datus._widgets import PipelineWidget
from napari_datus._widgets.export import export_run
from napari_datus._widgets.layers import run_of
from napari_datus.runs.read import user_work

from .conftest import run_and_wait


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def paint_a_whole_segment(viewer, name: str = "suim") -> int:
    """Give the first valid segment of image 0 another cluster label, as a user paints it;
    returns the pixels that changed."""
    layer = viewer.layers[f"{name} pseudo mask"]
    segments = np.asarray(viewer.layers[f"{name} segments"].data)[0]
    data = np.array(layer.data)
    where = segments == segments[segments > 0].min()
    label = 2 if data[0][where][0] == 1 else 1
    changed = int((data[0][where] != label).sum())
    data[0][where] = label
    layer.data = data
    return changed


def test_exporting_into_a_reopened_export_keeps_the_folder_whole(
        qtbot, viewer, sample, pipeline, tmp_path, make_napari_viewer):
    run_and_wait(qtbot, pipeline)
    painted = paint_a_whole_segment(viewer)
    assert painted > 0
    export = tmp_path / "export"
    export_run(viewer, run_of(viewer.layers["suim pseudo mask"]), export)
    first = tree(export)
    record = json.loads((export / "run.json").read_text())
    stem = record["images"][0]
    assert record["edits"] == {stem: {"pixels": painted}}

    reopened = make_napari_viewer()
    reopened.open(str(export), plugin="napari-datus")
    assert [layer.name for layer in reopened.layers if " " not in layer.name] == [stem]
    dock = PipelineWidget(reopened)  # takes the five images over, shown one at a time
    reopened.window.add_dock_widget(dock)
    # The edits are edits again after reopening: told from the mask as computed.
    assert {s: e.pixels for s, e in dock.folders.run.edits.items()} == {stem: painted}
    assert user_work(export).edited_pixels == painted

    dock.folders.save_job(export, class_masks=True)()  # the dock's Export of a folder
    again = tree(export)
    # The export's images are this run's input now: kept, not deleted or rewritten.
    assert set(again) - {"metrics.json", "metrics.csv"} == set(first) - {"metrics.json",
                                                                          "metrics.csv"}
    for folder in ("exported_images", "pseudo_masks", "pseudo_masks_computed", "class_masks"):
        assert {k: v for k, v in again.items() if k.startswith(folder)} == \
               {k: v for k, v in first.items() if k.startswith(folder)}
    assert json.loads((export / "run.json").read_text())["edits"] == record["edits"]
