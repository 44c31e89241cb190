"""napari dock widgets: "DatUS pipeline" (run, export) and "DatUS metrics" (scores, QA)."""

from napari_datus._widgets.metrics_widget import MetricsWidget
from napari_datus._widgets.pipeline_widget import PipelineWidget

__all__ = ["MetricsWidget", "PipelineWidget"]
