"""De-noising an existing run folder: masks, metrics.json "denoised", run.json, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.denoise_run import denoise_run
from napari_datus.io.masks import write_index_mask

K = 2
CLASSES = ["0", "1"]


def make_run_folder(root: Path, n: int = 8, height: int = 40, width: int = 56) -> Path:
    """A fake ``datus run`` output: images, index ground truth, pseudo masks, JSON files.

    Image ``i`` is red left of a random column and blue right of it; the ground truth
    labels those parts 1 and 0; the pseudo mask uses clusters 0 and 1 (swapped, as
    k-means ids are arbitrary) with unlabelled (255) blocks.
    """
    out, data = root / "out", root / "data"
    (data / "images").mkdir(parents=True)
    (data / "gt").mkdir()
    rng = np.random.default_rng(0)
    inputs, confusion = {}, Confusion(K, len(CLASSES))
    for i in range(n):
        split = int(rng.integers(width // 4, 3 * width // 4))
        image = rng.integers(0, 40, (height, width, 3)).astype(np.uint8)
        image[:, :split, 0] += 200
        image[:, split:, 2] += 200
        gt = np.zeros((height, width), dtype=np.uint8)
        gt[:, :split] = 1
        pseudo = 1 - gt
        pseudo[5:13, 5:13] = 255
        stem = f"img{i}"
        Image.fromarray(image).save(data / "images" / f"{stem}.png")
        Image.fromarray(gt).save(data / "gt" / f"{stem}.png")
        write_index_mask(out / "pseudo_masks" / f"{stem}.png", pseudo)
        confusion.add(pseudo, gt)
        inputs[stem] = {"image": str(data / "images" / f"{stem}.png"),
                        "gt": str(data / "gt" / f"{stem}.png")}
    run = {"format": 2, "run_id": "r1", "params": {"clusters": K, "seed": 0},
           "images": sorted(inputs), "inputs": inputs,
           "files": [f"pseudo_masks/{stem}.png" for stem in inputs] + ["metrics.json"],
           "gt": {"format": "index", "ignore": 255, "classes": CLASSES}}
    (out / "run.json").write_text(json.dumps(run))
    metrics = {"run_id": "r1", "classes": CLASSES, "initial": evaluate(confusion, CLASSES)}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.fixture
def run_folder(tmp_path) -> Path:
    torch.set_num_threads(1)
    return make_run_folder(tmp_path)


def config(**kwargs) -> DenoiseConfig:
    settings = dict(epochs=2, batch_size=4, crop_size=32, predict_size=None, device="cpu")
    settings.update(kwargs)
    return DenoiseConfig(**settings)


def test_writes_full_coverage_masks_and_denoised_metrics(run_folder):
    events = []
    result = denoise_run(run_folder, config(), events.append)

    assert len(result.written) == 8
    for path in result.written:
        mask = np.asarray(Image.open(path))
        image = np.asarray(Image.open(run_folder.parent / "data" / "images" / path.name))
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert mask.max() < K  # every pixel labelled
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert set(metrics) >= {"classes", "initial", "denoised"}
    assert set(metrics["denoised"]) == set(metrics["initial"])
    assert metrics["denoised"]["coverage"] == 1.0
    run = json.loads((run_folder / "run.json").read_text())
    assert run["denoise"]["config"]["epochs"] == 2 and run["denoise"]["dropped"] == []
    assert len(run["denoise"]["seconds_per_epoch"]) == 2
    training = [e for e in events if isinstance(e, TrainProgress)]
    assert {e.epoch for e in training} == {1, 2}
    assert all(np.isfinite(e.loss) for e in training)
    assert "loss" in training[-1].message and "epoch 2/2" in training[-1].message


def test_second_call_resumes_finished_checkpoint_without_training(run_folder):
    denoise_run(run_folder, config())
    assert (run_folder / "denoise_checkpoints" / "last.pt").is_file()
    first = np.asarray(Image.open(run_folder / "denoised" / "img0.png"))
    events = []
    denoise_run(run_folder, config(), events.append)
    assert not any(isinstance(e, TrainProgress) for e in events)
    np.testing.assert_array_equal(np.asarray(Image.open(run_folder / "denoised" / "img0.png")),
                                  first)


def test_all_masks_dominated_is_a_clear_error(run_folder):
    for path in (run_folder / "pseudo_masks").iterdir():
        write_index_mask(path, np.zeros(np.asarray(Image.open(path)).shape, dtype=np.uint8))
    with pytest.raises(DatusError, match="dominance threshold"):
        denoise_run(run_folder, config())


def test_folder_without_run_json_is_refused(tmp_path):
    with pytest.raises(DatusError, match="not a complete datus run folder"):
        denoise_run(tmp_path, config())


def test_run_json_without_a_run_id_is_refused(run_folder):
    (run_folder / "run.json").write_text(json.dumps({"params": {"clusters": K}}))
    with pytest.raises(DatusError, match="not a readable DatUS run record: run_id is missing"):
        denoise_run(run_folder, config())


def test_without_ground_truth_only_masks_are_written(run_folder):
    run = json.loads((run_folder / "run.json").read_text())
    for entry in run["inputs"].values():
        entry["gt"] = None
    run["gt"] = {"format": None, "ignore": None, "classes": []}
    (run_folder / "run.json").write_text(json.dumps(run))
    (run_folder / "metrics.json").unlink()
    result = denoise_run(run_folder, config())
    assert result.metrics is None and len(result.written) == 8
    assert not (run_folder / "metrics.json").exists()


def test_datus_denoise_command(run_folder, capsys):
    from napari_datus.cli import main

    assert main(["denoise", str(run_folder), "--denoise-epochs", "1", "--device", "cpu"]) == 0
    assert len(list((run_folder / "denoised").glob("*.png"))) == 8
    assert "epoch 1/1 loss" in capsys.readouterr().err
    assert main(["denoise", str(run_folder / "missing")]) == 1
    assert "not a complete datus run folder" in capsys.readouterr().err


def denoised(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "denoised").iterdir())}


def test_masks_changed_by_a_rerun_train_afresh_like_a_new_folder(tmp_path):
    """The checkpoint key covers the masks: after a re-run (other seed, other masks) into the
    same folder, de-noising equals de-noising a fresh folder with the new masks."""
    torch.set_num_threads(1)
    reused = make_run_folder(tmp_path / "a")
    denoise_run(reused, config())
    fresh = make_run_folder(tmp_path / "b")
    for folder in (reused, fresh):  # the re-run's masks: another k-means labelling
        for path in (folder / "pseudo_masks").iterdir():
            mask = np.asarray(Image.open(path)).copy()
            mask[mask != 255] = 1 - mask[mask != 255]
            mask[:, :8] = 255
            write_index_mask(path, mask)
    events = []
    denoise_run(reused, config(), events.append)
    assert any(isinstance(e, TrainProgress) for e in events)  # no stale checkpoint reused
    denoise_run(fresh, config())
    first, second = denoised(reused), denoised(fresh)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize("name", ["run.json", "metrics.json"])
def test_corrupt_json_is_one_clear_error(run_folder, name):
    (run_folder / name).write_text("{ not json")
    with pytest.raises(DatusError, match=f"cannot read .*{name}"):
        denoise_run(run_folder, config())
    assert not (run_folder / "denoised").exists()


def test_metrics_of_another_run_are_refused(run_folder):
    run = json.loads((run_folder / "run.json").read_text())
    (run_folder / "run.json").write_text(json.dumps({**run, "run_id": "new"}))
    with pytest.raises(DatusError, match="belongs to another run"):
        denoise_run(run_folder, config())


def test_unreadable_ground_truth_does_not_abort_after_training(run_folder):
    (run_folder.parent / "data" / "gt" / "img3.png").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="img3"):
        result = denoise_run(run_folder, config())
    assert len(result.written) == 8 and len(denoised(run_folder)) == 8
    assert result.metrics is not None  # the other seven images are scored


def test_training_leaves_torch_global_rng_alone(run_folder):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    denoise_run(run_folder, config(epochs=1))
    assert torch.equal(torch.rand(3), expected)
