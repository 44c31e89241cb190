"""De-noise an existing ``datus run`` folder (stage 7 over a whole run).

Reads ``run.json`` (``params.clusters``, ``inputs``: each stem's image and ground-truth
paths, ``gt``: format, ignore value and classes) and ``pseudo_masks/<stem>.png``; trains
the de-noiser with checkpoints in ``denoise_checkpoints/``; writes ``denoised/<stem>.png``
(uint8 cluster ids, every pixel labelled); adds ``"denoised"`` to ``metrics.json`` (its own
Hungarian matching) and a ``"denoise"`` record (settings, dropped masks, timings) to run.json.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_datus.core.denoise import (
    DenoiseConfig,
    Pair,
    TrainProgress,
    combine,
    predict,
    select_training_pairs,
    train_denoiser,
)
from napari_datus.core.errors import DatusError
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.io.images import read_array, read_image
from napari_datus.io.masks import (
    class_names,
    read_ground_truth,
    write_index_mask,
    write_json_atomic,
)
from napari_datus.pipeline import Progress, drive

CHECKPOINT_DIR = "denoise_checkpoints"
DENOISED_DIR = "denoised"


@dataclass
class RunInputs:
    """What a run folder says about its images: paths, clusters and ground truth.

    ``images`` holds the stems with a pseudo mask; ``gts`` those of them scored for
    ``"initial"`` in metrics.json (all with ground truth when metrics.json is absent).
    """

    out_dir: Path
    clusters: int
    images: dict[str, Path]
    gts: dict[str, Path]
    gt_format: str | None
    gt_ignore: int | None
    classes: list[str] = field(default_factory=list)


@dataclass
class DenoiseResult:
    """A finished de-noising: masks written, masks dropped from training, metrics, timings."""

    written: list[Path]
    dropped: list[str]
    metrics: dict | None
    seconds_per_epoch: list[float]
    predict_seconds: float


def read_run(out_dir: str | Path) -> RunInputs:
    """Parse ``run.json`` of a run folder; raise DatusError naming what is missing."""
    out_dir = Path(out_dir)
    path = out_dir / "run.json"
    if not path.is_file():
        raise DatusError(f"{out_dir} is not a datus run folder: run.json not found")
    try:
        run = json.loads(path.read_text())
        clusters = int(run["params"]["clusters"])
        inputs = run["inputs"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatusError(f"{path} lacks params.clusters or inputs ({exc});"
                         " re-run datus run") from exc
    gt = run.get("gt") or {}
    images = {stem: Path(entry["image"]) for stem, entry in inputs.items()
              if (out_dir / "pseudo_masks" / f"{stem}.png").is_file()}
    if not images:
        raise DatusError(f"no pseudo masks in {out_dir / 'pseudo_masks'} for the run's inputs")
    # Score the images "initial" was scored on, under the same class names.
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    evaluated = set(metrics.get("images") or images)
    gts = {stem: Path(entry["gt"]) for stem, entry in inputs.items()
           if stem in images and stem in evaluated and entry.get("gt")}
    return RunInputs(out_dir=out_dir, clusters=clusters, images=images, gts=gts,
                     gt_format=gt.get("format"), gt_ignore=gt.get("ignore"),
                     classes=list(metrics.get("classes") or gt.get("classes") or []))


def training_pairs(run: RunInputs) -> list[Pair]:
    """(stem, load image, load pseudo mask) for every image of the run, loaded lazily."""
    masks = run.out_dir / "pseudo_masks"
    return [(stem, (lambda p=path: read_image(p)), (lambda p=masks / f"{stem}.png": read_mask(p)))
            for stem, path in sorted(run.images.items())]


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 pseudo mask, 255 = unlabelled."""
    mask = read_array(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DatusError(f"{path} is not a uint8 index mask (shape {mask.shape},"
                         f" dtype {mask.dtype})")
    return mask


def iter_denoise_run(
    out_dir: str | Path, config: DenoiseConfig,
) -> Generator[TrainProgress | Progress, None, DenoiseResult]:
    """Train, predict, write and score; yields progress (the napari widget's entry point)."""
    run = read_run(out_dir)
    pairs = training_pairs(run)
    # The rule train_denoiser applies, run here too to record which masks it leaves out.
    _, dropped = select_training_pairs(pairs, run.clusters, config.dominance)
    epoch_seconds: list[float] = []
    training = train_denoiser(pairs, run.clusters, config, run.out_dir / CHECKPOINT_DIR)
    while True:
        try:
            event = next(training)
        except StopIteration as stop:
            model = stop.value
            break
        if event.step == event.steps:
            epoch_seconds.append(event.seconds)
        yield event

    began = time.perf_counter()
    confusion, names = _metrics_setup(run)
    written: list[Path] = []
    for index, (stem, image_path) in enumerate(sorted(run.images.items()), start=1):
        image = read_image(image_path)
        initial = read_mask(run.out_dir / "pseudo_masks" / f"{stem}.png")
        mask = combine(initial, predict(model, image, config.predict_size), config.output)
        written.append(write_index_mask(run.out_dir / DENOISED_DIR / f"{stem}.png", mask))
        if confusion is not None and stem in run.gts:
            _add_to_confusion(confusion, mask, run, stem)
        yield Progress("denoise predict", index, len(run.images), stem)
    predict_seconds = time.perf_counter() - began

    metrics = evaluate(confusion, names) if confusion is not None else None
    if metrics is not None:
        _update_json(run.out_dir / "metrics.json", {"classes": names, "denoised": metrics})
    _update_json(run.out_dir / "run.json", {"denoise": {
        "config": config.to_dict(), "trained_on": len(pairs) - len(dropped),
        "dropped": dropped, "seconds_per_epoch": epoch_seconds,
        "predict_seconds": predict_seconds}})
    return DenoiseResult(written, dropped, metrics, epoch_seconds, predict_seconds)


def denoise_run(out_dir: str | Path, config: DenoiseConfig,
                progress: Callable[[TrainProgress | Progress], None] | None = None,
                ) -> DenoiseResult:
    """De-noise a run folder to the end (see :func:`iter_denoise_run`), reporting progress."""
    return drive(iter_denoise_run(out_dir, config), progress)


def _metrics_setup(run: RunInputs) -> tuple[Confusion | None, list[str]]:
    """An empty confusion matrix and class names, or (None, []) without ground truth."""
    if not run.gts or run.gt_format is None:
        return None, []
    names = run.classes or class_names(run.gt_format)
    return Confusion(run.clusters, len(names)), list(names)


def _add_to_confusion(confusion: Confusion, mask: np.ndarray, run: RunInputs,
                      stem: str) -> None:
    """Count one image; a ground truth of another size is left out with a warning (contract)."""
    gt = read_ground_truth(run.gts[stem], run.gt_format)
    if gt.shape != mask.shape:
        warnings.warn(f"{run.gts[stem]} is {gt.shape[1]}x{gt.shape[0]} but its image is"
                      f" {mask.shape[1]}x{mask.shape[0]}: left out of the metrics",
                      stacklevel=2)
        return
    confusion.add(mask, gt, run.gt_ignore)


def _update_json(path: Path, entries: dict[str, Any]) -> None:
    """Set top-level keys of a JSON file (created if absent), atomically."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(entries)
    write_json_atomic(path, json.dumps(data, indent=2))
