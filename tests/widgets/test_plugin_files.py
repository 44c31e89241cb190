"""Manifest, sample data, reader and writer (no viewer needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from npe2 import PluginManifest
from PIL import Image

from napari_datus._reader import get_reader
from napari_datus._sample_data import SAMPLE_DIR, suim_sample
from napari_datus._writer import write_labels
from napari_datus.core.errors import DatusError
from napari_datus.io.masks import SUIM8_NAMES, decode_suim
from tests.io.test_images import write_png_claiming

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_MANIFEST = ROOT / "src" / "napari_datus" / "napari.yaml"


def test_root_manifest_is_a_copy_of_the_packaged_one():
    assert (ROOT / "napari.yaml").read_bytes() == PACKAGE_MANIFEST.read_bytes()


def test_manifest_is_found_and_valid():
    manifest = PluginManifest.from_distribution("napari-datus")
    contributions = manifest.contributions
    assert manifest.name == "napari-datus"
    assert {w.display_name for w in contributions.widgets} == {"DatUS pipeline", "DatUS metrics"}
    assert [s.key for s in contributions.sample_data] == ["suim"]
    assert contributions.readers and contributions.writers
    npe2 = shutil.which("npe2")
    assert npe2 is not None
    subprocess.run([npe2, "validate", "napari-datus"], check=True, capture_output=True)


def test_sample_is_a_stack_with_ground_truth():
    (image, image_kwargs, image_type), (gt, gt_kwargs, gt_type) = suim_sample()
    assert (image_type, gt_type) == ("image", "labels")
    assert image.shape == (5, 480, 640, 3) and image.dtype == np.uint8
    assert gt.shape == (5, 480, 640) and gt.dtype == np.uint8
    assert image_kwargs["metadata"]["stems"] == gt_kwargs["metadata"]["stems"]
    assert set(np.unique(gt)) == set(range(8))  # every SUIM class occurs
    assert list(gt_kwargs["features"]["class"]) == SUIM8_NAMES
    assert (SAMPLE_DIR / "LICENSE").read_text().count("Md Jahidul Islam") == 1
    assert "IROS" in (SAMPLE_DIR / "PROVENANCE.md").read_text()


def test_reader_opens_suim_masks_with_class_names():
    path = str(SAMPLE_DIR / "masks" / "n_l_52_.png")
    reader = get_reader(path)
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(path)
    assert layer_type == "labels"
    expected = decode_suim(np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(data, expected)
    assert list(kwargs["features"]["class"]) == SUIM8_NAMES
    assert kwargs["colormap"][4] == (1.0, 0.0, 0.0)  # RO is red
    # Not the image's name: ground truth opened beside image "n_l_52_" keeps its own.
    assert kwargs["name"] == "n_l_52_ ground truth"


def test_reader_opens_suim_masks_saved_as_palette_pngs(tmp_path):
    path = tmp_path / "palette.png"
    Image.open(SAMPLE_DIR / "masks" / "n_l_52_.png").convert("RGB").quantize(
        colors=8, method=Image.Quantize.MAXCOVERAGE).save(path)
    reader = get_reader(str(path))
    assert reader is not None
    [(data, _kwargs, _type)] = reader(str(path))
    expected = decode_suim(np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(data, expected)


def test_reader_stacks_several_masks():
    paths = sorted(str(p) for p in (SAMPLE_DIR / "masks").glob("*.png"))
    [(data, _kwargs, _type)] = get_reader(paths)(paths)
    assert data.shape == (5, 480, 640)


def test_reader_declines_other_files(tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    assert get_reader(str(photo)) is None
    assert get_reader(str(SAMPLE_DIR / "images" / "n_l_52_.jpg")) is None


def test_reader_declines_bombs_and_broken_files(tmp_path):
    assert get_reader(str(write_png_claiming(tmp_path / "bomb.png", 50000, 50000))) is None
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert get_reader(str(tmp_path / "broken.png")) is None


def test_writer_round_trips_png_and_tiff(tmp_path):
    labels = np.arange(12, dtype=np.int32).reshape(3, 4) * 300
    [png] = write_labels(str(tmp_path / "mask.png"), labels, {})
    np.testing.assert_array_equal(np.asarray(Image.open(png)), labels)
    stack = np.stack([labels, labels + 1])
    [tif] = write_labels(str(tmp_path / "stack.tif"), stack, {})
    np.testing.assert_array_equal(tifffile.imread(tif), stack)
    assert not list(tmp_path.glob(".*tmp"))


def test_writer_refuses_png_stacks_and_negative_ids(tmp_path):
    with pytest.raises(DatusError, match="save stacks as .tif"):
        write_labels(str(tmp_path / "stack.png"), np.zeros((2, 4, 4), dtype=np.uint8), {})
    with pytest.raises(DatusError, match="negative"):
        write_labels(str(tmp_path / "neg.png"), -np.ones((4, 4), dtype=np.int32), {})


def test_writer_writes_whole_number_floats_and_refuses_fractions(tmp_path):
    [png] = write_labels(str(tmp_path / "mask.png"), np.array([[0.0, 2.0], [7.0, 1.0]]), {})
    np.testing.assert_array_equal(np.asarray(Image.open(png)), [[0, 2], [7, 1]])
    with pytest.raises(DatusError, match=r"frac\.tif: labels hold non-integer values such as 1\.5"):
        write_labels(str(tmp_path / "frac.tif"), np.array([[0.0, 1.5]]), {})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_writer_refuses_nan_and_inf(tmp_path, bad):
    with pytest.raises(DatusError, match="NaN or infinite"):
        write_labels(str(tmp_path / "m.tif"), np.array([[0.0, bad]]), {})


def test_writer_refuses_ids_a_file_cannot_hold(tmp_path):
    with pytest.raises(DatusError, match="label 8589934597 is above 4294967295"):
        write_labels(str(tmp_path / "big.tif"), np.array([[0, 8589934597]]), {})
    with pytest.raises(DatusError, match="label 70000 is above 65535.*save as .tif"):
        write_labels(str(tmp_path / "big.png"), np.array([[0, 70000]]), {})
    assert not list(tmp_path.iterdir())
    [tif] = write_labels(str(tmp_path / "big.tif"), np.array([[0, 4294967295]]), {})
    assert tifffile.imread(tif)[0, 1] == 4294967295


def test_writer_refuses_empty_layers_and_missing_folders(tmp_path):
    with pytest.raises(DatusError, match="empty"):
        write_labels(str(tmp_path / "empty.tif"), np.zeros((0, 4), dtype=np.uint8), {})
    with pytest.raises(DatusError, match="folder .*nowhere does not exist"):
        write_labels(str(tmp_path / "nowhere" / "m.tif"), np.ones((2, 2), dtype=np.uint8), {})
    with pytest.raises(DatusError, match="folder .*nowhere does not exist"):
        write_labels(str(tmp_path / "nowhere" / "m.png"), np.ones((2, 2), dtype=np.uint8), {})
    assert not (tmp_path / "nowhere").exists()


def test_written_tiff_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        [tif] = write_labels(str(tmp_path / "m.tif"), np.ones((2, 2), dtype=np.uint8), {})
    finally:
        os.umask(old)
    assert os.stat(tif).st_mode & 0o777 == 0o644
