import numpy as np
import pytest

from napari_datus import clustering
from napari_datus.cache import FeatureCache
from napari_datus.core.segments import Segments
from napari_datus.pipeline import ImageResult, Params


def results(rng, images=3, segments=12, dim=8):
    """Image results with ``segments`` valid segments each and random embeddings."""
    out = []
    for i in range(images):
        valid = np.arange(1, segments + 1, dtype=np.int32).reshape(3, 4)
        segs = Segments(components=valid, valid=valid, sizes=rng.integers(1, 5, segments),
                        n_noise=0)
        out.append(ImageResult(f"im{i}", (3, 4), valid, segs,
                               rng.normal(size=(segments, dim)).astype(np.float32)))
    return out


@pytest.fixture
def merge_params():
    return Params(clusters=3, overcluster=10, n_init=2, seed=4)


def test_another_k_reuses_the_stored_overclusterings_and_matches_a_fresh_run(
        rng, tmp_path, merge_params, monkeypatch):
    data, cache = results(rng), FeatureCache(tmp_path / "cache")
    first = clustering.cluster(data, merge_params, cache)
    assert len(list((tmp_path / "cache" / "overclusterings").rglob("*.npz"))) == 1
    fresh = {k: clustering.cluster(data, Params(**{**merge_params.to_dict(), "clusters": k}))
             for k in (2, 5)}

    def no_kmeans(*args, **kwargs):
        raise AssertionError("the overclusterings were computed again")

    monkeypatch.setattr(clustering, "overclusterings", no_kmeans)
    for a, b in zip(first, clustering.cluster(data, merge_params, cache)):
        np.testing.assert_array_equal(a, b)
    for k, expected in fresh.items():
        params = Params(**{**merge_params.to_dict(), "clusters": k})
        for a, b in zip(expected, clustering.cluster(data, params, cache)):
            np.testing.assert_array_equal(a, b)


def test_other_embeddings_or_settings_miss_the_stored_overclusterings(rng, tmp_path,
                                                                      merge_params):
    data, cache = results(rng), FeatureCache(tmp_path / "cache")
    clustering.cluster(data, merge_params, cache)
    clustering.cluster(data, Params(**{**merge_params.to_dict(), "seed": 5}), cache)
    clustering.cluster(data, Params(**{**merge_params.to_dict(), "size_weighted": True}),
                       cache)
    clustering.cluster(results(rng), merge_params, cache)
    assert len(list((tmp_path / "cache" / "overclusterings").rglob("*.npz"))) == 4


def test_a_damaged_entry_is_recomputed_and_replaced(rng, tmp_path, merge_params):
    data, cache = results(rng), FeatureCache(tmp_path / "cache")
    expected = clustering.cluster(data, merge_params, cache)
    (entry,) = (tmp_path / "cache" / "overclusterings").rglob("*.npz")
    entry.write_bytes(b"not a zip file")
    for a, b in zip(expected, clustering.cluster(data, merge_params, cache)):
        np.testing.assert_array_equal(a, b)
    stored = np.load(entry)["labels"]
    assert stored.shape == (5, 36) and stored.dtype == np.uint8


def test_plain_kmeans_and_a_disabled_cache_store_nothing(rng, tmp_path, merge_params):
    data = results(rng)
    clustering.cluster(data, Params(**{**merge_params.to_dict(), "grouping": "kmeans"}),
                       FeatureCache(tmp_path / "a"))
    clustering.cluster(data, merge_params, FeatureCache(tmp_path / "b", enabled=False))
    assert not (tmp_path / "a" / "overclusterings").exists()
    assert not (tmp_path / "b" / "overclusterings").exists()


def test_segments_are_split_back_per_image(rng, merge_params):
    data = results(rng, images=2, segments=12)
    labels = clustering.cluster(data, merge_params)
    assert [lab.shape for lab in labels] == [(12,), (12,)]
    assert all(lab.dtype == np.uint8 and lab.max() < 3 for lab in labels)
