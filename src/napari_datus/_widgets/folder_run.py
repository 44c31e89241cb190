"""A folder of images run as one dataset, shown one image at a time (no Qt here).

The images may differ in size and format; the run keeps only their patch-grid results, so
a thousand images cost kilobytes each, and the image on screen is read from its file when
the user steps to it. Each image is seen through a one-image :class:`WidgetRun` view, so
the result layers, metrics, segment QA and export work as for a layer run.

Edits (painted pixels, reassigned segments) are kept per image as the pixels where the
user's pseudo mask differs from the computed one, so they survive stepping away and back,
and are saved with the run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_datus._widgets.edits import Edit
from napari_datus._widgets.model import ImageStack, WidgetRun
from napari_datus.class_map import ClassMap
from napari_datus.io.images import read_image
from napari_datus.io.masks import to_file_labels, to_layer_labels
from napari_datus.pipeline import DatasetResult, pseudo_mask


@dataclass
class FolderRun:
    """The result of a folder of images, one :class:`WidgetRun` view per image.

    Attributes
    ----------
    folder : where the images are
    files : stem -> image file, for every processed image
    result : every image's stages and clusters (one k-means over all of them)
    patch_size, input_size : the backbone's
    weights : the backbone's provenance
    out : where the run was saved (None: not saved)
    edits : stem -> the user's edit of that image's pseudo mask
    class_map : the user's classes: the one map every image's view holds, changed in place
    index : the image on screen
    """

    folder: Path
    files: dict[str, Path]
    result: DatasetResult
    patch_size: int
    input_size: int
    weights: dict = field(default_factory=dict)
    out: Path | None = None
    edits: dict[str, Edit] = field(default_factory=dict)
    class_map: ClassMap | None = None
    index: int = 0

    def __post_init__(self) -> None:
        # Reassignments change result.clusters in place; edits are measured against these.
        self._computed = [clusters.copy() for clusters in self.result.clusters]
        if self.class_map is None:
            self.class_map = ClassMap.per_cluster(self.result.params.clusters)

    def __setattr__(self, name: str, value) -> None:
        # Every image's view holds this map: a new one here would leave them the old one.
        if name == "class_map" and getattr(self, "class_map", None) is not None:
            raise AttributeError("a folder run's class map is changed in place: use"
                                 " folder_run.class_map.set_to(other)")
        super().__setattr__(name, value)

    @property
    def grid(self) -> dict[str, int]:
        """The backbone's patch and input size, recorded in run.json for reopening."""
        return {"patch_size": self.patch_size, "input_size": self.input_size}

    def __len__(self) -> int:
        return len(self.result.results)

    def stem(self, index: int) -> str:
        return self.result.results[index].stem

    def view(self, index: int) -> WidgetRun:
        """Image ``index`` as a one-image run. Its clusters are the folder run's own arrays,
        so a reassignment made in the view is a reassignment in the folder run."""
        r = self.result.results[index]
        image = read_image(self.files[r.stem])
        one = DatasetResult([r], [self.result.clusters[index]], self.result.timings, [],
                            self.result.params)
        stack = ImageStack(images=image[None], stems=[r.stem], is_stack=False)
        return WidgetRun(r.stem, stack, one, self.patch_size, self.input_size,
                         weights=self.weights, class_map=self.class_map, out=self.out)

    def frozen(self) -> FolderRun:
        """A copy that later reassignments, edits and class changes leave alone, for saving
        on another thread (the image arrays of the edits are shared: edits are replaced,
        never changed in place)."""
        copy_ = FolderRun(self.folder, dict(self.files),
                          replace(self.result, clusters=[c.copy() for c in self.result.clusters]),
                          self.patch_size, self.input_size, dict(self.weights), self.out,
                          dict(self.edits), copy.deepcopy(self.class_map), self.index)
        copy_._computed = self.computed_clusters()
        return copy_

    def computed_clusters(self) -> list[np.ndarray]:
        """Per image, a copy of the clusters of its valid segments as k-means gave them."""
        return [clusters.copy() for clusters in self._computed]

    def computed_labels(self, index: int) -> np.ndarray:
        """(H, W) uint8 computed pseudo mask of image ``index``, in layer convention."""
        params = self.result.params
        # Edge refinement follows the image, so it needs the pixels.
        image = None if params.refine == "none" else read_image(self.files[self.stem(index)])
        return to_layer_labels(pseudo_mask(self.result.results[index], self._computed[index],
                                           params.fill_noise, params.refine, image))

    def record_edit(self, index: int, labels: np.ndarray) -> Edit | None:
        """Keep (or clear) the user's edit of image ``index``, given its layer's labels."""
        edit = Edit.between(self.computed_labels(index), labels)
        stem = self.stem(index)
        if edit is None:
            self.edits.pop(stem, None)
        else:
            self.edits[stem] = edit
        return edit

    def labels(self, index: int) -> np.ndarray:
        """Image ``index``'s pseudo mask as the user left it, in layer convention."""
        computed = self.computed_labels(index)
        edit = self.edits.get(self.stem(index))
        return computed if edit is None else edit.apply(computed)

    def edited_masks(self) -> dict[str, np.ndarray]:
        """stem -> (H, W) uint8 edited pseudo mask in file convention (255 unlabelled)."""
        out = {}
        for index in range(len(self)):
            if self.stem(index) in self.edits:
                out[self.stem(index)] = to_file_labels(self.labels(index))
        return out
