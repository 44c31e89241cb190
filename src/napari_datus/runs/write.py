"""The one writer of run folders: files staged beside the old run, swapped in when complete.

A :class:`RunWriter` holds the folder locked, writes every file into a staging folder
inside it, and only in :meth:`RunWriter.commit` moves them into place, run.json last. A
run that fails before that leaves the folder as it was, byte for byte. Replacing a run
removes only the files its record lists as its own (``files``), never a file another
program or the user put there, and never a file the new run reads (its images or ground
truth). A file in the way that no run owns stops the run before anything moves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_datus.core.errors import DatusError
from napari_datus.runs.layout import BACKUP_PREFIX, RUN_FILE, STAGING_PREFIX, in_run
from napari_datus.runs.read import owned_files, read_existing
from napari_datus.runs.record import RunRecord, dump_record


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".datus-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DatusError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder; a second writer gets one clear error.

    The lock is taken on the folder itself (``flock``), so nothing is left behind in it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: a lock file, removed when released
        with _file_lock(out):
            yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DatusError(f"another datus process is writing into {out}; wait for it or"
                             " choose another output folder") from exc
        yield
    finally:
        os.close(fd)


@contextmanager
def _file_lock(out: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(out / ".datus.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise DatusError(f"another datus process is writing into {out}; wait for it or"
                         " choose another output folder") from exc
    try:
        yield
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def check_no_conflicts(out: Path, planned: Iterable[str], owned: set[str]) -> None:
    """Refuse when a file the run would write exists in ``out`` and no run owns it."""
    foreign = sorted(p for p in set(planned) - owned
                     if in_run(out, p).exists() or in_run(out, p).is_symlink())
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DatusError(f"{in_run(out, foreign[0])}{more} would be overwritten but no datus"
                         " run wrote it; choose another output folder or move it away")


class RunWriter:
    """Write one run (or an update of the run) in ``out``.

    Parameters
    ----------
    out : the run folder (created)
    update : True to change the run there (files not written now are kept), False to
        replace it (files of the old run not written now are removed)
    protect : files the run reads (its images, ground truth): never removed, and kept as
        the new run's own when the old run owned them
    """

    def __init__(self, out: Path, update: bool = False, protect: Iterable[Path] = ()) -> None:
        self.out = Path(out)
        self.update = update
        self.protect = {Path(p).resolve() for p in protect}
        self.old: RunRecord | None = None
        self.run_id = uuid.uuid4().hex
        self._adopted: set[str] = set()

    def __enter__(self) -> RunWriter:
        check_writable(self.out)
        self._lock = folder_lock(self.out)
        self._lock.__enter__()
        try:
            self.old = read_existing(self.out)
            if self.update and self.old is None:
                raise DatusError(f"{self.out} holds no finished run to update")
            if self.update:
                self.run_id = self.old.run_id  # metrics.json still belongs to this run
            self._owned = owned_files(self.out, self.old) if self.old else set()
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._lock.__exit__(*exc_info)

    def path(self, relative: str) -> Path:
        """Where to write the run file ``relative`` (staged; its folder is created)."""
        target = in_run(self.staging, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def adopt(self, relative: str) -> Path:
        """Claim a file the run writes in place, not staged (a checkpoint that must outlive
        an interrupted run); refused when a file no run owns is there. Returns its path."""
        check_no_conflicts(self.out, [relative], self._owned)
        self._adopted.add(relative)
        return in_run(self.out, relative)

    def commit(self, record: RunRecord) -> Path:
        """Swap the staged files in, run.json last; returns the run.json path.

        ``record.files`` and ``record.run_id`` are set here. On any failure the folder is
        restored to the run it held.
        """
        # Whatever was written into the staging folder is the run's: a mask that had to
        # become a TIFF is owned under its real name.
        written = {p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*")
                   if p.is_file() and p.name != RUN_FILE}
        check_no_conflicts(self.out, written, self._owned)
        keep = {p for p in self._owned - written
                if self.update or in_run(self.out, p).resolve() in self.protect}
        remove = self._owned - written - keep
        adopted = {p for p in self._adopted if in_run(self.out, p).is_file()}
        record.run_id, record.files = self.run_id, sorted(written | keep | adopted)
        dump_record(self.staging / RUN_FILE, record)
        _swap(self.out, self.staging, sorted(written) + [RUN_FILE], sorted(remove))
        return self.out / RUN_FILE


def _swap(out: Path, staging: Path, incoming: list[str], remove: list[str]) -> None:
    """Move the old run's ``remove`` and replaced files aside, ``incoming`` in (run.json
    last), then drop the old ones; undo every move on failure."""
    backup = Path(tempfile.mkdtemp(prefix=BACKUP_PREFIX, dir=out))
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        # The old run.json goes first: a folder caught mid-swap is no finished run.
        for rel in [RUN_FILE, *remove, *incoming[:-1]]:
            if rel not in moved_aside and in_run(out, rel).exists():
                _move(in_run(out, rel), in_run(backup, rel))
                moved_aside.append(rel)
        for rel in incoming:
            _move(in_run(staging, rel), in_run(out, rel))
            moved_in.append(rel)
    except OSError as exc:
        for rel in reversed(moved_in):
            in_run(out, rel).unlink(missing_ok=True)
        for rel in reversed(moved_aside):
            _move(in_run(backup, rel), in_run(out, rel))
        shutil.rmtree(backup, ignore_errors=True)
        raise DatusError(f"cannot write the run into {out}: {exc.strerror or exc}; the"
                         " folder holds the run it held before") from exc
    shutil.rmtree(backup, ignore_errors=True)
    _remove_empty_parents(out, remove)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _remove_empty_parents(out: Path, removed: list[str]) -> None:
    """Remove folders that held only removed files (a folder with anything else stays)."""
    for folder in sorted({in_run(out, rel).parent for rel in removed}, reverse=True):
        while folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
