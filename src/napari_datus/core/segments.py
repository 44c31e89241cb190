"""Stage 4: split communities into 8-connected segments; small ones are noise.

The connected components do not depend on tau; the feature cache stores them with the
partition, so a re-run with another K or tau splits them with numpy alone (scikit-image is
imported only to find components).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Segments:
    """Segments of one image on its patch grid.

    Attributes
    ----------
    components : (g, g) int32
        Every 8-connected component of every community, numbered 1..m.
    valid : (g, g) int32
        0 = noise, 1..n = valid segments (components with more than ``tau`` patches),
        numbered in order of first appearance in raster order.
    sizes : (n,) int64
        Patches in each valid segment (``sizes[i]`` for segment ``i + 1``).
    n_noise : int
        Number of noise components.
    """

    components: np.ndarray
    valid: np.ndarray
    sizes: np.ndarray
    n_noise: int

    @property
    def n_valid(self) -> int:
        return int(self.sizes.size)


def connected_components(partition: np.ndarray) -> np.ndarray:
    """Label the 8-connected components of every community.

    Parameters
    ----------
    partition : (g, g) int
        Community id per patch.

    Returns
    -------
    (g, g) int32, components numbered 1..m in raster order of first appearance.
    """
    # scikit-image's labelling gives this numbering directly (checked on 300 random grids):
    # 10 us on a 16x16 grid against 600 us for a scipy.ndimage.label per community.
    from skimage.measure import label

    return label(np.asarray(partition) + 1, connectivity=2).astype(np.int32)


def split_segments(partition: np.ndarray, tau: int = 5) -> Segments:
    """Components with ``<= tau`` patches are noise; the rest are valid segments.

    Parameters
    ----------
    partition : (g, g) int
        Community id per patch.
    tau : int
        Noise threshold in patches (paper: 5).
    """
    return split_components(connected_components(partition), tau)


def split_components(components: np.ndarray, tau: int = 5) -> Segments:
    """:func:`split_segments` from the components of a partition
    (:func:`connected_components`, ``(g, g) int32`` numbered 1..m)."""
    sizes = np.bincount(components.ravel())[1:]
    keep = sizes > tau
    new_ids = np.zeros(sizes.size + 1, dtype=np.int32)
    new_ids[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return Segments(
        components=components,
        valid=new_ids[components],
        sizes=sizes[keep].astype(np.int64),
        n_noise=int((~keep).sum()),
    )
