"""What the napari docks save into a run folder, through the one writer.

:func:`save_run` writes what ``datus run`` writes (partitions, segments, pseudo masks,
run.json last) for a :class:`~napari_datus.pipeline.DatasetResult` whose images are files,
with the user's edited masks in place of the computed ones, the computed ones beside them
(``pseudo_masks_computed/``) and a record of the edits; :func:`save_edits` and
:func:`save_classes` update a saved run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_datus.class_map import ClassMap
from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_image
from napari_datus.io.masks import read_cluster_mask
from napari_datus.outputs import (
    package_versions,
    write_class_masks,
    write_grid_outputs,
    write_pseudo_mask,
)
from napari_datus.pipeline import DatasetResult, pseudo_mask
from napari_datus.runs.layout import CLASSES_FILE, COMPUTED_DIR
from napari_datus.runs.read import read_run
from napari_datus.runs.record import RunRecord
from napari_datus.runs.write import RunWriter


def save_run(out: Path, result: DatasetResult, images: dict[str, Path],
             provenance: dict[str, Any], edited: dict[str, np.ndarray] | None = None,
             classes: ClassMap | None = None, class_masks: bool = False,
             grid: dict[str, int] | None = None,
             computed: list[np.ndarray] | None = None) -> Path:
    """Write a run in the ``datus run`` layout, replacing the run ``out`` holds.

    Parameters
    ----------
    result : every image's stages and clusters (as they are now, reassignments included)
    images : stem -> image file, for run.json ``inputs``
    provenance : the backbone's weights source and hash (``Backbone.provenance()``)
    edited : stem -> (H, W) uint8 pseudo mask (255 = unlabelled) as the user edited it
    classes : the user's class map, saved as ``classes.json``
    class_masks : also write every mask through the class map (class ids and colours)
    grid : the backbone's ``patch_size`` and ``input_size``, for reopening the run
    computed : per image, (n,) uint8 clusters of its valid segments as k-means gave them
        (before any reassignment; default ``result.clusters``): edits are told from these

    Returns
    -------
    The run.json path, written last.
    """
    started = time.perf_counter()
    edited = edited or {}
    computed = computed if computed is not None else result.clusters
    with RunWriter(out, protect=images.values()) as writer:
        root, edits = writer.staging, {}
        for index, r in enumerate(result.results):
            write_grid_outputs(root, r.stem, r.partition, r.segments.valid, r.shape)
            image = None if result.params.refine == "none" else read_image(images[r.stem])
            as_computed = pseudo_mask(r, computed[index], result.params.fill_noise,
                                      result.params.refine, image)
            mask = edited.get(r.stem)
            if mask is None:
                mask = result.pseudo_mask(index, image)
            write_pseudo_mask(root, r.stem, mask)
            if class_masks and classes is not None:
                write_class_masks(root, r.stem, mask, classes)
            changed = int((mask != as_computed).sum())
            if changed:
                edits[r.stem] = changed
                write_pseudo_mask(root, r.stem, as_computed, folder=COMPUTED_DIR)
        if classes is not None:
            classes.save(root)
        return writer.commit(RunRecord(
            run_id=writer.run_id,
            command="napari DatUS pipeline widget",
            params={**result.params.to_dict(), **provenance,
                    "clusters": max(result.params.clusters,
                                    classes.n_clusters if classes else 0)},
            versions=package_versions(),
            timings={**result.timings, "save": time.perf_counter() - started},
            segments=result.segment_counts(),
            images=[r.stem for r in result.results],
            skipped=[vars(s) for s in result.skipped],
            inputs={r.stem: {"image": str(Path(images[r.stem]).resolve()), "gt": None}
                    for r in result.results},
            edits=edits,
            grid=grid,
        ))


def save_edits(out: Path, masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Write edited pseudo masks into the saved run ``out`` and record their edits.

    The first time an image's mask is saved edited, its saved mask is the one computed,
    and it is kept in ``pseudo_masks_computed/``; edits are the pixels that differ from it.

    Parameters
    ----------
    masks : stem -> (H, W) uint8 pseudo mask (255 = unlabelled) as the user left it

    Returns
    -------
    stem -> edited pixels, for every image of the run that has edits now.
    """
    with RunWriter(out, update=True) as writer:
        folder = read_run(out)
        record = writer.old
        for stem, mask in masks.items():
            if stem not in folder.stems:
                raise DatusError(f"{out} has no image {stem!r} to save edits of")
            computed = read_cluster_mask(folder.computed_mask(stem))
            changed = int((mask != computed).sum())
            write_pseudo_mask(writer.staging, stem, mask)
            if changed:
                record.edits[stem] = changed
                if not folder.has(COMPUTED_DIR, stem):
                    write_pseudo_mask(writer.staging, stem, computed, folder=COMPUTED_DIR)
            else:
                record.edits.pop(stem, None)
        writer.commit(record)
        return dict(record.edits)


def save_classes(out: Path, classes: ClassMap) -> Path:
    """Write the class table into the saved run ``out`` (``classes.json``)."""
    with RunWriter(out, update=True) as writer:
        classes.save(writer.staging)
        writer.commit(writer.old)
    return Path(out) / CLASSES_FILE


