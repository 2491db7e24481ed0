"""The package layering DESIGN.md asks for, checked by walking every import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_top_levels(package: str) -> dict[str, set[str]]:
    """For each module file in ``package``: the top-level names it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_subjects_imports_only_the_standard_library_and_msgspec():
    allowed = set(sys.stdlib_module_names) | {"msgspec", "subjects", "__future__"}
    for module, names in imported_top_levels("subjects").items():
        assert names <= allowed, f"{module} imports {sorted(names - allowed)}"


@pytest.mark.parametrize(("package", "forbidden"), [("router", {"workers", "fabric"}),
                                                    ("workers", {"router", "fabric"})])
def test_router_and_workers_never_import_each_other(package, forbidden):
    for module, names in imported_top_levels(package).items():
        assert not names & forbidden, f"{module} imports {sorted(names & forbidden)}"


def test_only_the_vllm_engine_module_imports_vllm():
    for package in ("subjects", "router", "workers", "fabric"):
        for module, names in imported_top_levels(package).items():
            if "vllm" in names:
                assert module == "workers/vllm_engine.py", module


def test_no_subject_strings_are_built_outside_subjects():
    # Every NATS name comes from subjects.names; an f-string starting "slm." elsewhere is a leak.
    for package in ("router", "workers", "fabric"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert 'f"slm.' not in text and "f'slm." not in text, path
