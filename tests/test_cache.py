"""The feature cache: hits skip the ViT and Louvain, keys cover the settings, bad entries heal."""

import os
import signal
import stat
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from napari_datus import cache as cache_module
from napari_datus import stages
from napari_datus.cache import CacheWarning, ComponentEmbeddings, FeatureCache, file_sources
from napari_datus.core.backbone import Backbone
from napari_datus.core.features import PatchFeatures, forward_model
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


class Counters:
    """Images through several wrapped functions together."""

    def __init__(self, counters: list[Counter]) -> None:
        self.counters = counters

    @property
    def images(self) -> int:
        return sum(c.images for c in self.counters)


@pytest.fixture
def vit(monkeypatch, tiny_backbone):
    """Counts images through the tiny ViT (keys forwards plus crop forwards), float32 or the
    bf16 copy ``auto`` runs the keys forward in on a CPU with bf16 instructions."""
    models = {id(m): m for m in (tiny_backbone.model, forward_model(tiny_backbone, "auto"))}
    counters = []
    for model in models.values():
        counters.append(Counter(model.forward_features))
        monkeypatch.setattr(model, "forward_features", counters[-1])
    return Counters(counters)


@pytest.fixture
def louvain(monkeypatch):
    counter = Counter(stages.louvain)
    monkeypatch.setattr(stages, "louvain", counter)
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
    per_image = [p for p in entries if "overclusterings" not in p.parts]
    assert len(per_image) == 3 * len(images)  # features, partition, embeddings
    assert len(entries) == len(per_image) + 1  # and the merge grouping's overclusterings
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


def entry_kind(path):
    """``features``, ``partition`` or ``embeddings`` for an entry path."""
    return path.parent.parent.name


@pytest.fixture
def fail_if_blocked():
    """Turn a read that blocks (e.g. on a FIFO) into a failure instead of a hung run."""
    def blocked(*_):
        pytest.fail("a cache read blocked")  # not an OSError, which the cache would swallow

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_entries_are_misses_and_replaced(tiny_backbone, images, tmp_path, vit,
                                              fail_if_blocked):
    cache = FeatureCache(tmp_path)
    first = segment(images, tiny_backbone, tiny_params(), cache)
    entries = list(tmp_path.rglob("*.npz"))
    for path in entries:
        path.unlink()
        os.mkfifo(path)
    assert_same(first, segment(images, tiny_backbone, tiny_params(), cache))
    assert cache.enabled and all(stat.S_ISREG(path.stat().st_mode) for path in entries)
    segment(images, tiny_backbone, tiny_params(), cache)
    assert vit.images == 2 * len(images)  # the rewritten entries hit


def test_folders_in_place_of_entries(tiny_backbone, images, tmp_path, vit):
    cache = FeatureCache(tmp_path)
    first = segment(images, tiny_backbone, tiny_params(), cache)
    features = sorted(p for p in tmp_path.rglob("*.npz") if entry_kind(p) == "features")
    for path in tmp_path.rglob("*.npz"):
        path.unlink()  # partitions and embeddings go too, so that the features are read
    for path in features:
        path.mkdir()
    (features[0] / "user-file").write_text("")  # a folder that is not empty stays
    with pytest.warns(CacheWarning, match="cannot be replaced"):
        healed = segment(images, tiny_backbone, tiny_params(), cache)
    assert_same(first, healed)
    assert cache.enabled and (features[0] / "user-file").exists()
    assert all(path.is_file() for path in features[1:])


def test_entries_get_the_umask_mode_and_leave_no_temporary_files(tmp_path):
    cache = FeatureCache(tmp_path)
    previous = os.umask(0o027)
    try:
        cache.put_partition("ab" * 16, np.zeros((4, 4), dtype=np.int32), (32, 32),
                            np.ones((4, 4), dtype=np.int32))
    finally:
        os.umask(previous)
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert entry.name == "ab" * 16 + ".npz"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o640
    assert cache.partition("ab" * 16) is not None


