"""The quality variants of issue 7 on synthetic data: affinities, embedding norms,
size-weighted k-means, noise filling, and feature reuse in the pipeline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_datus import clustering, pipeline
from napari_datus.core.errors import DatusError
from napari_datus.core.features import PatchFeatures, extract_features, resize_image
from napari_datus.core.graph import adjacency
from napari_datus.core.pseudolabel import UNLABELLED, cluster_segments, fill_unlabelled
from napari_datus.core.segments import Segments
from napari_datus.core.whitening import normalise_embeddings, pca_whiten, standardise


def blocks(offset: float = 0.0) -> np.ndarray:
    """(16, 4) vectors: left half of a 4x4 grid along e0, right half along e1, plus an offset."""
    x = np.zeros((16, 4), dtype=np.float32)
    cols = np.arange(16) % 4
    x[cols < 2, 0] = 1.0
    x[cols >= 2, 1] = 1.0
    x[:, 3] += offset
    return x


def features(**fields) -> PatchFeatures:
    base = dict(keys=blocks(), key_bias=np.zeros(4, np.float32), tokens=blocks(), grid=4)
    return PatchFeatures(**{**base, **fields})


def test_token_affinity_removes_the_shared_token_offset():
    adj = adjacency(features(tokens=blocks(offset=5.0)), "tokens")
    assert adj[0, 1] == 1 and adj[0, 3] == 0  # same block joined, blocks apart


@pytest.mark.parametrize("name", ["queries", "values"])
def test_query_and_value_affinities_use_their_own_vectors(name):
    feats = features(**{name: blocks()}, keys=np.ones((16, 4), np.float32))
    adj = adjacency(feats, name)
    assert adj[0, 1] == 1 and adj[0, 3] == 0
    assert adjacency(feats, "keys-nobias").sum() == 16 * 15  # the keys alone are complete


def test_query_affinity_without_queries_is_a_clear_error():
    with pytest.raises(DatusError, match="needs queries"):
        adjacency(features(), "queries")


def test_extract_features_returns_bias_free_queries_and_values(tiny_backbone):
    image = resize_image(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8), 32)
    qkv = tiny_backbone.model.blocks[-1].attn.qkv
    seen: list[torch.Tensor] = []
    handle = qkv.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    try:
        feats = extract_features(tiny_backbone, image, "fp32")
    finally:
        handle.remove()
    dim, prefix = tiny_backbone.embed_dim, tiny_backbone.num_prefix_tokens
    no_bias = F.linear(seen[0][0, prefix:], qkv.weight).numpy()
    np.testing.assert_allclose(feats.queries, no_bias[:, :dim], atol=1e-5)
    np.testing.assert_allclose(feats.values, no_bias[:, 2 * dim:], atol=1e-5)
    np.testing.assert_allclose(feats.keys - feats.key_bias, no_bias[:, dim:2 * dim], atol=1e-5)


def anisotropic(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two groups told apart by a low-variance dimension, plus a loud nuisance dimension."""
    truth = np.repeat([0, 1], 50)
    x = np.zeros((100, 3))
    x[:, 0] = rng.normal(0, 10.0, 100)  # nuisance: large variance, no group information
    x[:, 1] = truth * 1.0 + rng.normal(0, 0.05, 100)
    x[:, 2] = 5.0
    return x, truth


def agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of items grouped as in ``truth`` (two clusters, either naming)."""
    same = np.mean(labels == truth)
    return max(same, 1 - same)


@pytest.mark.parametrize("method", ["standardise", "pca-whiten"])
def test_normalising_lets_kmeans_find_a_low_variance_signal(method, rng):
    x, truth = anisotropic(rng)
    plain = cluster_segments(normalise_embeddings(x, "l2"), 2, seed=0)
    fixed = cluster_segments(normalise_embeddings(x, method), 2, seed=0)
    assert agreement(fixed, truth) == 1.0
    assert agreement(plain, truth) < 0.9


def test_normalised_embeddings_are_unit_rows(rng):
    x = rng.normal(size=(30, 5)) * np.array([100.0, 1, 1, 0.01, 3])
    for out in (standardise(x), pca_whiten(x)):
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        assert out.dtype == np.float32


def test_unknown_embedding_norm():
    with pytest.raises(DatusError, match="unknown embedding_norm"):
        normalise_embeddings(np.eye(3), "magic")


def test_zero_weight_segments_do_not_move_the_clusters():
    x = np.array([[0.0], [1.0], [100.0], [101.0], [30.0]])
    labels = cluster_segments(x, 2, seed=0, weights=np.array([1.0, 1, 1, 1, 0]))
    assert labels[4] == labels[0]  # 30 is nearer centroid 0.5 than 100.5


def test_integer_weights_act_like_repeated_segments():
    x = np.array([[0.0], [1.0], [60.0], [100.0], [101.0]])
    weighted = cluster_segments(x, 2, seed=0, weights=np.array([1.0, 1, 3, 1, 1]))
    repeated = cluster_segments(np.repeat(x, [1, 1, 3, 1, 1], axis=0), 2, seed=0)
    np.testing.assert_array_equal(weighted, repeated[[0, 1, 2, 5, 6]])


def test_cluster_passes_segment_sizes_as_weights_when_asked(monkeypatch):
    seen = {}

    def fake(embeddings, k, seed, n_init, weights):
        seen["weights"] = weights
        return np.zeros(embeddings.shape[0], np.uint8)

    monkeypatch.setattr(clustering, "cluster_segments", fake)
    segs = Segments(components=np.ones((2, 2), np.int32), valid=np.array([[1, 2], [2, 2]]),
                    sizes=np.array([1, 3]), n_noise=0)
    result = pipeline.ImageResult("a", (2, 2), np.zeros((2, 2), np.int32), segs,
                                  np.eye(2, dtype=np.float32))
    pipeline.cluster([result], pipeline.Params(clusters=1, size_weighted=True,
                                               grouping="kmeans"))
    np.testing.assert_array_equal(seen["weights"], [1.0, 3.0])
    pipeline.cluster([result], pipeline.Params(clusters=1, size_weighted=False,
                                               grouping="kmeans"))
    assert seen["weights"] is None
    seen.clear()
    monkeypatch.setattr(clustering, "overcluster_merge",
                        lambda x, k, j, seed, n_init, weights, fine: fake(x, k, seed, n_init,
                                                                          weights))
    pipeline.cluster([result], pipeline.Params(clusters=1, size_weighted=True))  # merge
    np.testing.assert_array_equal(seen["weights"], [1.0, 3.0])


def test_fill_unlabelled_takes_the_nearest_label():
    grid = np.full((3, 5), UNLABELLED, np.uint8)
    grid[:, 0] = 1
    grid[:, 4] = 2
    filled = fill_unlabelled(grid)
    np.testing.assert_array_equal(filled[:, 1], 1)
    np.testing.assert_array_equal(filled[:, 3], 2)
    assert (filled != UNLABELLED).all()
    np.testing.assert_array_equal(fill_unlabelled(np.full((2, 2), UNLABELLED, np.uint8)),
                                  UNLABELLED)


def test_pseudo_mask_with_fill_noise_covers_every_pixel():
    valid = np.array([[1, 0], [0, 2]])
    segs = Segments(components=valid, valid=valid, sizes=np.array([1, 1]), n_noise=2)
    result = pipeline.ImageResult("a", (4, 6), valid, segs, np.eye(2, dtype=np.float32))
    clusters = np.array([0, 1], np.uint8)
    assert (pipeline.pseudo_mask(result, clusters) == UNLABELLED).any()
    filled = pipeline.pseudo_mask(result, clusters, fill_noise=True)
    assert filled.shape == (4, 6) and (filled != UNLABELLED).all()


def test_segment_features_reproduces_segment_image(tiny_backbone):
    image = np.random.default_rng(1).integers(0, 255, (48, 40, 3), np.uint8)
    params = pipeline.Params(resolution=32, tau=0, embedding="pooled-tokens")
    direct = pipeline.segment_image(image, tiny_backbone, params)
    feats = extract_features(tiny_backbone, resize_image(image, 32))
    reused = pipeline.segment_features(feats, params, (48, 40))
    np.testing.assert_array_equal(direct.segments.valid, reused.segments.valid)
    np.testing.assert_allclose(direct.embeddings, reused.embeddings, atol=1e-6)
    assert reused.shape == (48, 40)


def test_knn_graph_is_symmetric_binary_and_ignores_offsets():
    vectors = blocks()
    adj = adjacency(features(tokens=vectors + 7.0), "tokens-knn", knn=3)
    assert set(np.unique(adj)) <= {0.0, 1.0}
    assert np.array_equal(adj, adj.T) and not adj.diagonal().any()
    assert (adj.sum(axis=1) >= 3).all()  # every patch keeps its own k neighbours
    assert adj[0, 3] == 0  # neighbours come from the same block (8 patches each)
    np.testing.assert_array_equal(adj, adjacency(features(tokens=vectors), "tokens-knn", knn=3))


def test_knn_graph_caps_k_at_the_number_of_other_patches():
    adj = adjacency(features(), "keys-knn", knn=100)
    assert adj.sum() == 16 * 15
