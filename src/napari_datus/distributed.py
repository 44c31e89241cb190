"""Stages 1-5 on a dask.distributed cluster; k-means stays on the client.

The client builds the model (a lazy backbone's too) and sends it to every worker once (so
the weights file need not exist on the workers), submits one task per chunk of consecutive
images (each worker reads its own images; the chunks are those a single process forwards in
one batch, :func:`napari_datus.pipeline.source_chunks`, so the features are those of a
single-process run), and gathers the small per-image results (patch-grid maps and segment
embeddings) back **in input order**: k-means then sees exactly the rows of a single-process
run, so for the same seed the results are identical, provided the float reductions agree,
i.e. workers and client run torch with the same thread count (dask's nanny starts workers
with ``OMP_NUM_THREADS=1``; set the client's with ``torch.set_num_threads(1)`` to compare).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from napari_datus.cache import FeatureCache
from napari_datus.core.errors import DatusError
from napari_datus.core.features import check_resolution
from napari_datus.core.lazy_backbone import LazyBackbone, loaded
from napari_datus.pipeline import (
    ImageResult,
    ImageSource,
    Params,
    Progress,
    Skipped,
    Timer,
    feature_batch,
    segment_chunk,
    segment_dataset,
    source_chunks,
)

if TYPE_CHECKING:
    from distributed import Client

    from napari_datus.core.backbone import Backbone

CONNECT_TIMEOUT = "10s"


@contextmanager
def dask_client(scheduler: str | None = None,
                local_workers: int | None = None) -> Iterator[Client | None]:
    """A dask.distributed client, or None when neither option is given.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``.
    local_workers : int, optional
        Start a LocalCluster of this many single-threaded worker processes instead.

    Raises
    ------
    DatusError
        If both are given, ``local_workers`` is below 1, or the scheduler cannot be reached.
    """
    if scheduler is None and local_workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None and local_workers is not None:
        raise DatusError("give either a dask scheduler address or a local worker count, not both")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DatusError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
        with client:
            yield client
        return
    if local_workers < 1:
        raise DatusError(f"the local dask cluster needs at least 1 worker, got {local_workers}")
    # One thread per worker process: torch and igraph then run as in a single process.
    with LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def segment_images(
    sources: Iterable[ImageSource], total: int, backbone: Backbone | LazyBackbone,
    params: Params, timer: Timer | None = None, cache: FeatureCache | None = None,
    client: Client | None = None,
) -> Generator[Progress, None, tuple[list[ImageResult], list[Skipped]]]:
    """Stages 1-5 over a dataset, on ``client``'s cluster or (None) in this process.

    Same contract as :func:`napari_datus.pipeline.segment_dataset`.
    """
    if client is None:
        return (yield from segment_dataset(sources, total, backbone, params, timer, cache))
    return (yield from segment_dataset_dask(client, sources, total, backbone, params, timer,
                                            cache))


def segment_dataset_dask(
    client: Client, sources: Iterable[ImageSource], total: int,
    backbone: Backbone | LazyBackbone, params: Params, timer: Timer | None = None,
    cache: FeatureCache | None = None,
) -> Generator[Progress, None, tuple[list[ImageResult], list[Skipped]]]:
    """Stages 1-5 over a dataset, one dask task per chunk of images (the batches of the
    keys forward).

    Yields a :class:`Progress` as each image finishes (chunks in completion order); returns
    ``(results, skipped)`` in input order. Worker seconds per stage are added to ``timer``.
    Closing the generator (a cancelled napari worker) cancels the tasks left.
    """
    from distributed import as_completed

    params.validate()
    check_resolution(params.resolution, backbone.patch_size)
    timer = timer or Timer()
    remote_backbone = client.scatter(loaded(backbone), broadcast=True)
    chunks = source_chunks(sources, feature_batch(params))
    futures = [client.submit(_segment_task, chunk, remote_backbone, params, cache, pure=False)
               for chunk in chunks]
    position = {future.key: index for index, future in enumerate(futures)}
    outcomes: dict[int, list[ImageResult | Skipped]] = {}
    done = 0
    try:
        for future in as_completed(futures):
            chunk, seconds = future.result()
            for stage, value in seconds.items():
                timer.seconds[stage] = timer.seconds.get(stage, 0.0) + value
            outcomes[position[future.key]] = chunk
            for outcome in chunk:
                done += 1
                yield Progress("segments", done, total, _stem(outcome),
                               outcome if isinstance(outcome, ImageResult) else None)
    finally:
        client.cancel([f for i, f in enumerate(futures) if i not in outcomes])
    ordered = [o for index in range(len(futures)) for o in outcomes[index]]
    return ([o for o in ordered if isinstance(o, ImageResult)],
            [o for o in ordered if isinstance(o, Skipped)])


def _stem(outcome: ImageResult | Skipped) -> str:
    return outcome.stem if isinstance(outcome, ImageResult) else outcome.file


def _segment_task(chunk: list[tuple[int, ImageSource]], backbone: Backbone, params: Params,
                  cache: FeatureCache | None
                  ) -> tuple[list[ImageResult | Skipped], dict[str, float]]:
    """One chunk on a worker: each image's result (or why it was skipped), seconds per
    stage."""
    timer = Timer()
    return segment_chunk(chunk, backbone, params, cache, timer), timer.seconds
