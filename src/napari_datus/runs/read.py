"""The one reader of run folders: the record, which files the run owns, its images, and
the user work a new run there would replace.

Every reader (reopening in napari, the npe2 reader, ``datus denoise``, the edit guard of
``datus run`` and the dock) goes through :func:`read_run`, which checks the record and
finds each image's files without decoding any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from napari_datus.core.errors import DatusError
from napari_datus.runs.layout import (
    CLASSES_FILE,
    COMPUTED_DIR,
    IMAGE_FOLDERS,
    METRICS_CSV,
    METRICS_FILE,
    PSEUDO_DIR,
    RUN_FILE,
    image_file,
    in_run,
)
from napari_datus.runs.record import LEGACY_FORMAT, RunRecord, load_record


@dataclass
class RunFolder:
    """A finished run folder as read: its record and where its files are.

    Attributes
    ----------
    out : the folder
    record : its run.json
    stems : the record's images that have a pseudo mask, in run order
    missing : the record's images without one (a damaged or partly deleted folder)
    """

    out: Path
    record: RunRecord
    stems: list[str]
    missing: list[str]

    def file(self, folder: str, stem: str) -> Path:
        """The path of ``stem``'s file in ``folder`` (it may not exist)."""
        return in_run(self.out, image_file(folder, stem))

    def has(self, folder: str, stem: str) -> bool:
        return self.file(folder, stem).is_file()

    def image(self, stem: str) -> Path | None:
        """The image file the run read for ``stem`` (None if not recorded or gone)."""
        path = (self.record.inputs.get(stem) or {}).get("image")
        return Path(path) if path and Path(path).is_file() else None

    def gt(self, stem: str) -> Path | None:
        path = (self.record.inputs.get(stem) or {}).get("gt")
        return Path(path) if path else None

    def computed_mask(self, stem: str) -> Path:
        """The pseudo mask as computed: the saved copy for an edited image, else the mask."""
        saved = self.file(COMPUTED_DIR, stem)
        return saved if saved.is_file() else self.file(PSEUDO_DIR, stem)


def is_run_folder(path: str | Path) -> bool:
    """True for a folder holding a run record (readable or not: the reader says why not)."""
    return Path(path).is_dir() and (Path(path) / RUN_FILE).is_file()


def read_existing(out: Path) -> RunRecord | None:
    """The record of the run in ``out``; None when there is none. A damaged record raises
    DatusError: what it owns and what edits it holds cannot be known."""
    if not (Path(out) / RUN_FILE).exists():
        return None
    try:
        return load_record(out)
    except DatusError as exc:
        raise DatusError(f"{exc}; a new run there could replace work it cannot see, so"
                         " choose another folder, or move the damaged run.json away") from exc


def read_run(out: str | Path) -> RunFolder:
    """Read a finished run folder; DatusError naming what is missing or damaged."""
    out = Path(out)
    record = load_record(out)
    stems = [s for s in record.images if (out / image_file(PSEUDO_DIR, s)).is_file()]
    missing = [s for s in record.images if s not in stems]
    if not stems:
        raise DatusError(f"{out / RUN_FILE} lists no image with a pseudo mask")
    return RunFolder(out, record, stems, missing)


def owned_files(out: Path, record: RunRecord) -> set[str]:
    """Run-relative paths of the files ``record``'s run wrote. A record from before the
    manifest owns the layout's files of its own images and its top-level files."""
    if record.format > LEGACY_FORMAT:
        return set(record.files)
    stems = set(record.images) | set(record.inputs) | set(record.edits)
    owned = {image_file(folder, stem) for folder in IMAGE_FOLDERS for stem in stems}
    owned |= {METRICS_FILE, METRICS_CSV}
    if record.edits or record.command.startswith("napari"):
        owned.add(CLASSES_FILE)  # only the napari writers wrote a class table
    return {rel for rel in owned if in_run(out, rel).is_file()}


@dataclass
class UserWork:
    """What a new run in a folder would replace that a person made."""

    edited_pixels: int = 0
    named_classes: int = 0

    def __bool__(self) -> bool:
        return bool(self.edited_pixels or self.named_classes)

    def describe(self) -> str:
        parts = []
        if self.edited_pixels:
            parts.append(f"{self.edited_pixels} edited pixels")
        if self.named_classes:
            parts.append(f"a class table of {self.named_classes} named classes")
        return " and ".join(parts)


def user_work(out: Path) -> UserWork:
    """The edits and named classes of the run in ``out`` (nothing when there is no run).

    Raises
    ------
    DatusError
        If run.json or classes.json is damaged: its work cannot be told, so none is assumed.
    """
    from napari_datus.class_map import ClassMap

    record = read_existing(out)
    if record is None:
        return UserWork()
    named = 0
    # A class table the run does not own is never replaced, so it is no work at risk.
    if CLASSES_FILE in owned_files(out, record) and (Path(out) / CLASSES_FILE).is_file():
        classes = ClassMap.load(out).classes
        default = ClassMap.per_cluster(len(classes)).classes
        named = sum(c.name != d.name for c, d in zip(classes, default))
    return UserWork(record.edited_pixels, named)


def read_metrics(folder: RunFolder) -> dict:
    """The run's metrics.json ({} when it has none).

    Raises
    ------
    DatusError
        If it is unreadable, or belongs to another run than run.json (an interrupted run).
    """
    path = folder.out / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatusError(f"cannot read {path}: {exc}") from exc
    if not isinstance(metrics, dict) or metrics.get("run_id") != folder.record.run_id:
        raise DatusError(f"{path} belongs to another run than {folder.out / RUN_FILE};"
                         " re-run datus run into this folder")
    return metrics
