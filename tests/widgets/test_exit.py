"""A process with two viewers and a DatUS dock exits cleanly (it ended in a segfault).

Each case runs in a fresh process, since the crash was in PyQt's clean-up at interpreter
exit. Which case crashed depends on how many Qt objects are wrapped: a pipeline dock alone
is the issue's case; the others crashed without the fix here (napari 0.9.2, PyQt6 6.11,
Xvfb), and every one exits 0 with it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("two_viewers.py")
PIPELINE, METRICS = "DatUS pipeline", "DatUS metrics"


@pytest.mark.slow
@pytest.mark.parametrize("docks, labels", [
    (PIPELINE, 0), (PIPELINE, 3), (METRICS, 0), (METRICS, 4), (f"{PIPELINE},{METRICS}", 0)])
def test_two_viewers_with_a_dock_exit_cleanly(docks, labels):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run the tests under xvfb-run")
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "xcb")}
    proc = subprocess.run([sys.executable, str(SCRIPT), docks, str(labels)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert "exiting" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
