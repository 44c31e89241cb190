"""Speed benchmark of DatUS (issues 6 and 14): where the time goes, what a re-run costs, and
what the ``datus`` process costs a user.

Usage (from the repository root; about 25 minutes on one CPU thread)::

    python benchmarks/speed.py --weights ../shared/weights/dinov2_vits14_imgfocus.pth
    # the process section alone (about 2 minutes):
    python benchmarks/speed.py --skip-stages --skip-cache --large 0
    # before/after: an older commit's code timed in the same rounds
    mkdir -p /tmp/datus-before && git archive ad3d219 src | tar -x -C /tmp/datus-before
    python benchmarks/speed.py --skip-stages --skip-cache --large 0 \\
        --baseline /tmp/datus-before/src --out /tmp/datus-before/results

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
4. **Process**: what a user waits for, each command a new process with its start-up and
   imports, on the first ``--process-images`` test images at 224 with the default (embedded)
   weights and settings and the machine's default thread count: ``datus run`` cold (empty
   cache), ``datus run --clusters 7`` warm (every feature cached), ``datus --help``,
   ``datus run --precision fp32`` cold, and two plain loops of ViT forwards over the same
   images (``benchmarks/plain_loop.py``: decode, resize, forward, its imports and model load
   included): float32 at batch 1, and the fastest (bf16 weights and inputs at batch 8 where
   the hardware has bf16); seconds per image of each stage of ``datus run`` from run.json;
   with ``--baseline DIR``, the same commands of another version of the package;
   ``--device cuda`` runs them on a GPU. ``--rounds`` interleaved rounds; medians and
   ranges are reported.
5. **Scale**: ``datus run`` on a 1000-image folder (symlinks cycling through the test set),
   cold and warm (``--clusters 7``), each with its peak RSS, in fresh processes.

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
from napari_datus.core.features import extract_features, forward_model, resize_image
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
from napari_datus.runs.record import load_record

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STAGES = ("read", "keys", "graph", "partition", "segments", "embeddings", "kmeans", "write")
EMBEDDINGS = ("pooled-tokens", "crop-cls")
# Louvain is compared on the default graph and on the dense keys-nobias graph (about 90% of
# all patch pairs are edges there: the hard case for graph building and Louvain).
DENSE_AFFINITY = "keys-nobias"


@contextmanager
def forward_clock(backbone: Backbone, seconds: dict[str, float], bucket: str) -> Iterator[None]:
    """Add the seconds spent in ``forward_features`` to ``seconds[bucket]``: of the backbone's
    model (crop forwards) and of the bf16 copy the keys forward runs where ``auto`` picks it."""
    models = {id(m): m for m in (backbone.model, forward_model(backbone, "auto"))}.values()

    def clocked(original):
        def timed(x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = original(x)
            if out.is_cuda:
                torch.cuda.synchronize()
            seconds[bucket] = seconds.get(bucket, 0.0) + time.perf_counter() - start
            return out
        return timed

    for model in models:
        model.forward_features = clocked(model.forward_features)
    try:
        yield
    finally:
        for model in models:
            del model.forward_features


def retained_bytes(result: ImageResult) -> int:
    """Bytes a run keeps in memory for one finished image."""
    s = result.segments
    return sum(a.nbytes for a in (result.partition, s.components, s.valid, s.sizes,
                                  result.embeddings))


def import_stage_packages() -> None:
    """Import what the stages import on first use (igraph 0.5 s with matplotlib, scipy):
    the stage figures are per-image costs; section 4 counts the imports a process pays."""
    import igraph  # noqa: F401
    import scipy.ndimage  # noqa: F401


def stage_benchmark(paths: list[Path], backbone: Backbone, resolution: int, n_graphs: int,
                    out_dir: Path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Section 1 at one resolution; also returns the first ``n_graphs`` adjacencies of the
    default affinity and of :data:`DENSE_AFFINITY`."""
    import_stage_packages()
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
PLAIN_LOOP = ROOT / "benchmarks" / "plain_loop.py"
# CPU features behind the bf16 figures (AMX and AVX512-BF16 run bf16 matrix products natively).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def run_process(command: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """Wall seconds, stdout and stderr of one process run to its end (raises on failure)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, done.stdout, done.stderr


def datus(argv: list[str], env: dict[str, str]) -> dict:
    """Wall seconds and peak RSS (MiB, Linux) of one ``datus`` command in a fresh process."""
    seconds, _, err = run_process([sys.executable, "-c", PEAK_PROBE, *argv], env)
    kib = int(err.rsplit("peak-rss-kib", 1)[1].split()[0])
    return {"command": "datus " + " ".join(argv), "seconds": seconds, "peak_rss_mib": kib / 1024}


