"""Every setting names its stage; keys, live re-runs and the benchmark follow from it."""

from dataclasses import fields, replace

import pytest

from napari_datus.cache import stage_keys
from napari_datus.core.errors import DatusError
from napari_datus.params import PARAM_STAGES, Params, check_graph_memory


def test_every_field_names_a_known_stage():
    assert {f.metadata["stage"] for f in fields(Params)} <= set(PARAM_STAGES)
    assert set(Params.fields_of(*PARAM_STAGES)) == {f.name for f in fields(Params)}


def test_live_settings_are_those_after_the_partition():
    assert set(Params.fields_of("segments", "clustering")) >= {"clusters", "tau"}
    assert not set(Params.fields_of("segments", "clustering")) & {"resolution", "affinity",
                                                                   "seed", "embedding"}


@pytest.mark.parametrize("change, changed", [
    ({"resolution": 112}, {"features", "partition", "embeddings"}),
    ({"precision": "bf16"}, {"features", "partition", "embeddings"}),
    ({"knn": 8}, {"partition", "embeddings"}),
    ({"seed": 3}, {"partition", "embeddings"}),
    ({"embedding": "crop-cls"}, {"embeddings"}),
    ({"clusters": 9, "tau": 1, "n_init": 2}, set()),
    ({"grouping": "kmeans", "overcluster": 12, "refine": "guided"}, set()),
])
def test_cache_keys_follow_the_stages(tiny_backbone, change, changed):
    base = Params(weights=None, precision="fp32")
    before = stage_keys("content", tiny_backbone, base)
    after = stage_keys("content", tiny_backbone, replace(base, **change))
    differ = {name for name in ("features", "partition", "embeddings")
              if getattr(before, name) != getattr(after, name)}
    assert differ == changed


def test_graph_memory_is_checked_before_work():
    check_graph_memory(Params(resolution=448), 14, available=2**30)
    with pytest.raises(DatusError, match="choose a lower resolution"):
        check_graph_memory(Params(resolution=2800), 14, available=24 * 2**30)


def test_unknown_precision_is_refused_before_work():
    with pytest.raises(DatusError, match="unknown precision"):
        Params(precision="fp8").validate()


@pytest.mark.parametrize("change, message", [
    ({"refine": "crf"}, "unknown refine"),
    ({"grouping": "spectral"}, "unknown grouping"),
    ({"overcluster": 0}, "overcluster must be at least 1"),
])
def test_refine_and_grouping_settings_are_checked(change, message):
    with pytest.raises(DatusError, match=message):
        replace(Params(), **change).validate()
