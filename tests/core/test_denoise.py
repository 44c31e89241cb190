"""Stage 7: the de-noising DeepLabV3 on tiny synthetic two-region images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from napari_datus.core.denoise import (
    DenoiseConfig,
    PairDataset,
    TrainProgress,
    build_model,
    dominant_fraction,
    masked_cross_entropy,
    predict,
    random_crop_box,
    select_training_pairs,
    train_denoiser,
)
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED

SIZE = 64


def two_region(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A reddish left part and a bluish right part split at a random column.

    Returns (H, W, 3) uint8 image and (H, W) uint8 mask (0 left, 1 right) with an
    unlabelled 8x8 block in each part, as noise segments leave them.
    """
    rng = np.random.default_rng(seed)
    split = int(rng.integers(size // 4, 3 * size // 4))
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    image[:, :split, 0] += 200
    image[:, split:, 2] += 200
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, split:] = 1
    mask[4:12, 2:10] = UNLABELLED
    mask[-12:-4, -10:-2] = UNLABELLED
    return image, mask


def pairs_of(arrays: list[tuple[np.ndarray, np.ndarray]]):
    return [(f"{i:02d}", (lambda im=im: im), (lambda m=m: m)) for i, (im, m) in enumerate(arrays)]


def tiny_config(**kwargs) -> DenoiseConfig:
    settings = dict(epochs=5, batch_size=4, crop_size=SIZE, predict_size=None, lr=3e-3,
                    device="cpu")
    settings.update(kwargs)
    return DenoiseConfig(**settings)


def run_training(gen) -> tuple[list[TrainProgress], torch.nn.Module]:
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


@pytest.fixture(autouse=True)
def one_thread():
    # Float reductions agree between runs only with a fixed thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loss_falls_and_two_regions_are_recovered():
    pairs = pairs_of([two_region(seed) for seed in range(32)])
    events, model = run_training(train_denoiser(pairs, 2, tiny_config()))
    epoch_losses = [e.loss for e in events if e.step == e.steps]
    assert len(epoch_losses) == 5
    assert epoch_losses[-1] < 0.5 * epoch_losses[0]

    correct, correct_unlabelled = [], []
    for seed in range(100, 106):
        image, mask = two_region(seed)
        pred = predict(model, image)
        assert pred.shape == mask.shape and pred.dtype == np.uint8
        split = np.argmax(mask[SIZE // 2] == 1)
        truth = np.broadcast_to((np.arange(SIZE) >= split).astype(np.uint8), mask.shape)
        correct.append((pred == truth).mean())
        # The blocks left unlabelled in the pseudo mask get labels too.
        correct_unlabelled.append((pred == truth)[mask == UNLABELLED].mean())
    assert np.mean(correct) > 0.85
    assert np.mean(correct_unlabelled) > 0.85


def test_unlabelled_pixels_get_zero_gradient():
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, :2] = UNLABELLED
    target[1, :, 3:] = UNLABELLED
    masked_cross_entropy(logits, target).backward()
    ignored = (target == UNLABELLED).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.all(logits.grad[~ignored].abs().reshape(-1, 3).sum(1) > 0)


def test_all_unlabelled_batch_has_zero_loss_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((2, 4, 4), UNLABELLED))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_drop_rule_removes_dominated_masks():
    balanced = two_region(0)[1]
    dominated = np.zeros((SIZE, SIZE), dtype=np.uint8)
    dominated[:2, :2] = 1  # 4 of 2304 pixels: cluster 0 holds > 99%
    empty = np.full((SIZE, SIZE), UNLABELLED, dtype=np.uint8)
    image = two_region(0)[0]
    pairs = pairs_of([(image, balanced), (image, dominated), (image, empty)])
    assert dominant_fraction(dominated) > 0.99
    kept, dropped = select_training_pairs(pairs, 2, dominance=0.95)
    assert [name for name, _, _ in kept] == ["00"]
    assert dropped == ["01", "02"]
    kept, _ = select_training_pairs(pairs, 2, dominance=1.0)
    assert len(kept) == 2
    with pytest.raises(DatusError, match="need at least 2"):
        next(train_denoiser(pairs, 2, tiny_config()))


def test_dominance_counts_labelled_pixels_only():
    mask = np.full((10, 10), UNLABELLED, dtype=np.uint8)
    mask[0, :6] = 0
    mask[1, :4] = 1
    assert dominant_fraction(mask) == pytest.approx(0.6)


def test_cluster_outside_k_is_refused():
    image, mask = two_region(0)
    with pytest.raises(DatusError, match="cluster 1"):
        select_training_pairs(pairs_of([(image, mask)]), 1, dominance=0.95)


def test_resume_continues_from_checkpoint_and_matches_uninterrupted(tmp_path):
    pairs = pairs_of([two_region(seed) for seed in range(8)])
    config = tiny_config(epochs=2)
    _, reference = run_training(train_denoiser(pairs, 2, config))

    interrupted = train_denoiser(pairs, 2, config, tmp_path)
    event = next(interrupted)
    while not (event.epoch == 2 and event.step == 1):
        event = next(interrupted)
    interrupted.close()  # killed during epoch 2: only epoch 1 is checkpointed
    assert (tmp_path / "last.pt").is_file()

    events, resumed = run_training(train_denoiser(pairs, 2, config, tmp_path))
    assert {e.epoch for e in events} == {2}
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)

    finished, _ = run_training(train_denoiser(pairs, 2, config, tmp_path))
    assert finished == []


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    pairs = pairs_of([two_region(seed) for seed in range(8)])
    run_training(train_denoiser(pairs, 2, tiny_config(epochs=1), tmp_path))
    events, _ = run_training(train_denoiser(pairs, 2, tiny_config(epochs=1, seed=1), tmp_path))
    assert events[0].epoch == 1


