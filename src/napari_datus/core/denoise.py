"""Stage 7: de-noise the initial pseudo masks with a DeepLabV3 trained from scratch (paper III-F).

A torchvision DeepLabV3 learns (image, initial pseudo mask) pairs with cross-entropy that
ignores unlabelled pixels (255); masks dominated by one cluster are dropped from training.
The trained model then labels every pixel of every image: the *de-noised masks*.

Reproducibility: initial weights come from ``seed``, each step's dropout from
``(seed, epoch, step)`` and each epoch's shuffling and augmentation from ``(seed, epoch)``,
all through private generators or a forked global RNG (training may run in a napari worker
thread), so a run resumed from its checkpoint equals an uninterrupted one. Images and masks
are loaded lazily, one batch at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from napari_datus.core.atomic import atomic_path
from napari_datus.core.backbone import resolve_device
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED
from napari_datus.core.triton_guard import guard_triton

CHECKPOINT_NAME = "last.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# RandomResizedCrop ranges: crop area as a fraction of the image, and its aspect ratio.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

# (name, load_image -> (H, W, 3) uint8, load_mask -> (H, W) uint8 with 255 = unlabelled)
Pair = tuple[str, Callable[[], np.ndarray], Callable[[], np.ndarray]]




def combine(initial: np.ndarray, predicted: np.ndarray, output: str = "fill") -> np.ndarray:
    """The de-noised mask from the initial mask and the network's prediction.

    Parameters
    ----------
    initial : (H, W) uint8, 255 = unlabelled
    predicted : (H, W) uint8, every pixel labelled
    output : ``fill`` or ``predict`` (see :class:`DenoiseConfig`)

    Returns
    -------
    (H, W) uint8, every pixel labelled
    """
    if output == "predict":
        return predicted
    return np.where(initial == UNLABELLED, predicted, initial).astype(np.uint8)


def build_model(num_classes: int, config: DenoiseConfig) -> nn.Module:
    """A DeepLabV3 with random weights (no download), optionally a local backbone checkpoint."""
    guard_triton()  # torchvision imports torch._dynamo, which imports triton
    from torchvision.models import segmentation

    builder = getattr(segmentation, f"deeplabv3_{config.backbone}")
    # Built on the CPU from a private seed: the same weights whatever else uses torch's RNG.
    with _private_rng(torch.device("cpu"), config.seed):
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                        aux_loss=False)
    if config.backbone_weights is not None:
        load_backbone_weights(model, config.backbone_weights, config.backbone)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path, backbone: str) -> None:
    """Load a torchvision classification checkpoint (e.g. ImageNet) into the model's backbone.

    The DeepLabV3 backbone keeps the classifier's layer names (``features.`` dropped for
    MobileNetV3); the classification head is ignored. Every backbone tensor must be present.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DatusError(f"cannot read backbone checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    prefix = "features." if backbone == "mobilenet_v3_large" else ""
    target = model.backbone.state_dict()
    mapped = {key[len(prefix):]: value for key, value in state.items()
              if key.startswith(prefix) and key[len(prefix):] in target}
    missing = [key for key in target if key not in mapped]
    wrong = [key for key, value in mapped.items() if value.shape != target[key].shape]
    if missing or wrong:
        raise DatusError(f"{path} is not a torchvision {backbone} checkpoint:"
                         f" {len(missing)} backbone tensors missing, {len(wrong)} of wrong shape")
    model.backbone.load_state_dict(mapped)


def dominant_fraction(mask: np.ndarray) -> float:
    """Share of the labelled pixels held by the most frequent cluster (1.0 if none labelled).

    Parameters
    ----------
    mask : (H, W) uint8 cluster ids, 255 = unlabelled
    """
    counts = np.bincount(mask[mask != UNLABELLED].ravel(), minlength=1)
    total = counts.sum()
    return float(counts.max() / total) if total else 1.0


def select_training_pairs(pairs: Sequence[Pair], num_classes: int,
                          dominance: float) -> tuple[list[Pair], list[str]]:
    """Drop pairs whose mask one cluster dominates (or that hold no labelled pixel).

    Returns
    -------
    (kept pairs, names of dropped pairs)
    """
    kept: list[Pair] = []
    dropped: list[str] = []
    for pair in pairs:
        name, _, load_mask = pair
        mask = load_mask()
        labelled = mask[mask != UNLABELLED]
        if labelled.size and labelled.max() >= num_classes:
            raise DatusError(f"pseudo mask {name} holds cluster {labelled.max()},"
                             f" outside 0..{num_classes - 1}")
        if not labelled.size or dominant_fraction(mask) > dominance:
            dropped.append(name)
        else:
            kept.append(pair)
    return kept, dropped


class PairDataset(Dataset):
    """Random resized, flipped square crops of (image, mask) pairs, read from disk per item.

    Call :meth:`set_epoch` before each epoch: item ``i`` of epoch ``e`` draws its crop from
    ``(seed, e, i)`` alone, so it does not depend on the order or on earlier epochs.
    Items are ``(3, S, S) float32`` ImageNet-normalised images and ``(S, S) int64`` masks.
    """

    def __init__(self, pairs: Sequence[Pair], crop_size: int, seed: int) -> None:
        self.pairs = list(pairs)
        self.crop_size = crop_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name, load_image, load_mask = self.pairs[index]
        image, mask = load_image(), load_mask()
        if image.shape[:2] != mask.shape:
            raise DatusError(f"pseudo mask {name} is {mask.shape[1]}x{mask.shape[0]} but its"
                             f" image is {image.shape[1]}x{image.shape[0]}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        box = random_crop_box(rng, image.shape[1], image.shape[0])
        size = (self.crop_size, self.crop_size)
        crop = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, box=box))
        # Ids are resized with nearest: interpolating ids would invent clusters.
        target = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST, box=box))
        if rng.random() < 0.5:
            crop, target = crop[:, ::-1], target[:, ::-1]
        return normalise(crop), torch.from_numpy(target.astype(np.int64))


