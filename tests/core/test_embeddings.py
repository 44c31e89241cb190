import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from napari_datus.core.backbone import Backbone
from napari_datus.core.embeddings import (
    crop_cls_embeddings,
    l2_normalize,
    masked_crops,
    pooled_token_embeddings,
)
from napari_datus.core.features import normalize
from tests.conftest import TINY_KWARGS


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


@pytest.mark.parametrize("pool", ["avg", ""])
def test_crop_cls_without_a_class_token_pools_the_patch_tokens(pool):
    net = VisionTransformer(**{**TINY_KWARGS, "class_token": False, "global_pool": pool})
    backbone = Backbone.from_module(net, device="cpu")
    segments = np.zeros((4, 4), dtype=np.int32)
    segments[:, :2] = 1
    image = torch.rand(3, 32, 32)
    emb = crop_cls_embeddings(backbone, image, segments, precision="fp32")
    (crop,) = masked_crops(image, segments, 8, 32)
    with torch.inference_mode():
        tokens = net.forward_features(normalize(crop[None]))
        mean = net.fc_norm(tokens.mean(dim=1))  # timm's avg pooling; Identity for pool ""
    np.testing.assert_allclose(emb, l2_normalize(mean.numpy()), atol=1e-6)
    assert not np.allclose(emb, l2_normalize(tokens[:, 0].numpy()), atol=1e-3)


def test_crop_cls_is_the_class_token(tiny_backbone):
    segments = np.ones((4, 4), dtype=np.int32)
    image = torch.rand(3, 32, 32)
    (crop,) = masked_crops(image, segments, 8, 32)
    with torch.inference_mode():
        cls = tiny_backbone.model.forward_features(normalize(crop[None]))[:, 0]
    emb = crop_cls_embeddings(tiny_backbone, image, segments, precision="fp32")
    np.testing.assert_allclose(emb, l2_normalize(cls.numpy()), atol=1e-6)
