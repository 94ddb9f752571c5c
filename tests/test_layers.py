"""The package's import graph: no circle, and no import from a lower layer to a higher one.

The layers are read from the table in docs/DESIGN.md (section 2, "Layers"), so the document and this
check cannot drift apart. Every import counts, also those inside functions and under TYPE_CHECKING:
a lazy import is still a dependency of the design.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlvr_fast"
EXTENSIONS = {"rlvr_fast._C"}  # compiled modules: no source to walk, bottom layer


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (``a.b.c`` is ``a.b`` when ``c`` is an attribute)."""
    while name and name not in MODULES and name not in EXTENSIONS:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "rlvr_fast"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rlvr_fast":
                continue
            out |= {_resolve(f"{target}.{a.name}") for a in node.names}
    out.discard(module)
    out.discard("")
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layers() -> list[tuple[int, list[str]]]:
    """Rows ``| n | `module` `module` ... | ...`` of the table under "### Layers" in docs/DESIGN.md."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("### Layers", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([\w.]+)`", m.group(2))))
    return rows


LAYERS = _layers()


def layer_of(module: str) -> int:
    """The layer of the longest listed prefix of ``module`` (``rlvr_fast`` itself: the package's
    ``__init__``, only that exact name)."""
    best, depth = None, -1
    for n, names in LAYERS:
        for name in names:
            hit = module == name or (name != "rlvr_fast" and module.startswith(name + "."))
            if hit and name.count(".") > depth:
                best, depth = n, name.count(".")
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/DESIGN.md section 2: add it to the table")
    return best


def test_the_layer_table_is_read():
    assert [n for n, _ in LAYERS] == sorted({n for n, _ in LAYERS}) and len(LAYERS) >= 5
    assert all(names for _, names in LAYERS)


def test_every_module_has_a_layer():
    for module in [*MODULES, *EXTENSIONS]:
        layer_of(module)


def test_no_import_goes_up_a_layer():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "source, expect",
    [
        ("from ..worlds import Example\n", {"rlvr_fast.worlds"}),
        ("from .. import ops as rf\n", {"rlvr_fast.ops"}),
        ("def f():\n    from ..trainer.config import Config\n", {"rlvr_fast.trainer.config"}),
        ("import rlvr_fast.ops.video\n", {"rlvr_fast.ops.video"}),
    ],
)
def test_the_walker_sees_relative_lazy_and_absolute_imports(tmp_path, source, expect):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports("rlvr_fast.rewards.m", path) == expect
