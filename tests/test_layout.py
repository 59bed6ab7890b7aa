"""The house stays standing: every import inside vendor_node runs downward, and nothing imports in a circle.

Read from the source with ast (no third-party tool, nothing imported), so a lazy import inside a function
counts as much as one at the top of a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vendor_node"

# Each subpackage's floor: it may import its own modules, the shared top-level modules (rank 0) and
# subpackages of a lower rank, except where FORBIDDEN says more.
RANK = {"": 0, "__main__": 9, "hand": 1, "money": 1, "devices": 1, "unit": 2, "sim": 3, "office": 3, "bench": 4, "cli": 5}
FORBIDDEN = {
    "hand": {"money", "devices"},       # recognition knows nothing of payments or hardware
    "money": {"hand", "devices"},       # the ledger works without a camera or a board
    "devices": {"hand", "money"},       # a device is only a device
    "office": {"unit", "sim", "hand", "devices"},  # the back office relays sealed data, never runs a unit
}
SHARED_TOP = {"errors", "config", "__init__", "__main__"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _area(parts: tuple[str, ...]) -> str:
    """The subpackage a module belongs to ('' for the shared top-level modules; `python -m vendor_node` sits on top)."""
    if parts == ("__main__",):
        return "__main__"
    return parts[0] if len(parts) > 1 else ""


def _imports(path: Path, parts: tuple[str, ...]):
    """Yield (dotted target under vendor_node, line) for every import of the package itself."""
    package_parts = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                if node.level - 1 > len(package_parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import climbs out of the package")
                target = base + (node.module.split(".") if node.module else [])
                if node.module:
                    yield ".".join(target), node.lineno
                else:
                    for alias in node.names:
                        yield ".".join(target + [alias.name]), node.lineno
            elif node.module and (node.module == "vendor_node" or node.module.startswith("vendor_node.")):
                target = node.module.split(".")[1:]
                if target:
                    yield ".".join(target), node.lineno
                else:
                    for alias in node.names:
                        yield alias.name, node.lineno
            elif node.module and node.module.split(".")[0] in {"tests", "conftest"}:
                yield "tests", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name.startswith("vendor_node."):
                    yield name.split(".", 1)[1], node.lineno
                elif name.split(".")[0] in {"tests", "conftest"}:
                    yield "tests", node.lineno


def _target_area(dotted: str) -> str:
    first = dotted.split(".")[0]
    return "" if first in SHARED_TOP or (PACKAGE / f"{first}.py").exists() else first


def _graph():
    edges = {}
    for path, parts in _modules():
        name = ".".join(parts)
        edges[name] = [(target, line) for target, line in _imports(path, parts)]
    return edges


def test_every_subpackage_has_a_face_and_a_rank():
    for sub in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")):
        assert (sub / "__init__.py").is_file(), f"vendor_node/{sub.name}/ has no __init__.py naming its public face"
        assert sub.name in RANK, f"vendor_node/{sub.name}/ has no place in the layer table of tests/test_layout.py"


def test_imports_only_run_downward():
    wrong = []
    for path, parts in _modules():
        area = _area(parts)
        for target, line in _imports(path, parts):
            where = f"vendor_node/{'/'.join(parts)}.py:{line}"
            if target == "tests":
                wrong.append(f"{where} imports a test")
                continue
            to = _target_area(target)
            if to == area:
                continue
            if to in FORBIDDEN.get(area, set()):
                wrong.append(f"{where} ({area}) imports {target} ({to}): forbidden")
            elif RANK[to] >= RANK[area]:
                wrong.append(f"{where} ({area or 'top level'}) imports {target} ({to}): upward or sideways")
    assert not wrong, "imports that break the layering:\n" + "\n".join(wrong)


def _module_of(target: str, modules: set[str]) -> str | None:
    """The module a dotted import target names (a module, or a name inside one, or a package face)."""
    while target:
        if target in modules:
            return target
        if f"{target}.__init__" in modules:
            return f"{target}.__init__"
        target = target.rpartition(".")[0]
    return None


def test_no_module_imports_in_a_circle():
    edges = _graph()
    modules = set(edges)
    graph = {name: sorted({m for t, _ in targets if (m := _module_of(t, modules)) and m != name})
             for name, targets in edges.items()}
    # A package face re-exports its own modules; a module importing a sibling never goes through the face,
    # so edges into a face from inside the same subpackage would be the only way to a circle through it.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_is_over_about_400_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}: {n} lines" for path, _ in _modules()
            if (n := len(path.read_text().splitlines())) > 420]
    assert not long, "split these along a seam:\n" + "\n".join(long)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule is real: a money module that imports the unit is caught."""
    fake = tmp_path / "vendor_node"
    (fake / "money").mkdir(parents=True)
    (fake / "unit").mkdir()
    for init in (fake / "__init__.py", fake / "money" / "__init__.py", fake / "unit" / "__init__.py"):
        init.write_text("")
    (fake / "unit" / "service.py").write_text("X = 1\n")
    (fake / "money" / "journal.py").write_text("from ..unit.service import X\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="money/journal.py:1 .money. imports unit.service"):
        test_imports_only_run_downward()
