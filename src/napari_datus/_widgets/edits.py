"""The user's edits of a pseudo mask (painting, reassigned segments): found, kept across
re-runs in their classes, and never dropped without asking."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QMessageBox, QWidget

from napari_datus._widgets.model import WidgetRun


@dataclass
class Edit:
    """The pixels of one image's pseudo mask the user changed, in layer convention.

    Attributes
    ----------
    where : (H, W) bool
    values : (n,) uint8 labels at those pixels (cluster ``c`` as ``c + 1``, 0 unlabelled)
    """

    where: np.ndarray
    values: np.ndarray

    @classmethod
    def between(cls, computed: np.ndarray, edited: np.ndarray) -> Edit | None:
        """The edit that turns ``computed`` into ``edited`` ((H, W) labels), or None."""
        where = np.asarray(edited) != computed
        if not where.any():
            return None
        return cls(where, np.asarray(edited)[where].astype(np.uint8))

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with the edit painted over (a copy)."""
        out = labels.copy()
        out[self.where] = self.values
        return out

    @property
    def pixels(self) -> int:
        return int(self.where.sum())


def layer_edits(viewer: napari.Viewer, run: WidgetRun | None) -> dict[int, Edit]:
    """Stack index -> the user's edit of the run's pseudo-mask layer (painting, reassigned
    segments), against the labels the run computed."""
    if run is None or run.pristine is None:
        return {}
    name = run.layer_name("pseudo mask")
    if name not in viewer.layers:
        return {}
    data = np.asarray(viewer.layers[name].data)
    data, pristine = (data, run.pristine) if run.stack.is_stack else (data[None],
                                                                      run.pristine[None])
    edits = {i: Edit.between(pristine[i], data[i]) for i in range(len(data))}
    return {i: edit for i, edit in edits.items() if edit is not None}


def with_edits(labels: np.ndarray, edits: dict[int, Edit], run: WidgetRun) -> np.ndarray:
    """Kept edits of the run ``run`` replaces painted over its new labels ((N, H, W) or
    (H, W)), each pixel in its class (:meth:`~napari_datus.class_carry.Carry.translate`:
    a pixel painted "fish" is "fish" in the new run too). Edits of another image size, or
    naming a cluster with no pixels to follow, are left out with a notification."""
    if not edits:
        return labels
    stack = labels if labels.ndim == 3 else labels[None]
    kept = 0
    for index, edit in edits.items():
        if index >= len(stack) or edit.where.shape != stack[index].shape:
            show_info(f"the edits of image {index} were not kept: its size changed")
            continue
        values = (edit.values.astype(np.int64) if run.carry is None
                  else run.carry.translate(edit.values, run.class_map))
        valid = (values >= 0) & (values <= run.n_clusters)
        where = edit.where.copy()
        where[where] = valid
        stack[index][where] = values[valid]
        kept += int(valid.sum())
        if not valid.all():
            show_info(f"{int((~valid).sum())} edited pixels of image {index} named a cluster"
                      " with no pixels in the earlier run and were not kept")
    show_info(f"kept {kept} edited pixels from the earlier run, each in its class")
    return labels


def ask_overwrite_edits(parent: QWidget, out: Path, pixels: int) -> bool:
    """Ask before a run or an export replaces a saved run whose masks hold ``pixels``
    edited pixels: True overwrite, False leave it (the default)."""
    box = QMessageBox(QMessageBox.Icon.Warning, "DatUS: saved edits",
                      f"{out} holds a saved run with {pixels} edited pixels (painting or"
                      " reassigned segments). Writing there replaces it and its edits."
                      " Choose another output folder to keep them.", parent=parent)
    overwrite = box.addButton("Overwrite", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is overwrite


def ask_keep_edits(parent: QWidget, pixels: int) -> bool | None:
    """Ask whether a new run keeps ``pixels`` edited pixels: True keep, False discard, None
    cancel the run."""
    box = QMessageBox(QMessageBox.Icon.Question, "DatUS: edited pseudo mask",
                      f"The pseudo mask has {pixels} edited pixels (painting or reassigned"
                      " segments). Keep them in the new run?", parent=parent)
    keep = box.addButton("Keep edits", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Discard edits", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return {keep: True, discard: False}.get(box.clickedButton())
