"""How a run's class map is drawn and kept: layer colours and names, the Hungarian
pre-fill, and carrying the classes over to a re-run (no Qt, no napari)."""

from __future__ import annotations

from napari_datus._widgets.model import WidgetRun
from napari_datus.class_map import ClassMap
from napari_datus.io.masks import class_colours


def cluster_colormap(run: WidgetRun) -> tuple[dict, dict]:
    """Colours and names of a cluster layer's labels ``c + 1`` (pseudo mask or de-noised),
    from the run's class map (:meth:`ClassMap.layer_style`)."""
    return run.class_map.layer_style(run.n_clusters)


def is_untouched(run: WidgetRun) -> bool:
    """True while the class map is still the default one class per cluster."""
    return run.class_map == ClassMap.per_cluster(run.result.params.clusters)


def matching_classes(run: WidgetRun) -> ClassMap:
    """The class map the Hungarian matching of the initial masks gives (needs metrics)."""
    mapping = run.metrics["initial"]["mapping"]
    return ClassMap.from_matching(run.n_clusters, mapping, run.class_names,
                                  class_colours(run.gt_format))


def carried_map(earlier: ClassMap, earlier_k: int, k: int,
                assignment: list[int | None] | None = None) -> tuple[ClassMap, str | None]:
    """The class map of a re-run with ``k`` clusters, from the map of a run with
    ``earlier_k``: the same K keeps every assignment; another K keeps the classes and takes
    ``assignment`` (default: every new cluster unassigned).

    Returns
    -------
    The map, and a line for the user when the assignment could not be kept.
    """
    if k == earlier_k:
        return ClassMap(list(earlier.classes), list(earlier.assignment),
                        earlier.unlabelled_colour), None
    if earlier == ClassMap.per_cluster(earlier_k):
        return ClassMap.per_cluster(k), None
    return (ClassMap(list(earlier.classes), assignment or [None] * k, earlier.unlabelled_colour),
            f"K changed from {earlier_k} to {k}: your {len(earlier.classes)} classes were"
            " kept; assign the new clusters to them in the class table")


def carry_classes(run: WidgetRun, earlier: WidgetRun) -> str | None:
    """Give a re-run the class table of the run it replaces (see :func:`carried_map`).

    A table that is still the default, or still the Hungarian matching's, follows the new
    run's matching when it has metrics. A table the user edited keeps its classes; with
    another K and metrics, the new clusters join the kept classes of the names the matching
    gives them.

    Returns
    -------
    A line for the user when the assignment could not be kept as it was, else None.
    """
    k, earlier_k = run.result.params.clusters, earlier.result.params.clusters
    automatic = is_untouched(earlier) or (
        "initial" in earlier.metrics and earlier.class_map == matching_classes(earlier))
    if automatic and run.metrics:
        run.class_map = matching_classes(run)
        return None
    if not (run.metrics and k != earlier_k):
        run.class_map, note = carried_map(earlier.class_map, earlier_k, k)
        return note
    names = [c.name for c in earlier.class_map.classes]
    matched = [None if m is None else run.class_names[m]
               for m in matching_classes(run).assignment]
    assignment = [names.index(m) if m in names else None for m in matched]
    run.class_map, _ = carried_map(earlier.class_map, earlier_k, k, assignment)
    return (f"K changed from {earlier_k} to {k}: your {len(names)} classes were kept and the"
            " new clusters joined them by the ground-truth matching; check the class table")
