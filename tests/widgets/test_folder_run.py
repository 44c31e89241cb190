"""A folder of images of several sizes as one dataset in the pipeline dock; saved runs
reopened; edits kept across re-runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_datus._widgets import PipelineWidget
from napari_datus._widgets.layers import run_of
from tests.conftest import SUIM_IMAGES

from .conftest import errors, run_and_wait

# One image of each of the 7 sizes in the SUIM test set, plus a second 640x480 one.
MIXED = ["d_r_122_", "d_r_129_", "d_r_144_", "d_r_166_", "d_r_345_", "d_r_384_", "d_r_465_",
         "d_r_547_"]


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Eight SUIM test images (tests.conftest checks they exist before any fixture)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for stem in MIXED:
        shutil.copy(SUIM_IMAGES / f"{stem}.jpg", folder)
    return folder


def other_label(label: int) -> int:
    """A cluster label (1..3 with the fixture's K = 3) other than ``label``."""
    return 1 if label != 1 else 2


def run_and_paint(qtbot, viewer, pipeline, folder: Path, out: Path | None = None):
    """Run ``folder`` (saving in ``out`` if given), then paint the first image's top-left
    10x10 patch with another cluster; returns its stem, its pseudo-mask layer and the label."""
    pipeline.folder_panel.folder.setText(str(folder))
    if out is not None:
        pipeline.folder_panel.out.setText(str(out))
    run_and_wait(qtbot, pipeline)
    first = pipeline.folders.run.stem(0)
    layer = viewer.layers[f"{first} pseudo mask"]
    label = other_label(layer.data[0, 0])
    layer.data[:10, :10] = label
    return first, layer, label


def sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.stem: Image.open(p).size[::-1] for p in folder.iterdir()}


@pytest.mark.shared
def test_a_mixed_size_folder_is_one_dataset_saved_and_reopened(
        qtbot, viewer, pipeline, mixed_folder, tmp_path, notifications, make_napari_viewer):
    out = tmp_path / "run"
    pipeline.findChild(type(pipeline.folder_panel.folder), "folder").setText(str(mixed_folder))
    pipeline.findChild(type(pipeline.folder_panel.out), "out").setText(str(out))
    run_and_wait(qtbot, pipeline)
    assert not errors(notifications)

    shapes = sizes(mixed_folder)
    assert len(set(shapes.values())) == 7
    folder_run = pipeline.folders.run
    assert len(folder_run) == 8
    # One k-means over all images: cluster ids come from one model (K clusters in total).
    assert sorted(json.loads((out / "run.json").read_text())["images"]) == sorted(MIXED)
    for stem, shape in shapes.items():
        mask = np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png"))
        assert mask.shape == shape
    seen = {}
    for step in range(8):
        stem = folder_run.stem(folder_run.index)
        image, mask = viewer.layers[stem], viewer.layers[f"{stem} pseudo mask"]
        assert image.data.shape[:2] == mask.data.shape == shapes[stem]
        seen[stem] = mask.data.copy()
        if step < 7:
            pipeline.folder_panel.next.click()
    assert set(seen) == set(MIXED)
    assert not pipeline.folder_panel.next.isEnabled()

    reopened = make_napari_viewer()
    one = out / "pseudo_masks" / f"{MIXED[0]}.png"
    reopened.open(str(one), plugin="napari-datus")
    np.testing.assert_array_equal(reopened.layers[f"{MIXED[0]} pseudo mask"].data,
                                  seen[MIXED[0]])
    reopened.layers.clear()
    reopened.open(str(out), plugin="napari-datus")
    # One image at a time, as the folder run was: the pipeline dock takes the folder over.
    assert [layer.name for layer in reopened.layers if " " not in layer.name] == [MIXED[0]]
    dock = PipelineWidget(reopened)
    reopened.window.add_dock_widget(dock)
    assert len(dock.folders.run) == len(MIXED) and dock.folder_panel.next.isEnabled()
    for step, stem in enumerate(MIXED):
        assert reopened.layers[stem].data.shape[:2] == shapes[stem]
        np.testing.assert_array_equal(np.asarray(reopened.layers[f"{stem} pseudo mask"].data),
                                      seen[stem])
        if step < len(MIXED) - 1:
            dock.folder_panel.next.click()


