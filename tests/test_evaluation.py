"""Ground-truth decoding and scoring shared by the CLI, de-noising, widgets and benchmarks."""

import json

import numpy as np
import pytest
from PIL import Image

from napari_datus import cli
from napari_datus.core.errors import DatusError
from napari_datus.evaluation import VOID, GroundTruthFormat, Scorer
from napari_datus.io.masks import SUIM6_COLOURS, read_ground_truth
from tests.conftest import SUIM_IMAGES, SUIM_MASKS, require_shared
from tests.test_cli import TINY_ARGS, tiny_cli  # noqa: F401 (fixture)


def test_index_void_rule():
    labels = np.array([[0, 1, 254], [255, 7, 65535]], dtype=np.uint16)
    decoded = GroundTruthFormat("index", ignore=7).decode(labels)
    assert decoded.tolist() == [[0, 1, 254], [VOID, VOID, VOID]]
    assert GroundTruthFormat("index", ignore=None).decode(labels)[1, 1] == 7


def test_scorer_learns_index_classes_without_the_void():
    scorer = Scorer(2)
    truth = np.array([[0, 1], [VOID, 2]])
    assert scorer.add("a", np.array([[0, 1], [1, 255]], dtype=np.uint8), truth) is None
    assert scorer.names == ["0", "1", "2"]
    assert scorer.confusion.matrix.sum() == 2  # void and unlabelled pixels are not counted


def test_scorer_leaves_out_ground_truth_of_another_size():
    scorer = Scorer(2)
    reason = scorer.add("a", np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.int64), "a.png")
    assert "a.png is 5x4 but its image is 4x4" in reason
    assert scorer.result() is None


def test_unreadable_ground_truth_is_a_reason_not_an_exception(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    reason = Scorer(2).add_file("x", np.zeros((4, 4), np.uint8), broken)
    assert reason.startswith("left out of the metrics: cannot read image")


def test_suim_labels_above_seven_are_refused():
    with pytest.raises(DatusError, match="SUIM class codes are 0..7"):
        GroundTruthFormat("suim6").decode_codes(np.array([[0, 9]]), "suim8")
    assert GroundTruthFormat("suim6").decode_codes(np.array([[1, 4]])).tolist() == [[0, 1]]


def test_bad_format_and_ignore_are_refused_up_front():
    with pytest.raises(DatusError, match="unknown ground-truth format"):
        GroundTruthFormat("voc")
    with pytest.raises(DatusError, match="ignore value must be >= 0"):
        GroundTruthFormat("index", -1)


@pytest.mark.shared
def test_colour_index_and_palette_ground_truth_score_alike(tmp_path, tiny_cli, capsys):  # noqa: F811
    """The same 6 SUIM images scored from colour masks and 8-bit index PNGs give equal
    metrics; with a 255 void block, index PNGs and palette PNGs give equal metrics; nothing
    is skipped."""
    require_shared(SUIM_IMAGES, SUIM_MASKS)
    stems = sorted(p.stem for p in SUIM_MASKS.iterdir())[:6]
    folders = {n: tmp_path / n for n in ("images", "colour", "index", "index-void",
                                         "palette-void")}
    for folder in folders.values():
        folder.mkdir()
    palette_table = np.zeros((256, 3), np.uint8)
    palette_table[:6] = SUIM6_COLOURS
    for stem in stems:
        image = next(SUIM_IMAGES.glob(f"{stem}.*"))
        (folders["images"] / image.name).write_bytes(image.read_bytes())
        classes = read_ground_truth(next(SUIM_MASKS.glob(f"{stem}.*")), "suim6")
        Image.fromarray(SUIM6_COLOURS[classes]).save(folders["colour"] / f"{stem}.png")
        Image.fromarray(classes.astype(np.uint8)).save(folders["index"] / f"{stem}.png")
        voided = classes.astype(np.uint8)
        voided[:40, :60] = 255
        Image.fromarray(voided).save(folders["index-void"] / f"{stem}.png")
        indexed = Image.fromarray(voided, mode="L").convert("P")
        indexed.putpalette(palette_table.ravel().tolist())
        indexed.save(folders["palette-void"] / f"{stem}.png")
        assert Image.open(folders["palette-void"] / f"{stem}.png").mode == "P"
    results = {}
    for name in ("colour", "index", "index-void", "palette-void"):
        out = tmp_path / f"out-{name}"
        code = cli.main(["run", str(folders["images"]), "--out", str(out), "--gt",
                         str(folders[name]), "--gt-format",
                         "suim6" if name == "colour" else "index", "--gt-ignore", "255",
                         *TINY_ARGS])
        assert code == 0, capsys.readouterr().err
        assert json.loads((out / "run.json").read_text())["skipped"] == []
        results[name] = json.loads((out / "metrics.json").read_text())
        assert results[name]["images"] == stems
    colour, index = results["colour"]["initial"], results["index"]["initial"]
    assert colour["confusion"] == index["confusion"]
    assert colour["miou"] == pytest.approx(index["miou"])
    assert results["index-void"]["initial"] == results["palette-void"]["initial"]
    voided = np.array(results["index-void"]["initial"]["confusion"]).sum()
    assert voided < np.array(index["confusion"]).sum()  # the void block is not counted
