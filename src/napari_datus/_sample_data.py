"""npe2 sample data "suim": five SUIM test images (640x480) with their ground truth.

See ``sample_data/PROVENANCE.md`` and ``sample_data/LICENSE`` (MIT, Islam et al., IROS 2020).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_datus._reader import LayerData, read_suim_masks, suim_labels_kwargs
from napari_datus.io.images import read_image

SAMPLE_DIR = Path(__file__).parent / "sample_data"


def suim_sample() -> list[LayerData]:
    """The sample stack and its ground truth.

    Returns
    -------
    An Image layer ``(5, 480, 640, 3) uint8`` named "suim" (its metadata ``stems`` names
    the files) and a Labels layer ``(5, 480, 640) uint8`` of SUIM class codes.
    """
    images = sorted((SAMPLE_DIR / "images").glob("*.jpg"))
    stems = [p.stem for p in images]
    stack = np.stack([read_image(p) for p in images])
    masks = read_suim_masks([SAMPLE_DIR / "masks" / f"{stem}.png" for stem in stems])
    gt_kwargs = suim_labels_kwargs("suim ground truth")
    gt_kwargs.update(opacity=0.5, visible=False)
    gt_kwargs["metadata"]["stems"] = stems
    return [
        (stack, {"name": "suim", "rgb": True, "metadata": {"stems": stems}}, "image"),
        (masks, gt_kwargs, "labels"),
    ]