@pytest.mark.shared
def test_folder_edits_survive_stepping_and_are_saved(qtbot, viewer, pipeline, mixed_folder,
                                                      tmp_path):
    out = tmp_path / "run"
    first, _layer, label = run_and_paint(qtbot, viewer, pipeline, mixed_folder, out)
    pipeline.folder_panel.next.click()
    pipeline.folder_panel.previous.click()
    assert (viewer.layers[f"{first} pseudo mask"].data[:10, :10] == label).all()
    saved = np.asarray(Image.open(out / "pseudo_masks" / f"{first}.png"))
    assert (saved[:10, :10] == label - 1).all()  # file convention: cluster c + 1 -> c
    record = json.loads((out / "run.json").read_text())["edits"]
    assert record[first]["pixels"] > 0


def test_painting_then_changing_k_asks_and_keeps_the_edits(qtbot, viewer, sample, pipeline,
                                                         monkeypatch):
    run_and_wait(qtbot, pipeline)
    layer = viewer.layers["suim pseudo mask"]
    layer.data[0, :20, :20] = other_label(layer.data[0, 0, 0])
    painted = layer.data[0, :20, :20].copy()
    asked = []
    monkeypatch.setattr(pipeline, "_ask_about_edits", lambda pixels: asked.append(pixels) or True)
    pipeline.clusters.setValue(pipeline.clusters.value() + 1)
    qtbot.wait(600)  # the live re-run would have fired by now
    assert "edits" in pipeline.status.text()  # no silent live re-run over the edits
    run_and_wait(qtbot, pipeline)
    assert asked and asked[0] > 0
    # Kept: one cluster over the painted square still, the new run's cluster of its class
    # (its label may differ, tests/widgets/test_classes_across_reruns.py checks the class).
    kept = viewer.layers["suim pseudo mask"].data[0, :20, :20]
    assert (kept == kept[0, 0]).all() and kept[0, 0] > 0 and (painted == painted[0, 0]).all()
    assert run_of(layer).result.params.clusters == pipeline.clusters.value()


def test_discarding_edits_and_cancelling(qtbot, viewer, sample, pipeline, monkeypatch):
    run_and_wait(qtbot, pipeline)
    layer = viewer.layers["suim pseudo mask"]
    computed = layer.data.copy()
    label = other_label(layer.data[0, 0, 0])
    layer.data[0, :20, :20] = label
    monkeypatch.setattr(pipeline, "_ask_about_edits", lambda pixels: None)
    pipeline.run_button.click()
    assert pipeline._worker is None  # cancelled: nothing started, the edits stay
    assert (layer.data[0, :20, :20] == label).all()
    monkeypatch.setattr(pipeline, "_ask_about_edits", lambda pixels: False)
    run_and_wait(qtbot, pipeline)
    np.testing.assert_array_equal(viewer.layers["suim pseudo mask"].data, computed)


@pytest.mark.shared
def test_the_export_button_saves_a_folder_run_in_a_worker(qtbot, viewer, pipeline, mixed_folder,
                                                          tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog, QPushButton

    stem, layer, _label = run_and_paint(qtbot, viewer, pipeline, mixed_folder)
    painted = np.array(layer.data)
    out = tmp_path / "export"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    button = pipeline.findChild(QPushButton, "export_button")
    button.click()
    assert not button.isEnabled()
    qtbot.waitUntil(button.isEnabled, timeout=60_000)
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["images"]) == sorted(MIXED) and list(run["edits"]) == [stem]
    saved = np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png")).astype(int)
    np.testing.assert_array_equal(np.where(saved == 255, 0, saved + 1), painted)


@pytest.mark.shared
def test_saving_a_folder_run_builds_its_masks_off_the_main_thread(
        qtbot, viewer, pipeline, mixed_folder, tmp_path, monkeypatch):
    import threading

    from napari_datus._widgets.folder_run import FolderRun

    stem, _layer, _label = run_and_paint(qtbot, viewer, pipeline, mixed_folder)
    threads = []
    built = FolderRun.edited_masks

    def recorded(self):
        threads.append(threading.current_thread())
        return built(self)

    monkeypatch.setattr(FolderRun, "edited_masks", recorded)
    job = pipeline.folders.save_job(tmp_path / "saved")
    assert threads == []  # nothing built at the click
    # A reassignment after the click does not change what is saved.
    pipeline.folders.run.result.clusters[1][:] = 0
    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert threads == [worker]
    run = json.loads((tmp_path / "saved" / "run.json").read_text())
    assert list(run["edits"]) == [stem]


