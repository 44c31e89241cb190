"""Pure DatUS pipeline stages: numpy, torch and scikit-learn only (no Qt, no napari)."""

from napari_datus.core.errors import DatusError

__all__ = ["DatusError"]
