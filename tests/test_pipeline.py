import numpy as np
import pytest

from napari_datus import pipeline as pipeline_module
from napari_datus import stages
from napari_datus.core.errors import DatusError
from napari_datus.pipeline import Params, array_sources, drive, run


def blocky_images(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Images of coloured rectangles, so the tiny ViT sees structure."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        img = np.zeros((size, size + 16, 3), dtype=np.uint8)
        for _ in range(4):
            r, c = rng.integers(0, size - 16, 2)
            img[r : r + 24, c : c + 32] = rng.integers(0, 256, 3)
        images.append(img)
    return images


def tiny_params(**kw) -> Params:
    base = dict(model="tiny", weights=None, resolution=64, clusters=2, tau=1, n_init=2)
    return Params(**{**base, **kw})


def test_run_gives_masks_of_each_image_size(tiny_backbone):
    images = blocky_images(3)
    images[1] = images[1][:40]
    events = []
    result = drive(run(array_sources(images), 3, tiny_params(), tiny_backbone), events.append)
    assert [e.index for e in events if e.stage == "segments"] == [1, 2, 3]
    assert len(result.results) == 3
    for i, img in enumerate(images):
        mask = result.pseudo_mask(i)
        assert mask.shape == img.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 255}
        assert result.results[i].partition.shape == (8, 8)


def test_same_seed_same_masks(tiny_backbone):
    images = blocky_images(3, seed=5)
    a = drive(run(array_sources(images), 3, tiny_params(seed=3), tiny_backbone))
    b = drive(run(array_sources(images), 3, tiny_params(seed=3), tiny_backbone))
    for i in range(3):
        np.testing.assert_array_equal(a.pseudo_mask(i), b.pseudo_mask(i))


def test_too_small_image_is_skipped_with_reason(tiny_backbone):
    images = blocky_images(2) + [np.zeros((10, 10, 3), dtype=np.uint8)]
    result = drive(run(array_sources(images, ["a", "b", "tiny"]), 3, tiny_params(),
                       tiny_backbone))
    assert [s.file for s in result.skipped] == ["tiny"]
    assert "smaller than two 8-pixel patches" in result.skipped[0].reason


def test_k_larger_than_segments(tiny_backbone):
    with pytest.raises(DatusError, match="valid segments in the whole dataset"):
        drive(run(array_sources(blocky_images(1)), 1, tiny_params(clusters=200),
                  tiny_backbone))


def test_bad_parameters_are_named():
    with pytest.raises(DatusError, match="unknown partition"):
        tiny_params(partition="leiden-magic").validate()
    with pytest.raises(DatusError, match="tau must be"):
        tiny_params(tau=-1).validate()


def test_resolution_not_multiple_of_patch(tiny_backbone):
    with pytest.raises(DatusError, match="not a multiple"):
        drive(run(array_sources(blocky_images(1)), 1, tiny_params(resolution=60),
                  tiny_backbone))


def test_cancelling_between_images_stops_the_generator(tiny_backbone):
    gen = run(array_sources(blocky_images(4)), 4, tiny_params(), tiny_backbone)
    seen = [next(gen) for _ in range(2)]
    gen.close()
    assert seen[-1].index == 2 and seen[-1].result is not None


def test_per_image_stages_get_one_blas_thread(tiny_backbone, monkeypatch):
    """An idle multi-threaded BLAS pool spins and slows the next ViT forward.

    numpy's BLAS is the one the graph stage multiplies with; scipy's own copy (loaded with
    scikit-learn by an earlier test's k-means) serves no per-image stage.
    """
    from threadpoolctl import threadpool_info

    seen = []
    original = stages.adjacency

    def graph(*args, **kwargs):
        seen.append(max(i["num_threads"] for i in threadpool_info()
                        if i["user_api"] == "blas" and "numpy" in i["filepath"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(stages, "adjacency", graph)
    drive(run(array_sources(blocky_images(2)), 2, tiny_params(), tiny_backbone))
    assert seen == [1, 1]


def failing_sources(images: list[np.ndarray], bad: set[int]):
    """Sources of ``images`` whose loaders at positions ``bad`` raise DatusError."""
    def broken(stem: str):
        def load():
            raise DatusError(f"{stem} cannot be read")
        return load

    return [(stem, broken(stem) if i in bad else load)
            for i, (stem, load) in enumerate(array_sources(images))]


@pytest.mark.parametrize("cached", [False, True])
def test_batches_keep_input_order_and_skip_bad_images(tiny_backbone, tmp_path, monkeypatch,
                                                      cached):
    from napari_datus.cache import FeatureCache
    from napari_datus.core import features

    forwards = []
    original = features.extract_features_batch
    monkeypatch.setattr(pipeline_module, "extract_features_batch",
                        lambda bb, ims, p: forwards.append(len(ims)) or original(bb, ims, p))
    images = blocky_images(11)
    sources = failing_sources(images, {1, 6})
    params = tiny_params(batch_size=4)
    cache = FeatureCache(tmp_path) if cached else None
    events = []
    result = drive(run(sources, len(sources), params, tiny_backbone, cache=cache),
                   events.append)
    stems = [s for s, _ in sources]
    # One forward per chunk of 4 consecutive sources, for the images that could be read.
    assert forwards == [3, 3, 3]
    assert [r.stem for r in result.results] == [s for i, s in enumerate(stems) if i not in (1, 6)]
    assert [s.file for s in result.skipped] == [stems[1], stems[6]]
    assert "cannot be read" in result.skipped[0].reason
    segments = [e for e in events if e.stage == "segments"]
    assert [e.index for e in segments] == list(range(1, 12))
    assert [e.stem for e in segments] == stems


def test_batched_features_give_the_stages_of_single_images(tiny_backbone):
    from napari_datus.pipeline import segment_image

    images = blocky_images(5)
    params = tiny_params(batch_size=8, precision="fp32")
    batched = drive(run(array_sources(images), 5, params, tiny_backbone))
    for image, result in zip(images, batched.results):
        single = segment_image(image, tiny_backbone, params, result.stem)
        assert single.shape == result.shape
        np.testing.assert_array_equal(single.partition, result.partition)
        np.testing.assert_allclose(single.embeddings, result.embeddings, atol=1e-5)
