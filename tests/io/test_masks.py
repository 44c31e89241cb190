import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_array
from napari_datus.io.masks import (
    ID_PALETTE,
    SUIM6_COLOURS,
    SUIM6_NAMES,
    SUIM8_COLOURS,
    class_names,
    decode_index,
    decode_suim,
    read_ground_truth,
    write_index_mask,
)


def suim_mask() -> np.ndarray:
    return SUIM8_COLOURS[np.arange(8).reshape(2, 4)]


def test_suim8_decodes_the_colour_code_order():
    np.testing.assert_array_equal(decode_suim(suim_mask(), "suim8"), np.arange(8).reshape(2, 4))


def test_suim6_merges_background_plants_and_seafloor():
    codes = decode_suim(suim_mask(), "suim6").ravel()
    names = class_names("suim6")
    assert [names[c] for c in codes] == ["BW+PF+SR", "HD", "BW+PF+SR", "WR", "RO", "RI", "FV",
                                         "BW+PF+SR"]


def test_near_pure_colours_threshold_at_127():
    rgb = np.array([[[254, 0, 1], [0, 250, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_suim(rgb, "suim8"), [[4, 3]])


def test_unknown_colours_are_refused():
    rgb = np.full((10, 10, 3), 128, dtype=np.uint8)
    with pytest.raises(DatusError, match="not one of the 8 SUIM colours"):
        decode_suim(rgb, "suim6", name="m.png")


def test_index_gt_refuses_colour_images():
    with pytest.raises(DatusError, match="colour image, not an index mask"):
        decode_index(suim_mask())
    np.testing.assert_array_equal(decode_index(np.dstack([np.eye(2, dtype=np.uint8)] * 3)),
                                  np.eye(2))


@pytest.mark.parametrize("top, suffix, dtype", [(200, ".png", np.uint8),
                                                (3000, ".png", np.uint16),
                                                (70000, ".tif", np.uint32)])
def test_index_masks_round_trip(tmp_path, top, suffix, dtype):
    labels = np.array([[0, 1], [top, 5]], dtype=np.uint8 if top < 256 else np.int64)
    path = write_index_mask(tmp_path / "m.png", labels)
    assert path.suffix == suffix
    back = tifffile.imread(path) if suffix == ".tif" else np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == dtype
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_read_ground_truth_from_file(tmp_path):
    Image.fromarray(suim_mask()).save(tmp_path / "gt.png")
    assert read_ground_truth(tmp_path / "gt.png", "suim8").shape == (2, 4)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_folder_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(DatusError, match="cannot write"):
            write_index_mask(tmp_path / "m.png", np.zeros((2, 2), dtype=np.uint8))
    finally:
        tmp_path.chmod(0o700)


def test_folder_that_is_a_file_is_a_clear_error(tmp_path):
    # Unlike a read-only folder, this stops root too (CI runs as root).
    blocker = tmp_path / "out"
    blocker.write_bytes(b"")
    with pytest.raises(DatusError, match="cannot write"):
        write_index_mask(blocker / "masks" / "m.png", np.zeros((2, 2), dtype=np.uint8))
    assert blocker.read_bytes() == b""


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(self, fp, format=None, **kw):
        fp.write(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(DatusError, match="No space left"):
        write_index_mask(tmp_path / "m.png", np.zeros((2, 2), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_suim_mask_with_blended_edges_is_read():
    """f_r_1013_ (SUIM train/val) has 1.9% of pixels between on and off: still SUIM."""
    from tests.conftest import SHARED, require_shared

    path = SHARED / "data" / "suim_dev" / "masks" / "f_r_1013_.png"
    require_shared(path)
    codes = read_ground_truth(path, "suim8")
    assert codes.max() <= 7


@pytest.mark.parametrize("top, mode", [(255, "P"), (256, "I;16")])
def test_palette_masks_hold_the_ids(tmp_path, top, mode):
    # int64 ids as the stages make them: a palette PNG while they fit in 8 bits.
    labels = np.array([[0, 1, 2], [3, 254, top]], dtype=np.int64)
    path = write_index_mask(tmp_path / "m.png", labels, ID_PALETTE)
    with Image.open(path) as img:
        assert img.mode == mode
    back = read_array(path)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == (np.uint8 if top <= 255 else np.uint16)


def test_partitions_and_segments_show_their_ids_in_colours(tmp_path):
    from napari_datus.outputs import write_grid_outputs

    partition = np.array([[0, 1], [2, 3]])
    segments = np.array([[0, 1], [2, 2]])
    write_grid_outputs(tmp_path, "a", partition, segments, (4, 6))
    for folder, grid in (("partitions", partition), ("segments", segments)):
        path = tmp_path / folder / "a.png"
        ids = np.kron(grid, np.ones((2, 3), dtype=int))
        np.testing.assert_array_equal(read_array(path), ids)  # the pixels are the ids
        with Image.open(path) as img:
            shown = np.asarray(img.convert("RGB"))
        colours = {tuple(shown[ids == i][0]) for i in np.unique(ids)}
        assert len(colours) == len(np.unique(ids))  # one colour per id
        assert (shown[ids > 0].max(axis=-1) > 0).all()  # no id but noise (0) is black
    assert len(np.unique(ID_PALETTE, axis=0)) == 256


def test_unlabelled_and_a_black_class_look_different_in_class_masks(tmp_path):
    from napari_datus.class_map import ClassMap

    # SUIM's background class (BW+PF+SR, class 5) is black.
    classes = ClassMap.from_matching(6, {str(c): c for c in range(6)}, SUIM6_NAMES,
                                     SUIM6_COLOURS)
    palette = classes.palette()
    assert tuple(palette[5]) == (0, 0, 0)
    assert tuple(palette[255]) not in {tuple(c) for c in palette[:6]}
    mask = np.array([[5, 255]], dtype=np.uint8)
    path = write_index_mask(tmp_path / "c.png", mask, palette)
    with Image.open(path) as img:
        shown = np.asarray(img.convert("RGB"))
    assert tuple(shown[0, 0]) != tuple(shown[0, 1])
    np.testing.assert_array_equal(read_array(path), mask)
    # A colour the user chose for unlabelled is kept.
    classes.unlabelled_colour = (0, 0, 0)
    assert tuple(classes.palette()[255]) == (0, 0, 0)
