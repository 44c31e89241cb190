import sys

import pytest

from napari_datus.core import triton_guard
from napari_datus.core.triton_guard import guard_triton, llvm_loaded

MESA = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
PLAIN = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


@pytest.fixture
def no_triton_yet(monkeypatch):
    """A process where triton has not been imported (restored after the test)."""
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.delenv(triton_guard.ALLOW_ENV, raising=False)


def maps_file(tmp_path, text):
    path = tmp_path / "maps"
    path.write_text(text)
    return path


@pytest.mark.parametrize("library", ["libLLVM-15.so.1", "libgallium-24.2.so", "swrast_dri.so"])
def test_gl_drivers_that_carry_llvm_are_seen(tmp_path, library):
    assert llvm_loaded(maps_file(tmp_path, MESA.replace("libLLVM-15.so.1", library)))
    assert not llvm_loaded(maps_file(tmp_path, PLAIN))
    assert not llvm_loaded(tmp_path / "absent")


def test_triton_is_marked_absent_when_llvm_is_mapped(tmp_path, no_triton_yet):
    assert guard_triton(maps_file(tmp_path, MESA))
    assert sys.modules["triton"] is None
    with pytest.raises(ImportError):
        import triton  # noqa: F401


def test_triton_is_left_alone_without_llvm(tmp_path, no_triton_yet):
    assert not guard_triton(maps_file(tmp_path, PLAIN))
    assert "triton" not in sys.modules


def test_the_guard_can_be_turned_off(tmp_path, no_triton_yet, monkeypatch):
    monkeypatch.setenv(triton_guard.ALLOW_ENV, "1")
    assert not guard_triton(maps_file(tmp_path, MESA))
    assert "triton" not in sys.modules


def test_an_imported_triton_is_never_hidden(tmp_path, monkeypatch):
    sentinel = object()
    monkeypatch.setitem(sys.modules, "triton", sentinel)
    assert not guard_triton(maps_file(tmp_path, MESA))
    assert sys.modules["triton"] is sentinel
