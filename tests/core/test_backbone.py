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
