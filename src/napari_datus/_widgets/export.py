"""Export a run's layers in the ``datus run`` layout (see :mod:`napari_datus.outputs`).

Masks are read from the layers, so edits made in napari (painting, reassigned segments)
are exported, and converted back from layer conventions to file conventions:
partitions ``p + 1 -> p``, pseudo masks and de-noised masks ``0 -> 255``, ``c + 1 -> c``
(the npe2 writer writes DatUS mask layers the same way). The annotations are the
pseudo masks through the user's class map: class ids, class colours and ``classes.json``.
Metrics are computed again from the masks as exported.
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Callable
from functools import partial
from pathlib import Path

import napari
import numpy as np

from napari_datus._widgets.edits import layer_edits
from napari_datus._widgets.layers import run_of
from napari_datus._widgets.model import (
    DENOISED,
    WidgetRun,
    compute_metrics,
    stack_rgb,
)
from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.core.metrics import evaluate
from napari_datus.evaluation import Scorer
from napari_datus.io.masks import to_file_labels, write_colour_mask, write_json_atomic
from napari_datus.outputs import (
    package_versions,
    write_class_masks,
    write_grid_outputs,
    write_json,
    write_pseudo_mask,
)
from napari_datus.pipeline import DatasetResult
from napari_datus.runs.layout import (
    COMPUTED_DIR,
    DENOISED_DIR,
    EXPORTED_IMAGES_DIR,
    METRICS_CSV,
    METRICS_FILE,
    RUN_FILE,
    image_file,
    in_run,
)
from napari_datus.runs.record import RunRecord
from napari_datus.runs.write import RunWriter, check_writable


def export_run(viewer: napari.Viewer, runs: WidgetRun | list[WidgetRun], out: Path,
               index: bool = True, classes: bool = True) -> list[Path]:
    """Write every mask of one run, or of a set of runs that share one k-means (several
    selected image layers), plus run.json and the metrics (JSON and CSV).

    Parameters
    ----------
    runs : a run, or the runs of a layer set (one class map, one dataset)
    index : write partitions/, segments/, pseudo_masks/ (and denoised/) index PNGs
    classes : write the annotations: class_masks/ (class ids, 255 = unlabelled),
        class_masks_colour/ (class colours) and classes.json

    Returns
    -------
    The files written.
    """
    return export_job(viewer, runs, out, index, classes)()


def export_job(viewer: napari.Viewer, runs: WidgetRun | list[WidgetRun], out: Path,
               index: bool = True, classes: bool = True) -> Callable[[], list[Path]]:
    """:func:`export_run` in two halves: what it reads from the viewer is read here (on the
    main thread, copied, so painting may go on), and the returned call writes (on any
    thread) and returns the files written."""
    runs = runs if isinstance(runs, list) else [runs]
    if not (index or classes):
        raise DatusError("choose index PNG and/or class masks to export")
    check_writable(out)
    layers = [_stack_layers(viewer, run) for run in runs]
    edited = [[None if run.position(i) is None
               else to_file_labels(labels, run.layer_name("pseudo mask"))
               for i, labels in enumerate(stack["pseudo mask"])]
              for run, stack in zip(runs, layers)]
    edits = {run.stack.stems[i]: {"pixels": edit.pixels}
             for run in runs for i, edit in layer_edits(viewer, run).items()}
    class_map = copy.deepcopy(runs[0].class_map)
    return partial(_write_export, runs, layers, edited, edits, class_map, out, index, classes)


def _write_export(runs: list[WidgetRun], layers: list[dict[str, np.ndarray]],
                  edited: list[list[np.ndarray | None]], edits: dict[str, dict],
                  class_map: ClassMap, out: Path, index: bool, classes: bool) -> list[Path]:
    """The writing half of :func:`export_job` (no Qt, no viewer): everything is written
    beside the run ``out`` holds and swapped in when complete."""
    metrics, names = export_metrics(runs, edited)
    with RunWriter(out) as writer:
        root, inputs = writer.staging, {}
        for run, stack, masks in zip(runs, layers, edited):
            if index:
                _write_masks(root, run, stack, masks)
            for i, stem in enumerate(run.stack.stems):
                if masks[i] is None:
                    continue
                if classes:
                    write_class_masks(root, stem, masks[i], class_map)
                if stem in edits:
                    write_pseudo_mask(root, stem, _computed(run, i), folder=COMPUTED_DIR)
                # The images go with the masks, so `datus denoise` can train on an export.
                write_colour_mask(writer.path(image_file(EXPORTED_IMAGES_DIR, stem)),
                                  stack_rgb(run.stack, i))
                inputs[stem] = {"image": str(in_run(out.resolve(),
                                                    image_file(EXPORTED_IMAGES_DIR, stem))),
                                "gt": None}
        if classes:
            class_map.save(root)
        if metrics:
            write_json(root / METRICS_FILE, {"run_id": writer.run_id, "classes": names,
                                             "images": _evaluated(runs), **metrics})
            write_json_atomic(root / METRICS_CSV, metrics_csv(metrics, names))
        record = _record(runs, names if metrics else None)
        record.inputs = inputs
        record.edits = {stem: edit["pixels"] for stem, edit in edits.items()}
        writer.commit(record)
    return [in_run(out, rel) for rel in [*record.files, RUN_FILE]]


def _computed(run: WidgetRun, index: int) -> np.ndarray:
    """(H, W) uint8 pseudo mask of stack image ``index`` as computed (255 unlabelled)."""
    pristine = run.pristine if run.stack.is_stack else run.pristine[None]
    return to_file_labels(pristine[index], run.layer_name("pseudo mask"))


def export_metrics(runs: list[WidgetRun], edited: list[list[np.ndarray | None]],
                   ) -> tuple[dict[str, dict], list[str]]:
    """Metrics of the masks as exported: each run's own blocks for one run, one initial
    block over every image for a set whose runs all have ground truth of one kind.

    Returns
    -------
    The blocks (empty when there is nothing to score) and the class names.
    """
    scored = [run for run in runs if run.gt is not None]
    if not scored or len(scored) < len(runs) or len({tuple(r.class_names) for r in runs}) > 1:
        return {}, []
    if len(runs) == 1:
        # Not kept on the run: this runs in the export's worker thread, and the dock's
        # figures are the dock's (it shows them as out of date after an edit).
        return (compute_metrics(runs[0], runs[0].gt, runs[0].class_names, edited[0]),
                runs[0].class_names)
    names = runs[0].class_names
    scorer = Scorer(max(run.n_clusters for run in runs), classes=names)
    for run, masks in zip(runs, edited):
        for stem, mask, truth in zip(run.stack.stems, masks, run.gt):
            if mask is not None:
                scorer.add(stem, mask, truth)
    return {"initial": evaluate(scorer.confusion, names)}, names


def _write_masks(out: Path, run: WidgetRun, layers: dict[str, np.ndarray],
                 pseudo: list[np.ndarray | None]) -> None:
    """Every image's stage index masks in file conventions (``pseudo``: the pseudo masks
    already converted, None for images left out)."""
    for i, stem in enumerate(run.stack.stems):
        if pseudo[i] is None:
            continue
        partitions = np.maximum(layers["partitions"][i].astype(np.int32) - 1, 0)
        segments = layers["segments"][i].astype(np.int32)
        # Layers are already full size, so the writer's nearest upsampling is the identity.
        write_grid_outputs(out, stem, partitions, segments, segments.shape)
        write_pseudo_mask(out, stem, pseudo[i])
        if DENOISED in layers:
            write_pseudo_mask(out, stem, to_file_labels(
                layers[DENOISED][i], run.layer_name(DENOISED)), folder=DENOISED_DIR)


def metrics_csv(metrics: dict[str, dict], names: list[str]) -> str:
    """Per-class table: IoU, F1 and strict IoU of each metrics block, then the means."""
    keys = list(metrics)
    header = ["class"] + [f"{key}_{name}" for key in keys
                         for name in ("iou", "f1", "strict_iou")]
    rows = []
    for c, name in enumerate(names):
        row = [name]
        for key in keys:
            block = metrics[key]
            row += [block["per_class_iou"][c], block["per_class_f1"][c],
                    block["strict"]["per_class_iou"][c]]
        rows.append(row)
    mean = ["mean"]
    for key in keys:
        block = metrics[key]
        mean += [block["miou"], block["mean_f1"], block["strict"]["miou"]]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([header, *rows, mean])
    return text.getvalue()


def _stack_layers(viewer: napari.Viewer, run: WidgetRun) -> dict[str, np.ndarray]:
    """A copy of each result layer's data as (N, H, W) (painting may go on while it is
    written); the four initial layers must be present."""
    arrays = {}
    for suffix in ("partitions", "segments", "pseudo mask", DENOISED):
        name = run.layer_name(suffix)
        if name in viewer.layers and run_of(viewer.layers[name]) is run:
            # np.array copies a numpy layer and computes a lazy one, once either way.
            data = np.array(viewer.layers[name].data)
            arrays[suffix] = data if run.stack.is_stack else data[None]
        elif suffix != DENOISED:
            raise DatusError(f"layer {name!r} of this run is missing: run the pipeline again")
    return arrays


def _evaluated(runs: list[WidgetRun]) -> list[str]:
    return [stem for run in runs for i, stem in enumerate(run.stack.stems)
            if run.position(i) is not None]


def _record(runs: list[WidgetRun], classes: list[str] | None) -> RunRecord:
    """Provenance in run.json's shape (params, versions, timings, segments, images, skipped)."""
    first = runs[0]
    every = DatasetResult([r for run in runs for r in run.result.results],
                          [c for run in runs for c in run.result.clusters],
                          first.result.timings, [], first.result.params)
    return RunRecord(
        run_id="",
        command="napari DatUS pipeline widget",
        # The masks may hold clusters the user made beyond K: `datus denoise` learns them all.
        params={**first.result.params.to_dict(), "clusters": first.n_clusters,
                **first.weights},
        versions=package_versions(),
        timings=first.result.timings,
        segments=every.segment_counts(),
        images=_evaluated(runs),
        inputs={},
        skipped=[vars(s) for run in runs for s in run.result.skipped],
        gt=({"format": first.gt_format, "ignore": None, "classes": classes, "dir": None}
            if classes else None),
        grid={"patch_size": first.patch_size, "input_size": first.input_size},
    )
