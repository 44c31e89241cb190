import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_datus.core.errors import DatusError
from napari_datus.io.images import read_image, to_rgb_uint8


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
