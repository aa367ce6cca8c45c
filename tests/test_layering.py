"""The house's floors (docs/architecture.md): imports go down only.

rtvp_edge (the runtime an edge box installs) never imports training, export or benchmarks; training never
imports export or benchmarks; export never imports benchmarks. Read from the source with ``ast``, so an
import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "rtvp_edge": {"training", "export", "benchmarks"},
    "training": {"export", "benchmarks"},
    "export": {"benchmarks"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_imports_go_down_only(floor):
    files = sorted((ROOT / floor).rglob("*.py"))
    assert files, f"no sources under {floor}/"
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in files
        for package, line in imported_packages(path)
        if package in FORBIDDEN[floor]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from export.pipeline import export_bundle\n")
    assert ("export", 2) in imported_packages(bad)
