"""The "DatUS pipeline" widget on real SUIM images with a tiny random ViT."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_datus._widgets.layers import run_of
from napari_datus._widgets.model import LAYER_SUFFIXES
from napari_datus._widgets.pipeline_widget import LIVE_DELAY_MS
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.core.pseudolabel import upsample_nearest
from napari_datus.io.masks import SUIM6_NAMES, SUIM8_TO_SUIM6, to_layer_labels

from .conftest import errors, run_and_wait

SUFFIXES = LAYER_SUFFIXES


def result_layers(viewer, image: str = "suim") -> dict[str, Labels]:
    return {s: viewer.layers[f"{image} {s}"] for s in SUFFIXES if f"{image} {s}" in viewer.layers}


def test_sample_run_adds_every_layer(qtbot, viewer, sample, pipeline, notifications):
    image, _gt = sample
    image.scale = (1, 0.5, 0.5)
    image.translate = (0, 10, 20)
    run_and_wait(qtbot, pipeline)

    assert errors(notifications) == []
    layers = result_layers(viewer)
    assert set(layers) == set(SUFFIXES)
    for layer in layers.values():
        assert isinstance(layer, Labels)
        assert layer.data.shape == (5, 480, 640)
        assert np.issubdtype(layer.data.dtype, np.unsignedinteger)
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
    assert layers["pseudo mask"].data.dtype == np.uint8
    assert layers["noise"].data.dtype == np.uint8

    run = run_of(layers["pseudo mask"])
    assert run.stack.stems == image.metadata["stems"]
    for i, r in enumerate(run.result.results):
        valid = upsample_nearest(r.segments.valid, (480, 640))
        np.testing.assert_array_equal(layers["segments"].data[i], valid)
        np.testing.assert_array_equal(layers["noise"].data[i], valid == 0)
        np.testing.assert_array_equal(layers["partitions"].data[i],
                                      upsample_nearest(r.partition, (480, 640)) + 1)
        np.testing.assert_array_equal(layers["pseudo mask"].data[i],
                                      to_layer_labels(run.result.pseudo_mask(i)))
    assert layers["pseudo mask"].data.max() <= 3
    assert "done" in pipeline.status.text()


def test_rerun_replaces_layers(qtbot, viewer, sample, pipeline):
    run_and_wait(qtbot, pipeline)
    count = len(viewer.layers)
    first = run_of(viewer.layers["suim pseudo mask"])
    pipeline.clusters.setValue(2)
    run_and_wait(qtbot, pipeline)

    assert len(viewer.layers) == count
    second = run_of(viewer.layers["suim pseudo mask"])
    assert second is not first
    assert second.result.params.clusters == 2
    assert viewer.layers["suim pseudo mask"].data.max() <= 2
    # The backbone was loaded once and reused.
    assert len(pipeline._backbones) == 1


@pytest.fixture
def forwards(pipeline, tmp_path, monkeypatch):
    """A private feature cache for the widget, and a list that grows by one per image the
    ViT runs on (forwards run in batches, on a bf16 copy of the model where the CPU has
    AMX, so the images going in are counted, not the model's calls)."""
    from napari_datus import pipeline as pipeline_module
    from napari_datus.cache import FeatureCache
    from napari_datus.core import features

    pipeline._cache = FeatureCache(tmp_path)
    calls: list[int] = []
    batch = features.extract_features_batch

    def counted(backbone, images, *args, **kwargs):
        calls.extend(1 for _ in images)
        return batch(backbone, images, *args, **kwargs)

    monkeypatch.setattr(features, "extract_features_batch", counted)
    monkeypatch.setattr(pipeline_module, "extract_features_batch", counted)
    return calls


def test_rerun_with_another_k_skips_the_vit(qtbot, viewer, sample, pipeline, forwards):
    run_and_wait(qtbot, pipeline)
    first = len(forwards)
    pipeline.clusters.setValue(2)
    run_and_wait(qtbot, pipeline)
    assert first == 5  # every sample image through the ViT once
    assert len(forwards) == first
    assert run_of(viewer.layers["suim pseudo mask"]).result.params.clusters == 2


def test_cancel_leaves_no_partial_layers(qtbot, viewer, sample, pipeline, notifications):
    stages: list[str] = []

    def cancel_after_first_image(event) -> None:
        stages.append(event.message)
        if event.stage == "segments" and event.index == 1:
            pipeline.cancel()

    pipeline.run_button.click()
    pipeline._worker.yielded.connect(cancel_after_first_image)
    qtbot.waitUntil(lambda: pipeline._worker is None, timeout=60_000)

    assert result_layers(viewer) == {}
    assert "cancelled" in pipeline.status.text()
    # Stopped before the dataset's k-means (the ViT runs a batch of images at a time, so
    # the images of the batch under way may still report).
    assert stages and not any(s.startswith("kmeans") for s in stages)
    assert errors(notifications) == []
    assert pipeline.run_button.isEnabled() and not pipeline.cancel_button.isEnabled()


def test_stack_of_three_images(qtbot, viewer, pipeline):
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (3, 96, 128, 3), dtype=np.uint8), rgb=True,
                     name="three")
    run_and_wait(qtbot, pipeline)

    layers = result_layers(viewer, "three")
    assert set(layers) == set(SUFFIXES)
    assert all(layer.data.shape == (3, 96, 128) for layer in layers.values())
    assert run_of(layers["segments"]).stack.stems == ["three_0000", "three_0001", "three_0002"]


