"""What ``datus run`` and ``datus denoise`` do, once :mod:`napari_datus.cli` has parsed them.

Only what every run needs is imported here; torch, timm and the rest come with the stage
that needs them, so a re-run whose features are all cached imports neither torch nor timm
and never builds the model (:class:`~napari_datus.core.lazy_backbone.LazyBackbone`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from napari_datus.cache import FeatureCache, file_sources
from napari_datus.core.denoise_config import DenoiseConfig, TrainProgress
from napari_datus.core.errors import DatusError
from napari_datus.core.features import check_resolution, effective_precision
from napari_datus.core.lazy_backbone import LazyBackbone
from napari_datus.distributed import dask_client, segment_images
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.dataset import list_images, match_ground_truth
from napari_datus.io.images import max_pixels, read_image
from napari_datus.io.masks import class_colours, read_cluster_mask
from napari_datus.outputs import (
    BackgroundWriter,
    command_line,
    package_versions,
    planned_files,
    write_colour_pseudo_mask,
    write_grid_outputs,
    write_json,
    write_pseudo_mask,
)
from napari_datus.params import check_graph_memory
from napari_datus.pipeline import (
    Params,
    Progress,
    Skipped,
    Timer,
    cluster,
    drive,
    pseudo_mask,
)
from napari_datus.runs.layout import METRICS_FILE, PSEUDO_DIR, written_names
from napari_datus.runs.read import owned_files, read_existing, user_work
from napari_datus.runs.read import read_run as read_run_folder
from napari_datus.runs.record import RunRecord
from napari_datus.runs.write import RunWriter, check_no_conflicts, check_writable


def params_from_args(args: argparse.Namespace) -> Params:
    """Params from parsed ``datus run`` arguments."""
    return Params(model=args.model, weights=args.weights, resolution=args.resolution,
                  clusters=args.clusters, tau=args.tau, seed=args.seed, device=args.device,
                  batch_size=args.batch_size, affinity=args.affinity, partition=args.partition,
                  embedding=args.embedding, n_init=args.n_init, self_loops=args.self_loops,
                  knn=args.knn, embedding_norm=args.embedding_norm,
                  size_weighted=args.size_weighted, fill_noise=args.fill_noise,
                  precision=args.precision, refine=args.refine,
                  grouping=args.grouping, overcluster=args.overcluster)


def run_backbone(params: Params, cache: FeatureCache) -> LazyBackbone:
    """The backbone of a run, built only when an image misses the feature cache."""
    return LazyBackbone(params.model, params.weights, params.device, facts=cache)


def warn(message: str) -> None:
    """One warning line on stderr (kept outside the progress bar)."""
    tqdm.write(f"datus: warning: {message}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> dict:
    """``datus run``: stages 1-6, every output file, run.json and metrics.json.

    Every setting and the output folder are checked before any work; the run is written
    beside the run it replaces and swapped in whole (:class:`~napari_datus.runs.write.RunWriter`).

    Returns
    -------
    The run.json content.
    """
    start = time.perf_counter()
    params = params_from_args(args)
    params.validate()
    gt = GroundTruthFormat(args.gt_format, args.gt_ignore)
    max_pixels()  # a bad DATUS_MAX_PIXELS stops here, not once per image
    if args.denoise:
        denoise_config(args).validate()
    out: Path = args.out
    files = list_images(args.images)
    gt_files = match_ground_truth(files, args.gt) if args.gt else {}
    check_output_folder(out, [f.stem for f in files], args)
    cache = FeatureCache(enabled=not args.no_cache)
    backbone = run_backbone(params, cache)
    if params.device.startswith("cuda"):
        from napari_datus.core.backbone import resolve_device

        resolve_device(params.device)  # a missing GPU stops here, before any work
    # Need the patch size: from the cached descriptor, else the model is built here.
    check_resolution(params.resolution, backbone.patch_size)
    check_graph_memory(params, backbone.patch_size)
    timer = Timer()
    sources = file_sources(files)
    with dask_client(args.dask_scheduler, args.dask_local) as client, \
            RunWriter(out, protect=[*files, *gt_files.values()]) as writer, \
            BackgroundWriter() as writes:
        root = writer.staging
        with tqdm(total=len(files), desc="segments", unit="img", file=sys.stderr) as bar:
            def write_grids(event: Progress) -> None:
                if event.result is not None:
                    r = event.result
                    with timer("write"):
                        writes.submit(write_grid_outputs, root, r.stem, r.partition,
                                      r.segments.valid, r.shape)
                bar.update(1)

            results, skipped = drive(segment_images(sources, len(files), backbone, params,
                                                    timer, cache, client), write_grids)
        for s in skipped:
            warn(f"skipped {s.file}: {s.reason}")
        if not results:
            raise DatusError("no image could be processed")
        with timer("kmeans"):
            clusters = cluster(results, params, cache)
        metrics_inputs = _write_masks(root, results, clusters, gt_files, gt, args, timer,
                                      skipped, writer.run_id, {f.stem: f for f in files},
                                      writes)
        record = RunRecord(
            run_id=writer.run_id,
            command=command_line(),
            params={**params.to_dict(), **backbone.provenance(),
                    "precision_used": effective_precision(backbone.device_type, params.precision)},
            device=backbone.device_name,
            versions=package_versions(),
            timings=timer.seconds,
            cache=str(cache.root) if cache.enabled else None,
            seconds_total=time.perf_counter() - start,
            segments=_segment_counts(results),
            images=[r.stem for r in results],
            skipped=[vars(s) for s in skipped],
            inputs={f.stem: {"image": str(f.resolve()),
                             "gt": (str(gt_files[f.stem].resolve()) if f.stem in gt_files
                                    else None)}
                    for f in files},
            gt=metrics_inputs,
            # Lets napari rebuild the run from its files (segment QA on a reopened run).
            grid={"patch_size": backbone.patch_size, "input_size": backbone.input_size},
        )
        with timer("write"):
            writes.wait()
        writer.commit(record)
    run_info = record.to_json()
    if args.denoise:
        denoise_command(args)
    print(summary(run_info, out))
    return run_info


def check_output_folder(out: Path, stems: list[str], args: argparse.Namespace) -> None:
    """Refuse, before any work, an output folder whose run holds user work (unless
    ``--overwrite-edits``), whose run record is damaged, or where a file this run would
    write is in the way and no run wrote it."""
    check_writable(out)
    work = user_work(out)
    if work and not args.overwrite_edits:
        raise DatusError(f"{out} holds a run with {work.describe()} (made in napari);"
                         " choose another --out, or pass --overwrite-edits to replace it")
    old = read_existing(out)
    check_no_conflicts(out, planned_files(stems, bool(args.gt)),
                       owned_files(out, old) if old is not None else set())


def summary(run_info: dict, out: Path) -> str:
    """The lines ``datus run`` ends with: images, segments, weights, mIoU, outputs."""
    counts = run_info["segments"]
    params = run_info["params"]
    lines = [
        f"datus: {len(run_info['images'])} images segmented, {counts['valid']} valid and"
        f" {counts['noise']} noise segments ({counts['valid_fraction']:.0%} valid)"
        + (f"; {len(run_info['skipped'])} files skipped (see run.json)"
           if run_info["skipped"] else ""),
        f"  weights: {params['weights_source']}"
        + (f" {params['weights_file']} (sha256 {params['weights_sha256'][:12]})"
           if params.get("weights_file") else f" {params['model']}"),
    ]
    metrics_file = out / METRICS_FILE
    if run_info.get("gt") and METRICS_FILE in run_info["files"]:
        metrics = json.loads(metrics_file.read_text())
        initial = metrics["initial"]
        lines.append(f"  mIoU {initial['miou']:.3f}, pixel accuracy"
                     f" {initial['pixel_accuracy']:.3f}, coverage {initial['coverage']:.3f}"
                     f" on {len(metrics['images'])} images with ground truth")
    lines.append(f"  outputs: {out.resolve()} ({', '.join(written_names(run_info['files']))})")
    return "\n".join(lines)


def denoise_config(args: argparse.Namespace) -> DenoiseConfig:
    """DenoiseConfig from parsed ``datus run --denoise`` / ``datus denoise`` arguments."""
    return DenoiseConfig(backbone=args.denoise_backbone, epochs=args.denoise_epochs,
                         dominance=args.denoise_dominance, seed=args.seed, device=args.device,
                         backbone_weights=args.denoise_backbone_weights,
                         output=args.denoise_output)


def denoise_command(args: argparse.Namespace) -> None:
    """``datus denoise OUT_DIR``: train the de-noiser on a run's pseudo masks, write denoised/."""
    from napari_datus.denoise_run import denoise_run, read_run

    config = denoise_config(args)
    config.validate()
    read_run(args.out)  # a folder that is not a complete run is refused before any output
    with tqdm(desc="denoise", unit="step", file=sys.stderr) as bar:
        result = denoise_run(args.out, config, partial(_show_denoise_progress, bar))
    if result.dropped:
        warn(f"{len(result.dropped)} pseudo masks dominated by one cluster were left out of"
             " de-noising training")


