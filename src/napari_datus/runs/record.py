"""run.json: the record of a finished run, read and written only here.

The record says what a run did (parameters, images, timings, metrics inputs) and what it
owns: ``files``, the manifest of every file the run wrote, relative to its folder. A later
run into the same folder removes only those files (:mod:`.write`). A record that is
damaged, of an unknown format, or names paths outside its folder is refused with one
line (:class:`~napari_datus.core.errors.DatusError`): it never reads as "no edits".

Records written before the manifest existed (no ``format`` key) are read as format 1; the
reader derives their manifest from the layout (:func:`napari_datus.runs.read.read_run`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_datus.core.errors import DatusError
from napari_datus.io.masks import write_json_atomic
from napari_datus.runs.layout import RUN_FILE, check_stem, in_run

FORMAT = 2
LEGACY_FORMAT = 1


@dataclass
class RunRecord:
    """One run folder's run.json.

    Attributes
    ----------
    run_id : hex id, also written into metrics.json so readers can tell both belong together
    params : every setting of the run (:class:`napari_datus.params.Params`) and the
        backbone's provenance (``weights_source``, ``weights_sha256``, ...)
    images : stems of the images with masks, in run order
    inputs : stem -> ``{"image": path or None, "gt": path or None}``
    files : run-relative POSIX paths of every file this run wrote (run.json excluded)
    edits : stem -> pixels of the saved pseudo mask that differ from the computed one
    """

    run_id: str
    params: dict[str, Any]
    images: list[str]
    inputs: dict[str, dict[str, str | None]]
    files: list[str] = field(default_factory=list)
    edits: dict[str, int] = field(default_factory=dict)
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    segments: dict[str, float] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    gt: dict[str, Any] | None = None
    grid: dict[str, int] | None = None
    device: str | None = None
    cache: str | None = None
    seconds_total: float | None = None
    denoise: dict[str, Any] | None = None
    format: int = FORMAT

    @property
    def edited_pixels(self) -> int:
        return sum(self.edits.values())

    @property
    def clusters(self) -> int:
        return int(self.params["clusters"])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["edits"] = {stem: {"pixels": n} for stem, n in sorted(self.edits.items())}
        data["files"] = sorted(set(self.files))
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = RUN_FILE) -> RunRecord:
        """Check and read a run.json dict; DatusError naming the first problem."""
        try:
            return cls(**_parsed(data))
        except KeyError as exc:
            raise DatusError(f"{source} is not a readable DatUS run record: {exc.args[0]} is"
                             " missing") from exc
        except (TypeError, ValueError, DatusError) as exc:
            raise DatusError(f"{source} is not a readable DatUS run record: {exc}") from exc


def _parsed(data: Any) -> dict[str, Any]:
    """The dataclass fields of a run.json dict, each checked; raises on the first problem."""
    _expect(data, dict, "the record")
    version = data.get("format", LEGACY_FORMAT)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format {version!r} is not a version number")
    if version > FORMAT:
        raise ValueError(f"format {version} is newer than this napari-datus reads ({FORMAT});"
                         " update napari-datus")
    params = _expect(data["params"], dict, "params")
    clusters = params.get("clusters")
    if not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1:
        raise ValueError(f"params.clusters {clusters!r} is not a positive integer")
    images = [check_stem(s) for s in _expect(data.get("images") or [], list, "images")]
    inputs = {}
    for stem, entry in _expect(data.get("inputs") or {}, dict, "inputs").items():
        entry = _expect(entry, dict, f"inputs[{stem!r}]")
        inputs[check_stem(stem)] = {key: _optional(entry.get(key), str, f"{stem}.{key}")
                                    for key in ("image", "gt")}
    edits = {}
    for stem, entry in _expect(data.get("edits") or {}, dict, "edits").items():
        pixels = _expect(entry, dict, f"edits[{stem!r}]").get("pixels")
        if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 0:
            raise ValueError(f"edits[{stem!r}].pixels {pixels!r} is not a pixel count")
        edits[check_stem(stem)] = pixels
    files = [_expect(f, str, "a files entry") for f in _expect(data.get("files") or [], list,
                                                               "files")]
    for f in files:
        in_run(Path("."), f)
    return {
        "run_id": _expect(data["run_id"], str, "run_id"), "params": params, "images": images,
        "inputs": inputs, "files": files, "edits": edits, "format": version,
        "command": _optional(data.get("command"), str, "command") or "",
        "versions": _expect(data.get("versions") or {}, dict, "versions"),
        "timings": _expect(data.get("timings") or {}, dict, "timings"),
        "segments": _expect(data.get("segments") or {}, dict, "segments"),
        "skipped": _expect(data.get("skipped") or [], list, "skipped"),
        "gt": _optional(data.get("gt"), dict, "gt"),
        "grid": _optional(data.get("grid"), dict, "grid"),
        "device": _optional(data.get("device"), str, "device"),
        "cache": _optional(data.get("cache"), str, "cache"),
        "seconds_total": _optional(data.get("seconds_total"), (int, float), "seconds_total"),
        "denoise": _optional(data.get("denoise"), dict, "denoise"),
    }


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{what} is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _optional(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    return None if value is None else _expect(value, kind, what)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({dict: "an object", list: "a list", str: "a string"}.get(k, k.__name__)
                       for k in kinds)


def load_record(out: Path) -> RunRecord:
    """The run.json of ``out``; DatusError when it is missing, unreadable or damaged."""
    path = Path(out) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatusError(f"{out} is not a complete datus run folder: {RUN_FILE} not"
                         " found") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatusError(f"cannot read {path}: {exc}") from exc
    return RunRecord.from_json(data, str(path))


def dump_record(path: Path, record: RunRecord) -> Path:
    """Write ``record`` as pretty JSON, atomically (NaN refused)."""
    return write_json_atomic(path, json.dumps(record.to_json(), indent=2, allow_nan=False)
                             + "\n")