def test_single_gray_image(qtbot, viewer, pipeline):
    rng = np.random.default_rng(1)
    viewer.add_image(rng.random((100, 120)).astype(np.float32), name="gray")
    pipeline.clusters.setValue(2)
    pipeline.tau.setValue(1)
    run_and_wait(qtbot, pipeline)

    layers = result_layers(viewer, "gray")
    assert all(layer.data.shape == (100, 120) for layer in layers.values())


def test_labels_layer_is_not_an_image(qtbot, viewer, pipeline, notifications):
    viewer.add_labels(np.zeros((64, 64), dtype=np.uint8), name="labels only")
    assert pipeline.image.count() == 0
    pipeline.run_button.click()

    assert pipeline._worker is None
    assert any("Image layer" in m for m in errors(notifications))
    assert len(viewer.layers) == 1


def test_resolution_not_multiple_of_patch(qtbot, viewer, sample, pipeline, notifications):
    pipeline.resolution.setValue(60)
    run_and_wait(qtbot, pipeline)

    assert any("multiple of the model's patch size" in m for m in errors(notifications))
    assert result_layers(viewer) == {}


@pytest.mark.parametrize("content", [None, b"not a state dict"])
def test_missing_or_corrupt_weights(qtbot, viewer, sample, pipeline, notifications, tmp_path,
                                    content):
    from napari_datus.core.backbone import load_backbone

    weights = tmp_path / "weights.pth"
    if content is not None:
        weights.write_bytes(content)
    pipeline._backbone_factory = load_backbone
    pipeline.model.setText("vit_tiny_patch16_224")
    pipeline.weights.setText(str(weights))
    run_and_wait(qtbot, pipeline)

    messages = errors(notifications)
    expected = "not found" if content is None else "corrupt"
    assert any(expected in m for m in messages), messages
    assert result_layers(viewer) == {}
    assert pipeline._backbones == {}


def test_unreachable_hub_is_one_plain_message(qtbot, viewer, sample, pipeline, notifications,
                                              monkeypatch, tmp_path):
    import huggingface_hub.constants

    from napari_datus.core.backbone import load_backbone

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    pipeline._backbone_factory = load_backbone
    pipeline.model.setText("vit_small_patch8_224.dino")
    pipeline.weights.setText("")
    run_and_wait(qtbot, pipeline)

    messages = errors(notifications)
    assert any("cannot be reached" in m for m in messages), messages
    assert not any("--" in m or "\n" in m for m in messages)
    assert result_layers(viewer) == {}


def test_denoising_adds_a_fully_labelled_layer(qtbot, viewer, pipeline, metrics, notifications):
    rng = np.random.default_rng(2)
    viewer.add_image(rng.integers(0, 255, (3, 64, 80, 3), dtype=np.uint8), rgb=True, name="d")
    pipeline.denoise.setChecked(True)
    pipeline.epochs.setValue(1)
    run_and_wait(qtbot, pipeline)

    assert errors(notifications) == []
    layer = viewer.layers["d de-noised"]
    assert layer.data.shape == (3, 64, 80) and layer.data.dtype == np.uint8
    assert layer.data.min() >= 1 and layer.data.max() <= 3
    assert layer.visible  # the final masks show without a click

    viewer.add_labels(rng.integers(0, 3, (3, 64, 80)).astype(np.uint8), name="truth")
    shown = metrics.compute()
    assert set(shown) == {"initial", "denoised"}
    assert shown["denoised"]["coverage"] == 1.0
    assert "de-noised masks: mIoU" in metrics.summary.text()



