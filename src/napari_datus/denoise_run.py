"""De-noise an existing ``datus run`` folder (stage 7 over a whole run).

Reads ``run.json`` (``params.clusters``, ``inputs``: each stem's image and ground-truth
paths, ``gt``: format, ignore value and classes) and ``pseudo_masks/<stem>.png``; trains
the de-noiser with checkpoints in ``denoise_checkpoints/``; writes ``denoised/<stem>.png``
(uint8 cluster ids, every pixel labelled); adds ``"denoised"`` to ``metrics.json`` (its own
Hungarian matching) and a ``"denoise"`` record (settings, dropped masks, timings) to run.json.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_datus.core.denoise import Pair
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.denoising import denoise_pairs
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.images import read_image
from napari_datus.io.masks import read_cluster_mask, write_index_mask
from napari_datus.outputs import (
    CHECKPOINT_DIR,
    DENOISED_DIR,
    folder_lock,
    read_json,
    write_json,
)
from napari_datus.pipeline import Progress, drive


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
    # Score boundary F1 too when "initial" has it, so both blocks carry the same keys.
    boundaries: bool = False


@dataclass
class DenoiseResult:
    """A finished de-noising: masks written, masks dropped from training, metrics, timings."""

    written: list[Path]
    dropped: list[str]
    metrics: dict | None
    seconds_per_epoch: list[float]
    predict_seconds: float


def read_run(out_dir: str | Path) -> RunInputs:
    """Parse ``run.json`` (and metrics.json) of a complete run folder; raise DatusError
    naming what is missing, corrupt or inconsistent."""
    out_dir = Path(out_dir)
    path = out_dir / "run.json"
    if not path.is_file():
        raise DatusError(f"{out_dir} is not a complete datus run folder: run.json not found")
    run = read_json(path)
    try:
        clusters = int(run["params"]["clusters"])
        inputs = {stem: entry for stem, entry in run["inputs"].items()
                  if isinstance(entry, dict) and entry.get("image")}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatusError(f"{path} lacks params.clusters or inputs ({exc}); re-run datus run"
                         " or re-export from napari") from exc
    gt = run.get("gt") or {}
    images = {stem: Path(entry["image"]) for stem, entry in inputs.items()
              if (out_dir / "pseudo_masks" / f"{stem}.png").is_file()}
    if not images:
        raise DatusError(f"no pseudo masks in {out_dir / 'pseudo_masks'} for the run's inputs")
    metrics_path = out_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    if metrics and metrics.get("run_id") != run.get("run_id"):
        raise DatusError(f"{metrics_path} belongs to another run than {path} (an interrupted"
                         " run?); re-run datus run into this folder")
    # Score the images "initial" was scored on.
    evaluated = set(metrics.get("images") or images)
    gts = {stem: Path(entry["gt"]) for stem, entry in inputs.items()
           if stem in images and stem in evaluated and entry.get("gt")}
    return RunInputs(out_dir=out_dir, clusters=clusters, images=images, gts=gts,
                     gt_format=gt.get("format"), gt_ignore=gt.get("ignore"),
                     classes=list(metrics.get("classes") or gt.get("classes") or []),
                     boundaries="boundary" in (metrics.get("initial") or {}))


def training_pairs(run: RunInputs) -> list[Pair]:
    """(stem, load image, load pseudo mask) for every image of the run, loaded lazily."""
    masks = run.out_dir / "pseudo_masks"
    return [(stem, partial(read_image, path), partial(read_cluster_mask, masks / f"{stem}.png"))
            for stem, path in sorted(run.images.items())]


def iter_denoise_run(
    out_dir: str | Path, config: DenoiseConfig,
) -> Generator[TrainProgress | Progress, None, DenoiseResult]:
    """Train, predict, write and score; yields progress.

    ``denoised/`` is written into a staging folder and swapped in when complete, so an
    interrupted de-noising leaves the previous ``denoised/`` (or none), never a mix.
    """
    config.validate()
    run = read_run(out_dir)
    with folder_lock(run.out_dir):
        return (yield from _denoise_locked(run, config))


def _denoise_locked(run: RunInputs, config: DenoiseConfig,
                    ) -> Generator[TrainProgress | Progress, None, DenoiseResult]:
    scorer = (Scorer(run.clusters, GroundTruthFormat(run.gt_format, run.gt_ignore),
                     boundaries=run.boundaries)
              if run.gts and run.gt_format else None)
    staging = run.out_dir / f".{DENOISED_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    written: list[Path] = []

    def keep(stem: str, mask: np.ndarray) -> None:
        written.append(run.out_dir / DENOISED_DIR / write_index_mask(
            staging / f"{stem}.png", mask).name)
        if scorer is not None and stem in run.gts:
            reason = scorer.add_file(stem, mask, run.gts[stem])
            if reason is not None:
                warnings.warn(reason, stacklevel=2)

    summary = yield from denoise_pairs(training_pairs(run), run.clusters, config, keep,
                                       run.out_dir / CHECKPOINT_DIR)
    _swap_in(staging, run.out_dir / DENOISED_DIR)
    metrics = scorer.result() if scorer is not None else None
    if metrics is not None:
        _update_json(run.out_dir / "metrics.json", {"denoised": metrics})
    _update_json(run.out_dir / "run.json", {"denoise": {
        "config": config.to_dict(), "trained_on": len(run.images) - len(summary.dropped),
        "dropped": summary.dropped, "seconds_per_epoch": summary.seconds_per_epoch,
        "predict_seconds": summary.predict_seconds}})
    return DenoiseResult(written, summary.dropped, metrics, summary.seconds_per_epoch,
                         summary.predict_seconds)


def denoise_run(out_dir: str | Path, config: DenoiseConfig,
                progress: Callable[[TrainProgress | Progress], None] | None = None,
                ) -> DenoiseResult:
    """De-noise a run folder to the end (see :func:`iter_denoise_run`), reporting progress."""
    return drive(iter_denoise_run(out_dir, config), progress)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``staging`` folder (two renames)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _update_json(path: Path, entries: dict[str, Any]) -> None:
    """Set top-level keys of a JSON file (created if absent), atomically."""
    data = read_json(path) if path.is_file() else {}
    data.update(entries)
    write_json(path, data)
