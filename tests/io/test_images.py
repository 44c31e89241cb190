import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from napari_datus.core.errors import DatusError
from napari_datus.io.images import (
    DEFAULT_MAX_PIXELS,
    EXIF_ORIENTATION,
    image_size,
    max_pixels,
    read_array,
    read_image,
    to_rgb_uint8,
)


def write_png_claiming(path: Path, width: int, height: int) -> Path:
    """Write a tiny 8x8 PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height after signature + tag
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC over tag + body
    path.write_bytes(bytes(data))
    return path


def test_grayscale_is_repeated():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb_uint8(gray)
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()


def test_rgba_drops_alpha():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 7
    assert (to_rgb_uint8(rgba) == [200, 0, 0]).all()


def test_sixteen_bit_is_stretched_by_percentiles():
    img = np.linspace(1000, 5000, 10000).reshape(100, 100).astype(np.uint16)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)


def test_unit_float_is_scaled_and_constant_is_black():
    assert to_rgb_uint8(np.full((2, 2), 0.5))[0, 0, 0] == 128
    assert to_rgb_uint8(np.full((2, 2, 3), 7.0, dtype=np.float32)).max() == 0


def test_nan_does_not_propagate():
    img = np.random.default_rng(0).random((8, 8)) * 10
    img[0, 0] = np.nan
    assert to_rgb_uint8(img).dtype == np.uint8


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (5, 5, 7)])
def test_stacks_and_odd_channels_are_refused(shape):
    with pytest.raises(DatusError, match="expected one 2D image"):
        to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_read_each_format_as_rgb(tmp_path, suffix):
    data = np.zeros((16, 20, 3), dtype=np.uint8)
    data[:, :10, 0] = 255
    path = tmp_path / f"x{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, data)
    else:
        Image.fromarray(data).save(path)
    img = read_image(path)
    assert img.shape == (16, 20, 3) and img.dtype == np.uint8
    assert img[0, 0, 0] > 200 and img[0, 0, 1] < 50  # RGB order, not BGR


def test_sixteen_bit_png_file(tmp_path):
    Image.fromarray(np.array([[0, 40000], [1000, 65535]], dtype=np.uint16)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (2, 2, 3)


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DatusError, match="cannot read image"):
        read_image(tmp_path / "bad.jpg")


def test_bomb_png_is_a_clear_error(tmp_path):
    path = write_png_claiming(tmp_path / "bomb.png", 50000, 50000)
    with pytest.raises(DatusError, match=r"bomb\.png .*2500000000 pixels"):
        read_image(path)


def test_png_over_the_limit_is_refused_from_its_header(tmp_path):
    # 100 M pixels: Pillow only warns (its error starts at 178,956,970), and the warning is
    # silenced because our own check refuses the file before any pixel is decoded.
    path = write_png_claiming(tmp_path / "big.png", 20000, 5000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = (r"big\.png is 20000x5000 = 100,000,000 pixels,"
                    r" above the limit of 99,999,999 \(DATUS_MAX_PIXELS\)")
        with pytest.raises(DatusError, match=expected):
            read_array(path, max_pixels=99_999_999)


def test_tiff_over_the_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, shape=(40000, 30000), dtype="uint8")  # header only: a sparse file
    with pytest.raises(DatusError, match=r"bomb\.tif is 30000x40000 = 1,200,000,000 pixels"):
        read_image(path)


def test_tiff_colour_samples_do_not_count_as_pixels(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), dtype=np.uint8))
    assert read_array(tmp_path / "rgb.tif", max_pixels=20).shape == (4, 5, 3)
    with pytest.raises(DatusError, match="5x4 = 20 pixels, above the limit of 19"):
        read_array(tmp_path / "rgb.tif", max_pixels=19)


def test_pixel_limit_from_argument_and_environment(tmp_path, monkeypatch):
    Image.new("L", (20, 10)).save(tmp_path / "a.png")
    assert max_pixels() == DEFAULT_MAX_PIXELS
    with pytest.raises(DatusError, match="20x10 = 200 pixels, above the limit of 199"):
        read_array(tmp_path / "a.png", max_pixels=199)
    monkeypatch.setenv("DATUS_MAX_PIXELS", "100")
    assert max_pixels() == 100
    with pytest.raises(DatusError, match="above the limit of 100"):
        read_image(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", max_pixels=200).shape == (10, 20, 3)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e9"])
def test_bad_pixel_limit_in_environment_is_a_clear_error(tmp_path, monkeypatch, value):
    Image.new("L", (2, 2)).save(tmp_path / "a.png")
    monkeypatch.setenv("DATUS_MAX_PIXELS", value)
    with pytest.raises(DatusError, match="DATUS_MAX_PIXELS=.* is not a positive integer"):
        read_image(tmp_path / "a.png")


def test_broken_png_chunk_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.png"
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    Image.fromarray(noise).save(path)  # incompressible: Pillow writes two IDAT chunks
    data = path.read_bytes()
    second = data.index(b"IDAT", data.index(b"IDAT") + 4)
    # Pillow raises SyntaxError (not OSError) for a broken chunk met while decoding.
    path.write_bytes(data[:second] + b"\x00\x01\x02\x03" + data[second + 4:])
    with pytest.raises(DatusError, match=r"cannot read image .*broken\.png"):
        read_image(path)


def test_palette_indices_are_kept_unless_colours_are_asked_for(tmp_path):
    img = Image.new("P", (4, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [224, 224, 192] * 253)
    img.putdata([0, 1, 2, 255])
    img.save(tmp_path / "voc.png", transparency=255)  # VOC-style: 255 marks "void"
    indices = read_array(tmp_path / "voc.png", keep_palette=True)
    assert indices.dtype == np.uint8
    np.testing.assert_array_equal(indices, [[0, 1, 2, 255]])
    np.testing.assert_array_equal(read_array(tmp_path / "voc.png"), indices)  # the default
    assert read_array(tmp_path / "voc.png", keep_palette=False).shape == (1, 4, 4)  # RGBA
    assert read_image(tmp_path / "voc.png").shape == (1, 4, 3)  # a photo's colours



def write_oriented(path: Path, stored: np.ndarray, orientation: int, **save) -> Path:
    """Save ``stored`` (as the file's pixels) with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes(), **save)
    return path


def test_a_jpeg_with_exif_orientation_6_is_read_as_displayed(tmp_path):
    # A phone's portrait photo: stored 40 wide, 20 high, shown turned 90 degrees clockwise.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red at the stored top-left
    path = write_oriented(tmp_path / "portrait.jpg", stored, 6, quality=95)

    image = read_image(path)
    with Image.open(path) as img:
        displayed = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(image, displayed)
    assert image.shape == (40, 20, 3) and image_size(path) == (40, 20)
    assert image[2, 17, 0] > 200 and image[2, 2, 0] < 50  # the red corner is now top-right
    # The pixel limit names the displayed size (width x height) before decoding.
    with pytest.raises(DatusError, match="20x40 = 800 pixels, above the limit of 799"):
        read_array(path, max_pixels=799)


@pytest.mark.parametrize(("orientation", "upright"), [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (8, np.rot90),
    (6, lambda a: np.rot90(a, -1)), (2, np.fliplr), (5, np.transpose)])
def test_index_masks_keep_their_ids_when_oriented(tmp_path, orientation, upright):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_oriented(tmp_path / "mask.png", ids, orientation)
    np.testing.assert_array_equal(read_array(path), upright(ids))
    assert image_size(path) == upright(ids).shape


def test_image_size_reads_the_header_only(tmp_path):
    path = write_png_claiming(tmp_path / "big.png", 20000, 5000)
    assert image_size(path) == (5000, 20000)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), dtype=np.uint8))
    assert image_size(tmp_path / "rgb.tif") == (4, 5)
    with pytest.raises(DatusError, match="image file not found"):
        image_size(tmp_path / "missing.png")
