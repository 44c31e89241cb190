"""Keep triton out of a process whose OpenGL driver has already loaded LLVM.

The registry's default torch build ships triton. ``import timm`` and ``import torchvision``
import ``torch._dynamo``, which imports triton, and libtriton carries its own LLVM. If
Mesa's OpenGL driver (llvmpipe under Xvfb, in VMs and remote desktops; radeonsi on AMD)
has already mapped its libLLVM into the process, as napari's canvas does, libtriton's LLVM
symbols bind to Mesa's copy and its initialisers crash the process (SIGSEGV) before any
Python code can react. The other order (triton first, then the canvas) works.

DatUS compiles no kernels, so in that one situation we mark triton absent before the
torch stack is imported: ``sys.modules["triton"] = None`` makes ``import triton`` raise
ImportError, and torch then behaves as on a machine without triton (eager mode; a
``torch.compile`` by another plugin in the same napari falls back or fails instead of
crashing the process). ``DATUS_ALLOW_TRITON=1`` turns the guard off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ALLOW_ENV = "DATUS_ALLOW_TRITON"
# Shared objects through which a GL driver brings LLVM into the process: libLLVM itself,
# and Mesa's drivers, which may link it statically.
_LLVM_CARRIERS = ("libLLVM", "libgallium", "_dri.so")


def llvm_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """True when a shared object that carries LLVM is mapped into this process (Linux only;
    False where ``maps`` cannot be read)."""
    try:
        text = maps.read_text()
    except OSError:
        return False
    return any(carrier in text for carrier in _LLVM_CARRIERS)


def guard_triton(maps: Path = Path("/proc/self/maps")) -> bool:
    """Mark triton absent if importing it now would crash; call before importing timm or
    torchvision.

    Returns
    -------
    True when triton was marked absent by this call.
    """
    if os.environ.get(ALLOW_ENV) == "1" or "triton" in sys.modules:
        return False
    if not llvm_loaded(maps):
        return False
    sys.modules["triton"] = None
    return True
