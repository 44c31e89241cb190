"""The class table: clusters to named classes, masks by class, and classes.json."""

import json

import numpy as np
import pytest

from napari_datus.class_map import CLASS_MAP_FILE, ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import SUIM8_COLOURS, SUIM8_NAMES


def mask() -> np.ndarray:
    """(2, 3) cluster ids with one unlabelled pixel."""
    return np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)


def test_several_clusters_share_a_class_and_unassigned_is_unlabelled():
    classes = ClassMap.per_cluster(4)
    fish = classes.add_class("fish")
    classes.assign(1, fish)
    classes.assign(3, fish)
    classes.assign(2, None)
    out = classes.class_mask(mask())
    assert out.tolist() == [[0, fish, 255], [fish, 255, fish]]


def test_reassigning_to_a_class_without_clusters_makes_one_and_moves_nothing_else():
    classes = ClassMap.per_cluster(3)
    before = list(classes.assignment)
    wreck = classes.add_class("wreck")
    cluster = classes.cluster_for(wreck)
    assert cluster == 3 and classes.assignment == [*before, wreck]
    assert classes.cluster_for(wreck) == 3  # the same cluster the second time
    assert classes.cluster_for(0) == 0


def test_matching_prefills_suim_names_and_exact_colours():
    mapping = {"0": 1, "1": None, "2": 6}
    classes = ClassMap.from_matching(3, mapping, SUIM8_NAMES, SUIM8_COLOURS)
    assert classes.assignment == [1, None, 6]
    colours = classes.colour_mask(np.array([[0, 2, 1]], dtype=np.uint8))
    assert colours.shape == (1, 3, 4)  # RGBA: unlabelled and unassigned are transparent
    assert colours[0, 0].tolist() == [0, 0, 255, 255]  # HD blue
    assert colours[0, 1].tolist() == [255, 255, 0, 255]  # FV yellow
    assert colours[0, 2, 3] == 0


def test_an_unlabelled_colour_the_user_picks_gives_rgb():
    classes = ClassMap.per_cluster(4)
    classes.unlabelled_colour = (128, 128, 128)
    colours = classes.colour_mask(mask())
    assert colours.shape == (2, 3, 3) and colours[1, 1].tolist() == [128, 128, 128]


def test_removing_a_class_unassigns_its_clusters_and_shifts_later_ids():
    classes = ClassMap.per_cluster(3)
    classes.remove_class(1)
    assert classes.assignment == [0, None, 1]
    assert [c.name for c in classes.classes] == ["cluster 0", "cluster 2"]


def test_json_round_trip(tmp_path):
    classes = ClassMap.per_cluster(3)
    classes.rename(0, "fish")
    classes.recolour(0, (1, 2, 3))
    classes.assign(2, 0)
    classes.save(tmp_path)
    again = ClassMap.load(tmp_path)
    assert again == classes
    assert ClassMap.load(tmp_path / "nowhere") is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d["classes"][0].update(colour=[0, 0, 300]), "colour"),
    (lambda d: d["clusters"].update({"1": 9}), "not in the table"),
    (lambda d: d.pop("classes"), "classes"),
    (lambda d: d["classes"][0].update(name=" "), "needs a name"),
])
def test_a_damaged_class_map_is_one_clear_error(tmp_path, change, message):
    data = ClassMap.per_cluster(2).to_json()
    change(data)
    (tmp_path / CLASS_MAP_FILE).write_text(json.dumps(data))
    with pytest.raises(DatusError, match=message):
        ClassMap.load(tmp_path)


def test_bad_edits_are_refused():
    classes = ClassMap.per_cluster(2)
    with pytest.raises(DatusError, match="does not exist"):
        classes.assign(0, 5)
    with pytest.raises(DatusError, match="outside"):
        classes.assign(7, 0)
    with pytest.raises(DatusError, match="needs a name"):
        classes.add_class("")


def test_at_most_255_classes_then_a_clear_refusal():
    classes = ClassMap()
    for c in range(255):
        classes.add_class(f"class {c}")
    with pytest.raises(DatusError, match="at most 255 classes"):
        classes.add_class("one too many")
    data = classes.to_json()
    data["classes"].append({"id": 255, "name": "x", "colour": [0, 0, 0]})
    with pytest.raises(DatusError, match="at most 255"):
        ClassMap.from_json(data)


def test_set_to_changes_the_map_every_holder_sees():
    shared = ClassMap.per_cluster(3)
    views = [shared, shared]
    other = ClassMap.from_matching(3, {"0": 1, "1": None, "2": 0}, ["a", "b"], None)
    views[0].set_to(other)
    assert views[1] == other and views[1] is shared
    other.rename(0, "changed later")
    assert shared.classes[0].name == "a"  # a copy, not the other map's classes
