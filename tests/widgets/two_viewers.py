"""Two napari viewers, DatUS docks in the first, then the interpreter exits with both open.

Run by ``test_exit.py`` as a script::

    python two_viewers.py "DatUS pipeline,DatUS metrics" LABELS

opens the named docks in the first viewer and ``LABELS`` plain QLabel docks in the second
(they change how many Qt objects are wrapped, which decides whether PyQt's exit-time
clean-up crashes; see :func:`napari_datus._widgets.qt.exit_cleanly`). Prints ``exiting``
and returns without closing anything, as a script that ends does; the exit status is 0 on
a clean exit and -11 (SIGSEGV) on the crash.
"""

import sys

import napari
from qtpy.QtWidgets import QApplication, QLabel


def main(docks: str, labels: int) -> int:
    first, second = napari.Viewer(), napari.Viewer()
    for name in docks.split(","):
        first.window.add_plugin_dock_widget("napari-datus", name)
    for index in range(labels):
        second.window.add_dock_widget(QLabel(str(index)), name=f"label {index}")
    for _ in range(20):
        QApplication.processEvents()
    print("exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
