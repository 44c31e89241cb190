"""One BLAS thread where numpy's multi-threaded BLAS costs more than it gives."""

from __future__ import annotations

from functools import cache

from threadpoolctl import ThreadpoolController


def one_blas_thread():
    """A context in which every BLAS loaded in the process uses one thread.

    The per-image stages multiply small matrices; a multi-threaded OpenBLAS pool then spins
    after each call and takes the cores the next ViT forward runs on (measured on 2 cores:
    0.13 s per forward instead of 0.07). Set per image, not around the loop, so that no
    setting outlives a generator left suspended. The k-means of stage 6 (faiss) run outside
    it: faiss's OpenBLAS is built on OpenMP, its threads are faiss's own.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


@cache
def _blas_controller() -> ThreadpoolController:
    # Scanning the loaded libraries takes milliseconds: once per process.
    return ThreadpoolController()
