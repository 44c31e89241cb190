"""Speed benchmark of DatUS (issue 6): where the time goes, and what a re-run costs.

Usage (from the repository root; about 20 minutes on one CPU thread)::

    python benchmarks/speed.py --weights ../shared/weights/dinov2_vits14_imgfocus.pth

Sections, all in one run so the figures share a machine state:

1. **Stages**, per resolution (224, 448) and embedding (``pooled-tokens``, ``crop-cls``):
   seconds per image for read, keys, graph, partition, segments, embeddings, k-means and
   write (the files ``datus run`` writes), uncached. The ViT runs once per image and
   resolution; stages 2-5 run once per embedding from its features. ``vit`` is the time
   inside ``forward_features`` (keys forward, plus crop forwards for ``crop-cls``), and
   ``ratio`` is total / vit: 1.0 would mean everything but the ViT is free.
2. **Partition backends** on the same graphs: igraph vs python-louvain, seconds per graph
   and modularity.
3. **Cache**, at 224 with the default settings: a cold cached run, then the in-process
   re-run with another K and with another tau (what the napari sliders do: ``pipeline.run``
   with a warm :class:`~napari_datus.cache.FeatureCache`, plus painting every mask).
4. **Command line**: wall time and peak RSS of ``datus run`` on the test set (cold cache,
   then ``--clusters 7`` warm) and on a 1000-image folder (symlinks cycling through the
   test set, ``--no-cache``), each in a fresh process.

Writes ``speed.json`` and ``speed.md`` under ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from napari_datus.cache import FeatureCache, file_sources
from napari_datus.core.backbone import Backbone, load_backbone
from napari_datus.core.features import extract_features, resize_image
from napari_datus.core.graph import adjacency
from napari_datus.core.partition import louvain, modularity
from napari_datus.io.dataset import list_images
from napari_datus.io.images import read_image
from napari_datus.outputs import write_grid_outputs, write_pseudo_mask
from napari_datus.pipeline import (
    ImageResult,
    Params,
    Timer,
    cluster,
    drive,
    pseudo_mask,
    run,
    segment_features,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STAGES = ("read", "keys", "graph", "partition", "segments", "embeddings", "kmeans", "write")
EMBEDDINGS = ("pooled-tokens", "crop-cls")
# Louvain is compared on the default graph and on the dense keys-nobias graph (about 90% of
# all patch pairs are edges there: the hard case for graph building and Louvain).
DENSE_AFFINITY = "keys-nobias"


@contextmanager
def forward_clock(backbone: Backbone, seconds: dict[str, float], bucket: str) -> Iterator[None]:
    """Add the seconds spent in ``backbone.model.forward_features`` to ``seconds[bucket]``."""
    original = backbone.model.forward_features

    def timed(x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = original(x)
        if out.is_cuda:
            torch.cuda.synchronize()
        seconds[bucket] = seconds.get(bucket, 0.0) + time.perf_counter() - start
        return out

    backbone.model.forward_features = timed
    try:
        yield
    finally:
        del backbone.model.forward_features


def retained_bytes(result: ImageResult) -> int:
    """Bytes a run keeps in memory for one finished image."""
    s = result.segments
    return sum(a.nbytes for a in (result.partition, s.components, s.valid, s.sizes,
                                  result.embeddings))


def stage_benchmark(paths: list[Path], backbone: Backbone, resolution: int, n_graphs: int,
                    out_dir: Path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Section 1 at one resolution; also returns the first ``n_graphs`` adjacencies of the
    default affinity and of :data:`DENSE_AFFINITY`."""
    timers = {e: Timer() for e in EMBEDDINGS}
    vit = {e: {} for e in EMBEDDINGS}
    results: dict[str, list[ImageResult]] = {e: [] for e in EMBEDDINGS}
    default = Params().affinity
    graphs: dict[str, list[np.ndarray]] = {default: [], DENSE_AFFINITY: []}
    shared = Timer()  # read and keys, once per image for both embeddings
    settings = {e: Params(model=backbone.name, weights=backbone.weights, resolution=resolution,
                          embedding=e) for e in EMBEDDINGS}
    for index, path in enumerate(paths):
        with shared("read"):
            image = read_image(path)
        with shared("keys"), forward_clock(backbone, vit["pooled-tokens"], "keys"):
            resized = resize_image(image, resolution)
            features = extract_features(backbone, resized)
        for embedding, params in settings.items():
            with forward_clock(backbone, vit[embedding], "crops"):
                results[embedding].append(segment_features(
                    features, params, image.shape[:2], path.stem, timers[embedding],
                    backbone, resized))
        if index < n_graphs:
            params = settings["pooled-tokens"]
            for affinity, found in graphs.items():
                found.append(adjacency(features, affinity, params.self_loops, params.knn))
    rows = {}
    for embedding, params in settings.items():
        timer = timers[embedding]
        for stage in ("read", "keys"):
            timer.seconds[stage] = shared.seconds[stage]
        with timer("kmeans"):
            clusters = cluster(results[embedding], params)
        with timer("write"):
            for r, c in zip(results[embedding], clusters):
                write_grid_outputs(out_dir / embedding, r.stem, r.partition, r.segments.valid,
                                   r.shape)
                write_pseudo_mask(out_dir / embedding, r.stem, pseudo_mask(r, c))
        vit_seconds = vit["pooled-tokens"]["keys"] + vit[embedding].get("crops", 0.0)
        rows[embedding] = summarise(timer.seconds, vit_seconds, len(paths), results[embedding])
    return rows, graphs


