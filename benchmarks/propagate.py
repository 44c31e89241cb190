"""Propagation benchmark (issue 21): N labelled images label the rest of a run.

Usage (from the repository root), on a ``datus run`` of suim_dev whose features are in
the cache (the benchmark reads cached features only; a cold cache would run the ViT)::

    DATUS_CACHE_DIR=/work/cache-dev datus run ../shared/data/suim_dev/images \\
        --gt ../shared/data/suim_dev/masks --gt-format suim6 --out /work/runs/suim_dev
    DATUS_CACHE_DIR=/work/cache-dev python benchmarks/propagate.py /work/runs/suim_dev \\
        --n 1 5 20 50 --draws 3 --methods probe balanced --name nearest

For each N the labelled images are chosen by a fixed rule (every ``len // N``-th image by
name, the first N of them) and at random (``--draws`` draws, seeded); the ground truth of
the labelled images is their labels. The other images are scored: mIoU, pixel accuracy and
boundary F1 (1% of the diagonal) with the labels' class identity for propagation, and the
run's own pseudo masks with Hungarian matching on the same images for the unsupervised
default (paper figure; strict figure and coverage beside it). A method is a classifier
setting (:class:`~napari_datus.core.propagate.PropagateConfig`) and a refinement
(``none``: nearest upsampling of the patch grid; ``guided``: the run's guided filter).
Writes ``benchmarks/results/propagate_<name>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_datus.cache import FeatureCache
from napari_datus.core.lazy_backbone import LazyBackbone
from napari_datus.core.metrics import evaluate
from napari_datus.core.propagate import (
    PropagateConfig,
    Propagator,
    patch_counts,
    patch_features,
    scores_to_mask,
    segment_vote,
    training_set,
)
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.images import read_image
from napari_datus.io.masks import class_names, read_cluster_mask
from napari_datus.propagation import identity_block, run_features, run_params
from napari_datus.runs.read import read_run

RESULTS = Path(__file__).resolve().parent / "results"
FORMAT = "suim6"
# A method is named by its settings, joined by "-": the classifier first, then any of
# c<C>, alpha<A>, vote<w>, keys, context, guided, soft (guided-soft). "probe" is the issue's
# baseline: a plain logistic regression on the patch tokens, nearest upsampling.
REFINES = {"guided": "guided", "soft": "guided-soft"}
FEATURE_WORDS = {"keys": "tokens+keys", "context": "tokens+context"}


def method(name: str) -> tuple[PropagateConfig, str]:
    """(config, refine) of a method name such as ``balanced-c0.1-vote0.5-soft``."""
    first, *words = name.split("-")
    # Words not given take the plain probe's settings, whatever the library's defaults.
    settings: dict = {"classifier": "linear" if first == "probe" else first, "c": 1.0,
                      "segment_vote": 0.0, "features": "tokens"}
    refine = "none"
    for word in words:
        if word in REFINES:
            refine = REFINES[word]
        elif word in FEATURE_WORDS:
            settings["features"] = FEATURE_WORDS[word]
        else:
            for key, field in (("alpha", "alpha"), ("vote", "segment_vote"), ("c", "c")):
                if word.startswith(key):
                    settings[field] = float(word[len(key):])
                    break
            else:
                raise SystemExit(f"unknown method word {word!r} in {name!r}")
    config = PropagateConfig(**settings)
    config.validate()
    return config, refine


@dataclass
class Data:
    """Everything the benchmark reads once: features, segments, truth, pseudo masks."""

    stems: list[str]
    tokens: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    segments: dict[str, np.ndarray]
    grid: int
    truth: dict[str, np.ndarray]
    pseudo: dict[str, np.ndarray]
    images: dict[str, Path]
    clusters: int


def load(run_dir: Path) -> Data:
    folder = read_run(run_dir)
    params = run_params(folder)
    cache = FeatureCache()
    backbone = LazyBackbone(params.model, params.weights, params.device, facts=cache)
    features = run_features(folder, backbone, cache,
                            PropagateConfig(segment_vote=1.0, features="tokens+keys"))
    gt = GroundTruthFormat(FORMAT)
    data = Data(list(folder.stems), {}, {}, {}, 0, {}, {}, {}, folder.record.clusters)
    for stem in folder.stems:
        feats, grid, segments = features.of(stem)
        dim = feats.shape[1] // 2
        data.tokens[stem], data.keys[stem] = feats[:, :dim], feats[:, dim:]
        data.segments[stem], data.grid = segments, grid
        data.truth[stem] = gt.read(folder.gt(stem)).astype(np.int8)
        data.pseudo[stem] = read_cluster_mask(folder.computed_mask(stem))
        data.images[stem] = folder.image(stem)
    if backbone.built:
        print("warning: the ViT ran: the feature cache was not warm", file=sys.stderr)
    return data


def splits(stems: list[str], n: int, draws: int, seed: int) -> list[tuple[str, list[str]]]:
    """(name, labelled stems): the fixed rule, then ``draws`` seeded random draws."""
    ordered = sorted(stems)
    out = [("every-k", ordered[:: max(1, len(ordered) // n)][:n])]
    for d in range(draws):
        rng = np.random.default_rng(seed + d)
        out.append((f"random-{d}", sorted(rng.choice(ordered, n, replace=False).tolist())))
    return out


def features_of(data: Data, stem: str, config: PropagateConfig) -> np.ndarray:
    return patch_features(data.tokens[stem], data.keys[stem], config.features)


def propagate(data: Data, labelled: list[str], config: PropagateConfig, refine: str) -> dict:
    """Train on ``labelled`` (their truth as labels), score the rest; returns figures."""
    start = time.perf_counter()
    names = class_names(FORMAT)
    counts = [patch_counts(np.where(data.truth[s] < 0, 255, data.truth[s]).astype(np.uint8),
                           data.grid, len(names)) for s in labelled]
    x, y = training_set([features_of(data, s, config) for s in labelled], counts,
                        config.min_labelled)
    model = Propagator(config, len(names)).fit(x, y)
    fit_seconds = time.perf_counter() - start
    scorer = Scorer(len(names), GroundTruthFormat(FORMAT), boundaries=True)
    for stem in data.stems:
        if stem in labelled:
            continue
        scores = segment_vote(model.scores(features_of(data, stem, config)),
                              data.segments[stem], config.segment_vote)
        truth = data.truth[stem].astype(np.int64)
        image = read_image(data.images[stem]) if refine != "none" else None
        mask = scores_to_mask(scores, data.grid, truth.shape, refine, image)
        scorer.add(stem, mask, truth)
    block = identity_block(scorer, names, names)
    return {"miou": block["miou"], "pixel_accuracy": block["pixel_accuracy"],
            "boundary_f1": block["boundary"]["f1"], "per_class_iou": block["per_class_iou"],
            "images": len(block["images"]), "train_patches": int(y.size),
            "fit_seconds": fit_seconds, "seconds": time.perf_counter() - start}


def unsupervised(data: Data, labelled: list[str]) -> dict:
    """The run's pseudo masks on the same images, Hungarian-matched."""
    scorer = Scorer(data.clusters, GroundTruthFormat(FORMAT), boundaries=True)
    for stem in data.stems:
        if stem not in labelled:
            scorer.add(stem, data.pseudo[stem], data.truth[stem].astype(np.int64))
    block = evaluate(scorer.confusion, class_names(FORMAT))
    return {"miou": block["miou"], "pixel_accuracy": block["pixel_accuracy"],
            "boundary_f1": scorer.boundary.result()["f1"], "coverage": block["coverage"],
            "strict_miou": block["strict"]["miou"],
            "strict_pixel_accuracy": block["strict"]["pixel_accuracy"],
            "images": len(scorer.images)}