def test_predict_keeps_original_size_with_predict_size():
    model = build_model(3, tiny_config()).eval()
    image = np.random.default_rng(0).integers(0, 255, (37, 61, 3)).astype(np.uint8)
    pred = predict(model, image, predict_size=32)
    assert pred.shape == (37, 61) and pred.dtype == np.uint8 and pred.max() < 3


def test_crops_are_square_and_masks_keep_their_ids():
    image, mask = two_region(0, size=40)
    dataset = PairDataset(pairs_of([(image[:, :30], mask[:, :30])]), crop_size=24, seed=0)
    x, y = dataset[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert y.shape == (24, 24) and set(y.unique().tolist()) <= {0, 1, UNLABELLED}
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, top, right, bottom = random_crop_box(rng, 30, 40)
        assert 0 <= left < right <= 30 and 0 <= top < bottom <= 40


def test_local_backbone_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(1)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(classifier.state_dict(), path)
    model = build_model(2, tiny_config(backbone_weights=str(path)))
    torch.testing.assert_close(model.backbone["0"][0].weight, classifier.features[0][0].weight)

    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(DatusError, match="not a torchvision mobilenet_v3_large checkpoint"):
        build_model(2, tiny_config(backbone_weights=str(path)))


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 1, "batch size must be at least 2"),
    ("backbone", "vgg", "unknown de-noising backbone"),
    ("dominance", 0.0, "dominance threshold"),
    ("epochs", 0, "epochs must be at least 1"),
])
def test_bad_settings_raise_one_clear_error(field, value, message):
    with pytest.raises(DatusError, match=message):
        tiny_config(**{field: value}).validate()


def test_fill_keeps_labelled_pixels_and_predict_replaces_all():
    from napari_datus.core.denoise import combine

    initial = np.array([[0, 255], [1, 255]], dtype=np.uint8)
    predicted = np.array([[2, 2], [2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(combine(initial, predicted, "fill"), [[0, 2], [1, 3]])
    np.testing.assert_array_equal(combine(initial, predicted, "predict"), predicted)
