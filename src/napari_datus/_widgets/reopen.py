"""A run folder opened in napari, made into runs the docks work on (no Qt).

The reader shows a run folder's images and stage layers; this module rebuilds, for each
image, the :class:`WidgetRun` behind them, so that metrics, segment QA, reassigning,
the class table and Export work on a reopened run as on a new one. Nothing is computed
again: the patch grids are read back from the saved partitions (the segments follow
from the partition and tau exactly as in the pipeline, and are checked against the saved
ones), each valid segment's cluster from the saved pseudo mask, and the class table from
``classes.json``. Segment embeddings are not saved, so a reopened run holds none.
"""

from __future__ import annotations

import re
from dataclasses import fields

import numpy as np

from napari_datus._widgets.folder_run import FolderRun
from napari_datus._widgets.model import ImageStack, WidgetRun
from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED, upsample_nearest
from napari_datus.core.segments import split_segments
from napari_datus.io.images import read_array, read_image
from napari_datus.io.masks import read_cluster_mask, to_layer_labels
from napari_datus.params import Params
from napari_datus.pipeline import DatasetResult, ImageResult
from napari_datus.runs.layout import PARTITIONS_DIR, PSEUDO_DIR, SEGMENTS_DIR
from napari_datus.runs.read import RunFolder
from napari_datus.saved_run import lazy_read


def reopened_runs(folder: RunFolder, classes: ClassMap | None) -> dict[str, WidgetRun]:
    """stem -> the run of each image of a run folder; one class table and one group.

    Each run's ``pristine`` labels are the pseudo mask as computed (saved beside an edited
    one), so the edits saved with the folder are edits again.

    Raises
    ------
    DatusError
        If the folder lacks what a run needs (partitions, segments, images), or its files
        do not agree with each other.
    """
    record = folder.record
    params = _params(record.params)
    patch, input_size = _grid(record.grid or {}, params)
    grid = params.resolution // patch
    classes = classes or ClassMap.per_cluster(params.clusters)
    runs: dict[str, WidgetRun] = {}
    for stem in folder.stems:
        image_file = folder.image(stem)
        if image_file is None:
            continue
        # Read when first needed (a crop, an export), as the reader's Image layer is.
        image = lazy_read(image_file, read_image, np.uint8, rgb=True)
        result = _image_result(folder, stem, grid, params.tau, image.shape[:2])
        computed = read_cluster_mask(folder.computed_mask(stem))
        if computed.shape != image.shape[:2]:
            raise DatusError(f"{folder.computed_mask(stem)} is not the size of its image")
        one = DatasetResult([result], [segment_clusters(result, computed)], record.timings,
                            [], params)
        runs[stem] = WidgetRun(stem, ImageStack(image[None], [stem], False), one, patch,
                               input_size, weights=_weights(record.params),
                               class_map=classes, out=folder.out,
                               pristine=to_layer_labels(computed))
    if not runs:
        raise DatusError(f"{folder.out}: no image of the run has its image file and pseudo"
                         " mask")
    group = list(runs.values())
    for run in group:
        run.group = group
    return runs


def segment_clusters(result: ImageResult, mask: np.ndarray) -> np.ndarray:
    """(n,) uint8: each valid segment's cluster, the most common label over its pixels in
    the saved (H, W) pseudo mask (255 where every pixel is unlabelled)."""
    valid = upsample_nearest(result.segments.valid, result.shape)
    clusters = np.full(result.segments.n_valid, UNLABELLED, dtype=np.uint8)
    labelled = mask != UNLABELLED
    for segment in range(1, result.segments.n_valid + 1):
        values = mask[(valid == segment) & labelled]
        if values.size:
            clusters[segment - 1] = np.bincount(values).argmax()
    return clusters


def _image_result(folder: RunFolder, stem: str, grid: int, tau: int,
                  shape: tuple[int, int]) -> ImageResult:
    """Stages 3-4 of one image read back on its (grid, grid) patch grid."""
    partition_file = folder.file(PARTITIONS_DIR, stem)
    segments_file = folder.file(SEGMENTS_DIR, stem)
    if not (partition_file.is_file() and segments_file.is_file()):
        raise DatusError(f"{folder.out}: {stem} has no saved partitions or segments (export"
                         " the stage masks to reopen a run for QA)")
    full = read_array(partition_file)
    if full.shape != tuple(shape):
        raise DatusError(f"{partition_file} is {full.shape[1]}x{full.shape[0]} but its image"
                         f" is {shape[1]}x{shape[0]}")
    partition = on_grid(full, grid).astype(np.int32)
    if not np.array_equal(upsample_nearest(partition, full.shape), full):
        raise DatusError(f"{partition_file} is not a {grid}x{grid} patch grid at this image"
                         " size")
    segments = split_segments(partition, tau)
    if not np.array_equal(segments.valid, on_grid(read_array(segments_file), grid)):
        raise DatusError(f"{segments_file} does not match its partition with tau = {tau}")
    embeddings = np.zeros((segments.n_valid, 0), dtype=np.float32)  # not saved
    return ImageResult(stem, tuple(shape), partition, segments, embeddings)


def on_grid(full: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) cell values of an (H, W) label image made by nearest upsampling: the
    inverse of :func:`~napari_datus.core.pseudolabel.upsample_nearest`."""
    picks = []
    for size in full.shape[:2]:
        cell = ((np.arange(size) + 0.5) * grid / size).astype(np.intp)
        picks.append(np.minimum(np.searchsorted(cell, np.arange(grid)), size - 1))
    return full[np.ix_(*picks)]


def _params(recorded: dict) -> Params:
    known = {f.name for f in fields(Params)}
    try:
        params = Params(**{k: v for k, v in recorded.items() if k in known})
        params.validate()
    except TypeError as exc:
        raise DatusError(f"run.json params cannot be read: {exc}") from exc
    return params


def _grid(grid: dict, params: Params) -> tuple[int, int]:
    """(patch size, input size) of the backbone: recorded in run.json, or else read from a
    timm ViT name (``..._patch14_...``)."""
    if grid.get("patch_size"):
        return int(grid["patch_size"]), int(grid.get("input_size") or params.resolution)
    found = re.search(r"patch(\d+)", params.model)
    if found is None:
        raise DatusError(f"run.json does not say the patch size of model {params.model!r}")
    return int(found.group(1)), params.resolution


def _weights(params: dict) -> dict[str, str | None]:
    return {key: params.get(key) for key in ("weights_source", "weights_sha256",
                                            "weights_file") if key in params}


def reopened_folder_run(folder: RunFolder, runs: dict[str, WidgetRun]) -> FolderRun:
    """The reopened images of a run folder as one folder run, shown one image at a time,
    with the edits the folder saved (each mask against the mask as computed)."""
    stems = [s for s in folder.stems if s in runs]
    first = runs[stems[0]]
    result = DatasetResult([runs[s].result.results[0] for s in stems],
                           [runs[s].result.clusters[0] for s in stems],
                           first.result.timings, [], first.result.params)
    files = {s: folder.image(s) for s in stems}
    folder_run = FolderRun(files[stems[0]].parent, files, result, first.patch_size,
                           first.input_size, weights=dict(first.weights), out=folder.out,
                           class_map=first.class_map)
    for index, stem in enumerate(stems):
        if stem in folder.record.edits:
            folder_run.record_edit(index, to_layer_labels(
                read_cluster_mask(folder.file(PSEUDO_DIR, stem))))
    return folder_run
