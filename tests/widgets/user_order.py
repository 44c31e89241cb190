"""A user's session in a fresh process: napari's canvas first, then the DatUS dock, then Run.

Run by ``test_user_order.py`` as a script (``python user_order.py IMAGE``). Prints the
result layers, whether an LLVM-carrying GL driver was loaded before the torch stack and
whether opening the dock imported torch;
exits 0 when the run added its layers, 1 when it failed, and dies with SIGSEGV if the
torch stack crashes against the GL driver.
"""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_datus.core.triton_guard import llvm_loaded
from napari_datus.io.images import read_image

TIMEOUT_S = 300


def main(image_path: str) -> int:
    viewer = napari.Viewer()  # shows the window: the GL canvas exists from here on
    QApplication.processEvents()
    print(f"gl llvm loaded: {llvm_loaded()}", flush=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
    # Opening the dock should not cost torch's import (seconds); the first Run pays it.
    print(f"torch after dock: {'torch' in sys.modules}", flush=True)
    viewer.add_image(read_image(image_path), name="sample", rgb=True)
    widget.clusters.setValue(3)
    widget.run()
    deadline = time.monotonic() + TIMEOUT_S
    while widget._worker is not None and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    print(f"status: {widget.status.text()}", flush=True)
    print("layers: " + ", ".join(layer.name for layer in viewer.layers), flush=True)
    ok = "sample pseudo mask" in viewer.layers
    viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
