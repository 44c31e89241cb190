"""The feature cache: hits skip the ViT and Louvain, keys cover the settings, bad entries heal."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from napari_datus import cache as cache_module
from napari_datus import pipeline
from napari_datus.cache import CacheWarning, FeatureCache, file_sources
from napari_datus.core.backbone import Backbone
from napari_datus.pipeline import array_sources, drive, run
from tests.conftest import make_tiny_vit
from tests.test_pipeline import blocky_images, tiny_params


class Counter:
    """Wraps a function and counts calls (and, for the ViT, images through it)."""

    def __init__(self, fn):
        self.fn, self.calls, self.images = fn, 0, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.images += int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0
        return self.fn(*args, **kwargs)


@pytest.fixture
def vit(monkeypatch, tiny_backbone):
    """Counts images through the tiny ViT (keys forwards plus crop forwards)."""
    counter = Counter(tiny_backbone.model.forward_features)
    monkeypatch.setattr(tiny_backbone.model, "forward_features", counter)
    return counter


@pytest.fixture
def louvain(monkeypatch):
    counter = Counter(pipeline.louvain)
    monkeypatch.setattr(pipeline, "louvain", counter)
    return counter


@pytest.fixture
def images():
    return blocky_images(4)


def segment(images, backbone, params, cache=None):
    return drive(run(array_sources(images), len(images), params, backbone, cache=cache))


def assert_same(a, b, exact=True):
    for x, y in zip(a.results, b.results):
        assert x.stem == y.stem and x.shape == y.shape
        np.testing.assert_array_equal(x.partition, y.partition)
        np.testing.assert_array_equal(x.segments.valid, y.segments.valid)
        if exact:
            np.testing.assert_array_equal(x.embeddings, y.embeddings)
        else:
            np.testing.assert_allclose(x.embeddings, y.embeddings, atol=1e-5)
    for x, y in zip(a.clusters, b.clusters):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("embedding", ["pooled-tokens", "crop-cls"])
def test_cached_runs_equal_the_uncached_run(tiny_backbone, images, tmp_path, embedding):
    params = tiny_params(embedding=embedding)
    plain = segment(images, tiny_backbone, params)
    cache = FeatureCache(tmp_path)
    cold = segment(images, tiny_backbone, params, cache)
    warm = segment(images, tiny_backbone, params, cache)
    # crop-cls embeds components in batches of another make-up on the cold run
    assert_same(plain, cold, exact=embedding == "pooled-tokens")
    assert_same(cold, warm)


def test_another_k_runs_neither_the_vit_nor_louvain(tiny_backbone, images, tmp_path, vit,
                                                    louvain):
    cache = FeatureCache(tmp_path)
    segment(images, tiny_backbone, tiny_params(clusters=2), cache)
    assert vit.images == len(images) and louvain.calls == len(images)
    again = segment(images, tiny_backbone, tiny_params(clusters=3), cache)
    assert vit.images == len(images) and louvain.calls == len(images)
    assert {int(c) for cl in again.clusters for c in cl} == {0, 1, 2}


def test_another_tau_resplits_but_embeds_only_new_crops(tiny_backbone, images, tmp_path, vit,
                                                        louvain):
    params = tiny_params(embedding="crop-cls", tau=3)
    cache = FeatureCache(tmp_path)
    first = segment(images, tiny_backbone, params, cache)
    crops_before = vit.images - len(images)
    assert crops_before == sum(r.segments.n_valid for r in first.results)
    lower = segment(images, tiny_backbone, replace(params, tau=0), cache)
    new_segments = sum(r.segments.n_valid for r in lower.results) - crops_before
    assert new_segments > 0
    # no keys forward and no Louvain again: only the crops of newly valid segments
    assert vit.images == len(images) + crops_before + new_segments
    assert louvain.calls == len(images)
    assert_same(lower, segment(images, tiny_backbone, replace(params, tau=0)), exact=False)


@pytest.mark.parametrize("change", [{"resolution": 48}, {"affinity": "keys-centred"},
                                    {"seed": 1}, {"self_loops": True},
                                    {"partition": "python-louvain"}])
def test_settings_that_change_the_partition_miss_the_cache(tiny_backbone, images, tmp_path,
                                                           louvain, change):
    cache = FeatureCache(tmp_path)
    segment(images, tiny_backbone, tiny_params(), cache)
    segment(images, tiny_backbone, tiny_params(**change), cache)
    assert louvain.calls == 2 * len(images)


def test_other_weights_miss_the_cache(tiny_backbone, images, tmp_path, louvain):
    cache = FeatureCache(tmp_path)
    other = Backbone.from_module(make_tiny_vit(seed=1), device="cpu", name="tiny")
    segment(images, tiny_backbone, tiny_params(), cache)
    segment(images, other, tiny_params(), cache)
    assert louvain.calls == 2 * len(images)


def test_file_sources_hit_without_decoding(tiny_backbone, images, tmp_path, monkeypatch, vit):
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(img).save(paths[-1])
    decodes = Counter(cache_module.read_image)
    monkeypatch.setattr(cache_module, "read_image", decodes)
    cache = FeatureCache(tmp_path / "cache")
    for _ in range(2):
        drive(run(file_sources(paths), len(paths), tiny_params(), tiny_backbone, cache=cache))
    assert decodes.calls == len(images) and vit.images == len(images)


def test_corrupt_entries_are_recomputed(tiny_backbone, images, tmp_path, vit):
    cache = FeatureCache(tmp_path)
    first = segment(images, tiny_backbone, tiny_params(), cache)
    entries = list(tmp_path.rglob("*.npz"))
    assert len(entries) == 3 * len(images)  # features, partition, embeddings
    for i, path in enumerate(entries):
        path.write_bytes(b"not an npz" if i % 2 else path.read_bytes()[:50])
    healed = segment(images, tiny_backbone, tiny_params(), cache)
    assert_same(first, healed)
    assert vit.images == 2 * len(images)
    segment(images, tiny_backbone, tiny_params(), cache)
    assert vit.images == 2 * len(images)  # the rewritten entries hit


def test_unusable_folder_warns_and_runs_uncached(tiny_backbone, images, tmp_path, vit):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(CacheWarning, match="not writable"):
        cache = FeatureCache(blocker / "cache")
    assert not cache.enabled
    segment(images, tiny_backbone, tiny_params(), cache)
    segment(images, tiny_backbone, tiny_params(), cache)
    assert vit.images == 2 * len(images)


def test_disabled_cache_writes_nothing(tiny_backbone, images, tmp_path):
    segment(images, tiny_backbone, tiny_params(), FeatureCache(tmp_path / "c", enabled=False))
    assert not (tmp_path / "c").exists()


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATUS_CACHE_DIR", str(tmp_path / "env-cache"))
    assert FeatureCache().root == tmp_path / "env-cache"
