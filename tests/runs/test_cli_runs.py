"""`datus run` and `datus denoise` through the run owner: nothing of the user's is lost."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from napari_datus import cli, commands
from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from tests.test_cli import TINY_ARGS, datus, folder, tiny_cli  # noqa: F401 (fixtures)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tiny_cli, folder, capsys) -> Path:  # noqa: F811
    out = folder / "out"
    assert datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                 "--gt-format", "suim8", *TINY_ARGS)[0] == 0
    return out


def test_a_run_leaves_no_lock_or_staging_files_and_names_every_folder(finished, capsys):
    assert not [p for p in finished.iterdir() if p.name.startswith(".")]
    record = json.loads((finished / "run.json").read_text())
    assert record["format"] == 2 and "pseudo_masks/im0.png" in record["files"]
    assert "pseudo_masks_colour/im0.png" in record["files"]


def test_the_summary_names_every_folder_written(tiny_cli, folder, capsys):  # noqa: F811
    out = folder / "out"
    assert cli.main([str(a) for a in ("run", folder / "images", "--out", out, "--gt",
                                      folder / "gt", "--gt-format", "suim8", *TINY_ARGS)]) == 0
    summary = capsys.readouterr().out
    for name in ("run.json", "partitions/", "segments/", "pseudo_masks/",
                 "pseudo_masks_colour/", "metrics.json"):
        assert name in summary


@pytest.mark.parametrize("option", [
    ["--resolution", "13"],  # not a multiple of the patch size
    ["--clusters", "99"],  # more clusters than segments: found only after the stages
    ["--dask-local", "0"],
    ["--dask-scheduler", "tcp://127.0.0.1:1"],
])
def test_a_failed_run_leaves_the_finished_run_byte_identical(finished, folder, capsys,  # noqa: F811
                                                            option):
    before = tree(finished)
    argv = ["run", folder / "images", "--out", finished, *TINY_ARGS, *option]
    code, err = datus(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) >= 1
    assert tree(finished) == before


def test_a_missing_gpu_is_refused_before_any_work(finished, folder, capsys, monkeypatch):  # noqa: F811
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = tree(finished)
    code, err = datus(capsys, "run", folder / "images", "--out", finished, *TINY_ARGS,
                      "--device", "cuda")
    assert code == 1 and "cuda" in err.lower()
    assert tree(finished) == before


def test_ground_truth_and_files_in_layout_folders_of_a_plain_folder_are_kept(
        tiny_cli, folder, capsys):  # noqa: F811
    # A project folder P that never held a run: its images, ground truth in class_masks/,
    # a note in segments/ and a classes.json of its own.
    project = folder / "P"
    shutil.copytree(folder / "images", project / "images")
    shutil.copytree(folder / "gt", project / "class_masks")
    (project / "segments").mkdir()
    (project / "segments" / "notes.txt").write_text("mine")
    (project / "classes.json").write_text("{}")
    before = tree(project)
    code, _ = datus(capsys, "run", project / "images", "--out", project, "--gt",
                    project / "class_masks", "--gt-format", "suim8", *TINY_ARGS)
    assert code == 0
    after = tree(project)
    assert {k: v for k, v in after.items() if k in before} == before
    # A second run replaces the first run's files and still keeps every one of the user's.
    code, _ = datus(capsys, "run", project / "images", "--out", project, "--gt",
                    project / "class_masks", "--gt-format", "suim8", *TINY_ARGS,
                    "--clusters", "3")
    assert code == 0
    assert {k: v for k, v in tree(project).items() if k in before} == before


def test_a_file_in_the_way_that_no_run_wrote_stops_the_run(tiny_cli, folder, capsys):  # noqa: F811
    out = folder / "out"
    (out / "pseudo_masks").mkdir(parents=True)
    (out / "pseudo_masks" / "im1.png").write_bytes(b"someone else's")
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)
    assert code == 1 and "no datus run wrote it" in err
    assert tree(out) == {"pseudo_masks/im1.png": hashlib.sha256(b"someone else's").hexdigest()}


def test_a_run_on_an_exports_own_images_keeps_them(finished, folder, capsys):  # noqa: F811
    # An export carries its images in exported_images/ and owns them.
    record = json.loads((finished / "run.json").read_text())
    (finished / "exported_images").mkdir()
    for stem in record["images"]:
        shutil.copy(folder / "images" / f"{stem}.png", finished / "exported_images")
        record["files"].append(f"exported_images/{stem}.png")
    (finished / "run.json").write_text(json.dumps(record))
    images = tree(finished / "exported_images")
    code, _ = datus(capsys, "run", finished / "exported_images", "--out", finished,
                    *TINY_ARGS)
    assert code == 0 and tree(finished / "exported_images") == images


@pytest.mark.parametrize("damage", [
    lambda r: r.update(edits={"im0": "12"}),
    lambda r: r.update(edits={"im0": {"pixels": "12"}}),
    lambda r: r.update(edits=["im0"]),
    lambda r: r.update(format=99),
    lambda r: r.update(images=["../../victim/evil"]),
    None,  # truncated
])
def test_a_damaged_record_is_never_taken_for_no_edits(finished, folder, capsys, damage):  # noqa: F811
    path = finished / "run.json"
    if damage is None:
        path.write_text(path.read_text()[:40])
    else:
        record = json.loads(path.read_text())
        damage(record)
        path.write_text(json.dumps(record))
    before = tree(finished)
    for extra in ([], ["--overwrite-edits"]):
        code, err = datus(capsys, "run", folder / "images", "--out", finished, *TINY_ARGS,
                          *extra)
        assert code == 1 and "run.json" in err and len(err.strip().splitlines()) == 1
    assert tree(finished) == before


def test_a_named_class_table_is_user_work(finished, folder, capsys):  # noqa: F811
    record = json.loads((finished / "run.json").read_text())
    classes = ClassMap.per_cluster(2)
    classes.rename(0, "fish")
    classes.save(finished)
    record["files"].append("classes.json")
    (finished / "run.json").write_text(json.dumps(record))
    argv = ["run", folder / "images", "--out", finished, *TINY_ARGS]
    code, err = datus(capsys, *argv)
    assert code == 1 and "1 named classes" in err and "--overwrite-edits" in err
    assert datus(capsys, *argv, "--overwrite-edits")[0] == 0
    assert not (finished / "classes.json").exists()  # the replaced run's own file


def test_stems_that_leave_the_folder_are_refused_by_denoise(finished, folder, capsys):  # noqa: F811
    victim = folder / "victim"
    victim.mkdir()
    (victim / "evil.png").write_bytes(b"keep me")
    record = json.loads((finished / "run.json").read_text())
    record["images"].append("../../victim/evil")
    (finished / "run.json").write_text(json.dumps(record))
    code, err = datus(capsys, "denoise", finished, "--denoise-epochs", "1", "--device", "cpu")
    assert code == 1 and "not a plain file name" in err
    assert (victim / "evil.png").read_bytes() == b"keep me"


def test_denoise_refuses_a_run_with_missing_pseudo_masks(finished, folder, capsys):  # noqa: F811
    (finished / "pseudo_masks" / "im1.png").unlink()
    code, err = datus(capsys, "denoise", finished, "--denoise-epochs", "1", "--device", "cpu")
    assert code == 1 and "1 images of the run have no pseudo mask (im1)" in err
    assert not (finished / "denoised").exists()


def test_the_pixel_limit_holds_with_a_warm_cache(tiny_cli, folder, capsys, monkeypatch):  # noqa: F811
    def argv(out):
        return ["run", folder / "images", "--out", folder / out, *TINY_ARGS]

    assert datus(capsys, *argv("warm"))[0] == 0  # fills the feature cache
    monkeypatch.setenv("DATUS_MAX_PIXELS", "1000")
    code, err = datus(capsys, *argv("out"))
    assert code == 1 and err.count("above the limit of 1,000") == 3


def test_a_setup_failure_stops_the_run_instead_of_skipping_images(folder, capsys,  # noqa: F811
                                                                monkeypatch):
    from napari_datus.core import backbone as backbone_module

    def broken(*args, **kwargs):
        raise DatusError("cannot write the converted weights to /nowhere")

    monkeypatch.setattr(backbone_module, "load_backbone", broken)
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS,
                      "--no-cache")
    assert code == 1 and "cannot write the converted weights" in err
    assert "skipped" not in err and not (out / "run.json").exists()


def test_interrupted_denoise_keeps_the_run(finished, capsys, monkeypatch):
    from napari_datus import denoise_run

    before = tree(finished)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, as denoise_pairs is

    monkeypatch.setattr(denoise_run, "denoise_pairs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        denoise_run.denoise_run(finished, commands.DenoiseConfig(epochs=1, device="cpu"))
    assert tree(finished) == before


def test_an_image_without_ground_truth_gets_a_warning_line(tiny_cli, folder, capsys):  # noqa: F811
    (folder / "gt" / "im1.png").unlink()
    code, err = datus(capsys, "run", folder / "images", "--out", folder / "out", "--gt",
                      folder / "gt", "--gt-format", "suim8", *TINY_ARGS)
    assert code == 0
    lines = [line for line in err.splitlines() if "im1" in line and "warning" in line]
    assert len(lines) == 1 and "no ground-truth file" in lines[0]


def test_a_failed_background_write_stops_the_run_and_keeps_the_old_one(finished, folder,  # noqa: F811
                                                                     capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise DatusError("cannot write pseudo_masks/im1.png: No space left on device")

    monkeypatch.setattr(commands, "write_pseudo_mask", full_disk)
    before = tree(finished)
    code, err = datus(capsys, "run", folder / "images", "--out", finished, *TINY_ARGS,
                      "--clusters", "3")
    assert code == 1 and "No space left on device" in err
    assert tree(finished) == before
