"""The code passes its formatter and its linter, as configured in pyproject.toml (docs/DESIGN.md
section 12): ``ruff format --check`` and ``ruff check`` (syntax errors and pyflakes) over the package,
the tests, the benchmarks, the examples and setup.py. ``make format`` applies the formatter."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["rlvr_fast", "tests", "benchmarks", "examples", "setup.py"]


def _ruff() -> str:
    ruff = pytest.importorskip("ruff", reason="ruff is installed by the test extra (make test)")
    from ruff.__main__ import find_ruff_bin

    del ruff
    return str(find_ruff_bin())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_ruff(), *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_code_is_formatted():
    out = _run("format", "--check", "--diff")
    assert out.returncode == 0, f"ruff format would change files (run `make format`):\n{out.stdout[-4000:]}{out.stderr}"


def test_the_code_passes_the_linter():
    out = _run("check", "--no-cache", "--output-format", "concise")
    assert out.returncode == 0, f"ruff check:\n{out.stdout[-4000:]}{out.stderr}"


def test_no_formatter_escape_hatches():
    """Formatter escape hatches (``fmt`` skip / off comments) only fought the formatter: the code is written
    so it keeps it. (The version of ruff is the lock's: tests/test_environment.py.)"""
    markers = tuple(f"# fmt: {word}" for word in ("skip", "off"))
    marked = [
        f"{path.relative_to(ROOT)}:{i}"
        for name in PATHS
        for path in ([ROOT / name] if name.endswith(".py") else sorted((ROOT / name).rglob("*.py")))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if any(m in line for m in markers)
    ]
    assert not marked, f"formatter markers: {marked}"


def test_no_module_in_the_package_over_500_lines():
    """One idea per file (docs/DESIGN.md section 12): a module that grows past this splits by idea."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "rlvr_fast").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"modules over 500 lines: {long}"
