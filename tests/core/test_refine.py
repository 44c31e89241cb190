import numpy as np
import pytest

from napari_datus.core.boundary import boundary_counts
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.core.refine import (
    box_sum,
    guided_filter,
    refine_guided,
    refine_mask,
    upsample_bilinear,
)


def test_box_sum_matches_a_direct_window_sum(rng):
    x = rng.random((7, 9, 2))
    out = box_sum(x, 1)
    np.testing.assert_allclose(out[3, 4], x[2:5, 3:6].sum(axis=(0, 1)))
    np.testing.assert_allclose(out[0, 0], x[:2, :2].sum(axis=(0, 1)))  # clipped at borders


def test_guided_filter_keeps_a_constant_and_follows_the_guide(rng):
    guide = np.zeros((20, 20, 3))
    guide[:, 10:] = 1.0
    const = np.full((20, 20, 1), 0.3)
    np.testing.assert_allclose(guided_filter(guide, const, 3), const, atol=1e-4)
    src = guide[..., :1].copy()
    out = guided_filter(guide, src, 3, eps=1e-4)
    assert np.abs(out - src).max() < 0.05  # a step the guide shares survives the smoothing


def test_bilinear_upsampling_interpolates_between_patch_centres():
    scores = np.array([[0.0, 1.0]])[..., None]
    out = upsample_bilinear(scores, (1, 4))[0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.25, 0.75, 1.0])


def step_image(height: int = 96, width: int = 128, edge: int = 70) -> np.ndarray:
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    image[:, edge:] = 220
    return image


def test_guided_refinement_moves_a_patch_edge_onto_the_image_edge():
    image = step_image()
    truth = np.zeros(image.shape[:2], dtype=np.int64)
    truth[:, 70:] = 1
    grid = np.zeros((6, 8), dtype=np.uint8)
    grid[:, 4:] = 1  # patch edge at x = 64, the image edge is at 70
    nearest = upsample_nearest(grid, image.shape[:2])
    refined = refine_guided(grid, image)
    assert refined.dtype == np.uint8 and refined.shape == image.shape[:2]
    assert (refined != truth).sum() < (nearest != truth).sum()
    assert boundary_counts(refined, truth, 0.01).f1 > boundary_counts(nearest, truth, 0.01).f1


def test_refinement_keeps_labels_it_was_given_and_unlabelled_stays_possible():
    image = step_image()
    grid = np.full((6, 8), UNLABELLED, dtype=np.uint8)
    grid[:, :4] = 3
    refined = refine_guided(grid, image)
    assert set(np.unique(refined)) <= {3, UNLABELLED}
    assert (refined == UNLABELLED).any()


def test_refinement_is_deterministic_and_single_label_grids_pass_through():
    image = step_image()
    grid = np.zeros((6, 8), dtype=np.uint8)
    grid[2:, 3:] = 1
    np.testing.assert_array_equal(refine_guided(grid, image), refine_guided(grid, image))
    flat = np.full((6, 8), 2, dtype=np.uint8)
    assert (refine_guided(flat, image) == 2).all()


def test_large_images_are_filtered_downscaled_and_returned_full_size():
    image = step_image(300, 400, 210)
    grid = np.zeros((6, 8), dtype=np.uint8)
    grid[:, 4:] = 1
    out = refine_guided(grid, image, max_side=100)
    assert out.shape == (300, 400)


def test_refine_mask_dispatch_and_errors():
    grid = np.zeros((2, 2), dtype=np.uint8)
    np.testing.assert_array_equal(refine_mask(grid, (4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(DatusError, match="unknown refine"):
        refine_mask(grid, (4, 4), "crf", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatusError, match="needs the image"):
        refine_mask(grid, (4, 4), "guided")
    with pytest.raises(DatusError, match="image is"):
        refine_mask(grid, (4, 4), "guided", np.zeros((5, 4, 3), np.uint8))
