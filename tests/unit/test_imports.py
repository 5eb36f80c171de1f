"""The import graph's rules: the data path is layered and acyclic.

Every import counts, ``TYPE_CHECKING`` and function-level ones included: a cycle that only
type-checking closes is still a cycle in the design. The graph is read from the source with
``ast``, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "sidecar_proxy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The sidecar_proxy modules a file imports (a package import counts as its __init__)."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from package import module` imports the module too
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    return {name: imports_of(path) & files.keys() - {name} for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]], within: str) -> list[str] | None:
    """A cycle among the modules under ``within``, as a path, or None."""
    nodes = {n for n in edges if n.startswith(within)}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node] & nodes):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


EDGES = graph()


def test_the_graph_is_read() -> None:
    # Guards the checks below against passing on an empty or misread graph.
    assert "sidecar_proxy.http.legs" in EDGES["sidecar_proxy.http.exchange"]
    assert "sidecar_proxy.http.exchange" in EDGES["sidecar_proxy.http.h1.client"]


@pytest.mark.parametrize("within", ["sidecar_proxy.http", "sidecar_proxy"])
def test_no_import_cycle(within: str) -> None:
    assert find_cycle(EDGES, within) is None


def test_the_cycle_finder_finds_one() -> None:
    edges = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}
    assert find_cycle(edges, "p") == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}, "p") is None


def layer(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in EDGES.items() if m == prefix or m.startswith(prefix + ".")}


def test_the_data_path_does_not_import_admin() -> None:
    for module, deps in layer("sidecar_proxy.http").items():
        assert not {d for d in deps if d.startswith("sidecar_proxy.admin")}, module


def test_policies_import_nothing_from_the_data_path() -> None:
    for module, deps in layer("sidecar_proxy.policy").items():
        assert not {d for d in deps if d.startswith("sidecar_proxy.http")}, module


def test_the_interfaces_are_a_bottom_module() -> None:
    """legs.py may name the head records and nothing else of the data path, so every leg and
    the exchange can import it."""
    http = {d for d in EDGES["sidecar_proxy.http.legs"] if d.startswith("sidecar_proxy.http")}
    assert http <= {"sidecar_proxy.http", "sidecar_proxy.http.fields"}


def test_the_app_leg_knows_nothing_of_the_exchange() -> None:
    for module in ("sidecar_proxy.http.h1.app", "sidecar_proxy.http.pool"):
        assert "sidecar_proxy.http.exchange" not in EDGES[module]
        assert "sidecar_proxy.http.h1.client" not in EDGES[module]


def test_the_hooks_api_is_a_bottom_package() -> None:
    """What users' hooks import (sidecar_proxy.hooks) pulls in nothing of the proxy: the data
    path reaches the hooks through http/hookstep.py, never the other way round."""
    for module, deps in layer("sidecar_proxy.hooks").items():
        assert deps <= {"sidecar_proxy", *layer("sidecar_proxy.hooks")}, module
    assert "sidecar_proxy.hooks.api" in EDGES["sidecar_proxy.http.hookstep"]
