import numpy as np
import pytest

from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import cluster_segments, paint_grid, upsample_nearest


def test_k_larger_than_segments_is_a_clear_error():
    with pytest.raises(DatusError, match="K=5 clusters but only 3 valid segments"):
        cluster_segments(np.eye(3, dtype=np.float32), 5)


def test_no_segments_at_all():
    with pytest.raises(DatusError, match="no valid segment"):
        cluster_segments(np.zeros((0, 4), dtype=np.float32), 2)


def test_kmeans_is_seeded_and_finds_separated_groups(rng):
    a = rng.normal(0, 0.01, (20, 8)) + np.eye(8)[0]
    b = rng.normal(0, 0.01, (20, 8)) + np.eye(8)[1]
    x = np.vstack([a, b]).astype(np.float32)
    labels = cluster_segments(x, 2, seed=4)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1
    assert labels[0] != labels[20]
    np.testing.assert_array_equal(labels, cluster_segments(x, 2, seed=4))


# Labels of a seeded k-means in a new process with another OpenMP thread count.
FRESH_PROCESS = """
import numpy as np
from napari_datus.core.pseudolabel import cluster_segments
x = np.random.default_rng(7).normal(size=(600, 64)).astype(np.float32)
w = np.random.default_rng(8).uniform(1, 4, 600)
print(cluster_segments(x, 48, seed=3, n_init=4, weights=w).tobytes().hex())
"""


def test_kmeans_gives_the_same_labels_run_to_run():
    import os
    import subprocess
    import sys

    x = np.random.default_rng(7).normal(size=(600, 64)).astype(np.float32)
    w = np.random.default_rng(8).uniform(1, 4, 600)
    labels = cluster_segments(x, 48, seed=3, n_init=4, weights=w)
    assert labels.dtype == np.uint8 and labels.shape == (600,) and len(set(labels)) > 40
    np.testing.assert_array_equal(labels, cluster_segments(x, 48, seed=3, n_init=4, weights=w))
    assert not np.array_equal(labels, cluster_segments(x, 48, seed=4, n_init=4, weights=w))
    for threads in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": threads},
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == labels.tobytes().hex()


def test_kmeans_weights_count():
    x = np.random.default_rng(1).normal(size=(300, 16)).astype(np.float32)
    plain = cluster_segments(x, 12, seed=0, n_init=2)
    np.testing.assert_array_equal(cluster_segments(x, 12, 0, 2, np.ones(300)), plain)
    heavy = np.where(np.arange(300) < 30, 100.0, 1.0)
    assert not np.array_equal(cluster_segments(x, 12, 0, 2, heavy), plain)


def test_many_centres_for_few_segments_print_no_warning(capfd):
    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    assert len(set(cluster_segments(x, 30, seed=0, n_init=2))) > 20
    assert "WARNING" not in capfd.readouterr().err


def test_paint_keeps_noise_unlabelled():
    segments = np.array([[0, 1], [2, 2]])
    np.testing.assert_array_equal(paint_grid(segments, np.array([3, 1])),
                                  [[255, 3], [1, 1]])


def test_upsample_is_nearest_and_exact_on_multiples():
    grid = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    up = upsample_nearest(grid, (4, 6))
    np.testing.assert_array_equal(up[:2, :3], 0)
    np.testing.assert_array_equal(up[2:, 3:], 255)
    assert up.dtype == np.uint8
    odd = upsample_nearest(grid, (37, 53))
    assert odd.shape == (37, 53) and set(np.unique(odd)) == {0, 1, 2, 255}


def test_upsample_equals_the_two_dimensional_gather():
    grid = np.random.default_rng(0).integers(0, 300, (16, 16)).astype(np.int32)
    for shape in ((480, 640), (37, 53), (16, 16), (7, 9)):
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * 16 / shape[0]).astype(int), 15)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * 16 / shape[1]).astype(int), 15)
        np.testing.assert_array_equal(upsample_nearest(grid, shape),
                                      grid[rows[:, None], cols[None, :]])


def test_fill_unlabelled_equals_scikit_images_expand_labels():
    # Kept over expand_labels (which makes the same distance transform): no faster, the
    # same labels.
    from skimage.segmentation import expand_labels

    from napari_datus.core.pseudolabel import UNLABELLED, fill_unlabelled

    rng = np.random.default_rng(0)
    for _ in range(300):
        g, k = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        grid = rng.integers(0, k, (g, g)).astype(np.uint8)
        grid[rng.random((g, g)) < rng.random()] = UNLABELLED
        ids = np.where(grid == UNLABELLED, 0, grid.astype(np.int32) + 1)
        expected = expand_labels(ids, distance=np.inf)
        expected = np.where(expected == 0, UNLABELLED, expected - 1).astype(np.uint8)
        np.testing.assert_array_equal(fill_unlabelled(grid), expected)


def test_kmeans_runs_faiss_on_one_thread_and_restores_its_setting(monkeypatch):
    import faiss

    seen = []
    train = faiss.Kmeans.train
    monkeypatch.setattr(faiss.Kmeans, "train", lambda self, *a, **k: seen.append(
        faiss.omp_get_max_threads()) or train(self, *a, **k))
    before = faiss.omp_get_max_threads()
    cluster_segments(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), 3)
    assert seen == [1] and faiss.omp_get_max_threads() == before
