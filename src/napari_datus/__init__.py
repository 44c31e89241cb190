"""napari-datus: DatUS unsupervised semantic segmentation for napari, as a library and command."""

__version__ = "0.1.0"
