"""Quality sweep of DatUS settings on a labelled image set (issue 7).

Usage::

    python benchmarks/quality.py IMAGES GT --gt-format suim6 \\
        --weights ../shared/weights/dinov2_vits14_imgfocus.pth [--plan full] [--seeds 0 1 2]

Each row changes one setting of :class:`napari_datus.pipeline.Params` from the defaults
(an ablation, not a full grid) and is run once per seed (the seed drives Louvain and
k-means). Metrics are counted per pixel at ground-truth resolution with
``core.metrics`` on the initial pseudo masks (``pipeline.pseudo_mask``). The ViT
forward runs once per image and resolution; its :class:`PatchFeatures` are cached as
``.npz`` under ``--cache`` and every row reuses them through
``pipeline.segment_features``. Writes ``quality.md`` and ``quality.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from quality_report import aggregate, markdown
from sklearn.cluster import KMeans

from napari_datus.core.backbone import Backbone, load_backbone
from napari_datus.core.embeddings import l2_normalize
from napari_datus.core.errors import DatusError
from napari_datus.core.features import PatchFeatures, extract_features, resize_image
from napari_datus.core.pseudolabel import upsample_nearest
from napari_datus.core.whitening import normalise_embeddings
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.dataset import list_images, match_ground_truth
from napari_datus.io.images import read_image
from napari_datus.io.masks import class_names
from napari_datus.pipeline import (
    ImageResult,
    Params,
    Timer,
    cluster,
    pseudo_mask,
    segment_features,
)

FEATURE_FIELDS = ("keys", "key_bias", "tokens", "queries", "values")
# Settings that act after stage 5: rows differing only in these reuse each image's segments.
CLUSTERING_ONLY = frozenset(Params.fields_of("clustering", "runtime"))
METRICS = ("miou", "pixel_accuracy", "mean_f1")
NAMES = class_names("suim6")
N_CLASSES = len(NAMES)


@dataclass
class Row:
    """One table row: a name, how it differs from the defaults, and its per-seed results
    (``boundary``: also score boundary F1, a distance transform per image)."""

    name: str
    changes: dict
    kind: str = "datus"  # "datus", "majority" or "token-kmeans"
    seeds: list[dict] = field(default_factory=list)
    boundary: bool = False


class Dataset:
    """Images with ground truth, their cached ViT features and forward timings."""

    def __init__(self, images: list[Path], gts: list[np.ndarray], backbone_factory:
                 Callable[[], Backbone], cache: Path, model_key: str) -> None:
        self.images = images
        self.gts = gts
        self._factory = backbone_factory
        self._backbone: Backbone | None = None
        self.cache = cache
        self.model_key = model_key
        self.forward_seconds: dict[int, list[float]] = {}
        self._features: dict[tuple[str, int], PatchFeatures] = {}

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = self._factory()
        return self._backbone

    def resized(self, index: int, resolution: int) -> torch.Tensor:
        """(3, T, T) float tensor of image ``index`` resized as the pipeline does."""
        return resize_image(read_image(self.images[index]), resolution)

    def features(self, index: int, resolution: int) -> PatchFeatures:
        """Patch features of image ``index`` at ``resolution``, from the npz cache if present."""
        path = self.images[index]
        key = (path.stem, resolution)
        if key not in self._features:
            digest = hashlib.sha1(path.read_bytes() + self.model_key.encode()).hexdigest()[:16]
            file = self.cache / f"{path.stem}_{resolution}_{digest}.npz"
            if file.exists():
                data = np.load(file)
                feats = PatchFeatures(**{f: data[f] for f in FEATURE_FIELDS},
                                      grid=int(data["grid"]))
            else:
                start = time.perf_counter()
                feats = extract_features(self.backbone, self.resized(index, resolution))
                self.forward_seconds.setdefault(resolution, []).append(
                    time.perf_counter() - start)
                self.cache.mkdir(parents=True, exist_ok=True)
                np.savez(file, grid=feats.grid, **{f: getattr(feats, f) for f in FEATURE_FIELDS})
            self._features[key] = feats
        return self._features[key]

    def time_forward(self, resolution: int, n: int = 3) -> float:
        """Mean seconds of one ViT forward at ``resolution`` (measured if nothing was timed)."""
        if not self.forward_seconds.get(resolution):
            for index in range(min(n, len(self.images))):
                start = time.perf_counter()
                extract_features(self.backbone, self.resized(index, resolution))
                self.forward_seconds.setdefault(resolution, []).append(
                    time.perf_counter() - start)
        return statistics.mean(self.forward_seconds[resolution])


def score_masks(masks: list[np.ndarray], gts: list[np.ndarray], k: int,
                boundaries: bool = False) -> dict:
    """Metrics block of (H, W) uint8 masks (255 = unlabelled) against ground truth decoded
    by :mod:`napari_datus.evaluation` (the scorer ``datus run`` uses)."""
    scorer = Scorer(k, classes=NAMES, boundaries=boundaries)
    for index, (mask, gt) in enumerate(zip(masks, gts)):
        reason = scorer.add(str(index), mask, gt)
        if reason is not None:
            raise SystemExit(f"quality benchmark: {reason}")
    return scorer.result()


def summarise(metrics: dict) -> dict:
    """The figures a table row needs from one metrics block (per-class IoU in suim6 order)."""
    out = {**{m: metrics[m] for m in METRICS},
           **{f"strict_{m}": metrics["strict"][m] for m in METRICS},
           "coverage": metrics["coverage"], "per_class_iou": metrics["per_class_iou"]}
    if "boundary" in metrics:
        out["boundary_f1"] = metrics["boundary"]["f1"]
    return out


def run_datus(data: Dataset, params: Params, memo: dict, boundaries: bool = False) -> dict:
    """Stages 2-6 for every image from cached features; pixel-level metrics of one seed."""
    timer = Timer()
    results: list[ImageResult] = []
    for index, path in enumerate(data.images):
        key = (path.stem, *sorted((k, v) for k, v in params.to_dict().items()
                                  if k not in CLUSTERING_ONLY))
        if key not in memo:
            stage = Timer()
            feats = data.features(index, params.resolution)
            crop = params.embedding == "crop-cls"
            memo[key] = (segment_features(
                feats, params, data.gts[index].shape, path.stem, stage,
                data.backbone if crop else None,
                data.resized(index, params.resolution) if crop else None), stage.seconds)
        result, seconds = memo[key]
        for stage_name, value in seconds.items():
            timer.seconds[stage_name] += value
        results.append(result)
    with timer("kmeans"):
        clusters = cluster(results, params)
    refine_seconds = time.perf_counter()
    masks = [pseudo_mask(r, c, params.fill_noise, params.refine,
                         read_image(data.images[i]) if params.refine != "none" else None)
             for i, (r, c) in enumerate(zip(results, clusters))]
    refine_seconds = time.perf_counter() - refine_seconds
    metrics = score_masks(masks, data.gts, params.clusters, boundaries)
    valid = sum(r.segments.n_valid for r in results)
    noise = sum(r.segments.n_noise for r in results)
    stage_seconds = (sum(timer.seconds.values()) + refine_seconds) / len(results)
    return {**summarise(metrics), "segments_per_image": valid / len(results),
            "valid_fraction": valid / max(valid + noise, 1),
            "seconds_per_image": stage_seconds + data.time_forward(params.resolution),
            "metrics": metrics}


def run_token_kmeans(data: Dataset, params: Params) -> dict:
    """No-graph baseline (DESIGN 3b): k-means over every L2-normalised patch token
    (then ``params.embedding_norm`` over the dataset, as segment embeddings get)."""
    start = time.perf_counter()
    tokens = [l2_normalize(data.features(i, params.resolution).tokens)
              for i in range(len(data.images))]
    stacked = normalise_embeddings(np.concatenate(tokens), params.embedding_norm)
    km = KMeans(n_clusters=params.clusters, n_init=params.n_init, random_state=params.seed)
    labels = km.fit_predict(stacked.astype(np.float64)).astype(np.uint8)
    grids = np.split(labels, np.cumsum([t.shape[0] for t in tokens])[:-1])
    masks = [upsample_nearest(g.reshape(int(np.sqrt(g.size)), -1), gt.shape)
             for g, gt in zip(grids, data.gts)]
    metrics = score_masks(masks, data.gts, params.clusters)
    seconds = (time.perf_counter() - start) / len(data.images)
    return {**summarise(metrics), "seconds_per_image": seconds
            + data.time_forward(params.resolution), "metrics": metrics}


def run_majority(data: Dataset) -> dict:
    """Every pixel predicted as the most frequent ground-truth class."""
    counts = sum(np.bincount(gt[gt >= 0], minlength=N_CLASSES) for gt in data.gts)
    masks = [np.zeros(gt.shape, dtype=np.uint8) for gt in data.gts]  # one cluster, id 0
    metrics = score_masks(masks, data.gts, 1)
    assert metrics["mapping"]["0"] == int(np.argmax(counts))
    return {**summarise(metrics), "seconds_per_image": 0.0, "metrics": metrics}


# One change at a time from the defaults: (row name, changes).
ABLATIONS = [
    *[(f"affinity {a}", {"affinity": a}) for a in
      ("keys-nobias", "keys-centred", "weighted", "queries", "values", "tokens", "keys-knn")],
    ("knn 8", {"knn": 8}),
    ("knn 32", {"knn": 32}),
    ("embedding crop-cls (paper's masked crops)", {"embedding": "crop-cls"}),
    ("embedding_norm standardise", {"embedding_norm": "standardise"}),
    ("embedding_norm pca-whiten", {"embedding_norm": "pca-whiten"}),
    ("size_weighted k-means", {"size_weighted": True}),
    ("fill_noise", {"fill_noise": True}),
    ("n_init 1 (single k-means run)", {"n_init": 1}),
    ("tau 3", {"tau": 3}),
    ("tau 8", {"tau": 8}),
    ("K 7", {"clusters": 7}),
    ("K 8", {"clusters": 8}),
    ("K 12", {"clusters": 12}),
    *[(f"resolution {r}", {"resolution": r}) for r in (224, 448)],
    *[(f"grouping {g}", {"grouping": g}) for g in ("kmeans", "merge")],
    *[(f"overcluster {j}", {"grouping": "merge", "overcluster": j}) for j in (24, 96)],
]
# Issue 13: the defaults before it (chosen on the test set), and the refinement pair.
PREVIOUS_DEFAULT = {"resolution": 224, "grouping": "kmeans", "refine": "none"}
REFINE_ROWS = [("defaults, refine none (boundary)", {"refine": "none"}),
               ("defaults, refine guided (boundary)", {"refine": "guided"})]


def plan(name: str) -> list[Row]:
    """Rows of a sweep: context rows, the paper's method, the defaults, then ablations
    (``core``: the rows of the suim_dev / suim_test tables, without the slow crop-cls ones)."""
    l2 = {"embedding_norm": "l2"}
    rows = [
        Row("majority class everywhere", {}, kind="majority"),
        Row("token k-means, no graph (DESIGN 3b)", l2, kind="token-kmeans"),
        Row("token k-means, no graph, standardised", {"embedding_norm": "standardise"},
            kind="token-kmeans"),
        Row("token k-means, no graph, T=448", {**l2, "resolution": 448}, kind="token-kmeans"),
        Row("paper as written (raw keys, crop-cls, self-loops)",
            {**PREVIOUS_DEFAULT, "affinity": "paper", "embedding": "crop-cls",
             "self_loops": True}),
        Row("paper with keys-nobias (crop-cls)", {**PREVIOUS_DEFAULT, "affinity": "keys-nobias",
                                                 "embedding": "crop-cls"}),
        Row("older default (keys-nobias, pooled-tokens)", {**PREVIOUS_DEFAULT,
                                                           "affinity": "keys-nobias"}),
        Row("previous default (tokens-knn, k-means, T=224)", PREVIOUS_DEFAULT),
        Row("defaults", {}),
        *[Row(n, c, boundary=True) for n, c in REFINE_ROWS],
        *[Row(n, c) for n, c in ABLATIONS],
    ]
    if name == "quick":
        slow = ("crop-cls", "448")
        rows = [r for r in rows if not any(s in r.name for s in slow)]
    if name == "core":
        keep = ("majority", "token k-means, no graph (DESIGN 3b)", "previous default",
                "defaults", "overcluster", "resolution 448")
        rows = [r for r in rows if any(r.name.startswith(k) for k in keep)]
    return rows


def stored_result(data: Dataset, kind: str, params: Params) -> Path:
    """File holding one seed's result of a fully resolved setting (rows rerun only if changed)."""
    # The token baseline ignores the grouping and refinement settings (added after its
    # stored results): left out of its key so those results stay valid.
    ignored = {"weights"} | ({"refine", "grouping", "overcluster"} if kind != "datus" else set())
    key = json.dumps([kind, data.model_key, [p.name for p in data.images],
                      {k: v for k, v in params.to_dict().items() if k not in ignored}])
    return data.cache / "rows" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def run_row(row: Row, data: Dataset, base: Params, seeds: list[int], memo: dict) -> None:
    """Fill ``row.seeds`` with one result per seed (a failed run records its error)."""
    for seed in seeds if row.kind != "majority" else seeds[:1]:
        params = replace(base, seed=seed, **row.changes)
        stored = stored_result(data, row.kind, params)
        # A stored result lacking a figure this row needs (boundary F1) is recomputed.
        if stored.exists() and (not row.boundary or "boundary_f1" in stored.read_text()):
            row.seeds.append(json.loads(stored.read_text()))
            continue
        try:
            if row.kind == "majority":
                result = run_majority(data)
            elif row.kind == "token-kmeans":
                result = run_token_kmeans(data, params)
            else:
                result = run_datus(data, params, memo, row.boundary)
        except DatusError as exc:
            result = {"error": str(exc)}
        row.seeds.append({"seed": seed, **result})
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(row.seeds[-1]))
        print(f"{row.name} seed {seed}: " + (result.get("error") or
              " ".join(f"{m}={result[m]:.4f}" for m in (*METRICS, "coverage"))),
              file=sys.stderr, flush=True)