def wait_for_clusters(qtbot, viewer, k: int) -> None:
    """Wait until the pseudo-mask layer holds a finished run with K = ``k``."""
    def done() -> bool:
        run = run_of(viewer.layers["suim pseudo mask"])
        return run.result.params.clusters == k
    qtbot.waitUntil(done, timeout=60_000)


def test_changing_k_reruns_live_from_the_cache(qtbot, viewer, sample, pipeline, forwards):
    run_and_wait(qtbot, pipeline)
    layer = viewer.layers["suim pseudo mask"]
    first = run_of(layer)
    viewer.layers["suim segments"].visible = True  # a display choice the re-run must keep
    updates: list[int] = []
    layer.events.data.connect(lambda _event: updates.append(1))
    # Arrow clicks 3 -> 4 -> 5 in quick succession: one re-run, for the last value.
    pipeline.clusters.setValue(4)
    pipeline.clusters.setValue(5)
    wait_for_clusters(qtbot, viewer, 5)
    qtbot.waitUntil(lambda: pipeline._worker is None, timeout=60_000)
    qtbot.wait(3 * LIVE_DELAY_MS)

    assert len(updates) == 1
    assert len(forwards) == 5  # the re-run took every image's features from the cache
    # The layers were updated in place, not removed and added again.
    assert viewer.layers["suim pseudo mask"] is layer
    assert viewer.layers["suim segments"].visible
    second = run_of(layer)
    assert second is not first
    np.testing.assert_array_equal(layer.data[2], to_layer_labels(second.result.pseudo_mask(2)))
    assert viewer.layers["suim pseudo mask"].data.max() <= 5
    assert not pipeline._live_timer.isActive() and not pipeline._live_pending


def test_live_rerun_keeps_the_metrics_current(qtbot, viewer, sample, pipeline, metrics,
                                              notifications):
    run_and_wait(qtbot, pipeline)
    metrics.compute()
    pipeline.tau.setValue(4)
    qtbot.waitUntil(lambda: run_of(viewer.layers["suim pseudo mask"]).result.params.tau == 4,
                    timeout=60_000)

    run = run_of(viewer.layers["suim pseudo mask"])
    _image, gt = sample
    confusion = Confusion(run.result.params.clusters, len(SUIM6_NAMES))
    for i in range(gt.data.shape[0]):
        confusion.add(run.result.pseudo_mask(i), SUIM8_TO_SUIM6[gt.data][i])
    assert run.metrics["initial"] == evaluate(confusion, SUIM6_NAMES)
    assert metrics.current_run() is run
    assert f"{run.metrics['initial']['miou']:.1%}" in metrics.summary.text()
    assert errors(notifications) == []


@pytest.mark.parametrize("change", ["live off", "de-noising on", "resolution changed"])
def test_no_live_rerun_when_it_would_not_be_cheap_or_is_off(qtbot, viewer, sample, pipeline,
                                                            change):
    run_and_wait(qtbot, pipeline)
    first = run_of(viewer.layers["suim pseudo mask"])
    if change == "live off":
        pipeline.live.setChecked(False)
    elif change == "de-noising on":
        pipeline.denoise.setChecked(True)
    else:
        pipeline.resolution.setValue(56)
    pipeline.clusters.setValue(2)
    qtbot.wait(3 * LIVE_DELAY_MS)

    assert pipeline._worker is None
    assert run_of(viewer.layers["suim pseudo mask"]) is first


def test_guided_edges_follow_the_image(qtbot, viewer, sample, pipeline):
    from qtpy.QtWidgets import QComboBox

    from napari_datus.core.pseudolabel import paint_grid

    pipeline.findChild(QComboBox, "refine").setCurrentText("guided")
    run_and_wait(qtbot, pipeline)
    run = run_of(viewer.layers["suim pseudo mask"])
    assert run.result.params.refine == "guided"
    layer = viewer.layers["suim pseudo mask"]
    blocks = 0
    for i, r in enumerate(run.result.results):
        np.testing.assert_array_equal(layer.data[i], to_layer_labels(run.pseudo_mask(i)))
        nearest = upsample_nearest(paint_grid(r.segments.valid, run.result.clusters[i]),
                                   r.shape)
        blocks += int((run.pseudo_mask(i) != nearest).sum())
    assert blocks > 0  # the edges moved off the patch grid
