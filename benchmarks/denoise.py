"""De-noising benchmark (issue 5): initial vs de-noised masks, and CPU seconds per epoch.

Usage (from the repository root), on the output of ``datus run`` over the shared SUIM
test set::

    datus run ../shared/data/suim_test/images --gt ../shared/data/suim_test/masks \\
        --gt-format suim6 --weights ../shared/weights/dinov2_vits14_imgfocus.pth \\
        --out /tmp/suim_run
    python benchmarks/denoise.py /tmp/suim_run [--epochs 20] [--backbone mobilenet_v3_large]

The run folder is left untouched: its run.json, metrics.json and pseudo masks are copied
to a scratch folder (``--work``) that :func:`napari_datus.denoise_run.iter_denoise_run`
de-noises, one training per ``--seeds`` value. Metrics are the ``initial`` and
``denoised`` blocks of metrics.json (paper figure, strict figure, coverage). Time per
epoch is wall clock and process CPU time (all threads, ``--threads`` of them).
Writes ``denoise.json`` beside ``denoise.md`` under ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.denoise_run import iter_denoise_run
from napari_datus.pipeline import drive
from napari_datus.runs.record import load_record

RESULTS = Path(__file__).resolve().parent / "results"
# Paper Table IV (SUIM, 6 classes, DINO ViT-S/8): (masks, split, mIoU, PAcc, mean F1), in %.
PAPER_TABLE_IV = [
    ("initial", "train (1525)", 23.19, 61.56, 31.74),
    ("initial", "val", 28.48, 64.67, 39.52),
    ("de-noised", "train (1525)", 24.19, 61.43, 31.34),
    ("de-noised", "val", 23.21, 61.82, 32.18),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DenoiseConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a datus run folder with ground truth")
    parser.add_argument("--backbone", default=defaults.backbone)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size)
    parser.add_argument("--predict-size", type=int, default=defaults.predict_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def copy_run(run: Path, work: Path) -> Path:
    """Copy the files de-noising reads (not earlier de-noised outputs) to ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("run.json", "metrics.json"):
        shutil.copy2(run / name, work / name)
    shutil.copytree(run / "pseudo_masks", work / "pseudo_masks")
    return work


def denoise_once(run: Path, work: Path, config: DenoiseConfig) -> dict:
    """De-noise a copy of ``run``; return its metrics and timings."""
    copy_run(run, work)
    wall, cpu = [], []
    began_wall, began_cpu = time.perf_counter(), time.process_time()
    events = iter_denoise_run(work, config)
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(event, TrainProgress) and event.step == event.steps:
            wall.append(time.perf_counter() - began_wall)
            cpu.append(time.process_time() - began_cpu)
            print(f"seed {config.seed}: {event.message} ({wall[-1]:.0f} s)", file=sys.stderr)
            began_wall, began_cpu = time.perf_counter(), time.process_time()
    fill = json.loads((work / "metrics.json").read_text())
    # The paper's output from the same trained network: training resumes from the final
    # checkpoint (the output mode is not part of the training key), so only prediction reruns.
    drive(iter_denoise_run(work, replace(config, output="predict")))
    metrics = json.loads((work / "metrics.json").read_text())
    return {"seed": config.seed, "initial": metrics["initial"], "denoised": fill["denoised"],
            "denoised_predict": metrics["denoised"],
            "dropped": len(result.dropped), "trained_on": len(result.written) - len(result.dropped),
            "wall_seconds_per_epoch": wall, "cpu_seconds_per_epoch": cpu,
            "predict_seconds": result.predict_seconds}


def summary(block: dict) -> dict[str, float]:
    """Paper and strict figures (in %) and coverage of one metrics.json block."""
    return {"miou": 100 * block["miou"], "pixel_accuracy": 100 * block["pixel_accuracy"],
            "mean_f1": 100 * block["mean_f1"], "strict_miou": 100 * block["strict"]["miou"],
            "strict_pixel_accuracy": 100 * block["strict"]["pixel_accuracy"],
            "strict_mean_f1": 100 * block["strict"]["mean_f1"],
            "coverage": 100 * block["coverage"]}