def random_crop_box(rng: np.random.Generator, width: int,
                    height: int) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(left, top, right, bottom)`` within a ``width x height`` image."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Very elongated images: fall back to the largest centred square.
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def normalise(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet-normalised."""
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; 0 (not NaN) when none is labelled.

    Parameters
    ----------
    logits : (B, K, H, W) float
    target : (B, H, W) int64, 255 = unlabelled (no loss, no gradient)
    """
    total = F.cross_entropy(logits, target, ignore_index=UNLABELLED, reduction="sum")
    return total / (target != UNLABELLED).sum().clamp(min=1)


def training_key(config: DenoiseConfig, num_classes: int, pairs: Sequence[Pair]) -> str:
    """Fingerprint of everything that shapes training, the masks' content included; a
    checkpoint resumes only if it matches (a re-run with another seed or tau into the same
    folder changes the masks, so it trains afresh)."""
    settings = {key: value for key, value in config.to_dict().items()
                if key not in ("device", "predict_size", "output")}
    digest = hashlib.sha256()
    for name, _, load_mask in sorted(pairs, key=lambda pair: pair[0]):
        mask = np.ascontiguousarray(load_mask())
        digest.update(f"{name}:{mask.shape}:".encode())
        digest.update(mask.tobytes())
    blob = json.dumps({"config": settings, "classes": num_classes, "masks": digest.hexdigest()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_denoiser(
    pairs: Sequence[Pair], num_classes: int, config: DenoiseConfig,
    checkpoint_dir: str | Path | None = None,
) -> Generator[TrainProgress, None, nn.Module]:
    """Train DeepLabV3 on (image, initial pseudo mask) pairs, one epoch checkpoint at a time.

    Parameters
    ----------
    pairs : (name, load_image, load_mask) per image; masks (H, W) uint8, 255 = unlabelled
    num_classes : K, the number of clusters
    config : DenoiseConfig
    checkpoint_dir : folder for ``last.pt``, written after every epoch; a matching
        checkpoint there is resumed (a finished one just loaded)

    Yields
    ------
    TrainProgress after every step.

    Returns
    -------
    The trained model, in eval mode.
    """
    config.validate()
    kept, dropped = select_training_pairs(pairs, num_classes, config.dominance)
    if len(kept) < 2:
        raise DatusError(f"only {len(kept)} of {len(pairs)} pseudo masks are usable for"
                         f" de-noising ({len(dropped)} are unlabelled or have one cluster over"
                         f" {config.dominance:.0%} of their labelled pixels); need at least 2:"
                         " raise the dominance threshold or add images")
    device = resolve_device(config.device)
    model = build_model(num_classes, config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    key = training_key(config, num_classes, kept)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start = load_checkpoint(path, key, model, optimizer, device) if path else 0

    dataset = PairDataset(kept, config.crop_size, config.seed)
    batch_size = min(config.batch_size, len(kept))
    steps = len(kept) // batch_size
    for epoch in range(start, config.epochs):
        dataset.set_epoch(epoch)
        shuffle = torch.Generator().manual_seed(config.seed + epoch)
        # drop_last keeps every batch at >= 2 items for BatchNorm; num_workers=0 for determinism.
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                            generator=shuffle, num_workers=0)
        model.train()
        running = 0.0
        began = time.perf_counter()
        for step, (images, targets) in enumerate(loader, start=1):
            set_lr(optimizer, config.lr, epoch * steps + step - 1, config.epochs * steps)
            # Dropout draws from torch's global RNG: seed it per step inside a fork, so the
            # result depends on (seed, epoch, step) alone and other threads (napari's) keep
            # their own random stream.
            with _private_rng(device, config.seed, epoch, step):
                logits = model(images.to(device))["out"]
                loss = masked_cross_entropy(logits, targets.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            running += loss.item()
            yield TrainProgress(epoch + 1, config.epochs, step, steps, running / step,
                                time.perf_counter() - began)
        if epoch + 1 == config.epochs:
            recalibrate_batchnorm(model, loader, device)
        if path is not None:
            save_checkpoint(path, key, model, optimizer, epoch + 1)
    return model.eval()


@contextmanager
def _private_rng(device: torch.device, *seed: int) -> Iterator[None]:
    """Seed torch's global RNG from ``seed`` for the block and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
        yield


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Recompute BatchNorm running statistics of the final weights over one pass of crops.

    After a short training from scratch the running averages (momentum 0.01 in MobileNetV3)
    still mix in early, very different activations, and an eval-mode model then predicts
    little more than a position prior; exact population statistics ("precise BN") fix that
    for the cost of one forward pass.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
        norm.train()
    for images, _ in loader:
        model(images.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def set_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, total: int) -> None:
    """Cosine decay from ``peak`` to 0 over ``total`` steps (a pure function of the step)."""
    lr = 0.5 * peak * (1.0 + math.cos(math.pi * step / max(total, 1)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_checkpoint(path: Path, key: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Atomically write model, optimizer, finished epochs and training key."""
    state = {"key": key, "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise DatusError(f"cannot write checkpoints to {path.parent}:"
                         f" {exc.strerror or exc}") from exc


def load_checkpoint(path: Path, key: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """Restore a checkpoint whose training key matches; return its finished epochs (else 0)."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a foreign or damaged file: start afresh rather than fail
        return 0
    if not isinstance(state, dict) or state.get("key") != key:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


@torch.no_grad()
def predict(model: nn.Module, image: np.ndarray, predict_size: int | None = None) -> np.ndarray:
    """Label every pixel of one image.

    Parameters
    ----------
    model : a trained DeepLabV3 (its device is used)
    image : (H, W, 3) uint8 RGB
    predict_size : shorter side the image is resized to for the network (None = as is)

    Returns
    -------
    (H, W) uint8 cluster ids; logits are resized to (H, W) bilinearly before the argmax.
    """
    model.eval()
    height, width = image.shape[:2]
    x = normalise(image)[None].to(next(model.parameters()).device)
    if predict_size is not None:
        scale = predict_size / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    logits = model(x)["out"]
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()
