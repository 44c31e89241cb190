"""core/ stays pure: it imports nothing of the package outside core/, and its modules import
each other without loops."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "napari_datus"


def imports() -> dict[str, set[str]]:
    """module -> the napari_datus modules it imports (at any depth of the file)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("napari_datus", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = {
            node.module for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("napari_datus")}
    return found


def test_core_imports_only_core():
    outside = {(a, b) for a, bs in imports().items() if a.startswith("napari_datus.core")
               for b in bs if not b.startswith("napari_datus.core")}
    assert outside == set()


def test_core_modules_import_each_other_without_loops():
    graph = {a: {b for b in bs if b.startswith("napari_datus.core")}
             for a, bs in imports().items() if a.startswith("napari_datus.core")}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(b == target or (b not in seen and reaches(b, target, seen | {b}))
                   for b in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, {m})] == []
