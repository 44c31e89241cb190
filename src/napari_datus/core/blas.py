"""One BLAS thread where numpy's multi-threaded BLAS costs more than it gives."""

from __future__ import annotations

from functools import cache

from threadpoolctl import ThreadpoolController


def one_blas_thread(rescan: bool = False):
    """A context in which every BLAS loaded in the process uses one thread.

    The per-image stages multiply small matrices; a multi-threaded OpenBLAS pool then spins
    after each call and takes the cores the next ViT forward runs on (measured on 2 cores:
    0.13 s per forward instead of 0.07). Set per image, not around the loop, so that no
    setting outlives a generator left suspended. The parallel k-means of
    :func:`napari_datus.core.grouping.overclusterings` run inside one for another reason:
    scikit-learn restores BLAS threads after each fit.

    Parameters
    ----------
    rescan : look for BLAS libraries loaded since the last scan (scipy ships its own
        OpenBLAS, which scikit-learn's k-means calls), instead of the libraries known
    """
    if rescan:
        _blas_controller.cache_clear()
    return _blas_controller().limit(limits=1, user_api="blas")


@cache
def _blas_controller() -> ThreadpoolController:
    # Scanning the loaded libraries takes milliseconds: once per process.
    return ThreadpoolController()