def _show_denoise_progress(bar: tqdm, event) -> None:
    """Training: step bar with epoch and loss; prediction: image count."""
    if isinstance(event, TrainProgress):
        bar.total = event.epochs * event.steps
        bar.n = (event.epoch - 1) * event.steps + event.step
        bar.set_postfix_str(f"epoch {event.epoch}/{event.epochs} loss {event.loss:.4f}")
    else:
        bar.set_description_str("denoise predict")
        bar.total, bar.n = event.total, event.index
        bar.set_postfix_str(event.stem)
    bar.refresh()


def _write_masks(out: Path, results, clusters, gt_files: dict[str, Path],
                 gt: GroundTruthFormat, args: argparse.Namespace, timer: Timer,
                 skipped: list[Skipped], run_id: str, image_files: dict[str, Path],
                 writes: BackgroundWriter) -> dict | None:
    """Write pseudo masks, score them against the ground truth, write metrics.json.

    ``image_files`` (stem -> image) feed ``--refine``, which needs each original image.
    """
    scorer = Scorer(args.clusters, gt, boundaries=True)
    for r, c in tqdm(list(zip(results, clusters)), desc="pseudo masks", unit="img",
                     file=sys.stderr):
        image = None
        if args.refine != "none":
            with timer("read"):
                image = read_image(image_files[r.stem])
        mask = pseudo_mask(r, c, args.fill_noise, args.refine, image)
        with timer("write"):
            writes.submit(write_pseudo_mask, out, r.stem, mask)
        if r.stem not in gt_files:
            if args.gt:
                skipped.append(Skipped(r.stem, "no ground-truth file: left out of the metrics"))
                warn(f"{r.stem}: no ground-truth file in {args.gt}; left out of the metrics")
            continue
        with timer("read"):
            reason = scorer.add_file(r.stem, mask, gt_files[r.stem])
        if reason is not None:
            skipped.append(Skipped(str(gt_files[r.stem]), reason))
            warn(reason)
    if not args.gt:
        return None
    metrics = scorer.result()
    if metrics is None:
        warn("no image had usable ground truth: metrics.json not written")
        return None
    write_json(out / "metrics.json", {"run_id": run_id, "classes": scorer.names,
                                      "images": scorer.images, "initial": metrics})
    colours = class_colours(args.gt_format)
    if colours is not None:
        if args.refine != "none":
            writes.wait()  # the refined masks are read back below
        for r, c in zip(results, clusters):
            # A refined mask is read back rather than refined a second time.
            mask = (pseudo_mask(r, c, args.fill_noise) if args.refine == "none" else
                    read_cluster_mask(out / PSEUDO_DIR / f"{r.stem}.png"))
            with timer("write"):
                writes.submit(write_colour_pseudo_mask, out, r.stem, mask,
                              metrics["mapping"], colours)
    return {"format": gt.format, "ignore": gt.ignore if gt.format == "index" else None,
            "classes": scorer.names, "dir": str(args.gt)}


