"""Export a run's layers in the ``datus run`` layout (see :mod:`napari_datus.outputs`).

Masks are read from the layers, so edits made in napari (painting, reassigned segments)
are exported, and converted back from layer conventions to file conventions:
partitions ``p + 1 -> p``, pseudo masks and de-noised masks ``0 -> 255``, ``c + 1 -> c``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import napari
import numpy as np

from napari_datus._widgets.edits import layer_edits
from napari_datus._widgets.layers import run_of
from napari_datus._widgets.model import DENOISED, WidgetRun, stack_rgb, to_file_labels
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import class_colours, write_colour_mask, write_json_atomic
from napari_datus.outputs import (
    DENOISED_DIR,
    EXPORTED_IMAGES_DIR,
    PARTITIONS_DIR,
    PSEUDO_COLOUR_DIR,
    SEGMENTS_DIR,
    check_writable,
    package_versions,
    run_folder,
    write_colour_pseudo_mask,
    write_grid_outputs,
    write_json,
    write_pseudo_mask,
)


def export_run(viewer: napari.Viewer, run: WidgetRun, out: Path, index: bool = True,
               colour: bool = False) -> list[Path]:
    """Write every mask of the stack, plus run.json and the metrics (JSON and CSV).

    Parameters
    ----------
    index : write partitions/, segments/, pseudo_masks/ (and denoised/) index PNGs
    colour : write pseudo_masks_colour/ in the matched SUIM classes' colours

    Returns
    -------
    The files written.
    """
    if not (index or colour):
        raise DatusError("choose index PNG and/or SUIM colours to export")
    if colour and ("initial" not in run.metrics or run_colours(run) is None):
        raise DatusError("SUIM colours follow the cluster-to-class matching: compute metrics"
                         " against SUIM ground truth (suim6 or suim8) in DatUS metrics first")
    layers = _stack_layers(viewer, run)
    check_writable(out)
    with run_folder(out) as run_id:
        written = _write_masks(out, run, layers, index, colour)
        inputs = {}
        for i, stem in enumerate(run.stack.stems):
            if run.position(i) is not None:
                # The images go with the masks, so `datus denoise` can train on an export.
                path = write_colour_mask(out / EXPORTED_IMAGES_DIR / f"{stem}.png",
                                         stack_rgb(run.stack, i))
                inputs[stem] = {"image": str(path.resolve()), "gt": None}
                written.append(path)
        if run.metrics:
            written.append(write_json(out / "metrics.json", {
                "run_id": run_id, "classes": run.class_names, "images": _evaluated(run),
                **run.metrics}))
            written.append(write_json_atomic(out / "metrics.csv", metrics_csv(run)))
        edits = {run.stack.stems[i]: {"pixels": edit.pixels}
                 for i, edit in layer_edits(viewer, run).items()}
        # Last: run.json marks the folder as a complete run.
        written.append(write_json(out / "run.json", {"run_id": run_id, **_run_json(run),
                                                     "inputs": inputs, "edits": edits}))
    return written


def _write_masks(out: Path, run: WidgetRun, layers: dict[str, np.ndarray], index: bool,
                 colour: bool) -> list[Path]:
    """Every image's masks in file conventions; returns the files written."""
    written: list[Path] = []
    for i, stem in enumerate(run.stack.stems):
        if run.position(i) is None:
            continue
        pseudo = to_file_labels(layers["pseudo mask"][i])
        if index:
            partitions = np.maximum(layers["partitions"][i].astype(np.int32) - 1, 0)
            segments = layers["segments"][i].astype(np.int32)
            # Layers are already full size, so the writer's nearest upsampling is the identity.
            write_grid_outputs(out, stem, partitions, segments, segments.shape)
            written += [out / PARTITIONS_DIR / f"{stem}.png", out / SEGMENTS_DIR / f"{stem}.png"]
            written.append(write_pseudo_mask(out, stem, pseudo))
            if DENOISED in layers:
                written.append(write_pseudo_mask(out, stem, to_file_labels(
                    layers[DENOISED][i]), folder=DENOISED_DIR))
        if colour:
            written.append(write_colour_pseudo_mask(
                out, stem, pseudo, run.metrics["initial"]["mapping"], run_colours(run),
                folder=PSEUDO_COLOUR_DIR))
    return written


def metrics_csv(run: WidgetRun) -> str:
    """Per-class table: IoU, F1 and strict IoU of each metrics block, then the means."""
    keys = list(run.metrics)
    header = ["class"] + [f"{key}_{name}" for key in keys
                         for name in ("iou", "f1", "strict_iou")]
    rows = []
    for c, name in enumerate(run.class_names):
        row = [name]
        for key in keys:
            block = run.metrics[key]
            row += [block["per_class_iou"][c], block["per_class_f1"][c],
                    block["strict"]["per_class_iou"][c]]
        rows.append(row)
    mean = ["mean"]
    for key in keys:
        block = run.metrics[key]
        mean += [block["miou"], block["mean_f1"], block["strict"]["miou"]]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([header, *rows, mean])
    return text.getvalue()


def _stack_layers(viewer: napari.Viewer, run: WidgetRun) -> dict[str, np.ndarray]:
    """Each result layer's data as (N, H, W); the four initial layers must be present."""
    arrays = {}
    for suffix in ("partitions", "segments", "pseudo mask", DENOISED):
        name = run.layer_name(suffix)
        if name in viewer.layers and run_of(viewer.layers[name]) is run:
            data = np.asarray(viewer.layers[name].data)
            arrays[suffix] = data if run.stack.is_stack else data[None]
        elif suffix != DENOISED:
            raise DatusError(f"layer {name!r} of this run is missing: run the pipeline again")
    return arrays


def _evaluated(run: WidgetRun) -> list[str]:
    return [stem for i, stem in enumerate(run.stack.stems) if run.position(i) is not None]


def run_colours(run: WidgetRun) -> np.ndarray | None:
    """(C, 3) uint8 SUIM colours of the run's ground-truth classes, or None."""
    return class_colours(run.gt_format)


def _run_json(run: WidgetRun) -> dict:
    """Provenance in run.json's shape (params, versions, timings, segments, images, skipped)."""
    return {
        "command": "napari DatUS pipeline widget",
        "params": {**run.result.params.to_dict(), **run.weights},
        "versions": package_versions(),
        "timings": run.result.timings,
        "segments": run.result.segment_counts(),
        "images": _evaluated(run),
        "skipped": [vars(s) for s in run.result.skipped],
        "gt": ({"format": run.gt_format, "ignore": None, "classes": run.class_names,
                "dir": None} if run.metrics else None),
    }
