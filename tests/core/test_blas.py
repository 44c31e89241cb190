"""The merge grouping's k-means print no OpenBLAS warning and need no scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# As in a run: torch loaded, the per-image stages' BLAS limit made, then the restarts'
# k-means. With scikit-learn's k-means in parallel threads this printed 41 OpenBLAS warnings
# on 2 cores (a 300-image run: 9549); faiss's OpenBLAS is an OpenMP build.
SCRIPT = """
import sys
import numpy as np
import torch
from napari_datus.core.blas import one_blas_thread
with one_blas_thread():
    pass
from napari_datus.core.grouping import overclusterings
x = np.random.default_rng(0).normal(size=(300, 128)).astype(np.float32)
print(overclusterings(x / np.linalg.norm(x, axis=1, keepdims=True), 48, 0, 4).shape)
print("sklearn" in sys.modules)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS is single-threaded here")
def test_merge_kmeans_print_no_openblas_warning_and_import_no_scikit_learn():
    # Thread pools of their default size (the warning needs OpenBLAS threads), as for a user.
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",
                                                             "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(5,", "300)", "False"]
    assert "OpenBLAS Warning" not in done.stderr
    assert "WARNING" not in done.stderr  # faiss's too-few-points warning
