import numpy as np
import torch

from napari_datus.core.embeddings import (
    crop_cls_embeddings,
    masked_crops,
    pooled_token_embeddings,
)


def test_crops_black_out_everything_outside_the_segment():
    image = torch.ones(3, 32, 32)
    segments = np.zeros((4, 4), dtype=np.int32)
    segments[0:2, 0:2] = 1
    segments[1, 1] = 2
    segments[3, 3] = 2
    crops = list(masked_crops(image, segments, patch_size=8, out_size=16))
    assert len(crops) == 2
    # segment 1 is an L of three patches in a 2x2 box: the box's lower-right quarter is black
    assert float(crops[0][:, 12:, 12:].max()) == 0.0
    assert float(crops[0][:, :4, :4].min()) > 0.99
    # segment 2 spans the whole grid diagonally: its box is the whole image, mostly black
    assert float(crops[1].mean()) < 0.3


def test_crop_is_the_tight_box():
    image = torch.zeros(3, 32, 32)
    image[:, 8:16, 16:32] = 0.5
    segments = np.zeros((4, 4), dtype=np.int32)
    segments[1, 2:4] = 1
    (crop,) = masked_crops(image, segments, patch_size=8, out_size=8)
    assert torch.allclose(crop, torch.full_like(crop, 0.5), atol=1e-5)


def test_crop_cls_embeddings_are_unit_rows(tiny_backbone):
    segments = np.zeros((4, 4), dtype=np.int32)
    segments[:2] = 1
    segments[2:] = 2
    emb = crop_cls_embeddings(tiny_backbone, torch.rand(3, 32, 32), segments, batch_size=1)
    assert emb.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_pooled_tokens_are_normalised_segment_means():
    tokens = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    segments = np.zeros((4, 4), dtype=np.int32)
    segments[0] = 1
    emb = pooled_token_embeddings(tokens, segments)
    mean = tokens[:4].mean(axis=0)
    np.testing.assert_allclose(emb[0], mean / np.linalg.norm(mean), rtol=1e-6)
