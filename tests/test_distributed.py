"""Stages 1-5 on a dask LocalCluster give exactly the single-process results."""

import numpy as np
import pytest
import torch
from PIL import Image

from napari_datus import cli, commands, distributed, stages
from napari_datus.cache import FeatureCache
from napari_datus.core.backbone import Backbone
from napari_datus.core.errors import DatusError
from napari_datus.distributed import dask_client, segment_images
from napari_datus.pipeline import array_sources, cluster, drive
from tests.conftest import make_tiny_vit
from tests.test_pipeline import blocky_images, tiny_params


@pytest.fixture(scope="module")
def client():
    with dask_client(local_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def backbone():
    # A backbone of its own: the session one may carry test patches that should not travel.
    return Backbone.from_module(make_tiny_vit(), device="cpu", name="tiny")


def failing_source():
    raise DatusError("unreadable on purpose")


@pytest.mark.parametrize("embedding", ["crop-cls", "pooled-tokens"])
def test_two_workers_give_the_single_process_results(client, backbone, embedding, tmp_path,
                                                      monkeypatch):
    torch.set_num_threads(1)  # the workers' count: float reductions then agree bit for bit
    assert set(client.run(torch.get_num_threads).values()) == {1}
    params = tiny_params(embedding=embedding, clusters=3)
    sources = array_sources(blocky_images(6))
    sources.insert(2, ("broken", failing_source))
    local, local_skipped = drive(segment_images(sources, 7, backbone, params))
    events = []
    remote, remote_skipped = drive(segment_images(sources, 7, backbone, params,
                                                  cache=FeatureCache(tmp_path), client=client),
                                   events.append)
    assert sorted(e.index for e in events) == list(range(1, 8))
    assert [r.stem for r in remote] == [r.stem for r in local] == ["0000", "0001", "0002",
                                                                   "0003", "0004", "0005"]
    assert [s.file for s in remote_skipped] == [s.file for s in local_skipped] == ["broken"]
    for a, b in zip(local, remote):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.partition, b.partition)
        np.testing.assert_array_equal(a.segments.valid, b.segments.valid)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    for a, b in zip(cluster(local, params), cluster(remote, params)):
        np.testing.assert_array_equal(a, b)
    # the workers filled the shared cache: a local re-run hits it entirely
    louvain_calls = []
    monkeypatch.setattr(stages, "louvain", lambda *a: louvain_calls.append(a))
    cached, _ = drive(segment_images(sources, 7, backbone, params, cache=FeatureCache(tmp_path)))
    assert not louvain_calls
    for a, b in zip(remote, cached):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_datus_run_on_a_scheduler_writes_the_single_process_files(client, backbone, tmp_path,
                                                                  monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(commands, "run_backbone", lambda *a, **k: backbone)
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(blocky_images(4)):
        Image.fromarray(img).save(images / f"im{i}.png")
    common = ["run", str(images), "--resolution", "64", "--clusters", "2", "--tau", "1",
              "--no-cache"]
    assert cli.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "dask"),
                     "--dask-scheduler", client.scheduler.address]) == 0
    for sub in ("segments", "pseudo_masks"):
        for i in range(4):
            plain = np.asarray(Image.open(tmp_path / "plain" / sub / f"im{i}.png"))
            remote = np.asarray(Image.open(tmp_path / "dask" / sub / f"im{i}.png"))
            np.testing.assert_array_equal(plain, remote)


def test_unreachable_scheduler_is_a_user_error(monkeypatch):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(DatusError, match="cannot reach the dask scheduler"):
        with dask_client("tcp://127.0.0.1:9"):
            pass


def test_scheduler_and_local_cluster_exclude_each_other():
    with pytest.raises(DatusError, match="not both"):
        with dask_client("tcp://127.0.0.1:9", 2):
            pass


def test_no_option_means_no_cluster():
    with dask_client() as c:
        assert c is None
