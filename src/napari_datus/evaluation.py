"""Scoring masks against ground truth: the one path for ``datus run``, ``datus denoise``, the
napari widgets and the benchmarks.

Ground truth is decoded by format (DESIGN 6): ``suim6`` and ``suim8`` are SUIM colour masks;
``index`` holds class ids, read from 8- or 16-bit grayscale, equal-channel RGB or palette
("P" mode, VOC-style) files, a palette index being the class. Classes are ``0..C-1`` with C
the largest label + 1 over the dataset.

**Void rule** (index ground truth): the ``ignore`` value (default 255) and every value of
255 or more are void and left out of every figure. Index classes are thus 0..254; a 65535
"unlabelled" pixel in a 16-bit mask is void rather than class 65535, whose confusion matrix
would not fit in memory.

A :class:`Scorer` accumulates one :class:`~napari_datus.core.metrics.Confusion` over the
images it is given and returns :func:`~napari_datus.core.metrics.evaluate`'s block. An image
whose ground truth cannot be used (unreadable, another size) is not scored and the reason is
returned, for run.json ``skipped``; ground truth is never resized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_datus.core.boundary import BoundaryScore
from napari_datus.core.errors import DatusError
from napari_datus.core.metrics import Confusion, evaluate
from napari_datus.io.images import read_array
from napari_datus.io.masks import (
    GT_FORMATS,
    SUIM8_NAMES,
    SUIM8_TO_SUIM6,
    class_names,
    decode_index,
    decode_suim,
)

VOID = -1
# Index class ids run 0..254: a larger value is void (see the module docstring).
FIRST_VOID_INDEX = 255


@dataclass(frozen=True)
class GroundTruthFormat:
    """How ground truth is decoded.

    Attributes
    ----------
    format : ``index``, ``suim6`` or ``suim8``
    ignore : for ``index``, the void value besides those >= 255 (None: only those)
    """

    format: str = "index"
    ignore: int | None = 255

    def __post_init__(self) -> None:
        if self.format not in GT_FORMATS:
            raise DatusError(f"unknown ground-truth format {self.format!r}:"
                             f" choose one of {', '.join(GT_FORMATS)}")
        if self.ignore is not None and self.ignore < 0:
            raise DatusError(f"ground-truth ignore value must be >= 0, got {self.ignore}")
        if self.ignore is not None and self.ignore > np.iinfo(np.int64).max:
            raise DatusError(f"ground-truth ignore value {self.ignore} is too large (at most"
                             f" {np.iinfo(np.int64).max}; every value of 255 or more is void"
                             " anyway)")

    @property
    def fixed_classes(self) -> int | None:
        """C for SUIM formats; None for index ground truth, whose C comes from the data."""
        return None if self.format == "index" else len(class_names(self.format))

    def names(self, n_classes: int) -> list[str]:
        """Class names for ``n_classes`` classes (only index ground truth uses the count)."""
        return class_names(self.format, n_classes)

    def decode(self, array: np.ndarray, name: str = "ground truth") -> np.ndarray:
        """A decoded file's pixels as class ids.

        Parameters
        ----------
        array : (H, W) index mask or (H, W, 3|4) RGB(A), as read from the file

        Returns
        -------
        (H, W) int64 class ids, ``VOID`` (-1) where void
        """
        if self.format != "index":
            return decode_suim(array, self.format, name=name).astype(np.int64)
        return self._void(decode_index(array, name=name))

    def decode_codes(self, codes: np.ndarray, layer_format: str | None = None,
                     name: str = "labels") -> np.ndarray:
        """Integer labels (a napari Labels layer) as class ids.

        Parameters
        ----------
        codes : (..., H, W) int labels
        layer_format : ``"suim8"`` when the labels are SUIM colour codes 0..7 (the reader's
            and the sample's layers say so in their metadata)

        Returns
        -------
        int64 class ids of the same shape, ``VOID`` where void
        """
        codes = np.asarray(codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise DatusError(f"{name} holds {codes.dtype} values: labels must be integers")
        if codes.min(initial=0) < 0:
            raise DatusError(f"{name} holds negative labels")
        if self.format == "index":
            return self._void(codes)
        top = int(codes.max(initial=0))
        if top >= len(SUIM8_NAMES):
            raise DatusError(f"{name} holds label {top}: SUIM class codes are 0..7;"
                             " choose the index format")
        if layer_format not in (None, "suim8"):
            raise DatusError(f"{name} holds {layer_format} labels, not SUIM class codes")
        codes = codes.astype(np.int64)
        return codes if self.format == "suim8" else SUIM8_TO_SUIM6[codes].astype(np.int64)

    def read(self, path: str | Path) -> np.ndarray:
        """Read one ground-truth file; (H, W) int64 class ids, ``VOID`` where void."""
        # An index mask's palette index is its class; a SUIM mask's palette, its colours.
        return self.decode(read_array(path, keep_palette=self.format == "index"),
                           name=str(path))

    def _void(self, labels: np.ndarray) -> np.ndarray:
        labels = labels.astype(np.int64)
        void = labels >= FIRST_VOID_INDEX
        if self.ignore is not None:
            void |= labels == self.ignore
        return np.where(void, VOID, labels)


@dataclass
class Scorer:
    """One confusion matrix over a dataset's masks and their ground truth.

    Attributes
    ----------
    clusters : K, the masks' cluster ids being 0..K-1 (255 = unlabelled)
    gt : the ground truth's format
    classes : class names when they are known up front (a decoded ground-truth layer);
        None: the format's, with C learnt from the data for index ground truth
    images : stems scored so far, in order
    boundaries : also score boundary F1 (:mod:`napari_datus.core.boundary`; a distance
        transform per image, so off where metrics follow every edit)
    """

    clusters: int
    gt: GroundTruthFormat = field(default_factory=GroundTruthFormat)
    classes: list[str] | None = None
    images: list[str] = field(default_factory=list)
    boundaries: bool = False

    def __post_init__(self) -> None:
        c = len(self.classes) if self.classes is not None else self.gt.fixed_classes
        self.confusion = Confusion(self.clusters, c or 0)
        self.boundary = BoundaryScore()

    def add(self, stem: str, mask: np.ndarray, truth: np.ndarray,
            name: str | None = None) -> str | None:
        """Score one image.

        Parameters
        ----------
        mask : (H, W) uint8 cluster ids, 255 = unlabelled
        truth : (H, W) int64 class ids from :class:`GroundTruthFormat`, -1 = void
        name : the ground truth's name for the reason (default ``stem``)

        Returns
        -------
        None when scored, else why the image was left out of the metrics.
        """
        if truth.shape != mask.shape:
            return (f"ground truth {name or stem} is {truth.shape[1]}x{truth.shape[0]} but its"
                    f" image is {mask.shape[1]}x{mask.shape[0]}: left out of the metrics")
        self.confusion.grow(int(truth.max(initial=VOID)) + 1)
        self.confusion.add(mask, truth, ignore=VOID)
        if self.boundaries:
            self.boundary.add(mask, truth)
        self.images.append(stem)
        return None

    def add_file(self, stem: str, mask: np.ndarray, path: str | Path) -> str | None:
        """Read ``path`` and score one image; returns the reason when it is left out."""
        try:
            truth = self.gt.read(path)
        except DatusError as exc:
            return f"left out of the metrics: {exc}"
        return self.add(stem, mask, truth, Path(path).name)

    @property
    def names(self) -> list[str]:
        if self.classes is not None:
            return list(self.classes)
        return self.gt.names(self.confusion.c)

    def result(self) -> dict | None:
        """:func:`~napari_datus.core.metrics.evaluate`'s block, or None if nothing was scored;
        with ``boundaries``, plus ``"boundary"`` (:meth:`BoundaryScore.result`)."""
        if not self.images:
            return None
        block = evaluate(self.confusion, self.names)
        if self.boundaries:
            block["boundary"] = self.boundary.result()
        return block