def tiny_features(grid=4, dim=24, dtype=np.float32):
    rng = np.random.default_rng(0)
    return PatchFeatures(keys=rng.random((grid * grid, dim)).astype(dtype),
                         key_bias=np.zeros(dim, dtype=dtype),
                         tokens=rng.random((grid * grid, dim)).astype(dtype), grid=grid)


def test_features_of_another_geometry_are_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put_features("a" * 32, tiny_features(dim=32))
    cache.put_features("b" * 32, tiny_features(grid=5))
    cache.put_features("c" * 32, tiny_features(dtype=np.float64))
    assert cache.features("a" * 32, grid=4, dim=32) is not None
    assert cache.features("a" * 32, grid=4, dim=24) is None
    assert cache.features("b" * 32, grid=4, dim=24) is None
    assert cache.features("c" * 32) is None


def test_features_whose_arrays_disagree_are_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    odd = replace(tiny_features(), tokens=np.zeros((16, 32), dtype=np.float32))
    cache.put_features("a" * 32, odd)
    cache.put_features("b" * 32, replace(tiny_features(), queries=np.zeros((9, 24), np.float32)))
    assert cache.features("a" * 32) is None and cache.features("b" * 32) is None


def test_partitions_of_another_grid_are_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    ones = np.ones((5, 5), dtype=np.int32)
    cache.put_partition("a" * 32, np.zeros((5, 5), dtype=np.int32), (32, 32), ones)
    cache.put_partition("b" * 32, np.zeros((4, 5), dtype=np.int32), (32, 32), ones[:4])
    cache.put_partition("c" * 32, np.zeros((4, 4), dtype=np.float32), (32, 32), ones[:4, :4])
    cache.put_partition("d" * 32, np.zeros((5, 5), dtype=np.int32), (32, 32), ones[:4])
    assert cache.partition("a" * 32, grid=5) is not None
    assert cache.partition("a" * 32, grid=4) is None
    assert all(cache.partition(c * 32) is None for c in "bcd")


def test_embeddings_of_another_width_or_count_are_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    ids = np.arange(1, 4, dtype=np.int32)
    cases = {"a": np.zeros((3, 32), np.float32), "b": np.zeros((2, 24), np.float32),
             "c": np.zeros((3, 24), np.float64), "d": np.zeros(3, np.float32)}
    for name, vectors in cases.items():
        cache.put_embeddings(name * 32, ComponentEmbeddings(ids, vectors))
    assert cache.embeddings("a" * 32, dim=32).ids.size == 3
    assert all(cache.embeddings(name * 32, dim=24).vectors is None for name in cases)


def test_entries_of_another_width_are_recomputed(tiny_backbone, images, tmp_path, vit):
    cache = FeatureCache(tmp_path)
    first = segment(images, tiny_backbone, tiny_params(), cache)
    for path in tmp_path.rglob("*.npz"):
        if entry_kind(path) == "embeddings":
            path.unlink()  # the embeddings are made again, from the features
        elif entry_kind(path) == "features":
            with np.load(path) as npz:
                arrays = dict(npz)
            arrays["tokens"] = np.zeros((arrays["tokens"].shape[0], 32), np.float32)
            with open(path, "wb") as f:
                np.savez(f, **arrays)
    assert_same(first, segment(images, tiny_backbone, tiny_params(), cache))
    assert vit.images == 2 * len(images)


@pytest.mark.parametrize("flags, same_as", [(("amx_bf16",), "bf16"), ((), "fp32")])
def test_auto_shares_the_entries_of_the_precision_it_runs(tiny_backbone, monkeypatch,
                                                          tmp_path, flags, same_as):
    from napari_datus.core import features

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu avx2 " + " ".join(flags) + "\n")
    monkeypatch.setattr(features, "CPUINFO", info)
    features.cpu_has_fast_bf16.cache_clear()
    try:
        keys = {p: cache_module.stage_keys("content", tiny_backbone, tiny_params(precision=p))
                for p in ("auto", "fp32", "bf16")}
    finally:
        features.cpu_has_fast_bf16.cache_clear()
    other = "fp32" if same_as == "bf16" else "bf16"
    assert keys["auto"] == keys[same_as]
    assert keys["auto"].features != keys[other].features