def summarise(seconds: dict[str, float], vit_seconds: float, n: int,
              results: list[ImageResult]) -> dict:
    """Per-image seconds of each stage, the total, the ViT time and their ratio."""
    per_image = {stage: seconds.get(stage, 0.0) / n for stage in STAGES}
    total = sum(per_image.values())
    segments = [r.segments.n_valid for r in results]
    return {"per_image": per_image, "total": total, "vit": vit_seconds / n,
            "ratio": total / (vit_seconds / n),
            "valid_segments_per_image": float(np.mean(segments)),
            "retained_bytes_per_image": float(np.mean([retained_bytes(r) for r in results]))}


def partition_benchmark(graphs: list[np.ndarray], repeats: int, seed: int = 0) -> dict:
    """Section 2: both Louvain backends on the same graphs, from the dense adjacency.

    Each graph's time is the best of ``repeats`` runs for both backends alike: a
    millisecond-scale call is otherwise at the mercy of whatever else the machine does.
    """
    rows = {}
    for backend in ("igraph", "python-louvain"):
        seconds, quality = [], []
        for adj in graphs:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                labels = louvain(adj, seed, backend)
                runs.append(time.perf_counter() - start)
            seconds.append(min(runs))
            quality.append(modularity(adj, labels))
        rows[backend] = {"seconds_per_graph": float(np.mean(seconds)),
                         "modularity": float(np.mean(quality)), "per_graph": quality}
    fast, ref = rows["igraph"], rows["python-louvain"]
    # Louvain is a heuristic: on one graph either backend may end a little higher.
    differences = np.subtract(fast["per_graph"], ref["per_graph"])
    return {"graphs": len(graphs), "nodes": int(graphs[0].shape[0]),
            "edges_mean": float(np.mean([np.count_nonzero(np.triu(a)) for a in graphs])),
            "backends": rows, "speedup": ref["seconds_per_graph"] / fast["seconds_per_graph"],
            "modularity_ratio": fast["modularity"] / ref["modularity"],
            "modularity_difference_range": [float(differences.min()), float(differences.max())]}


def cache_benchmark(paths: list[Path], backbone: Backbone, cache_dir: Path) -> dict:
    """Section 3: a cold cached run, then warm re-runs with another K and another tau."""
    cache = FeatureCache(cache_dir)
    base = Params(model=backbone.name, weights=backbone.weights, resolution=224)

    def timed_run(params: Params) -> dict:
        start = time.perf_counter()
        result = drive(run(file_sources(paths), len(paths), params, backbone, cache=cache))
        for index in range(len(result.results)):
            result.pseudo_mask(index)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "timings": result.timings}

    cold = timed_run(base)
    return {"images": len(paths), "cold": cold, "other_k": timed_run(replace(base, clusters=7)),
            "other_tau": timed_run(replace(base, tau=3)),
            "bytes_on_disk": sum(p.stat().st_size for p in cache_dir.rglob("*.npz"))}


# Runs `datus` and prints its peak RSS at exit. The kernel's per-child ru_maxrss is no use
# here: a child started by vfork inherits this (large) process's high-water mark.
PEAK_PROBE = """
import atexit, sys
from napari_datus import cli
def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"peak-rss-kib {kib}\\n")
atexit.register(peak)
sys.exit(cli.main(sys.argv[1:]))
"""


def datus_run(images: Path, out: Path, args: list[str], env: dict[str, str]) -> dict:
    """Wall seconds and peak RSS (MiB, Linux) of one ``datus run`` in a fresh process."""
    argv = ["run", str(images), "--out", str(out), *args]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, *argv], env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"datus {' '.join(argv)} failed:\n{done.stderr}")
    kib = int(done.stderr.rsplit("peak-rss-kib", 1)[1].split()[0])
    inside = json.loads((out / "run.json").read_text())["seconds_total"]
    return {"command": "datus " + " ".join(argv), "seconds": seconds, "peak_rss_mib": kib / 1024,
            "seconds_after_startup": inside}


def linked_folder(folder: Path, paths: list[Path], n: int) -> Path:
    """A folder of ``n`` symlinks cycling through ``paths`` (distinct stems)."""
    folder.mkdir()
    for i in range(n):
        source = paths[i % len(paths)]
        (folder / f"{i:05d}_{source.name}").symlink_to(source.resolve())
    return folder


