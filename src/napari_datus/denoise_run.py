"""De-noise an existing ``datus run`` folder (stage 7 over a whole run).

Reads ``run.json`` (``params.clusters``, ``inputs``: each stem's image and ground-truth
paths, ``gt``: format, ignore value and classes) and ``pseudo_masks/<stem>.png``; trains
the de-noiser with checkpoints in ``denoise_checkpoints/``; writes ``denoised/<stem>.png``
(uint8 cluster ids, every pixel labelled); adds ``"denoised"`` to ``metrics.json`` (its own
Hungarian matching) and a ``"denoise"`` record (settings, dropped masks, timings) to run.json.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from napari_datus.core.denoise import CHECKPOINT_NAME, Pair
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.denoising import denoise_pairs
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.images import read_image
from napari_datus.io.masks import read_cluster_mask, write_index_mask
from napari_datus.outputs import write_json
from napari_datus.pipeline import Progress, drive
from napari_datus.runs import read as runs_read
from napari_datus.runs.layout import (
    CHECKPOINT_DIR,
    DENOISED_DIR,
    METRICS_FILE,
    PSEUDO_DIR,
    image_file,
)
from napari_datus.runs.write import RunWriter


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
    """What de-noising needs of a complete run folder; DatusError naming what is missing,
    corrupt or inconsistent (an image without its pseudo mask or image file included)."""
    folder = runs_read.read_run(out_dir)
    record = folder.record
    if folder.missing:
        raise DatusError(f"{folder.out}: {len(folder.missing)} images of the run have no"
                         f" pseudo mask ({', '.join(folder.missing[:3])}); re-run datus run")
    lost = [s for s in folder.stems if folder.image(s) is None]
    if lost:
        raise DatusError(f"{folder.out}: the image files of {len(lost)} images are gone"
                         f" ({', '.join(lost[:3])}); de-noising trains on image and mask")
    metrics = runs_read.read_metrics(folder)
    gt = record.gt or {}
    # Score the images "initial" was scored on.
    evaluated = set(metrics.get("images") or folder.stems)
    gts = {stem: folder.gt(stem) for stem in folder.stems
           if stem in evaluated and folder.gt(stem) is not None}
    return RunInputs(out_dir=folder.out, clusters=record.clusters,
                     images={stem: folder.image(stem) for stem in folder.stems}, gts=gts,
                     gt_format=gt.get("format"), gt_ignore=gt.get("ignore"),
                     classes=list(metrics.get("classes") or gt.get("classes") or []),
                     boundaries="boundary" in (metrics.get("initial") or {}))


def training_pairs(run: RunInputs) -> list[Pair]:
    """(stem, load image, load pseudo mask) for every image of the run, loaded lazily."""
    masks = run.out_dir / PSEUDO_DIR
    return [(stem, partial(read_image, path), partial(read_cluster_mask, masks / f"{stem}.png"))
            for stem, path in sorted(run.images.items())]


def iter_denoise_run(
    out_dir: str | Path, config: DenoiseConfig,
) -> Generator[TrainProgress | Progress, None, DenoiseResult]:
    """Train, predict, write and score; yields progress.

    ``denoised/`` and the metrics are staged and swapped in when complete
    (:class:`~napari_datus.runs.write.RunWriter`), so an interrupted de-noising leaves the
    run as it was; the checkpoint is written in place, so a new de-noising resumes it.
    """
    config.validate()
    run = read_run(out_dir)
    with RunWriter(run.out_dir, update=True) as writer:
        return (yield from _denoise_locked(run, config, writer))


def _denoise_locked(run: RunInputs, config: DenoiseConfig, writer: RunWriter,
                    ) -> Generator[TrainProgress | Progress, None, DenoiseResult]:
    scorer = (Scorer(run.clusters, GroundTruthFormat(run.gt_format, run.gt_ignore),
                     boundaries=run.boundaries)
              if run.gts and run.gt_format else None)
    checkpoint = writer.adopt(f"{CHECKPOINT_DIR}/{CHECKPOINT_NAME}")
    written: list[Path] = []

    def keep(stem: str, mask: np.ndarray) -> None:
        write_index_mask(writer.path(image_file(DENOISED_DIR, stem)), mask)
        written.append(run.out_dir / image_file(DENOISED_DIR, stem))
        if scorer is not None and stem in run.gts:
            reason = scorer.add_file(stem, mask, run.gts[stem])
            if reason is not None:
                warnings.warn(reason, stacklevel=2)

    summary = yield from denoise_pairs(training_pairs(run), run.clusters, config, keep,
                                       checkpoint.parent)
    metrics = scorer.result() if scorer is not None else None
    record = writer.old
    if metrics is not None:
        existing = runs_read.read_metrics(runs_read.read_run(run.out_dir))
        write_json(writer.path(METRICS_FILE), {**existing, "run_id": record.run_id,
                                               "denoised": metrics})
    record.denoise = {
        "config": config.to_dict(), "trained_on": len(run.images) - len(summary.dropped),
        "dropped": summary.dropped, "seconds_per_epoch": summary.seconds_per_epoch,
        "predict_seconds": summary.predict_seconds}
    writer.commit(record)
    return DenoiseResult(written, summary.dropped, metrics, summary.seconds_per_epoch,
                         summary.predict_seconds)


def denoise_run(out_dir: str | Path, config: DenoiseConfig,
                progress: Callable[[TrainProgress | Progress], None] | None = None,
                ) -> DenoiseResult:
    """De-noise a run folder to the end (see :func:`iter_denoise_run`), reporting progress."""
    return drive(iter_denoise_run(out_dir, config), progress)