def read_ground_truths(files: list[Path], gt_files: dict[str, Path], spec: GroundTruthFormat
                       ) -> tuple[list[Path], list[np.ndarray], list[dict]]:
    """Decoded ground truth of every image; a file the scorer refuses leaves its image out
    of the table (as ``datus run`` leaves it out of metrics.json), named on stderr."""
    kept, gts, skipped = [], [], []
    for f in files:
        try:
            gts.append(spec.read(gt_files[f.stem]))
        except DatusError as exc:
            skipped.append({"file": f.name, "reason": str(exc)})
            print(f"skipped {f.name}: {exc}", file=sys.stderr)
            continue
        kept.append(f)
    return kept, gts, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("gt", type=Path)
    parser.add_argument("--gt-format", default="suim6", choices=("suim6",),
                        help="the table's class protocol (the paper's 6 SUIM classes)")
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--plan", default="full", choices=("full", "quick", "core"))
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only rows whose name contains one of these strings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "datus_features")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"),
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    files = list_images(args.images)
    gt_files = match_ground_truth(files, args.gt)
    files = [f for f in files if f.stem in gt_files][: args.limit]
    spec = GroundTruthFormat(args.gt_format)
    files, gts, skipped = read_ground_truths(files, gt_files, spec)
    base = Params(model=args.model, weights=args.weights, device="cpu")
    weights_key = str(Path(args.weights).resolve()) if args.weights else "hub"
    data = Dataset(files, gts, lambda: load_backbone(args.model, args.weights, "cpu"),
                   args.cache, f"{args.model}|{weights_key}")
    rows = plan(args.plan)
    if args.only:
        rows = [r for r in rows if any(s in r.name for s in args.only)]
    memo: dict = {}
    for row in rows:
        run_row(row, data, base, args.seeds, memo)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    text = markdown(rows, base, len(files), args.seeds, title=f"{args.images}")
    notes = [f"Command: `{command}`"] + [f"Left out: {s['file']}: {s['reason']}"
                                         for s in skipped]
    args.out.with_suffix(".md").write_text(text + "\n" + "\n\n".join(notes) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({
        "command": command, "skipped": skipped,
        "images": [f.stem for f in files], "seeds": args.seeds,
        "defaults": {k: v for k, v in base.to_dict().items() if k != "weights"},
        "rows": [{"name": r.name, "kind": r.kind, "changes": r.changes,
                  "summary": aggregate(r), "seeds": r.seeds} for r in rows],
    }, indent=1))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
