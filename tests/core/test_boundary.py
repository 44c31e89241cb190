import numpy as np
import pytest

from napari_datus.core.boundary import (
    BoundaryScore,
    boundaries,
    boundary_counts,
    tolerance_pixels,
)
from napari_datus.core.errors import DatusError


def halves(width: int = 100, split: int = 50) -> np.ndarray:
    labels = np.zeros((80, width), dtype=np.int64)
    labels[:, split:] = 1
    return labels


def test_boundaries_mark_both_sides_of_a_change_and_not_the_image_border():
    edge = boundaries(halves(10, 4))
    assert edge[:, 3].all() and edge[:, 4].all()
    assert edge.sum() == 2 * 80
    assert not boundaries(np.zeros((5, 5), dtype=np.uint8)).any()


def test_tolerance_is_one_percent_of_the_diagonal():
    assert tolerance_pixels((480, 640)) == pytest.approx(8.0)


def test_identical_masks_score_one_and_a_far_edge_scores_zero():
    gt = halves()
    assert boundary_counts(gt, gt).f1 == 1.0
    far = halves(split=80)  # 30 px away, tolerance about 1.3 px
    assert boundary_counts(far, gt).f1 == 0.0


def test_an_edge_within_tolerance_counts_and_a_missing_edge_costs_recall():
    gt = halves(width=1000, split=500)
    near = halves(width=1000, split=505)  # tolerance 10 px
    assert boundary_counts(near, gt).f1 == 1.0
    flat = np.zeros_like(gt)
    counts = boundary_counts(flat, gt)
    assert counts.recall == 0.0 and counts.precision == 0.0 and counts.f1 == 0.0


def test_no_edge_in_either_is_perfect():
    flat = np.zeros((20, 20), dtype=np.int64)
    assert boundary_counts(flat, flat).f1 == 1.0


def test_dataset_score_is_the_mean_of_images():
    score = BoundaryScore()
    gt = halves()
    score.add(gt, gt)
    score.add(halves(split=80), gt)
    result = score.result()
    assert result["f1"] == pytest.approx(0.5)
    assert result["images"] == 2
    assert 0.0 < result["precision"] < 1.0


def test_shapes_must_agree():
    with pytest.raises(DatusError, match="differs"):
        boundary_counts(np.zeros((4, 4)), np.zeros((4, 5)))


def test_boundaries_equal_scikit_images_thick_boundaries():
    # Kept over find_boundaries: the same pixels, about 20x faster on 512x512 masks.
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(0)
    for i in range(300):
        h, w, k = int(rng.integers(1, 60)), int(rng.integers(1, 60)), int(rng.integers(1, 8))
        labels = rng.integers(0, k, (h, w))
        if i % 2:
            blocks = rng.integers(0, k, (h // 5 + 1, w // 5 + 1))
            labels = np.kron(blocks, np.ones((5, 5), dtype=int))[:h, :w]
        np.testing.assert_array_equal(boundaries(labels),
                                      find_boundaries(labels, mode="thick", connectivity=1))
