"""The "Classes" box: the user names clusters as classes (name, colour, clusters)."""

from __future__ import annotations

from collections.abc import Callable

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_datus._widgets.class_view import matching_classes
from napari_datus._widgets.model import WidgetRun
from napari_datus.core.errors import DatusError

COLUMNS = ("class", "colour", "clusters")
TIP = ("Each cluster belongs to one class or none (unassigned, grey). Edit a name, click a"
       " colour, or type the clusters of a class (e.g. 1, 4); several clusters may share a"
       " class. Exports write class ids and these colours.")


class ClassTable(QGroupBox):
    """Edits the class map of the run ``current_run()`` returns.

    Parameters
    ----------
    current_run : the run the table shows (None: empty table)
    changed : called with the run after every edit (repaint layers, save the map)
    """

    def __init__(self, current_run: Callable[[], WidgetRun | None],
                 changed: Callable[[WidgetRun], None]) -> None:
        super().__init__("Classes")
        self._current_run = current_run
        self._changed = changed
        self._filling = False
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("classes")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setToolTip(TIP)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.cellClicked.connect(self._on_cell_clicked)
        add, remove = QPushButton("Add class"), QPushButton("Remove class")
        add.clicked.connect(self.add_class)
        remove.clicked.connect(self.remove_selected)
        self.prefill = QPushButton("Fill from ground truth")
        self.prefill.setToolTip("Name each cluster after the class the Hungarian matching gives"
                                " it (needs metrics against ground truth)")
        self.prefill.clicked.connect(self.fill_from_matching)
        self.unlabelled = QCheckBox("colour unlabelled pixels in exports")
        self.unlabelled.setToolTip("Off: unlabelled pixels are transparent in colour PNGs."
                                   " On: they take the colour you pick.")
        self.unlabelled.clicked.connect(self._on_unlabelled)
        buttons = QHBoxLayout()
        for button in (add, remove):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.prefill)
        layout.addWidget(self.unlabelled)
        self.refresh()

    def refresh(self) -> None:
        """Show the current run's class map."""
        run = self._current_run()
        self._filling = True
        classes = run.class_map.classes if run is not None else []
        self.table.setRowCount(len(classes))
        for row, label in enumerate(classes):
            name = QTableWidgetItem(label.name)
            colour = QTableWidgetItem("")
            colour.setFlags(colour.flags() & ~Qt.ItemFlag.ItemIsEditable)
            colour.setBackground(QColor(*label.colour))
            colour.setToolTip("click to choose the colour")
            clusters = QTableWidgetItem(", ".join(map(str, run.class_map.clusters_of(row))))
            for column, item in enumerate((name, colour, clusters)):
                self.table.setItem(row, column, item)
        rows = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(self.table.horizontalHeader().height() + rows + 4)
        self.prefill.setEnabled(run is not None and "initial" in run.metrics)
        self.unlabelled.setChecked(run is not None
                                   and run.class_map.unlabelled_colour is not None)
        self._filling = False

    # ---- edits --------------------------------------------------------------------------

    def add_class(self, name: str | None = None) -> int | None:
        """Append a class (named ``class N`` unless given); returns its id."""
        run = self._current_run()
        if run is None:
            return None
        class_id = run.class_map.add_class(name or f"class {len(run.class_map.classes)}")
        self._done(run)
        return class_id

    def remove_selected(self) -> None:
        run = self._current_run()
        row = self.table.currentRow()
        if run is None or row < 0:
            return
        run.class_map.remove_class(row)
        self._done(run)

    def fill_from_matching(self) -> None:
        """Replace the table by the Hungarian matching's classes (SUIM colours for SUIM)."""
        run = self._current_run()
        if run is None or "initial" not in run.metrics:
            return
        run.class_map.set_to(matching_classes(run))  # the one map the run's views hold
        self._done(run)

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        run = self._current_run()
        if self._filling or run is None:
            return
        try:
            if item.column() == 0:
                run.class_map.rename(item.row(), item.text())
            elif item.column() == 2:
                self._set_clusters(run, item.row(), item.text())
        except DatusError as exc:
            show_error(str(exc))
        self._done(run)

    @staticmethod
    def _set_clusters(run: WidgetRun, class_id: int, text: str) -> None:
        """Make ``text`` (cluster ids separated by commas) the clusters of ``class_id``."""
        try:
            wanted = {int(part) for part in text.replace(";", ",").split(",") if part.strip()}
        except ValueError:
            raise DatusError(f"clusters {text!r}: type cluster numbers separated by commas,"
                             " e.g. 1, 4") from None
        classes = run.class_map
        for cluster in wanted:
            if not 0 <= cluster < classes.n_clusters:
                raise DatusError(f"cluster {cluster} does not exist: clusters are 0.."
                                 f"{classes.n_clusters - 1}")
        for cluster in classes.clusters_of(class_id):
            if cluster not in wanted:
                classes.assign(cluster, None)
        for cluster in wanted:
            classes.assign(cluster, class_id)

    def _on_cell_clicked(self, row: int, column: int) -> None:
        run = self._current_run()
        if column != 1 or run is None:
            return
        current = QColor(*run.class_map.classes[row].colour)
        colour = QColorDialog.getColor(current, self, "Class colour")
        if colour.isValid():
            run.class_map.recolour(row, (colour.red(), colour.green(), colour.blue()))
            self._done(run)

    def _on_unlabelled(self, checked: bool) -> None:
        run = self._current_run()
        if run is None:
            return
        if checked:
            colour = QColorDialog.getColor(QColor(0, 0, 0), self, "Unlabelled colour")
            if not colour.isValid():
                self.unlabelled.setChecked(False)
                return
            run.class_map.unlabelled_colour = (colour.red(), colour.green(), colour.blue())
        else:
            run.class_map.unlabelled_colour = None
        self._done(run)

    def _done(self, run: WidgetRun) -> None:
        self._changed(run)
        self.refresh()
