import pickle

import pytest
import timm
import torch

from napari_datus.core.backbone import Backbone, load_backbone, resolve_device
from napari_datus.core.errors import DatusError
from tests.conftest import TINY_KWARGS, make_tiny_vit


def test_geometry_is_read_from_the_model():
    net = timm.models.vision_transformer.VisionTransformer(**{**TINY_KWARGS, "reg_tokens": 2})
    bb = Backbone.from_module(net, device="cpu")
    assert (bb.patch_size, bb.embed_dim, bb.num_prefix_tokens, bb.input_size) == (8, 24, 3, 32)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_load_local_state_dict(tmp_path):
    net = make_tiny_vit(seed=3)
    path = tmp_path / "tiny.pth"
    torch.save(net.state_dict(), path)
    kwargs = {k: v for k, v in TINY_KWARGS.items() if k not in ("img_size", "dynamic_img_size",
                                                               "num_classes")}
    bb = load_backbone("vit_tiny_patch16_224", path, device="cpu", input_size=32, **kwargs)
    loaded = bb.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    assert bb.weights == str(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_corrupt_weights_give_one_clear_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(DatusError, match="corrupt or not a state dict"):
        load_backbone("vit_tiny_patch16_224", path, device="cpu")


def test_missing_weights_file(tmp_path):
    with pytest.raises(DatusError, match="weights file not found"):
        load_backbone("vit_tiny_patch16_224", tmp_path / "nope.pth", device="cpu")


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(make_tiny_vit().state_dict(), path)
    with pytest.raises(DatusError, match="does not fit model architecture"):
        load_backbone("vit_small_patch14_dinov2", path, device="cpu")


def test_unknown_model_name(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(make_tiny_vit().state_dict(), path)
    with pytest.raises(DatusError, match="unknown timm model"):
        load_backbone("no_such_model_xyz", path, device="cpu")


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DatusError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DatusError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty local hub cache and a hub address where nothing listens."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return tmp_path / "hub"


def test_unreachable_hub_is_one_line_without_cli_wording(no_hub):
    with pytest.raises(DatusError) as info:
        load_backbone("vit_small_patch8_224.dino", device="cpu")
    message = str(info.value)
    assert "cannot be reached" in message and "127.0.0.1" in message
    assert "\n" not in message and "--" not in message


def test_hub_model_loads_from_the_local_hub_cache_offline(no_hub):
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224.augreg_in21k"
    net = timm.create_model(name, pretrained=False, num_classes=21843)
    repo = no_hub / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(net.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    bb = load_backbone(name, device="cpu")
    assert bb.weights_source == "hub" and bb.weights_sha256 is None
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(bb.model.state_dict()[key], net.state_dict()[key])


def test_hub_keyword_asks_for_the_hub_even_for_the_default_architecture(no_hub):
    with pytest.raises(DatusError, match="cannot be reached"):
        load_backbone("vit_small_patch14_dinov2.lvd142m", "hub", device="cpu")


class NotATensor:
    """A Python object a plain state dict never holds."""


def tiny_kwargs(**extra):
    """TINY_KWARGS without what load_backbone sets itself."""
    skip = ("img_size", "dynamic_img_size", "num_classes")
    return {**{k: v for k, v in TINY_KWARGS.items() if k not in skip}, **extra}


def meta_dinov2_state(net, grid=8):
    """``net``'s weights in Meta's DINOv2 layout: a mask token and a position embedding for a
    ``grid`` x ``grid`` patch grid (the official ViT-S/14 file has 37 x 37, for 518 px)."""
    state = dict(net.state_dict())
    torch.manual_seed(1)
    state["pos_embed"] = torch.randn(1, 1 + grid * grid, net.embed_dim)
    state["mask_token"] = torch.zeros(1, net.embed_dim)
    return state


def test_meta_dinov2_checkpoint_loads(tmp_path):
    from timm.layers import resample_abs_pos_embed

    net = timm.models.vision_transformer.VisionTransformer(**{**TINY_KWARGS, "init_values": 1.0})
    state = meta_dinov2_state(net)
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(state, path)
    bb = load_backbone("vit_tiny_patch16_224", path, device="cpu", input_size=32,
                       **tiny_kwargs(init_values=1.0))
    loaded = bb.model.state_dict()
    assert "blocks.0.ls1.gamma" in loaded and "mask_token" not in loaded
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(4, 4), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=True)
    assert loaded["pos_embed"].shape == (1, 17, 24)
    torch.testing.assert_close(loaded["pos_embed"], expected)
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])


def test_position_embedding_of_no_grid_is_one_line(tmp_path):
    state = dict(make_tiny_vit().state_dict())
    state["pos_embed"] = torch.zeros(1, 1 + 10, 24)  # 10 patches make no square grid
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(DatusError, match="does not fit model architecture") as info:
        load_backbone("vit_tiny_patch16_224", path, device="cpu", input_size=32, **tiny_kwargs())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 4])
def test_unreadable_weights_are_one_line(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(DatusError, match="corrupt or not a state dict") as info:
        load_backbone("vit_tiny_patch16_224", path, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message


@pytest.mark.parametrize("save", [
    lambda obj, f: pickle.dump(obj, f, protocol=2),
    torch.save,
], ids=["pickle", "torch.save"])
def test_pickled_objects_are_refused_in_one_line(tmp_path, save):
    path = tmp_path / "objects.pth"
    with open(path, "wb") as f:
        save({"x": NotATensor()}, f)
    with pytest.raises(DatusError, match="Python objects that are not tensors") as info:
        load_backbone("vit_tiny_patch16_224", path, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_torch_cannot_read_are_one_line(tmp_path):
    path = tmp_path / "protocol4.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": NotATensor()}, f, protocol=4)  # torch reads no protocol 4 frames
    with pytest.raises(DatusError, match="not a PyTorch checkpoint") as info:
        load_backbone("vit_tiny_patch16_224", path, device="cpu")
    assert "\n" not in str(info.value)


def test_broken_safetensors_are_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(DatusError, match="corrupt or not a state dict") as info:
        load_backbone("vit_tiny_patch16_224", path, device="cpu")
    assert "\n" not in str(info.value)
