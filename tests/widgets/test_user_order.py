"""The user's order in a fresh process: napari's canvas, then the DatUS dock, then Run.

In one pytest process the torch stack is imported at collection, before any canvas, which
hides the crash this guards against (triton's LLVM against the GL driver's); hence the
subprocess. On Mesa's software GL with the registry's torch, this test dies with SIGSEGV
without :mod:`napari_datus.core.triton_guard`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_datus.core.triton_guard import ALLOW_ENV

SCRIPT = Path(__file__).with_name("user_order.py")
SAMPLE = Path(__file__).resolve().parents[2] / "src/napari_datus/sample_data/images/d_r_598_.jpg"


@pytest.mark.slow
def test_plugin_opens_and_runs_after_the_canvas_exists():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run the tests under xvfb-run")
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(SAMPLE)], env=env,
                          capture_output=True, text=True, timeout=600)
    report = (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
              f"stderr (tail):\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, report
    assert "gl llvm loaded" in proc.stdout, report
    assert "torch after dock: False" in proc.stdout, report  # the dock opens without torch
    layers = proc.stdout.split("layers: ")[1].splitlines()[0].split(", ")
    assert {"sample pseudo mask", "sample segments", "sample partitions"} <= set(layers), report
