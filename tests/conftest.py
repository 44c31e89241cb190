"""Shared fixtures: a tiny random ViT, and paths to the shared SUIM data and weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from napari_datus.core.backbone import Backbone

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SUIM_IMAGES = SHARED / "data" / "suim_test" / "images"
SUIM_MASKS = SHARED / "data" / "suim_test" / "masks"
SHARED_WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus.pth"
# Tests with real weights honour DATUS_WEIGHTS, as the command and the widget do.
WEIGHTS = Path(os.environ.get("DATUS_WEIGHTS") or SHARED_WEIGHTS)
TINY_KWARGS = dict(patch_size=8, embed_dim=24, depth=2, num_heads=2, img_size=32,
                   dynamic_img_size=True, num_classes=0)


# Fixtures that need shared files: a test requesting one is marked ``shared`` and checked
# before any of its fixtures is set up (see pytest_runtest_setup).
SHARED_FIXTURES = {"mixed_folder": (SUIM_IMAGES,), "shared_backbone": (WEIGHTS,)}


def require_shared(*paths: Path) -> None:
    """Skip (or fail under ``DATUS_REQUIRE_SHARED=1``, as in CI) when shared files are absent.

    Call it in a test's body, or list the fixture in ``SHARED_FIXTURES``: a skip raised by a
    fixture set up after ``make_napari_viewer`` breaks napari's teardown.
    """
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        message = f"shared data not found: {', '.join(missing)}"
        if os.environ.get("DATUS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _shared_paths(item: pytest.Item) -> list[Path]:
    names = getattr(item, "fixturenames", ())
    return [p for name in names for p in SHARED_FIXTURES.get(name, ())]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a shared fixture ``shared`` (so ``-m shared`` selects it)."""
    for item in items:
        if _shared_paths(item):
            item.add_marker(pytest.mark.shared)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose shared fixtures lack their files before any fixture is set up."""
    paths = _shared_paths(item)
    if paths:
        require_shared(*paths)


def make_tiny_vit(seed: int = 0) -> torch.nn.Module:
    """A 2-block ViT with 8-pixel patches, random weights (seeded)."""
    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(**TINY_KWARGS)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """Keep every test's feature cache out of the user's cache folder."""
    monkeypatch.setenv("DATUS_CACHE_DIR", str(tmp_path_factory.mktemp("datus-cache")))


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    torch.set_num_threads(1)
    return Backbone.from_module(make_tiny_vit(), device="cpu", name="tiny")


@pytest.fixture(scope="session")
def shared_backbone() -> Backbone:
    require_shared(WEIGHTS)
    from napari_datus.core.backbone import load_backbone

    return load_backbone("vit_small_patch14_dinov2", WEIGHTS, device="cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
