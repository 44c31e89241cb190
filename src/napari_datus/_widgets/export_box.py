"""The "Export" box of the "DatUS pipeline" dock: the run on screen in the ``datus run``
layout (a folder run: the whole folder, with every edit)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import napari
from napari.qt.threading import FunctionWorker, thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QPushButton,
    QVBoxLayout,
)

from napari_datus._widgets.export import export_job
from napari_datus._widgets.folder_controller import FolderController
from napari_datus._widgets.jobs import RunFailed
from napari_datus._widgets.model import WidgetRun
from napari_datus.core.errors import DatusError


class ExportBox(QGroupBox):
    """What to write (stage index masks, class annotations), and the Export button, which
    the dock places beside Run."""

    def __init__(self, viewer: napari.Viewer, current_run: Callable[[], WidgetRun | None],
                 folders: FolderController,
                 may_replace: Callable[[Path, WidgetRun], bool]) -> None:
        super().__init__("Export… writes (datus run layout)")
        self.viewer = viewer
        self.current_run = current_run
        self.folders = folders
        # False when the folder holds a saved run with edits the user keeps.
        self.may_replace = may_replace
        self.index = QCheckBox("stage masks")
        self.index.setChecked(True)
        self.index.setToolTip("partitions/, segments/, pseudo_masks/ (cluster ids, 255 ="
                              " unlabelled) and denoised/ index PNGs")
        self.classes = QCheckBox("class masks")
        self.classes.setObjectName("export_classes")
        self.classes.setChecked(True)
        self.classes.setToolTip("annotations through the class table: class_masks/ (class"
                                " ids, 255 = unlabelled or unassigned), class_masks_colour/"
                                " (class colours) and classes.json")
        self.button = button = QPushButton("Export…")
        button.setObjectName("export_button")
        button.setToolTip("write the masks as edited, run.json (with the edits) and the"
                          " metrics of the exported masks; `datus denoise` accepts the"
                          " folder")
        button.clicked.connect(self._choose_folder)
        layout = QVBoxLayout(self)
        layout.addWidget(self.index)
        layout.addWidget(self.classes)

    def export(self, folder: str | Path) -> list[Path]:
        """Write the chosen image's result layers (and metrics) to ``folder``, here and now.

        Returns the files written; problems are shown as notifications.
        """
        job = self._job(Path(folder))
        return [] if job is None else self._report(Path(folder), _written(job))

    def start_export(self, folder: str | Path) -> FunctionWorker | None:
        """:meth:`export` with the writing in a worker thread (the Export button's path), so
        napari stays usable while a large folder is written; None if nothing is exported."""
        folder = Path(folder)
        job = self._job(folder)
        if job is None:
            return None
        worker = thread_worker(_written, start_thread=False)(job)
        bar = progress(total=0, desc=f"DatUS export to {folder.name}")
        self.button.setEnabled(False)
        worker.returned.connect(partial(self._report, folder))
        worker.finished.connect(bar.close)
        worker.finished.connect(partial(self.button.setEnabled, True))
        worker.start()
        return worker

    def _job(self, folder: Path) -> Callable[[], list[Path]] | None:
        """What to write, read from the viewer now; None (after a notification) if nothing
        is to be written."""
        widget_run = self.current_run()
        if widget_run is None:
            show_error("nothing to export: run the pipeline on the chosen image first")
            return None
        if not self.may_replace(folder, widget_run):
            show_info(f"nothing exported: {folder} keeps its saved run and edits")
            return None
        try:
            if self.folders.shows(widget_run):
                save = self.folders.save_job(folder, self.classes.isChecked())
                return lambda: [save()]
            return export_job(self.viewer, widget_run.group or widget_run, folder,
                              index=self.index.isChecked(), classes=self.classes.isChecked())
        except DatusError as exc:
            show_error(str(exc))
            return None

    def _report(self, folder: Path, written: list[Path] | RunFailed) -> list[Path]:
        if isinstance(written, RunFailed):
            show_error(written.message)
            return []
        show_info(f"exported {len(written)} files to {folder}")
        return written

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export DatUS masks to")
        if folder:
            self.start_export(folder)


def _written(job: Callable[[], list[Path]]) -> list[Path] | RunFailed:
    """Run an export job; a DatusError becomes a RunFailed, shown without a traceback."""
    try:
        return job()
    except DatusError as exc:
        return RunFailed(str(exc))