def _segment_counts(results) -> dict[str, float]:
    valid = sum(r.segments.n_valid for r in results)
    noise = sum(r.segments.n_noise for r in results)
    return {"valid": valid, "noise": noise,
            "valid_fraction": valid / (valid + noise) if valid + noise else 0.0,
            "per_image_valid_mean": float(np.mean([r.segments.n_valid for r in results]))}


def propagate_command(args: argparse.Namespace) -> None:
    """``datus propagate RUN_DIR --labels DIR``: train on the labelled images' cached
    features, write ``propagated/``, score the other images when the run has ground truth."""
    from napari_datus.core.propagate import PropagateConfig
    from napari_datus.propagation import propagate_run, run_params

    config = PropagateConfig(classifier=args.classifier, segment_vote=args.segment_vote,
                             seed=args.seed)
    config.validate()
    folder = read_run_folder(args.run)  # not a complete run: refused before any work
    cache = FeatureCache(enabled=not args.no_cache)
    backbone = run_backbone(run_params(folder), cache)
    bars: list[tqdm] = []  # opened by the first step, so a refusal prints one line only

    def show(event: Progress) -> None:
        if not bars:
            bars.append(tqdm(unit="img", file=sys.stderr))
        bars[0].set_description_str(event.stage)
        bars[0].total, bars[0].n = event.total, event.index
        bars[0].refresh()

    try:
        result = propagate_run(args.run, args.labels, args.label_format, backbone, cache,
                               config, args.refine, show)
    finally:
        for bar in bars:
            bar.close()
    line = (f"datus: {len(result.written)} images labelled from {len(result.labelled)}"
            f" labelled images in {result.seconds:.1f} s: {args.run / 'propagated'}")
    if result.metrics is not None:
        m = result.metrics
        line += (f"\n  mIoU {m['miou']:.3f}, pixel accuracy {m['pixel_accuracy']:.3f},"
                 f" boundary F1 {m['boundary']['f1']:.3f} on {len(m['images'])} images"
                 " that were not labelled")
    print(line)


COMMANDS = {"run": run_command, "denoise": denoise_command, "propagate": propagate_command}
