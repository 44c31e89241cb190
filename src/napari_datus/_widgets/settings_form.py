"""The settings fields of the "DatUS pipeline" dock, and the Params they make."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_datus.core.choices import DEVICES, REFINEMENTS, default_model, default_weights
from napari_datus.core.denoise_config import DenoiseConfig
from napari_datus.params import Params


class SettingsForm(QFormLayout):
    """Model, weights, device, resolution, K, tau, seed, edges, live re-runs, de-noising.

    Parameters
    ----------
    parent : the dock (for the file dialog)
    live_change : called when a setting a live re-run may change is edited
    """

    def __init__(self, parent: QWidget, live_change: Callable[[], None]) -> None:
        super().__init__()
        self._parent = parent
        defaults = Params()
        self.model = QLineEdit(default_model())
        self.model.setToolTip("timm model name; the default DINOv2 ViT-S/14 works offline,"
                              " other models need their hub weights or a weights file")
        self.weights = QLineEdit(default_weights() or "")
        self.weights.setPlaceholderText("default (offline DINOv2 for the default model)")
        self.weights.setToolTip("a local .pth/.pt/.safetensors state dict for the model's"
                                " architecture, or 'hub' for timm's pretrained weights;"
                                " empty: the embedded DINOv2 ViT-S/14 (default model) or"
                                " the hub (other models)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_weights)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights)
        weights_row.addWidget(browse)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.resolution = _spin(8, 4096, defaults.resolution,
                                "side the image is resized to; a multiple of the patch size")
        self.clusters = _spin(1, 254, defaults.clusters, "K, number of k-means clusters")
        self.tau = _spin(0, 100_000, defaults.tau, "segments of <= tau patches are noise")
        self.seed = _spin(0, 2**31 - 1, defaults.seed, "seed of Louvain and k-means")
        self.refine = QComboBox()
        self.refine.setObjectName("refine")
        self.refine.addItems(REFINEMENTS)
        self.refine.setCurrentText(defaults.refine)
        self.refine.setToolTip("how the patch-grid masks reach image size: none = blocks of"
                               " one patch (the paper's); guided = edges that follow the"
                               " image (a guided filter of the cluster scores)")
        self.denoise = QCheckBox("de-noise with DeepLabV3")
        self.epochs = _spin(1, 1000, DenoiseConfig().epochs, "de-noising training epochs")
        self.live = QCheckBox("re-run when K or tau changes")
        self.live.setChecked(True)
        self.live.setToolTip("after a run, a new K or tau re-runs at once from the feature"
                             " cache (k-means only, no ViT); off while de-noising is on")
        for box in (self.clusters, self.tau):
            box.valueChanged.connect(live_change)
        self.refine.currentTextChanged.connect(live_change)
        for label, field in (("model", self.model), ("weights", weights_row),
                             ("device", self.device), ("resolution", self.resolution),
                             ("K", self.clusters), ("tau", self.tau), ("seed", self.seed),
                             ("edges", self.refine)):
            self.addRow(label, field)
        self.addRow(self.live)
        self.addRow(self.denoise)
        self.addRow("epochs", self.epochs)

    def params(self) -> Params:
        """The pipeline settings shown (the rest keep Params' defaults)."""
        return Params(
            model=self.model.text().strip() or default_model(),
            weights=self.weights.text().strip() or None,
            resolution=self.resolution.value(),
            clusters=self.clusters.value(),
            tau=self.tau.value(),
            seed=self.seed.value(),
            device=self.device.currentText(),
            refine=self.refine.currentText(),
        )

    def denoise_config(self) -> DenoiseConfig | None:
        """De-noising settings, or None when it is off."""
        if not self.denoise.isChecked():
            return None
        return DenoiseConfig(epochs=self.epochs.value(), seed=self.seed.value(),
                             device=self.device.currentText())

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self._parent, "Backbone weights", "",
                                              "State dicts (*.pth *.pt *.safetensors)")
        if path:
            self.weights.setText(path)


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tip)
    return box
