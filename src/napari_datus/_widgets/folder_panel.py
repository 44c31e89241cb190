"""The folder part of the "DatUS pipeline" dock: a folder of images as the dataset, where to
save the run, and previous/next through a folder run's images."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)


class FolderPanel(QWidget):
    """``folder`` and ``out`` fields (objectNames as named), and the image navigator, which the
    dock places under Run (it shows only while a folder run is on screen).

    Signals
    -------
    step(int) : the user asked for the previous (-1) or next (+1) image
    """

    step = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.folder = _path_field("folder", "a folder of images: one dataset (else the"
                                  " image layer)", "Every image in this folder, of any size or"
                                  " format datus reads, is one dataset: one k-means over all"
                                  " their segments. Results show one image at a time.")
        self.out = _path_field("out", "save the run here (optional)",
                               "Run writes the datus run layout here: masks, run.json and,"
                               " with ground truth, metrics.json; File > Open reopens it."
                               " Edits are saved here as you step through the images.")
        self.previous = QPushButton("◀")
        self.next = QPushButton("▶")
        self.previous.setToolTip("previous image of the folder run")
        self.next.setToolTip("next image of the folder run")
        self.position = QLabel("")
        self.previous.clicked.connect(lambda: self.step.emit(-1))
        self.next.clicked.connect(lambda: self.step.emit(1))
        navigator = QHBoxLayout()
        navigator.addWidget(self.previous)
        navigator.addWidget(self.position, stretch=1)
        navigator.addWidget(self.next)
        self.navigator = QWidget()
        self.navigator.setLayout(navigator)
        self.navigator.setVisible(False)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("folder", _with_browse(self.folder, self._browse_folder))
        form.addRow("out", _with_browse(self.out, self._browse_out))

    def folder_path(self) -> Path | None:
        text = self.folder.text().strip()
        return Path(text).expanduser() if text else None

    def out_path(self) -> Path | None:
        text = self.out.text().strip()
        return Path(text).expanduser() if text else None

    def show_position(self, index: int, total: int, text: str) -> None:
        """Show the navigator at image ``index`` of ``total`` with a description."""
        self.navigator.setVisible(True)
        self.position.setText(f"{index + 1}/{total}  {text}")
        self.previous.setEnabled(index > 0)
        self.next.setEnabled(index < total - 1)

    def hide_navigator(self) -> None:
        self.navigator.setVisible(False)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images")
        if folder:
            self.folder.setText(folder)

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the DatUS run in")
        if folder:
            self.out.setText(folder)


def _path_field(name: str, placeholder: str, tip: str) -> QLineEdit:
    field = QLineEdit()
    field.setObjectName(name)
    field.setPlaceholderText(placeholder)
    field.setToolTip(tip)
    return field


def _with_browse(field: QLineEdit, browse) -> QHBoxLayout:
    button = QPushButton("…")
    button.setToolTip("browse")
    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(field)
    row.addWidget(button)
    return row
