"""`datus` shows Python warnings as one plain line each, and names a too large --gt-ignore."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from napari_datus import cli, commands
from napari_datus.cache import CacheWarning


def test_warnings_are_one_plain_line_each(monkeypatch, capsys):
    def run(_args):
        warnings.warn("cache folder /x is not writable;\n  the run goes on uncached",
                      CacheWarning, stacklevel=2)
        warnings.warn("a library's own warning", UserWarning, stacklevel=2)

    monkeypatch.setitem(commands.COMMANDS, "run", run)
    before = warnings.showwarning
    assert cli.main(["run", "images", "--out", "out"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "datus: warning: cache folder /x is not writable; the run goes on uncached",
        "datus: warning: a library's own warning"]
    assert warnings.showwarning is before  # Python's display is back after the command


def test_a_cache_warning_of_a_real_run_is_one_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
            images / f"im{i}.png")
    (tmp_path / "blocker").write_bytes(b"")  # the cache folder cannot be made under a file
    # The tiny random ViT in place of the real weights, in a fresh `datus` process.
    script = ("import sys; from napari_datus import cli, commands;"
              " from tests.conftest import make_tiny_vit;"
              " from napari_datus.core.backbone import Backbone;"
              " commands.run_backbone = lambda *a, **k: Backbone.from_module("
              "make_tiny_vit(), device='cpu', name='tiny');"
              " sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "DATUS_CACHE_DIR": str(tmp_path / "blocker" / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script, "run", str(images), "--out", str(tmp_path / "out"),
         "--resolution", "32", "--clusters", "2", "--tau", "1", "--n-init", "1"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "arning" in line]
    assert lines and all(line.startswith("datus: warning: ") for line in lines), lines
    assert any("cache" in line for line in lines), lines
    assert "CacheWarning" not in done.stderr and "warnings.warn" not in done.stderr


@pytest.mark.parametrize(("value", "message"), [
    ("99999999999999999999", "ignore value 99999999999999999999 is too large"),
    ("-3", "ignore value must be >= 0")])
def test_a_bad_gt_ignore_is_named(tmp_path, capsys, value, message):
    (tmp_path / "images").mkdir()
    code = cli.main(["run", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                     "--gt-ignore", value])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.splitlines()) == 1