@pytest.mark.shared
def test_a_folder_export_is_a_run_datus_denoise_accepts(qtbot, viewer, pipeline, mixed_folder,
                                                        tmp_path, capsys):
    from napari_datus.cli import main

    run_and_paint(qtbot, viewer, pipeline, mixed_folder)
    out = tmp_path / "export"
    assert pipeline.export(out)
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["images"]) == sorted(MIXED)
    assert list(run["edits"]) == [pipeline.folders.run.stem(0)]
    assert main(["denoise", str(out), "--denoise-epochs", "1", "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    for stem, shape in sizes(mixed_folder).items():
        assert np.asarray(Image.open(out / "denoised" / f"{stem}.png")).shape == shape


@pytest.mark.shared
def test_an_unwritable_out_folder_is_refused_before_any_work(qtbot, viewer, pipeline,
                                                             mixed_folder, tmp_path,
                                                             notifications):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    pipeline.folder_panel.folder.setText(str(mixed_folder))
    pipeline.folder_panel.out.setText(str(blocker / "run"))
    pipeline.run_button.click()
    assert pipeline._worker is None
    assert any("is not writable" in m for m in errors(notifications))


def test_an_empty_folder_is_one_clear_error(qtbot, viewer, pipeline, tmp_path, notifications):
    pipeline.folder_panel.folder.setText(str(tmp_path))
    pipeline.run_button.click()
    assert pipeline._worker is None
    assert any("no images" in m for m in errors(notifications))


@pytest.mark.shared
def test_a_saved_run_with_edits_is_never_replaced_without_asking(qtbot, viewer, pipeline,
                                                                 mixed_folder, tmp_path):
    out = tmp_path / "run"
    first, _layer, _label = run_and_paint(qtbot, viewer, pipeline, mixed_folder, out)
    pipeline.folder_panel.next.click()  # the edit is saved in out
    saved = (out / "pseudo_masks" / f"{first}.png").read_bytes()
    pipeline.folders.run = None  # as in a new napari session, pointed at the same out
    asked = []
    pipeline._ask_overwrite = lambda folder, pixels: asked.append(pixels) or False
    pipeline.run_button.click()
    assert asked == [100] and pipeline._worker is None
    assert (out / "pseudo_masks" / f"{first}.png").read_bytes() == saved
    pipeline.folder_panel.folder.setText("")
    viewer.open_sample("napari-datus", "suim")
    pipeline.image.setCurrentText("suim")
    run_and_wait(qtbot, pipeline)
    assert pipeline.export(out) == [] and len(asked) == 2
    assert json.loads((out / "run.json").read_text())["edits"][first]["pixels"] == 100


@pytest.mark.shared
def test_a_reopened_run_exports_into_its_own_folder_without_asking(
        qtbot, viewer, pipeline, mixed_folder, tmp_path, make_napari_viewer):
    from napari_datus._widgets import PipelineWidget

    out = tmp_path / "run"
    first, layer, label = run_and_paint(qtbot, viewer, pipeline, mixed_folder, out)
    pipeline.folder_panel.next.click()  # the edit is saved in out
    reopened = make_napari_viewer()
    reopened.open(str(out), plugin="napari-datus")
    dock = PipelineWidget(reopened)
    reopened.window.add_dock_widget(dock)
    dock.image.setCurrentText(first)
    asked = []
    dock._ask_overwrite = lambda folder, pixels: asked.append(pixels) or False
    # Its layers hold the saved edits, so writing them back replaces nothing unasked.
    assert dock.export(out) and asked == []
    saved = np.asarray(Image.open(out / "pseudo_masks" / f"{first}.png"))
    assert (saved[:10, :10] == label - 1).all()
    assert dock.export(tmp_path / "elsewhere") and asked == []  # no saved run there
