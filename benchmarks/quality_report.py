"""Tables of the quality benchmark (:mod:`quality`): mean and spread over seeds, per-class IoU.

Kept apart from the runner so each file stays readable; nothing here computes metrics.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from napari_datus.io.masks import class_names
from napari_datus.pipeline import Params

FIGURES = ("miou", "pixel_accuracy", "mean_f1", "strict_miou", "strict_pixel_accuracy",
           "strict_mean_f1", "coverage", "boundary_f1", "segments_per_image",
           "valid_fraction", "seconds_per_image")
NAMES = class_names("suim6")
# The paper's rows (DESIGN 3; K = 6, initial masks), beside ours in the per-class table.
PAPER_ROWS = [
    ("paper: DatUS DINOv2 ViT-S/14 (train split)", 20.82, 47.86, 29.93),
    ("paper: DatUS DINO ViT-S/8 (train split)", 23.19, 61.56, 31.74),
    ("paper: DatUS DINO ViT-B/8 (val split)", 28.48, 64.67, 39.52),
    ("paper: STEGO ViT-S/8 (val split)", 24.76, 53.24, None),
]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def aggregate(row) -> dict:
    """Mean and spread (min, max) over seeds of every figure of a row, per class too."""
    ok = [s for s in row.seeds if "error" not in s]
    if not ok:
        return {"error": row.seeds[0]["error"] if row.seeds else "not run"}
    out = {key: spread([s[key] for s in ok if key in s]) for key in FIGURES
           if any(key in s for s in ok)}
    # Older stored results keep per-class IoU only inside their metrics block.
    per_class = [s.get("per_class_iou") or s["metrics"]["per_class_iou"] for s in ok
                 if "per_class_iou" in s or "per_class_iou" in s.get("metrics", {})]
    if per_class:
        out["per_class_iou"] = [
            spread([p[c] for p in per_class if p[c] is not None])
            if any(p[c] is not None for p in per_class) else None
            for c in range(len(per_class[0]))]
    return out


def command_of(row, base: Params) -> str:
    """The ``datus run`` flags that reproduce a row (one seed; add ``--seed S``)."""
    if row.kind != "datus":
        return f"`python benchmarks/quality.py IMAGES GT --only '{row.name}'`"
    params = replace(base, **row.changes)
    flags = [f"--resolution {params.resolution}", f"--clusters {params.clusters}",
             f"--tau {params.tau}", f"--affinity {params.affinity}",
             f"--partition {params.partition}", f"--embedding {params.embedding}",
             f"--n-init {params.n_init}", f"--embedding-norm {params.embedding_norm}",
             f"--grouping {params.grouping}"]
    if params.affinity.endswith("-knn"):
        flags.append(f"--knn {params.knn}")
    if params.grouping == "merge":
        flags.append(f"--overcluster {params.overcluster}")
    if params.refine != "none":
        flags.append(f"--refine {params.refine}")
    flags += [flag for flag, on in (("--self-loops", params.self_loops),
                                    ("--size-weighted", params.size_weighted),
                                    ("--fill-noise", params.fill_noise)) if on]
    return "`datus run IMAGES --gt GT --gt-format suim6 --out OUT " + " ".join(flags) + "`"


def cell(stats: dict | None, key: str | None = None, pct: bool = True) -> str:
    """``mean (min-max)`` of one figure, in percent for fractions."""
    s = stats if key is None else (stats or {}).get(key)
    if s is None:
        return "-"
    f = 100.0 if pct else 1.0
    if s["min"] == s["max"]:
        return f"{s['mean'] * f:.2f}"
    return f"{s['mean'] * f:.2f} ({s['min'] * f:.1f}-{s['max'] * f:.1f})"


def markdown(rows: list, base: Params, n_images: int, seeds: list[int],
             title: str = "") -> str:
    """The results tables: figures in percent, mean (min-max) over seeds."""
    lines = [
        *([f"## {title}", ""] if title else []),
        f"Initial pseudo masks, {n_images} images, pixel level at ground-truth resolution,"
        f" 6 classes; mean (min-max) over seeds {', '.join(map(str, seeds))}. Paper figures"
        " drop unlabelled pixels; strict figures count them wrong. Boundary F1: tolerance 1%"
        " of the image diagonal, mean over images (only rows that score it).",
        "",
        "| row | mIoU | PAcc | mean F1 | strict mIoU | strict PAcc | coverage | boundary F1"
        " | segments/img | % valid | s/img | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats_of = {row.name: aggregate(row) for row in rows}
    for row in rows:
        stats = stats_of[row.name]
        if "error" in stats:
            lines.append(f"| {row.name} | {stats['error']} | | | | | | | | | | "
                         f"{command_of(row, base)} |")
            continue
        lines.append("| " + " | ".join([
            row.name, cell(stats, "miou"), cell(stats, "pixel_accuracy"),
            cell(stats, "mean_f1"), cell(stats, "strict_miou"),
            cell(stats, "strict_pixel_accuracy"), cell(stats, "coverage"),
            cell(stats, "boundary_f1"), cell(stats, "segments_per_image", pct=False),
            cell(stats, "valid_fraction"), cell(stats, "seconds_per_image", pct=False),
            command_of(row, base)]) + " |")
    lines += ["", "Per-class IoU (paper figure), mean (min-max) over seeds:", "",
              "| row | " + " | ".join(NAMES) + " |", "|---" * (len(NAMES) + 1) + "|"]
    for row in rows:
        per_class = stats_of[row.name].get("per_class_iou")
        if per_class:
            lines.append(f"| {row.name} | " + " | ".join(cell(c) for c in per_class) + " |")
    lines += ["", "The paper's rows for reference (SUIM, K = 6, initial masks; other splits):",
              "", "| row | mIoU | PAcc | mean F1 |", "|---|---|---|---|"]
    lines += [f"| {name} | {m} | {p} | {'-' if f is None else f} |"
              for name, m, p, f in PAPER_ROWS]
    return "\n".join(lines) + "\n"
