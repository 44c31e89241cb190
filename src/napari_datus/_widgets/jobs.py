"""What a worker job of the pipeline dock returns when it fails (no Qt, no napari)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from napari_datus.core.errors import DatusError


@dataclass
class RunFailed:
    """A run stopped by a DatusError, returned (not raised) so it shows without a traceback."""

    message: str


def reported(work: Callable[[], Generator]) -> Generator:
    """Run a worker job; a DatusError becomes a RunFailed, shown without a traceback."""
    try:
        return (yield from work())
    except DatusError as exc:
        return RunFailed(str(exc))