def summarise(runs: list[dict]) -> dict:
    """Fixed-rule figures and the mean/min/max over the random draws."""
    fixed = next(r for r in runs if r["split"] == "every-k")
    draws = [r for r in runs if r["split"] != "every-k"]
    out = {"fixed": {k: fixed[k] for k in ("miou", "pixel_accuracy", "boundary_f1")}}
    if draws:
        out["random"] = {k: {"mean": statistics.mean(r[k] for r in draws),
                             "min": min(r[k] for r in draws), "max": max(r[k] for r in draws)}
                         for k in ("miou", "pixel_accuracy", "boundary_f1")}
        out["draws"] = len(draws)
    return out


def markdown(results: dict) -> str:
    lines = ["| N | method | fixed mIoU | fixed PAcc | fixed BF1 | random mIoU | random PAcc"
             " | random BF1 |", "|---|---|---|---|---|---|---|---|"]
    # Random cells: mean (min-max, number of draws).

    def cell(s: dict, key: str) -> str:
        if "random" not in s:
            return "-"
        r = s["random"][key]
        return (f"{100 * r['mean']:.1f} ({100 * r['min']:.1f}-{100 * r['max']:.1f},"
                f" {s['draws']})")

    for n, by_method in results["table"].items():
        for name, s in by_method.items():
            f = s["fixed"]
            lines.append(f"| {n} | {name} | {100 * f['miou']:.1f} |"
                         f" {100 * f['pixel_accuracy']:.1f} | {100 * f['boundary_f1']:.1f} |"
                         f" {cell(s, 'miou')} | {cell(s, 'pixel_accuracy')} |"
                         f" {cell(s, 'boundary_f1')} |")
    return "\n".join(lines)


