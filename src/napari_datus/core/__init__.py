"""Pure DatUS pipeline stages: numpy, scipy, torch, timm and igraph only (no Qt, no napari)."""

from napari_datus.core.errors import DatusError

__all__ = ["DatusError"]
