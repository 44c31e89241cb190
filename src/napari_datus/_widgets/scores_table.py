"""The per-class scores table of the "DatUS metrics" dock: readable numbers, named classes."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from napari_datus._widgets.suim_names import full_name

COLUMNS = ("class", "IoU", "F1", "strict", "clusters")
COLUMN_TIPS = ("ground-truth class (hover a SUIM code for its name)",
               "intersection over union of the class and its matched clusters",
               "F1 (Dice) of the class and its matched clusters",
               "IoU with unlabelled pixels counted as wrong",
               "the clusters the Hungarian matching gives this class")


class ScoresTable(QTableWidget):
    """One row per ground-truth class: IoU, F1, strict IoU and its matched clusters.

    Every column is as wide as its widest cell and the table asks for that width, so the
    dock grows to show whole numbers ("20.8%", not "20....") instead of eliding them.
    """

    def __init__(self, tip: str) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(COLUMNS)
        for column, text in enumerate(COLUMN_TIPS):
            self.horizontalHeaderItem(column).setToolTip(text)
        self.setToolTip(tip)
        self.verticalHeader().setVisible(False)
        # Rows of text height: six classes take less of a laptop's height.
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)

    def show_rows(self, rows: list[tuple[str, ...]]) -> None:
        """Fill the table with ``rows`` of cell texts (the class name first)."""
        self.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                if column == 0 and full_name(text):
                    item.setToolTip(f"{text}: {full_name(text)}")
                self.setItem(row, column, item)
        header = self.horizontalHeader()
        width = sum(max(self.sizeHintForColumn(c), header.sectionSizeHint(c))
                    for c in range(self.columnCount()))
        self.setMinimumWidth(width + 2 * self.frameWidth())
        # Every class at once, without an inner scroll bar.
        height = sum(self.rowHeight(r) for r in range(self.rowCount()))
        self.setFixedHeight(header.height() + height + 2 * self.frameWidth())
