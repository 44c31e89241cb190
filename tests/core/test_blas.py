"""The parallel k-means of the merge grouping run without OpenBLAS's nested-OpenMP warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# As in a run: torch loaded, the per-image stages' BLAS limit made before scikit-learn (and
# with it scipy's own OpenBLAS) is imported, then the restarts' k-means in parallel. Without
# the limit on scipy's OpenBLAS this printed 41 warnings on 2 cores (a 300-image run: 9549).
SCRIPT = """
import numpy as np
import torch
from napari_datus.core.blas import one_blas_thread
with one_blas_thread():
    pass
from napari_datus.core.grouping import overclusterings
x = np.random.default_rng(0).normal(size=(300, 128)).astype(np.float32)
print(overclusterings(x / np.linalg.norm(x, axis=1, keepdims=True), 48, 0, 4).shape)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS is single-threaded here")
def test_parallel_kmeans_print_no_openblas_warning():
    # Thread pools of their default size (the warning needs OpenBLAS threads), as for a user.
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",
                                                             "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(5, 300)"
    assert "OpenBLAS Warning" not in done.stderr
