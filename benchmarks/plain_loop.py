"""The floor `datus run` is measured against: a plain loop of ViT forwards, as one process.

Usage::

    python benchmarks/plain_loop.py IMAGES_DIR WEIGHTS [--resolution 224] [--limit N]
        [--precision auto|fp32|bf16] [--batch 8] [--device cpu|cuda]

Imports torch and timm, builds the default DINOv2 ViT-S/14 from the same weights file
``datus run`` uses, then for each batch of images: decode (Pillow), resize (Pillow bicubic),
normalise, one ``forward_features``. Nothing is written. ``--precision auto`` (the default)
is bf16 weights and inputs (``model.to(torch.bfloat16)``, not autocast) on a CPU with AMX or
AVX512-BF16 and on CUDA, float32 elsewhere: with ``--batch 8``, the fastest forward loop of
such a CPU (issue 22). Prints one JSON line with the seconds of each phase;
``benchmarks/speed.py`` times the whole process from outside, start-up and imports
included, as it times ``datus run``.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def load_model(weights: Path, resolution: int) -> torch.nn.Module:
    """DINOv2 ViT-S/14 with the weights of a safetensors or .pth state dict, in eval mode."""
    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=resolution,
                            dynamic_img_size=True, num_classes=0)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def fast_bf16(device: str) -> bool:
    """bf16 matrix instructions: CUDA with bf16, or a CPU with AMX or AVX512-BF16."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = next((line.split(":", 1)[1].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def pixels(path: Path, resolution: int) -> torch.Tensor:
    """``(1, 3, T, T)`` normalised float32 input of one image file."""
    image = Image.open(path).convert("RGB").resize((resolution, resolution), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div_(255.0)
    return (x - MEAN) / STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    imported = time.perf_counter()
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if fast_bf16(args.device) else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = load_model(args.weights, args.resolution).to(args.device, dtype)
    built = time.perf_counter()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    files = files[: args.limit]
    forward = 0.0
    with torch.inference_mode():
        for i in range(0, len(files), args.batch):
            x = torch.cat([pixels(p, args.resolution) for p in files[i : i + args.batch]])
            start = time.perf_counter()
            out = net.forward_features(x.to(args.device, dtype))
            out.float().cpu()  # the features reach the host, as in datus run
            forward += time.perf_counter() - start
    done = time.perf_counter()
    print(json.dumps({"imports": imported - START, "model": built - imported,
                      "loop": done - built, "forward": forward, "images": len(files),
                      "precision": precision, "batch": args.batch,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
