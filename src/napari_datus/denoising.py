"""The de-noising service (stage 7 over a dataset): train, then predict and combine per image.

Written once for its two front-ends: ``datus denoise`` (:mod:`napari_datus.denoise_run`,
pairs read from a run folder, masks written to files) and the napari widget (pairs from
layers, masks kept in memory). Each de-noised mask is handed to ``on_mask`` as soon as it is
made, so a thousand images never sit in memory together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_datus.core.denoise import (
    Pair,
    combine,
    predict,
    select_training_pairs,
    train_denoiser,
)
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.pipeline import Progress


@dataclass
class DenoiseSummary:
    """What a de-noising did besides its masks.

    Attributes
    ----------
    dropped : names of the pairs left out of training (one cluster dominates, or unlabelled)
    seconds_per_epoch : training time of each epoch trained in this call
    predict_seconds : time to predict and combine every image
    """

    dropped: list[str]
    seconds_per_epoch: list[float]
    predict_seconds: float


def denoise_pairs(
    pairs: Sequence[Pair], clusters: int, config: DenoiseConfig,
    on_mask: Callable[[str, np.ndarray], None], checkpoint_dir: str | Path | None = None,
) -> Generator[TrainProgress | Progress, None, DenoiseSummary]:
    """Train the de-noiser on every pair, then de-noise every pair's mask.

    Parameters
    ----------
    pairs : (name, load image -> (H, W, 3) uint8, load mask -> (H, W) uint8, 255 = unlabelled)
    clusters : K
    config : DenoiseConfig (validated here, before any work)
    on_mask : called with (name, (H, W) uint8 de-noised cluster ids) per pair, in order
    checkpoint_dir : where training checkpoints go (None: none are written)

    Yields
    ------
    TrainProgress per training step, then Progress per de-noised image.
    """
    config.validate()
    _, dropped = select_training_pairs(pairs, clusters, config.dominance)
    epoch_seconds: list[float] = []
    training = train_denoiser(pairs, clusters, config, checkpoint_dir)
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
    for index, (name, load_image, load_mask) in enumerate(pairs, start=1):
        predicted = predict(model, load_image(), config.predict_size)
        on_mask(name, combine(load_mask(), predicted, config.output))
        yield Progress("denoise predict", index, len(pairs), name)
    return DenoiseSummary(dropped, epoch_seconds, time.perf_counter() - began)
