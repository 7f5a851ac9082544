"""Layers point one way (cli -> tasks -> models / data / geo / viz -> ops) and no module imports itself back.

Read from the source with ``ast`` (lazy imports inside functions count too), so a new upward import or
an import circle fails here before it confuses a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rsvision"
BASE = {"errors", "config", "runtime", "outputs", "progress", "weights", "__init__"}  # leaf helpers anyone may import
ALLOWED = {
    "ops": set(),
    "models": {"ops"},
    "data": {"ops"},
    "geo": {"ops"},
    "viz": {"ops"},
    "tasks": {"models", "data", "geo", "viz", "ops"},
    "cli": {"tasks", "models", "data", "geo", "viz", "ops"},
}


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsvision"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("rsvision"))
        graph[mod] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_layers_point_down():
    bad = []
    for mod, deps in _imports().items():
        src = _layer(mod)
        for d in deps:
            dst = _layer(d)
            if dst != src and dst not in BASE and src not in BASE and dst not in ALLOWED[src]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports pointing up or across: " + ", ".join(sorted(bad))


def test_no_import_cycles():
    graph = _imports()
    # package __init__ files re-export their children: an edge child -> package is not a cycle of logic
    def edges(m):
        return {d for d in graph[m] if not m.startswith(d + ".")}

    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        for d in edges(m):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(cycles)