def datus_run(images: Path, out: Path, args: list[str], env: dict[str, str]) -> dict:
    """:func:`datus` for ``datus run``, with run.json's own seconds (after start-up, imports
    and, where it happens before the first image, the model load) and its keys stage."""
    row = datus(["run", str(images), "--out", str(out), *args], env)
    inside = load_record(out)
    return {**row, "seconds_after_startup": inside.seconds_total,
            "keys": inside.timings["keys"], "timings": inside.timings,
            "images": len(inside.images),
            "precision_used": inside.params.get("precision_used")}


def plain_loop(images: Path, weights: Path, precision: str, batch: int, device: str,
               env: dict[str, str]) -> dict:
    """Wall seconds of ``benchmarks/plain_loop.py`` in a fresh process, and its phases."""
    seconds, out, _ = run_process([sys.executable, str(PLAIN_LOOP), str(images), str(weights),
                                   "--precision", precision, "--batch", str(batch),
                                   "--device", device], env)
    return {"seconds": seconds, **json.loads(out.strip().splitlines()[-1])}


def linked_folder(folder: Path, paths: list[Path], n: int) -> Path:
    """A folder of ``n`` symlinks cycling through ``paths`` (distinct stems)."""
    folder.mkdir()
    for i in range(n):
        source = paths[i % len(paths)]
        (folder / f"{i:05d}_{source.name}").symlink_to(source.resolve())
    return folder


def process_benchmark(paths: list[Path], rounds: int, work: Path, fp32: bool = True,
                      baseline: Path | None = None, device: str = "cpu") -> dict:
    """Section 4: the user's processes against plain loops of forwards, ``rounds`` times.

    Each round runs every command once, in a fixed order, cold runs on an empty cache, so a
    busy spell of a shared machine hits all rows alike; medians are reported. The loops: the
    float32 one at batch 1 (the pipeline before issue 22) and the fastest (``plain_loop.py``
    defaults: bf16 weights and inputs at batch 8 where the hardware has bf16). ``baseline``
    is a folder holding another version of napari_datus (an older commit's ``src``, from
    ``git archive``) whose commands join every round; ``fp32`` adds ``datus run --precision
    fp32``.
    """
    from napari_datus.core.weights import embedded_weights

    images = linked_folder(work / "process-images", paths, len(paths))
    weights = embedded_weights()  # the default weights datus run uses, converted once
    versions = {"": dict(os.environ)}
    if baseline is not None:
        versions["_baseline"] = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(baseline), *filter(None, [os.environ.get("PYTHONPATH")])])}
    runs: dict[str, list[dict]] = {name: [] for name in process_rows(baseline, fp32)}
    device_args = ["--device", device]
    for index in range(rounds):
        folder = work / f"round{index}"
        runs["plain"].append(plain_loop(images, weights, "fp32", 1, device, versions[""]))
        runs["plain_fast"].append(plain_loop(images, weights, "auto", 8, device, versions[""]))
        for suffix, env in versions.items():
            env["DATUS_CACHE_DIR"] = str(folder / f"cache{suffix}")
            runs[f"cold{suffix}"].append(datus_run(images, folder / f"cold{suffix}",
                                                   device_args, env))
            runs[f"warm{suffix}"].append(datus_run(images, folder / f"warm{suffix}",
                                                   ["--clusters", "7", *device_args], env))
            runs[f"help{suffix}"].append(datus(["--help"], env))
        if fp32:
            env = {**versions[""], "DATUS_CACHE_DIR": str(folder / "cache_fp32")}
            runs["cold_fp32"].append(datus_run(images, folder / "cold_fp32",
                                               ["--precision", "fp32", *device_args], env))
    return {"images": len(paths), "rounds": rounds, "threads": runs["plain"][0]["threads"],
            "device": device, "baseline": str(baseline) if baseline else None, "runs": runs,
            "median": {name: float(np.median([r["seconds"] for r in rows]))
                       for name, rows in runs.items()}}


# Row name -> what it is, in the order of the table.
PROCESS_ROWS = {
    "plain": "plain loop of ViT forwards (decode, resize, forward; fp32, batch 1)",
    "plain_fast": "plain loop, fastest: bf16 weights and inputs, batch 8 (fp32 without bf16)",
    "cold": "`datus run`, cold (empty cache)",
    "warm": "`datus run --clusters 7`, warm (every feature cached)",
    "help": "`datus --help`",
    "cold_baseline": "baseline `datus run`, cold",
    "warm_baseline": "baseline `datus run --clusters 7`, warm",
    "help_baseline": "baseline `datus --help`",
    "cold_fp32": "`datus run --precision fp32`, cold",
}


