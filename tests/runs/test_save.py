"""What the napari docks save: edits told from the masks as computed, whatever made them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_datus.cache import file_sources
from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import read_cluster_mask
from napari_datus.params import Params
from napari_datus.pipeline import DatasetResult, drive, run
from napari_datus.runs.read import read_run, user_work
from napari_datus.runs.save import save_classes, save_edits, save_run
from tests.test_pipeline import blocky_images


@pytest.fixture
def computed(tmp_path, tiny_backbone) -> tuple[DatasetResult, dict[str, Path]]:
    images = {}
    for i, image in enumerate(blocky_images(3)):
        images[f"im{i}"] = tmp_path / f"im{i}.png"
        Image.fromarray(image).save(images[f"im{i}"])
    params = Params(resolution=64, clusters=2, tau=1, n_init=2)
    result = drive(run(file_sources(list(images.values())), 3, params, tiny_backbone))
    return result, images


def test_reassign_only_edits_are_recorded_and_reopen_as_edits(computed, tmp_path):
    result, images = computed
    as_computed = [c.copy() for c in result.clusters]
    result.clusters[0][0] = 1 - result.clusters[0][0]  # one segment reassigned, no painting
    out = tmp_path / "run"
    save_run(out, result, images, {}, computed=as_computed)
    record = json.loads((out / "run.json").read_text())
    pixels = record["edits"]["im0"]["pixels"]
    assert pixels > 0 and list(record["edits"]) == ["im0"]
    assert user_work(out).edited_pixels == pixels
    folder = read_run(out)
    # The mask as computed is kept beside the edited one, so a reopen tells them apart.
    assert int((read_cluster_mask(folder.computed_mask("im0"))
                != read_cluster_mask(folder.file("pseudo_masks", "im0"))).sum()) == pixels


def test_saving_edits_counts_them_against_the_mask_as_computed(computed, tmp_path):
    result, images = computed
    out = tmp_path / "run"
    save_run(out, result, images, {})
    mask = read_cluster_mask(out / "pseudo_masks" / "im1.png")
    edited = mask.copy()
    edited[:10, :10] = 1 - np.minimum(edited[:10, :10], 1)
    pixels = int((edited != mask).sum())
    assert save_edits(out, {"im1": edited}) == {"im1": pixels}
    # Saved again (the same edit, as the dock does on every step): still the same count.
    assert save_edits(out, {"im1": edited}) == {"im1": pixels}
    assert save_edits(out, {"im1": mask}) == {}  # undone: no edit left
    with pytest.raises(DatusError, match="no image 'elsewhere'"):
        save_edits(out, {"elsewhere": mask})


def test_a_saved_class_table_is_the_runs_own_and_user_work(computed, tmp_path):
    result, images = computed
    out = tmp_path / "run"
    save_run(out, result, images, {})
    classes = ClassMap.per_cluster(2)
    classes.rename(1, "robot")
    save_classes(out, classes)
    assert "classes.json" in json.loads((out / "run.json").read_text())["files"]
    assert user_work(out).named_classes == 1
