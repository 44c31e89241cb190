import numpy as np
import pytest
import timm
import torch

from napari_datus.core.backbone import Backbone
from napari_datus.core.errors import DatusError
from napari_datus.core.features import extract_features, resize_image, uses_bf16
from tests.conftest import TINY_KWARGS


def test_keys_and_tokens_shapes(tiny_backbone, rng):
    image = resize_image(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), 48)
    feats = extract_features(tiny_backbone, image)
    assert feats.grid == 6
    assert feats.keys.shape == (36, 24) and feats.tokens.shape == (36, 24)
    assert feats.keys.dtype == np.float32


def test_keys_are_the_last_blocks_key_projection(tiny_backbone, rng):
    image = resize_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 32)
    captured = {}
    block = tiny_backbone.model.blocks[-1]
    handle = block.norm1.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    feats = extract_features(tiny_backbone, image)
    handle.remove()
    w, b = block.attn.qkv.weight[24:48], block.attn.qkv.bias[24:48]
    expected = (captured["x"][0, 1:] @ w.T + b).numpy()
    np.testing.assert_allclose(feats.keys, expected, atol=1e-5)
    np.testing.assert_allclose(feats.key_bias, b.numpy())


def test_register_tokens_are_dropped(rng):
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(**{**TINY_KWARGS, "reg_tokens": 4})
    bb = Backbone.from_module(net, device="cpu")
    feats = extract_features(bb, resize_image(rng.integers(0, 256, (40, 40, 3), np.uint8), 40))
    assert feats.keys.shape == (25, 24)


def test_resolution_must_be_a_multiple_of_the_patch(tiny_backbone):
    with pytest.raises(DatusError, match="not a multiple of the model's patch size 8"):
        extract_features(tiny_backbone, torch.zeros(3, 30, 30))


def test_resize_keeps_rgb_order():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    image[..., 0] = 255
    t = resize_image(image, 16)
    assert t.shape == (3, 16, 16)
    assert float(t[0].min()) > 0.99 and float(t[1:].max()) < 0.01


@pytest.mark.parametrize("device, precision, bf16", [
    ("cpu", "auto", False), ("cuda", "auto", True), ("cpu", "bf16", True),
    ("cuda", "fp32", False), ("cpu", "fp32", False),
])
def test_precision_decides_the_autocast(device, precision, bf16):
    assert uses_bf16(device, precision) is bf16


def test_unknown_precision_is_refused():
    with pytest.raises(DatusError, match="unknown precision"):
        uses_bf16("cpu", "fp8")


def test_bf16_features_are_close_to_float32(tiny_backbone, rng):
    image = resize_image(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), 48)
    exact = extract_features(tiny_backbone, image, "fp32")
    bf16 = extract_features(tiny_backbone, image, "bf16")
    assert bf16.tokens.dtype == np.float32
    cosine = (exact.tokens * bf16.tokens).sum(1) / (
        np.linalg.norm(exact.tokens, axis=1) * np.linalg.norm(bf16.tokens, axis=1))
    assert cosine.min() > 0.99
    assert not np.array_equal(exact.tokens, bf16.tokens)
