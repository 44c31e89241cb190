import numpy as np
import pytest
import timm
import torch

from napari_datus.core import features as features_module
from napari_datus.core.backbone import Backbone
from napari_datus.core.errors import DatusError
from napari_datus.core.features import (
    effective_precision,
    extract_features,
    extract_features_batch,
    forward_model,
    resize_image,
    uses_bf16,
)
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
    feats = extract_features(tiny_backbone, image, "fp32")
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


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """Set the CPU flags :func:`cpu_has_fast_bf16` reads (a fake /proc/cpuinfo)."""
    def set_flags(*flags: str) -> None:
        info = tmp_path / "cpuinfo"
        info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f " + " ".join(flags)
                        + "\n")
        monkeypatch.setattr(features_module, "CPUINFO", info)
        features_module.cpu_has_fast_bf16.cache_clear()

    yield set_flags
    features_module.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("flags, auto", [
    (("amx_tile", "amx_bf16"), "bf16"), (("avx512_bf16",), "bf16"), ((), "fp32"),
    (("amx_tile", "amx_int8"), "fp32"),
])
def test_auto_is_bf16_on_cpus_with_bf16_instructions(cpu_flags, flags, auto):
    cpu_flags(*flags)
    assert effective_precision("cpu", "auto") == auto
    assert uses_bf16("cpu", "auto") is (auto == "bf16")
    # Asked for, a precision is what it says on any CPU.
    assert effective_precision("cpu", "fp32") == "fp32"
    assert effective_precision("cpu", "bf16") == "bf16"


@pytest.mark.parametrize("bf16_supported, auto", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch, bf16_supported, auto):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    features_module.cuda_has_bf16.cache_clear()
    try:
        assert effective_precision("cuda", "auto") == auto
        assert effective_precision("cuda", "fp32") == "fp32"
    finally:
        features_module.cuda_has_bf16.cache_clear()


def test_bf16_runs_a_bf16_copy_of_the_weights(tiny_backbone, cpu_flags):
    cpu_flags("amx_bf16")
    model = forward_model(tiny_backbone, "auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert forward_model(tiny_backbone, "bf16") is model  # made once per model
    # The backbone's own model keeps its float32 weights for float32 runs.
    assert next(tiny_backbone.model.parameters()).dtype == torch.float32
    assert forward_model(tiny_backbone, "fp32") is tiny_backbone.model
    cpu_flags()
    assert forward_model(tiny_backbone, "auto") is tiny_backbone.model


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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_features_equal_single_image_features(tiny_backbone, rng, precision):
    images = [resize_image(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), 48)
              for _ in range(5)]
    batched = extract_features_batch(tiny_backbone, images, precision)
    single = [extract_features(tiny_backbone, image, precision) for image in images]
    assert len(batched) == 5
    # bf16 products may round differently in a batch: to bf16's precision.
    tol = 1e-5 if precision == "fp32" else 5e-2
    for b, s in zip(batched, single):
        assert b.grid == s.grid == 6
        for name in ("keys", "tokens", "queries", "values"):
            got, want = getattr(b, name), getattr(s, name)
            assert got.dtype == np.float32 and got.shape == want.shape == (36, 24)
            np.testing.assert_allclose(got, want, atol=tol * max(1.0, np.abs(want).max()))
        np.testing.assert_array_equal(b.key_bias, s.key_bias)
    # Each image's features are its own, not another's of the batch.
    assert not np.allclose(batched[0].tokens, batched[1].tokens)


def test_an_empty_batch_gives_no_features(tiny_backbone):
    assert extract_features_batch(tiny_backbone, []) == []


def test_the_bf16_copy_takes_no_hooks_of_the_original(tiny_backbone, cpu_flags, rng):
    cpu_flags("amx_bf16")
    from napari_datus.core.features import _CAST_MODELS

    _CAST_MODELS.pop(tiny_backbone.model, None)
    seen = []
    qkv = tiny_backbone.model.blocks[-1].attn.qkv
    handle = qkv.register_forward_hook(lambda *_: seen.append(1))
    try:
        copy = forward_model(tiny_backbone, "bf16")
    finally:
        handle.remove()
    extract_features(tiny_backbone, resize_image(rng.integers(0, 256, (32, 32, 3), np.uint8),
                                                 32), "bf16")
    assert seen == [] and not copy.blocks[-1].attn.qkv._forward_hooks
