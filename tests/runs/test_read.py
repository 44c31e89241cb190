"""Reading run folders: the npe2 reader opens what is intact and says what is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from PIL import Image

from napari_datus import _reader, saved_run
from napari_datus.runs.read import owned_files, read_run, user_work
from napari_datus.runs.record import RunRecord
from tests.test_cli import TINY_ARGS, datus, folder, tiny_cli  # noqa: F401 (fixtures)


@pytest.fixture
def finished(tiny_cli, folder, capsys) -> Path:  # noqa: F811
    out = folder / "out"
    assert datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)[0] == 0
    return out


@pytest.fixture
def shown():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def names(layers) -> set[str]:
    return {kwargs["name"] for _data, kwargs, _kind in layers}


def test_probing_a_run_folder_decodes_nothing(finished, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded at probe time")

    monkeypatch.setattr(saved_run, "read_cluster_mask", no_decoding)
    monkeypatch.setattr(saved_run, "read_array", no_decoding)
    assert callable(_reader.get_reader(str(finished)))


@pytest.mark.parametrize("record", [[1, 2], {"params": "K=2", "run_id": "x"}, "not json"])
def test_a_damaged_record_declines_the_folder_with_a_reason(finished, shown, record):
    (finished / "run.json").write_text(record if isinstance(record, str)
                                       else json.dumps(record))
    assert _reader.get_reader(str(finished)) is None
    assert len(shown) == 1 and "run.json" in shown[0].message


def test_damaged_files_are_left_out_and_the_rest_opens(finished, shown):
    (finished / "partitions" / "im0.png").write_bytes(b"")
    small = np.zeros((4, 4), dtype=np.uint8)
    Image.fromarray(small).save(finished / "pseudo_masks" / "im1.png")
    layers = _reader.get_reader(str(finished))(str(finished))
    assert {"im0", "im0 pseudo mask", "im1", "im2 pseudo mask"} <= names(layers)
    assert "im0 partitions" not in names(layers) and "im1 pseudo mask" not in names(layers)
    assert len(shown) == 1 and "im0.png" in shown[0].message


def test_a_damaged_class_table_opens_the_run_for_viewing_and_says_why(finished, shown):
    (finished / "classes.json").write_text("{ damaged")
    layers = _reader.get_reader(str(finished))(str(finished))
    assert "im0 pseudo mask" in names(layers)
    assert len(shown) == 1 and "classes.json" in shown[0].message
    assert "viewing only" in shown[0].message


def test_a_stem_that_leaves_the_folder_is_refused(finished):
    record = json.loads((finished / "run.json").read_text())
    record["images"] = ["../../victim/evil"]
    (finished / "run.json").write_text(json.dumps(record))
    with pytest.raises(Exception, match="not a plain file name"):
        read_run(finished)


def test_the_record_round_trips_and_legacy_records_derive_their_files(finished):
    run = read_run(finished)
    again = RunRecord.from_json(json.loads(json.dumps(run.record.to_json())))
    assert again == run.record
    legacy = run.record.to_json()
    del legacy["format"], legacy["files"]
    (finished / "run.json").write_text(json.dumps(legacy))
    (finished / "notes.txt").write_text("mine")
    owned = owned_files(finished, read_run(finished).record)
    assert "pseudo_masks/im0.png" in owned and "notes.txt" not in owned
    assert not user_work(finished)
