"""How a run's class map is drawn and kept: layer colours and names, the Hungarian
pre-fill, and carrying the classes over to a re-run (no Qt, no napari).

A class is an id: renaming keeps it. A re-run (another K or tau) puts each new cluster in
the earlier class whose pixels it covers most (:class:`~napari_datus.class_carry.Carry`),
whatever the class is called, so a renamed class keeps its pixels and K back where it was
gives the table back.
"""

from __future__ import annotations

from napari_datus._widgets.model import WidgetRun
from napari_datus.class_carry import Carry
from napari_datus.class_map import ClassMap
from napari_datus.io.masks import class_colours


def cluster_colormap(run: WidgetRun) -> tuple[dict, dict]:
    """Colours and names of a cluster layer's labels ``c + 1`` (pseudo mask or de-noised),
    from the run's class map (:meth:`ClassMap.layer_style`)."""
    return run.class_map.layer_style(run.n_clusters)


def is_default(class_map: ClassMap, k: int) -> bool:
    """True while a map is still the default one class per cluster of a K-cluster run."""
    return class_map == ClassMap.per_cluster(k)


def is_untouched(run: WidgetRun) -> bool:
    """True while the class map is still the default one class per cluster."""
    return is_default(run.class_map, run.result.params.clusters)


def matching_classes(run: WidgetRun) -> ClassMap:
    """The class map the Hungarian matching of the initial masks gives (needs metrics)."""
    mapping = run.metrics["initial"]["mapping"]
    return ClassMap.from_matching(run.n_clusters, mapping, run.class_names,
                                  class_colours(run.gt_format))


def carried_map(earlier: ClassMap, earlier_k: int, k: int, carry: Carry,
                matching: ClassMap | None = None, automatic: bool = False,
                ) -> tuple[ClassMap, str | None]:
    """The class map of a re-run with ``k`` clusters, from the map of the run it replaces
    (``earlier_k`` clusters); sets ``carry.classes_of`` so edits follow their classes.

    Parameters
    ----------
    carry : the pixels the new clusters share with the earlier ones
    matching : the new run's Hungarian matching as a map, when it has metrics
    automatic : the earlier map was the default or its run's matching, not the user's

    Returns
    -------
    The map, and a line for the user when clusters moved between the user's classes.
    """
    if is_default(earlier, earlier_k) or (automatic and matching is not None):
        # Nothing the user named: the new run gets its own default, or its own matching.
        fresh = matching if matching is not None else ClassMap.per_cluster(k)
        if matching is not None and not is_default(earlier, earlier_k):
            carry.classes_of = earlier.lookup()  # both are the ground truth's classes
        return fresh, None
    carry.classes_of = earlier.lookup()
    classes = carry.class_map(earlier, k)
    empty = [c.name for i, c in enumerate(classes.classes)
             if earlier.clusters_of(i) and not classes.clusters_of(i)]
    notes = []
    if k != earlier_k:
        notes.append(f"K changed from {earlier_k} to {k}: each new cluster joined the class"
                     f" of your {len(classes.classes)} whose pixels it covers most")
    if empty:
        notes.append(f"no new cluster covers {', '.join(empty)} most: reassign a segment to"
                     " give it one")
    return classes, ("; ".join(notes) + "; check the class table") if notes else None


def carry_classes(run: WidgetRun, earlier: WidgetRun) -> str | None:
    """Give a re-run the class table of the run it replaces (see :func:`carried_map`), and
    ``run.carry``, which the kept edits follow.

    A table that is still the default, or still the Hungarian matching's, follows the new
    run's matching when it has metrics. A table the user edited keeps its classes, each
    new cluster in the class it covers most.

    Returns
    -------
    A line for the user when the assignment changed, else None.
    """
    automatic = "initial" in earlier.metrics and earlier.class_map == matching_classes(earlier)
    run.carry = Carry.between([(earlier.result, run.result)])
    classes, note = carried_map(earlier.class_map, earlier.result.params.clusters,
                                run.result.params.clusters, run.carry,
                                matching_classes(run) if run.metrics else None, automatic)
    run.class_map.set_to(classes)
    return note
