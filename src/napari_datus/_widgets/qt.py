"""Small Qt pieces shared by the widgets: a layer chooser, the confusion heatmap, an image,
and a clean exit."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from functools import cache, partial

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from napari.layers import Layer
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFrame,
    QLabel,
    QLayout,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

# Height a scrolled dock body asks for: with its dock's fixed top, two docks fit the
# 700-odd pixels napari leaves them in a 1366x768 window.
SCROLL_HINT_HEIGHT = 220


class LayerCombo(QComboBox):
    """The viewer's layers that pass ``accept``, kept current as layers come and go.

    When nothing is chosen yet, the first layer that passes ``prefer`` is chosen (with
    ``fallback``, else the first listed; without, none); a newly inserted layer that passes
    both is selected, so a fresh result or a just-opened image is the default choice.
    """

    def __init__(self, viewer: napari.Viewer, accept: Callable[[Layer], bool],
                 prefer: Callable[[Layer], bool] = lambda _layer: True,
                 fallback: bool = True) -> None:
        super().__init__()
        # Long layer names must not widen the dock past the screen: names elide instead.
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self._viewer = viewer
        self._accept = accept
        self._prefer = prefer
        self._fallback = fallback
        events = viewer.layers.events
        for emitter, callback in ((events.inserted, self._on_inserted),
                                  (events.removed, self.refresh),
                                  (events.renamed, self.refresh)):
            emitter.connect(callback)
            on_destroyed(self, partial(emitter.disconnect, callback))
        self.refresh()

    def layer(self) -> Layer | None:
        """The chosen layer, or None when no layer fits."""
        name = self.currentText()
        return self._viewer.layers[name] if name in self._viewer.layers else None

    def refresh(self, *_args, select: str | None = None) -> None:
        """Re-list the layers, keeping the current choice unless ``select`` names another."""
        layers = [layer for layer in self._viewer.layers if self._accept(layer)]
        names = [layer.name for layer in layers]
        preferred = [layer.name for layer in layers if self._prefer(layer)]
        before = self.currentText()
        keep = select or before
        if keep not in names:
            keep = (preferred or (names if self._fallback else []) or [""])[0]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        self.setCurrentIndex(names.index(keep) if keep in names else -1)
        self.blockSignals(False)
        # A replaced layer keeps its name but is removed first, so this still fires for it.
        if self.currentText() != before:
            self.currentTextChanged.emit(self.currentText())

    def _on_inserted(self, event) -> None:
        layer = event.value
        chosen = self._accept(layer) and self._prefer(layer)
        self.refresh(select=layer.name if chosen else None)


def on_destroyed(widget: QWidget, disconnect: Callable[[], None]) -> None:
    """Call ``disconnect`` when ``widget`` is deleted (a closed dock widget is): the viewer
    must stop calling into it."""
    widget.destroyed.connect(lambda _widget=None: disconnect())


@cache
def exit_cleanly() -> None:
    """Close the viewers still open at interpreter exit before PyQt's own clean-up does
    (registered once per process; the docks call this when they open).

    At exit PyQt walks its table of wrapped objects and deletes each window left open. The
    Python code that deleting a napari window runs (napari makes each window an
    application-wide Python event filter; napari's and our ``destroyed`` handlers) wraps new
    objects into the table being walked, and whether that ends in ``Segmentation fault``
    depends on how many objects are wrapped: two viewers and our dock crashed, and so did
    two viewers and a dock of 25 plain QLabels (``tests/widgets/two_viewers.py``). Closed
    and deleted here, by napari's own ``close``, the windows leave PyQt nothing to tear
    down. ``atexit`` runs the last registered first, so this runs before PyQt's walk.
    """
    atexit.register(_close_viewers)


def _close_viewers() -> None:
    app = QApplication.instance()
    if app is not None:
        napari.Viewer.close_all()
        # A closed window is deleted later, by an event loop that no longer runs: now.
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete)


class ConfusionCanvas(FigureCanvasQTAgg):
    """The K x C confusion matrix as a heatmap, each row normalised, matches outlined."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4.2, 3.2), tight_layout=True)
        super().__init__(self.figure)
        self.setMinimumHeight(260)

    def show_confusion(self, matrix: np.ndarray, mapping: dict[str, int | None],
                       class_names: list[str]) -> None:
        """Draw ``matrix`` (K, C) counts; the Hungarian ``mapping`` cells get a box."""
        self.figure.clear()
        ax = self.figure.add_subplot()
        counts = np.asarray(matrix, dtype=float)
        rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(counts.shape[0]), [str(k) for k in range(counts.shape[0])],
                      fontsize=8)
        ax.set_xlabel("ground-truth class", fontsize=8)
        ax.set_ylabel("cluster", fontsize=8)
        for cluster, cls in mapping.items():
            if cls is not None:
                ax.add_patch(Rectangle((cls - 0.5, int(cluster) - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
        self.figure.colorbar(image, ax=ax, label="share of cluster's pixels")
        self.draw_idle()

    def clear(self) -> None:
        self.figure.clear()
        self.draw_idle()


def set_image(label: QLabel, rgb: np.ndarray, side: int = 160) -> None:
    """Show an ``(H, W, 3) uint8`` image in a QLabel, scaled to ``side`` pixels."""
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format_RGB888).copy()
    label.setPixmap(QPixmap.fromImage(image).scaled(side, side))


class _VerticalScroll(QScrollArea):
    """A scroll area as wide as its contents plus a vertical scroll bar, so that scrolling
    down never needs a horizontal bar (napari sizes a dock from this hint), and asking for
    at most ``SCROLL_HINT_HEIGHT``: two docks share a laptop's height instead of the first
    taking it all."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(max(hint.width(), self._width()), hint.height())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(max(hint.width(), self._width()), min(hint.height(), SCROLL_HINT_HEIGHT))

    def _width(self) -> int:
        content = self.widget()
        if content is None:
            return 0
        return (content.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                + 2 * self.frameWidth())


def scrolled(content: QWidget) -> QScrollArea:
    """``content`` in a frameless vertical scroll area, as wide as it needs.

    A dock's minimum height is its contents' unless they scroll, so two docks of tall
    contents forced a window taller than a laptop screen (1224 px for both docks).
    """
    scroll = _VerticalScroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(content)
    return scroll


def fixed_top(dock: QWidget, body: QWidget) -> QVBoxLayout:
    """Lay ``dock`` out as a fixed top above ``body``; returns the top's layout.

    The top holds the dock's actions (Run, Export…, Compute metrics), which stay on screen
    however small the dock gets; ``body`` takes the rest of the height and scrolls (it is
    :func:`scrolled`, or tabs of scrolled pages).
    """
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.setSpacing(2)
    top = QVBoxLayout()
    top.setContentsMargins(9, 6, 9, 0)
    outer.addLayout(top)
    outer.addWidget(body, stretch=1)
    _ShareHeight(dock)
    return top


class _ShareHeight(QObject):
    """Once its dock is docked and shown, share the height of the dock's column among the
    docks in it, in proportion to what each asks for.

    Qt keeps the height a dock had before another was docked below it, so the second of
    our two docks got two rows.
    """

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        QTimer.singleShot(0, self._docked)  # napari docks the widget after making it

    def _docked(self) -> None:
        dock = self.parent().parentWidget()
        if isinstance(dock, QDockWidget):
            dock.visibilityChanged.connect(self._shown)

    def _shown(self, visible: bool) -> None:
        if visible:
            self.parent().parentWidget().visibilityChanged.disconnect(self._shown)
            QTimer.singleShot(0, self._share)  # once the dock has its place

    def _share(self) -> None:
        dock = self.parent().parentWidget()
        window = dock.window()
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        column = [other for other in window.findChildren(QDockWidget)
                  if other.isVisible() and not other.isFloating()
                  and window.dockWidgetArea(other) == window.dockWidgetArea(dock)
                  and other.x() == dock.x()]
        if len(column) > 1:
            window.resizeDocks(column, [d.sizeHint().height() for d in column],
                               Qt.Orientation.Vertical)


def tab_page(*parts: QWidget | QLayout) -> QWidget:
    """A tab page: ``parts`` from the top, the space left below them."""
    page = QWidget()
    layout = QVBoxLayout(page)
    for part in parts:
        if isinstance(part, QLayout):
            layout.addLayout(part)
        else:
            layout.addWidget(part)
    layout.addStretch()
    return page