def cli_benchmark(paths: list[Path], weights: str, model: str, n_large: int, threads: int,
                  work: Path) -> dict:
    """Section 4: the command line, cold and warm, and on a large synthetic folder."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "DATUS_CACHE_DIR": str(work / "cli-cache")}
    common = ["--weights", weights, "--model", model, "--device", "cpu"]
    small = linked_folder(work / "images", paths, len(paths))
    large = linked_folder(work / f"images{n_large}", paths, n_large)
    return {
        "cold": {**datus_run(small, work / "cold", common, env), "images": len(paths)},
        "other_k_warm": {**datus_run(small, work / "warm", [*common, "--clusters", "7"], env),
                         "images": len(paths)},
        "large_no_cache": {**datus_run(large, work / "large", [*common, "--no-cache"], env),
                           "images": n_large},
    }


def markdown(report: dict) -> str:
    """The benchmark tables as markdown."""
    lines = [f"Machine: {report['machine']}; torch threads {report['threads']};"
             f" {report['images']} images.", "",
             f"Seconds per image, uncached, default settings (affinity {Params().affinity})"
             " (`vit` = time inside the ViT forward):", "",
             "| resolution | embedding | " + " | ".join(STAGES)
             + " | total | vit | total / vit | valid seg./img |",
             "|---" * (len(STAGES) + 6) + "|"]
    for res, rows in report["stages"].items():
        for embedding, row in rows.items():
            cells = [f"{row['per_image'][s]:.4f}" for s in STAGES]
            lines.append(f"| {res} | {embedding} | " + " | ".join(cells)
                         + f" | {row['total']:.3f} | {row['vit']:.3f} | {row['ratio']:.2f}"
                         f" | {row['valid_segments_per_image']:.1f} |")
    lines += ["", "Louvain on the same graphs, from the dense adjacency (seconds: mean over"
              f" graphs of the best of {report.get('repeats', 1)} runs; modularity: mean over"
              " graphs; ratio: igraph / python-louvain of the means; range: igraph minus"
              " python-louvain, per graph):",
              "",
              "| resolution | affinity | nodes | edges | backend | s / graph | modularity |",
              "|---|---|---|---|---|---|---|"]
    for res, by_affinity in report["partition"].items():
        for affinity, part in by_affinity.items():
            head = f"| {res} | {affinity} | {part['nodes']} | {part['edges_mean']:.0f} |"
            for backend, row in part["backends"].items():
                lines.append(f"{head} {backend} | {row['seconds_per_graph']:.4f} |"
                             f" {row['modularity']:.4f} |")
            low, high = part["modularity_difference_range"]
            lines.append(f"{head} **speed-up {part['speedup']:.0f}x** | |"
                         f" ratio {part['modularity_ratio']:.4f}, range {low:+.4f}..{high:+.4f} |")
    if "cache" in report:
        c = report["cache"]
        lines += ["", f"Cache, in process, {c['images']} images at 224 (default settings):", "",
                  "| run | seconds | of which k-means |", "|---|---|---|"]
        for name in ("cold", "other_k", "other_tau"):
            lines.append(f"| {name} | {c[name]['seconds']:.2f} |"
                         f" {c[name]['timings']['kmeans']:.2f} |")
        lines.append(f"| on disk | {c['bytes_on_disk'] / 2**20:.0f} MiB | |")
    if "cli" in report:
        lines += ["", "`datus run` in a fresh process (224, default settings):", "",
                  "| run | images | seconds | after start-up | peak RSS MiB |",
                  "|---|---|---|---|---|"]
        for name, row in report["cli"].items():
            lines.append(f"| {name} | {row['images']} | {row['seconds']:.1f} |"
                         f" {row['seconds_after_startup']:.1f} | {row['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "data/suim_test/images")
    parser.add_argument("--weights", default=str(SHARED / "weights/dinov2_vits14_imgfocus.pth"))
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--limit", type=int, help="first N images only (quick look)")
    parser.add_argument("--graphs", type=int, default=12,
                        help="graphs per resolution for the Louvain comparison")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Louvain runs per graph and backend; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--large", type=int, default=1000,
                        help="images in the synthetic folder for peak RSS (0 skips section 4)")
    parser.add_argument("--skip-cache", action="store_true", help="skip section 3")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # numpy's BLAS and k-means' OpenMP too: idle-spinning threads on a busy machine turn a
    # 1 ms matmul into 20 ms.
    threadpool_limits(args.threads)
    paths = list_images(args.images)[: args.limit]
    backbone = load_backbone(args.model, args.weights, device="cpu")
    report: dict = {"machine": f"{platform.processor() or platform.machine()},"
                               f" {os.cpu_count()} logical CPUs", "threads": args.threads,
                    "repeats": args.repeats,
                    "images": len(paths), "command": " ".join(sys.argv),
                    "stages": {}, "partition": {}}
    with tempfile.TemporaryDirectory(prefix="datus-speed-") as tmp:
        work = Path(tmp)
        for res in args.resolutions:
            report["stages"][res], graphs = stage_benchmark(paths, backbone, res, args.graphs,
                                                            work / f"out{res}")
            report["partition"][res] = {affinity: partition_benchmark(found, args.repeats)
                                        for affinity, found in graphs.items()}
        if not args.skip_cache:
            report["cache"] = cache_benchmark(paths, backbone, work / "cache")
        if args.large:
            report["cli"] = cli_benchmark(paths, args.weights, args.model, args.large,
                                          args.threads, work)
    report["benchmark_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "speed.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
