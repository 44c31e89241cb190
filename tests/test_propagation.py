import json

import numpy as np
import pytest
from PIL import Image

from napari_datus import cli, commands
from napari_datus.class_map import ClassMap, LabelClass
from napari_datus.denoise_run import read_run as denoise_inputs
from napari_datus.io.images import read_array
from napari_datus.runs.read import read_run

TINY_ARGS = ["--resolution", "64", "--clusters", "2", "--tau", "1", "--n-init", "2"]
H, W = 64, 80


@pytest.fixture
def tiny_cli(monkeypatch, tiny_backbone):
    """`datus` with the tiny random ViT in place of a real download."""
    monkeypatch.setattr(commands, "run_backbone", lambda *a, **k: tiny_backbone)


def two_colour(split: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Red left of column ``split``, blue right of it (with noise); truth: red 1, blue 0."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 30, (H, W, 3)).astype(np.uint8)
    image[:, :split, 0] += 220
    image[:, split:, 2] += 220
    truth = np.zeros((H, W), dtype=np.uint8)
    truth[:, :split] = 1
    return image, truth


def datus(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err, captured.out


@pytest.fixture
def run_dir(tiny_cli, tmp_path, capsys):
    """A finished tiny run of three two-colour images with index ground truth; its labels
    folder holds the truth of im0 and im1."""
    images, gt, labels = (tmp_path / name for name in ("images", "gt", "labels"))
    for folder in (images, gt, labels):
        folder.mkdir()
    for i, split in enumerate((24, 48, 40)):
        image, truth = two_colour(split, i)
        Image.fromarray(image).save(images / f"im{i}.png")
        Image.fromarray(truth).save(gt / f"im{i}.png")
        if i < 2:
            Image.fromarray(truth).save(labels / f"im{i}.png")
    out = tmp_path / "out"
    code, err, _ = datus(capsys, "run", images, "--out", out, "--gt", gt, *TINY_ARGS)
    assert code == 0, err
    return out


def test_labels_on_two_images_propagate_to_the_third(run_dir, capsys):
    labels = run_dir.parent / "labels"
    code, err, out = datus(capsys, "propagate", run_dir, "--labels", labels,
                           "--label-format", "index")
    assert code == 0, err
    assert "3 images labelled from 2 labelled images" in out
    _, truth = two_colour(40, 2)
    mask = read_array(run_dir / "propagated" / "im2.png")
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert (mask == truth).mean() > 0.9
    # A labelled image keeps its labels.
    assert np.array_equal(read_array(run_dir / "propagated" / "im0.png"),
                          read_array(labels / "im0.png"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    block = metrics["propagated"]
    assert block["images"] == ["im2"] and block["labelled"] == 2
    assert block["mapping"] == {"0": 0, "1": 1} and block["miou"] > 0.8
    assert "initial" in metrics  # the run's own metrics stay
    run = read_run(run_dir)
    assert {f"propagated/im{i}.png" for i in range(3)} <= set(run.record.files)
    assert metrics["run_id"] == run.record.run_id
    assert denoise_inputs(run_dir).clusters == 2  # still a run datus denoise reads
    from napari_datus._reader import get_reader

    layers = get_reader(str(run_dir))(str(run_dir))  # and one napari reopens
    assert any(kwargs.get("name") == "im0" for _data, kwargs, _kind in layers)


def test_partial_labels_and_a_class_table_name_the_classes(run_dir, capsys):
    labels = run_dir.parent / "labels"
    for i in range(2):
        mask = read_array(labels / f"im{i}.png").copy()
        mask[:, 30:34] = 255  # not labelled near the middle
        Image.fromarray(mask).save(labels / f"im{i}.png")
    table = ClassMap([LabelClass("water", (0, 0, 255)), LabelClass("robot", (255, 0, 0))],
                     [0, 1])
    table.save(labels)
    code, err, _ = datus(capsys, "propagate", run_dir, "--labels", labels)
    assert code == 0, err
    filled = read_array(run_dir / "propagated" / "im0.png")
    assert (filled != 255).all()  # every pixel gets a class
    block = json.loads((run_dir / "metrics.json").read_text())["propagated"]
    assert block["matched_by"] == "id"  # "water"/"robot" are not the ground truth's names


def write_bad(labels, case):
    if case == "stem":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(labels / "zz.png")
    elif case == "size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(labels / "im1.png")
    elif case == "ids":
        ClassMap([LabelClass("a", (0, 0, 0)), LabelClass("b", (9, 9, 9))], [0, 1]).save(labels)
        Image.fromarray(np.full((H, W), 5, np.uint8)).save(labels / "im1.png")
    elif case == "empty":
        for i in range(2):
            Image.fromarray(np.full((H, W), 255, np.uint8)).save(labels / f"im{i}.png")


@pytest.mark.parametrize("case, message", [
    ("stem", "label file zz.png: the run in .* has no image 'zz'"),
    ("size", "label file im1.png is 10x10 but its image im1.png is 80x64"),
    ("ids", "label file im1.png holds class 5, but classes.json names 2 classes"),
    ("empty", "no labelled pixel in"),
])
def test_bad_labels_are_refused_with_one_line_and_nothing_written(run_dir, capsys, case,
                                                                  message):
    import re

    labels = run_dir.parent / "labels"
    write_bad(labels, case)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, err, _ = datus(capsys, "propagate", run_dir, "--labels", labels)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datus: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (run_dir / "propagated").exists()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_missing_label_folder_or_run_is_one_line(run_dir, capsys, tmp_path):
    code, err, _ = datus(capsys, "propagate", run_dir, "--labels", tmp_path / "nope")
    assert code == 1 and "label folder not found" in err
    code, err, _ = datus(capsys, "propagate", tmp_path / "norun", "--labels", tmp_path)
    assert code == 1 and "run.json not found" in err
