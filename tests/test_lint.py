"""The code base stays ruff-clean (rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff") or pytest.skip("ruff is not installed")
    paths = [p for p in ("escn_plugin", "tests", "benchmarks") if (ROOT / p).exists()]
    proc = subprocess.run([ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_import_in_the_tests_resolves():
    """Imports inside test functions run only with their test, and slow tests are not in
    the default run: a module renamed or moved must not leave them importing its old name
    (``from fairchem_run import ...`` after the helpers moved to ``tests.helpers``)."""
    import ast
    import importlib.util

    missing = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                try:
                    found = importlib.util.find_spec(name) is not None
                except ModuleNotFoundError:  # a parent package is missing
                    found = False
                if not found:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not missing, "imports that do not resolve:\n" + "\n".join(missing)