def report(names: list[str]) -> None:
    """One markdown table of several results files, rows by N then file order."""
    tables = [json.loads((RESULTS / f"propagate_{name}.json").read_text()) for name in names]
    merged: dict = {}
    for table in tables:
        runs = table["runs"]
        for n in sorted({r["n"] for r in runs}):
            for name in dict.fromkeys(r["method"] for r in runs):
                rows = [r for r in runs if r["n"] == n and r["method"] == name]
                if any(r["split"] == "every-k" for r in rows):
                    merged.setdefault(str(n), {})[name] = summarise(rows)
    text = markdown({"table": dict(sorted(merged.items(), key=lambda kv: int(kv[0])))})
    text += "\n\nCommands:\n" + "\n".join(f"    {t['command']}" for t in tables) + "\n"
    (RESULTS / "propagate.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?",
                        help="a datus run folder with suim6 ground truth")
    parser.add_argument("--report", nargs="+", metavar="NAME",
                        help="only print one table of these results files (propagate_NAME"
                             ".json) and write it to propagate.md")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="first random draw's seed")
    parser.add_argument("--methods", nargs="+", default=["probe", "balanced"],
                        help="method names (see method())")
    parser.add_argument("--no-unsupervised", action="store_true",
                        help="leave out the unsupervised default's rows")
    parser.add_argument("--name", default="dev", help="results file propagate_<name>.json")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return
    start = time.perf_counter()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"propagate_{args.name}.json"
    # Resumable: every figure is written as soon as it is measured, and a second call with
    # the same --name measures only what is missing (each call stays under the time limit).
    done = json.loads(path.read_text())["runs"] if path.is_file() else []
    data = load(args.run)
    load_seconds = time.perf_counter() - start
    runs = list(done)
    names = ([] if args.no_unsupervised else ["unsupervised default"]) + args.methods
    results = {"run": str(args.run), "images": len(data.stems), "draws": args.draws,
               "seed": args.seed, "command": " ".join(sys.argv), "machine": platform.machine(),
               "load_seconds": load_seconds}

    def save() -> None:
        results["methods"] = {m: {**method(m)[0].to_dict(), "refine": method(m)[1]}
                              for m in dict.fromkeys(r["method"] for r in runs)
                              if m != "unsupervised default"}
        results["table"] = {str(n): {m: summarise([r for r in runs if r["n"] == n
                                                   and r["method"] == m])
                                     for m in dict.fromkeys(r["method"] for r in runs)
                                     if any(r["n"] == n and r["method"] == m and
                                            r["split"] == "every-k" for r in runs)}
                            for n in sorted({r["n"] for r in runs})}
        path.write_text(json.dumps({**results, "runs": runs}, indent=2) + "\n")

    for n in args.n:
        for split, labelled in splits(data.stems, n, args.draws, args.seed):
            for name in names:
                if any(r["n"] == n and r["split"] == split and r["method"] == name
                       for r in runs):
                    continue
                if name == "unsupervised default":
                    result = unsupervised(data, labelled)
                else:
                    config, refine = method(name)
                    result = propagate(data, labelled, replace(config, seed=args.seed),
                                       refine)
                runs.append({"n": n, "method": name, "split": split, **result})
                save()
                print(f"N={n} {split} {name}: mIoU {100 * result['miou']:.1f} PAcc"
                      f" {100 * result['pixel_accuracy']:.1f} BF1"
                      f" {100 * result['boundary_f1']:.1f}", file=sys.stderr, flush=True)
    save()
    print(markdown(results))
    print(f"\n{len(data.stems)} images; {time.perf_counter() - start:.0f} s; {path}")


if __name__ == "__main__":
    main()