def mean_spread(runs: list[dict], masks: str) -> dict[str, list[float]]:
    """Per figure: [mean, min, max] over seeds."""
    rows = [summary(run[masks]) for run in runs]
    return {key: [statistics.mean(r[key] for r in rows), min(r[key] for r in rows),
                  max(r[key] for r in rows)] for key in rows[0]}


def markdown(report: dict) -> str:
    """The comparison table, the paper's Table IV and the budget."""
    keys = ("miou", "pixel_accuracy", "mean_f1", "strict_miou", "strict_pixel_accuracy",
            "strict_mean_f1", "coverage")

    def cell(values: list[float]) -> str:
        mean, low, high = values
        return f"{mean:.2f}" if high - low < 5e-3 else f"{mean:.2f} ({low:.2f}-{high:.2f})"

    config, seeds = report["config"], report["seeds"]
    lines = [
        f"SUIM test ({report['images']} images, 6 classes, K = {report['clusters']}); "
        f"de-noising seeds {seeds}: mean (min-max). All figures in %.",
        "",
        "| masks | mIoU | PAcc | mean F1 | strict mIoU | strict PAcc | strict F1 | coverage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"initial": "initial", "denoised": "de-noised, fill (default)",
              "denoised_predict": "de-noised, predict (paper's output)"}
    for masks, label in labels.items():
        lines.append(f"| {label} (this run) | "
                     + " | ".join(cell(report[masks][k]) for k in keys) + " |")
    for masks, split, miou, pacc, f1 in PAPER_TABLE_IV:
        lines.append(f"| paper Table IV {masks}, {split} | {miou:.2f} | {pacc:.2f} | {f1:.2f}"
                     " | - | - | - | - |")
    timing = report["timing"]
    lines += [
        "",
        f"Budget: DeepLabV3-{config['backbone']} from scratch, {config['epochs']} epochs, "
        f"batch {config['batch_size']}, crop {config['crop_size']}, prediction at shorter "
        f"side {config['predict_size']}, {report['threads']} CPU threads; trained on "
        f"{report['trained_on']} masks ({report['dropped']} dropped by the dominance rule).",
        f"Per epoch: {timing['wall_seconds_per_epoch']:.1f} s wall, "
        f"{timing['cpu_seconds_per_epoch']:.1f} CPU s; prediction of all images "
        f"{timing['predict_seconds']:.1f} s wall ({report['machine']}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = {f.name for f in fields(DenoiseConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names}
    work_root = args.work or Path(tempfile.mkdtemp(prefix="datus_denoise_"))
    runs = [denoise_once(args.run, work_root / f"seed{seed}",
                         DenoiseConfig(**settings, seed=seed, device="cpu"))
            for seed in args.seeds]
    record = load_record(args.run)
    report = {
        "run": str(args.run),
        "images": len(record.images),
        "clusters": record.clusters,
        "config": DenoiseConfig(**settings, device="cpu").to_dict(),
        "seeds": args.seeds,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "initial": mean_spread(runs, "initial"),
        "denoised": mean_spread(runs, "denoised"),
        "denoised_predict": mean_spread(runs, "denoised_predict"),
        "trained_on": runs[0]["trained_on"],
        "dropped": runs[0]["dropped"],
        "timing": {key: statistics.mean(v for run in runs for v in run[key])
                   for key in ("wall_seconds_per_epoch", "cpu_seconds_per_epoch")}
        | {"predict_seconds": statistics.mean(run["predict_seconds"] for run in runs)},
        "paper_table_iv": [dict(zip(("masks", "split", "miou", "pixel_accuracy", "mean_f1"),
                                    row)) for row in PAPER_TABLE_IV],
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "denoise.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "denoise.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
