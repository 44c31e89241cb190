"""Clusters become named classes: the user's class table and its JSON file.

A :class:`ClassMap` holds the classes (name, RGB colour) and, for every cluster label of a
run's pseudo masks, the class it belongs to (or none: unassigned). Several clusters may
share a class. Labels at or above the run's K are clusters the user made by reassigning a
segment to a class that had no cluster yet.

Masks stay in cluster ids (file convention, 255 = unlabelled); the map turns them into
class-id masks (255 = unlabelled or unassigned) and colour masks for export. It is saved
as ``classes.json`` in a run folder and read back with the run. Qt-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_datus.core.errors import DatusError
from napari_datus.core.pseudolabel import UNLABELLED
from napari_datus.io.masks import TAB10, write_json_atomic

CLASS_MAP_FILE = "classes.json"
FORMAT_VERSION = 1

# Class ids are mask values 0..254: 255 marks unlabelled (and unassigned) pixels.
MAX_CLASSES = int(UNLABELLED)

RGB = tuple[int, int, int]
UNASSIGNED = "unassigned"
# Unassigned clusters in napari: grey, so that they stand out from the class colours.
UNASSIGNED_RGBA = (0.5, 0.5, 0.5, 1.0)


@dataclass
class LabelClass:
    """One annotation class: a name and an 8-bit RGB colour."""

    name: str
    colour: RGB


@dataclass
class ClassMap:
    """The class table and the cluster -> class assignment of one run.

    Attributes
    ----------
    classes : class id -> LabelClass (ids are list positions, 0..C-1)
    assignment : cluster label -> class id, or None when unassigned; one entry per
        cluster label (the run's K, plus clusters made by reassigning)
    unlabelled_colour : RGB drawn for unlabelled pixels in colour exports; None means
        transparent (an RGBA PNG), so unlabelled is never mistaken for a class colour
    """

    classes: list[LabelClass] = field(default_factory=list)
    assignment: list[int | None] = field(default_factory=list)
    unlabelled_colour: RGB | None = None

    # ---- building -----------------------------------------------------------------------

    @classmethod
    def per_cluster(cls, k: int) -> ClassMap:
        """One class per cluster, named ``cluster c`` (the table before any naming)."""
        return cls([LabelClass(f"cluster {c}", TAB10[c % len(TAB10)]) for c in range(k)],
                   list(range(k)))

    @classmethod
    def from_matching(cls, k: int, mapping: dict[str, int | None], names: list[str],
                      colours: np.ndarray | None) -> ClassMap:
        """The Hungarian matching of a metrics block as a class table.

        Parameters
        ----------
        mapping : cluster (as a string, as in metrics.json) -> class id or None
        names : ground-truth class names (C)
        colours : (C, 3) uint8 class colours (SUIM), or None for tab10 colours
        """
        _check_count(len(names))
        classes = [LabelClass(name, _colour(colours, c)) for c, name in enumerate(names)]
        return cls(classes, [mapping.get(str(c)) for c in range(k)])

    # ---- queries ------------------------------------------------------------------------

    @property
    def n_clusters(self) -> int:
        return len(self.assignment)

    def class_of(self, cluster: int) -> int | None:
        return self.assignment[cluster] if 0 <= cluster < self.n_clusters else None

    def clusters_of(self, class_id: int) -> list[int]:
        return [c for c, m in enumerate(self.assignment) if m == class_id]

    def cluster_for(self, class_id: int) -> int:
        """The cluster label a segment gets when reassigned to ``class_id``: the class's
        first cluster, or a new cluster made for it (no other cluster changes)."""
        self._check_class(class_id)
        existing = self.clusters_of(class_id)
        if existing:
            return existing[0]
        if self.n_clusters >= UNLABELLED:
            raise DatusError(f"masks hold at most {UNLABELLED} cluster labels; assign an"
                             " existing cluster to this class instead")
        self.assignment.append(class_id)
        return self.n_clusters - 1

    def lookup(self) -> np.ndarray:
        """(256,) uint8 table: cluster id -> class id; unassigned and 255 -> 255."""
        table = np.full(256, UNLABELLED, dtype=np.uint8)
        for cluster, class_id in enumerate(self.assignment):
            if class_id is not None:
                table[cluster] = class_id
        return table

    def class_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 cluster ids (255 unlabelled) -> (H, W) uint8 class ids (255 none)."""
        return self.lookup()[np.asarray(mask, dtype=np.uint8)]

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colours of class ids for a palette PNG; 255 the unlabelled colour,
        when none is set mid grey or another grey no class has (SUIM's background is black)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        for c, cls_ in enumerate(self.classes):
            table[c] = cls_.colour
        used = {tuple(int(v) for v in cls_.colour) for cls_ in self.classes}
        grey = next(g for g in (128, *range(256)) if (g, g, g) not in used)
        table[UNLABELLED] = self.unlabelled_colour or (grey, grey, grey)
        return table

    def colour_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 cluster ids -> (H, W, 3) uint8 RGB, or (H, W, 4) RGBA with
        unlabelled pixels transparent when no unlabelled colour is set."""
        palette = np.zeros((256, 4), dtype=np.uint8)
        for c, cls_ in enumerate(self.classes):
            palette[c] = (*cls_.colour, 255)
        if self.unlabelled_colour is not None:
            palette[UNLABELLED] = (*self.unlabelled_colour, 255)
        rgba = palette[self.class_mask(mask)]
        return rgba if self.unlabelled_colour is None else rgba[..., :3]

    def layer_style(self, n_labels: int) -> tuple[dict, dict]:
        """Colours and status-bar names of layer labels ``c + 1`` for clusters
        ``0..n_labels-1`` (0 = unlabelled, transparent; unassigned clusters grey).

        Returns
        -------
        (colormap dict for a napari Labels layer; features dict with ``index``, ``cluster``
        and ``class`` columns)
        """
        n = max(n_labels, self.n_clusters)
        colours: dict = {0: "transparent", None: UNASSIGNED_RGBA}
        names = []
        for c in range(n):
            class_id = self.class_of(c)
            label = None if class_id is None else self.classes[class_id]
            colours[c + 1] = (UNASSIGNED_RGBA if label is None
                              else (*(v / 255 for v in label.colour), 1.0))
            names.append(UNASSIGNED if label is None else label.name)
        return colours, {"index": list(range(1, n + 1)), "cluster": list(range(n)),
                         "class": names}

    # ---- editing ------------------------------------------------------------------------

    def add_class(self, name: str, colour: RGB | None = None) -> int:
        """Append a class (tab10 colour by default); returns its id."""
        if len(self.classes) >= MAX_CLASSES:
            raise DatusError(f"a class table holds at most {MAX_CLASSES} classes (class id"
                             f" {UNLABELLED} marks unlabelled pixels): merge or remove one first")
        colour = colour if colour is not None else TAB10[len(self.classes) % len(TAB10)]
        self.classes.append(LabelClass(_name(name), _rgb(colour)))
        return len(self.classes) - 1

    def set_to(self, other: ClassMap) -> None:
        """Make this map a copy of ``other``, in place: a run's views (a folder's images, a
        layer set) hold this one map, so each of them shows the change."""
        self.classes = [LabelClass(c.name, c.colour) for c in other.classes]
        self.assignment = list(other.assignment)
        self.unlabelled_colour = other.unlabelled_colour

    def rename(self, class_id: int, name: str) -> None:
        self._check_class(class_id)
        self.classes[class_id].name = _name(name)

    def recolour(self, class_id: int, colour: RGB) -> None:
        self._check_class(class_id)
        self.classes[class_id].colour = _rgb(colour)

    def assign(self, cluster: int, class_id: int | None) -> None:
        """Put ``cluster`` in ``class_id`` (None: unassigned). Other clusters keep theirs."""
        if not 0 <= cluster < self.n_clusters:
            raise DatusError(f"cluster {cluster} is outside 0..{self.n_clusters - 1}")
        if class_id is not None:
            self._check_class(class_id)
        self.assignment[cluster] = class_id

    def remove_class(self, class_id: int) -> None:
        """Delete a class; its clusters become unassigned and later ids shift down."""
        self._check_class(class_id)
        del self.classes[class_id]
        self.assignment = [None if m == class_id else (m - 1 if m is not None and m > class_id
                                                      else m) for m in self.assignment]

    def _check_class(self, class_id: int) -> None:
        if not 0 <= class_id < len(self.classes):
            raise DatusError(f"class {class_id} does not exist (the table has"
                             f" {len(self.classes)} classes)")

    # ---- files --------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "classes": [{"id": i, "name": c.name, "colour": list(c.colour)}
                        for i, c in enumerate(self.classes)],
            "clusters": {str(c): m for c, m in enumerate(self.assignment)},
            "unlabelled": {"id": int(UNLABELLED), "colour": (None if self.unlabelled_colour
                                                            is None else
                                                            list(self.unlabelled_colour))},
        }

    @classmethod
    def from_json(cls, data: dict, source: str = CLASS_MAP_FILE) -> ClassMap:
        """Read :meth:`to_json`'s dict back; one DatusError names what is wrong."""
        try:
            classes = [LabelClass(_name(c["name"]), _rgb(c["colour"]))
                       for c in sorted(data["classes"], key=lambda c: int(c["id"]))]
            if [int(c["id"]) for c in data["classes"]] != list(range(len(classes))):
                raise ValueError("class ids must be 0..C-1 in order")
            _check_count(len(classes))
            clusters = {int(c): m for c, m in data["clusters"].items()}
            if sorted(clusters) != list(range(len(clusters))):
                raise ValueError("cluster ids must be 0..n-1")
            assignment = [None if clusters[c] is None else int(clusters[c])
                          for c in range(len(clusters))]
            if any(m is not None and not 0 <= m < len(classes) for m in assignment):
                raise ValueError("a cluster names a class that is not in the table")
            unlabelled = (data.get("unlabelled") or {}).get("colour")
            return cls(classes, assignment, None if unlabelled is None else _rgb(unlabelled))
        except (KeyError, TypeError, ValueError, AttributeError, DatusError) as exc:
            raise DatusError(f"{source} is not a DatUS class map: {exc}") from exc

    def save(self, folder: Path) -> Path:
        """Write ``classes.json`` into a run folder (atomically)."""
        return write_json_atomic(Path(folder) / CLASS_MAP_FILE,
                                 json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ClassMap | None:
        """The run folder's class map, or None when it has none."""
        path = Path(folder) / CLASS_MAP_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DatusError(f"cannot read {path}: {exc}") from exc
        return cls.from_json(data, str(path))


def _check_count(n: int) -> None:
    if n > MAX_CLASSES:
        raise DatusError(f"{n} classes: a class table holds at most {MAX_CLASSES} (class id"
                         f" {UNLABELLED} marks unlabelled pixels)")


def _colour(colours: np.ndarray | None, c: int) -> RGB:
    if colours is None or c >= len(colours):
        return TAB10[c % len(TAB10)]
    return tuple(int(v) for v in colours[c])


def _rgb(colour) -> RGB:
    values = tuple(int(v) for v in colour)
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise DatusError(f"colour {list(colour)} is not three values 0..255")
    return values


def _name(name: str) -> str:
    name = str(name).strip()
    if not name:
        raise DatusError("a class needs a name")
    return name
