"""Settings of stage 7, the de-noising, and its training progress events (no torch here, so
the command line and the napari widgets read them without importing it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from napari_datus.core.choices import DENOISE_BACKBONES, DENOISE_OUTPUTS, MAX_SEED
from napari_datus.core.errors import DatusError

BACKBONES = DENOISE_BACKBONES


@dataclass
class DenoiseConfig:
    """Settings of the de-noising model and its training.

    The defaults are a CPU budget: on the 109-image SUIM test set one epoch took 19.6 s
    on 2 cores (benchmarks/results/denoise.md).

    Attributes
    ----------
    backbone : ``mobilenet_v3_large`` (CPU default) or ``resnet50`` (the paper's)
    epochs : passes over the kept training pairs
    batch_size : at least 2 (BatchNorm in the ASPP pooling branch needs it)
    crop_size : side of the square training crops, pixels
    predict_size : shorter image side at prediction, pixels (None = original size);
        logits are resized back to the original size either way
    lr : peak AdamW learning rate (cosine decay over all steps)
    weight_decay : AdamW weight decay
    dominance : a mask whose largest cluster covers more than this fraction of its
        labelled pixels is dropped from training
    seed : seeds weights, shuffling and augmentation
    device : ``auto``, ``cpu`` or ``cuda``
    backbone_weights : optional local torchvision classification checkpoint of the backbone
    output : ``fill`` (default) keeps every labelled pixel of the initial mask and takes the
        network's prediction only where it is unlabelled; ``predict`` (the paper's) uses the
        network's prediction everywhere. A small network trained from scratch on a CPU budget
        draws coarser boundaries than the ViT segments, so it is used for what only it can
        do: labelling the noise.
    """

    backbone: str = "mobilenet_v3_large"
    epochs: int = 12
    batch_size: int = 8
    crop_size: int = 192
    predict_size: int | None = 240
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dominance: float = 0.95
    seed: int = 0
    device: str = "auto"
    backbone_weights: str | None = None
    output: str = "fill"

    def validate(self) -> None:
        """Raise one DatusError naming the first bad setting."""
        if self.backbone not in BACKBONES:
            raise DatusError(f"unknown de-noising backbone {self.backbone!r}:"
                             f" choose one of {', '.join(BACKBONES)}")
        if self.output not in DENOISE_OUTPUTS:
            raise DatusError(f"unknown de-noising output {self.output!r}:"
                             f" choose one of {', '.join(DENOISE_OUTPUTS)}")
        if self.epochs < 1:
            raise DatusError(f"de-noising epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise DatusError(f"de-noising batch size must be at least 2, got {self.batch_size}")
        if self.crop_size < 32 or (self.predict_size is not None and self.predict_size < 32):
            raise DatusError("de-noising crop and prediction sizes must be at least 32 pixels")
        if not 0.0 < self.dominance <= 1.0:
            raise DatusError(f"dominance threshold must lie in (0, 1], got {self.dominance}")
        if not 0 <= self.seed <= MAX_SEED:
            raise DatusError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.lr <= 0:
            raise DatusError(f"learning rate must be positive, got {self.lr}")
        if self.backbone_weights is not None and not Path(self.backbone_weights).is_file():
            raise DatusError(f"backbone checkpoint not found: {self.backbone_weights}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainProgress:
    """One training step: ``epoch``/``epochs``, ``step``/``steps``, the epoch's mean loss so
    far and the seconds since the epoch began."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds: float

    @property
    def message(self) -> str:
        return (f"denoise epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps}"
                f" loss {self.loss:.4f}")