def process_rows(baseline: Path | None, fp32: bool) -> list[str]:
    """The rows of :data:`PROCESS_ROWS` a run of section 4 has."""
    return [name for name in PROCESS_ROWS
            if (baseline is not None or not name.endswith("_baseline"))
            and (fp32 or name != "cold_fp32")]


def round_ratios(runs: dict[str, list[dict]], top: str, bottom: str) -> str:
    """``top / bottom`` seconds per round, as "median [min-max] (r1, r2, ...)"."""
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[top], runs[bottom])]
    return (f"{np.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
            f" ({', '.join(f'{r:.2f}' for r in ratios)})")


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` the CPU has (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    return {flag: flag in flags for flag in CPU_FLAGS}


def large_benchmark(paths: list[Path], weights: str, model: str, n_large: int, threads: int,
                    work: Path) -> dict:
    """Section 5: ``datus run`` on a large synthetic folder, each run with its peak RSS: cold
    with ``--no-cache`` (the folder repeats the test files, whose cache entries a cached run
    would share), then a cached run to fill the cache and the warm re-run with another K."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "DATUS_CACHE_DIR": str(work / "cli-cache")}
    large = linked_folder(work / f"images{n_large}", paths, n_large)
    args = ["--weights", weights, "--model", model, "--device", "cpu"]
    cold = datus_run(large, work / "large-cold", [*args, "--no-cache"], env)
    datus_run(large, work / "large-fill", args, env)
    return {"images": n_large, "cold": cold,
            "warm": datus_run(large, work / "large-warm", [*args, "--clusters", "7"], env)}


def markdown(report: dict) -> str:
    """The benchmark tables as markdown."""
    lines = [f"Machine: {report['machine']}; torch threads {report['threads']} (sections 1-3,"
             f" 5); {report['images']} images."]
    if report["stages"]:
        lines += ["", f"Seconds per image, uncached, default settings (affinity"
                  f" {Params().affinity}) (`vit` = time inside the ViT forward):", "",
                  "| resolution | embedding | " + " | ".join(STAGES)
                  + " | total | vit | total / vit | valid seg./img |",
                  "|---" * (len(STAGES) + 6) + "|"]
    for res, rows in report["stages"].items():
        for embedding, row in rows.items():
            cells = [f"{row['per_image'][s]:.4f}" for s in STAGES]
            lines.append(f"| {res} | {embedding} | " + " | ".join(cells)
                         + f" | {row['total']:.3f} | {row['vit']:.3f} | {row['ratio']:.2f}"
                         f" | {row['valid_segments_per_image']:.1f} |")
    if report["partition"]:
        lines += ["", "Louvain on the same graphs, from the dense adjacency (seconds: mean over"
                  f" graphs of the best of {report.get('repeats', 1)} runs; modularity: mean"
                  " over graphs; ratio: igraph / python-louvain of the means; range: igraph"
                  " minus python-louvain, per graph):", "",
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
    if "process" in report:
        lines += [""] + process_markdown(report["process"], report.get("cpu_flags", {}))
    if "large" in report:
        large = report["large"]
        lines += ["", f"`datus run` on {large['images']} images (the test set repeated) in a"
                  " fresh process, 224, default settings, one torch thread: cold"
                  " (`--no-cache`), then `--clusters 7` warm:", "",
                  "| run | seconds | after start-up | s / image after start-up | peak RSS MiB |",
                  "|---|---|---|---|---|"]
        for name in ("cold", "warm"):
            row = large[name]
            lines.append(f"| {name} | {row['seconds']:.1f} | {row['seconds_after_startup']:.1f}"
                         f" | {row['seconds_after_startup'] / large['images']:.4f}"
                         f" | {row['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def process_markdown(process: dict, flags: dict[str, bool]) -> list[str]:
    """Section 4 as markdown: the table, seconds per image of each stage, the targets."""
    median = process["median"]
    have = ", ".join(f for f, present in flags.items() if present) or "none of them"
    precision = next((r.get("precision_used") for r in process["runs"]["cold"]), None)
    lines = [f"The `datus` process as a user runs it: {process['images']} test images at 224,"
             f" default weights and settings (precision ran: {precision}), device"
             f" {process.get('device', 'cpu')}, {process['threads']} torch threads (the"
             " machine's default); every command a new process, start-up and imports"
             f" included; median of {process['rounds']} rounds, range in brackets. CPU flags"
             f" present of {', '.join(CPU_FLAGS)}: {have}. `inside`: the keys stage (resize"
             " and forward) of `datus run`, the forwards of the plain loops. `/ fastest"
             " loop`: against the plain loop at the hardware's best (bf16 batch 8 here)."
             + (f" Baseline: napari_datus from {process['baseline']}." if process.get("baseline")
                else "")
             + (f" This section: `{process['command']}`." if process.get("command") else ""),
             "",
             "| run | seconds | / fastest loop | / cold run | inside, s | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for name, label in PROCESS_ROWS.items():
        if name not in process["runs"]:
            continue
        rows = process["runs"][name]
        seconds = [r["seconds"] for r in rows]
        variant = next((v for v in ("_fp32", "_baseline") if name.endswith(v)), "")
        inside = [r[k] for r in rows for k in ("keys", "forward") if k in r]
        rss = [r["peak_rss_mib"] for r in rows if "peak_rss_mib" in r]
        cells = [label, f"{median[name]:.2f} [{min(seconds):.2f}-{max(seconds):.2f}]",
                 f"{median[name] / median['plain_fast']:.2f}",
                 f"{median[name] / median['cold' + variant]:.3f}",
                 f"{np.median(inside):.2f}" if inside else "",
                 f"{np.median(rss):.0f}" if rss else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Seconds per image of each stage inside `datus run` (run.json `timings`,"
              " median over rounds; `cache` is reading and writing the feature cache, `read`"
              " decodes on the reader thread, overlapping the others):", "",
              "| run | " + " | ".join(STAGES + ("cache",)) + " | total after start-up |",
              "|---" * (len(STAGES) + 3) + "|"]
    for name in ("cold", "warm", "cold_fp32"):
        rows = process["runs"].get(name)
        if not rows:
            continue
        n = rows[0].get("images") or process["images"]
        cells = [f"{np.median([r['timings'].get(stage, 0.0) for r in rows]) / n:.4f}"
                 for stage in (*STAGES, "cache")]
        total = np.median([r["seconds_after_startup"] for r in rows]) / n
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.4f} |")
    lines += ["", "Targets (issue 22): cold run / fastest loop"
              f" {median['cold'] / median['plain_fast']:.2f} (at most 1.3); warm re-run / cold"
              f" run {median['warm'] / median['cold']:.3f} (at most 0.15); `datus --help`"
              f" {median['help']:.2f} s (under 1 s).", "",
              "The same ratios within each round (commands of a round run back to back, so a"
              " busy spell of the machine weighs less): cold / fastest loop "
              + round_ratios(process["runs"], "cold", "plain_fast") + "; cold / fp32 loop "
              + round_ratios(process["runs"], "cold", "plain") + "; warm / cold "
              + round_ratios(process["runs"], "warm", "cold") + "."]
    return lines


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
    parser.add_argument("--skip-stages", action="store_true", help="skip sections 1 and 2")
    parser.add_argument("--skip-cache", action="store_true", help="skip section 3")
    parser.add_argument("--process-images", type=int, default=24,
                        help="first N test images for section 4 (0 skips it)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of section 4")
    parser.add_argument("--no-fp32", action="store_true",
                        help="section 4 without `datus run --precision fp32`")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of the section 4 commands")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="section 4 also times napari_datus from DIR (e.g. an older"
                             " commit's src/ from git archive) in the same rounds")
    parser.add_argument("--large", type=int, default=1000,
                        help="images in the synthetic folder for peak RSS (0 skips section 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # numpy's BLAS and k-means' OpenMP too: idle-spinning threads on a busy machine turn a
    # 1 ms matmul into 20 ms.
    threadpool_limits(args.threads)
    paths = list_images(args.images)[: args.limit]
    in_process = not (args.skip_stages and args.skip_cache)
    backbone = load_backbone(args.model, args.weights, device="cpu") if in_process else None
    report: dict = {"machine": f"{platform.processor() or platform.machine()},"
                               f" {os.cpu_count()} logical CPUs", "cpu_flags": cpu_flags(),
                    "threads": args.threads, "repeats": args.repeats,
                    "images": len(paths), "command": " ".join(sys.argv),
                    "stages": {}, "partition": {}}
    with tempfile.TemporaryDirectory(prefix="datus-speed-") as tmp:
        work = Path(tmp)
        for res in [] if args.skip_stages else args.resolutions:
            report["stages"][res], graphs = stage_benchmark(paths, backbone, res, args.graphs,
                                                            work / f"out{res}")
            report["partition"][res] = {affinity: partition_benchmark(found, args.repeats)
                                        for affinity, found in graphs.items()}
        if not args.skip_cache:
            report["cache"] = cache_benchmark(paths, backbone, work / "cache")
        if args.process_images:
            report["process"] = process_benchmark(paths[: args.process_images], args.rounds,
                                                  work, not args.no_fp32, args.baseline,
                                                  args.device)
        if args.large:
            report["large"] = large_benchmark(paths, args.weights, args.model, args.large,
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
