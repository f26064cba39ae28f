"""The import graph follows the flow: no cycle, and no module imports a later stage.

Every `import pipeline...` / `from pipeline... import` in the package counts, the ones inside
functions too (a lazy import is still an arrow). read.py and write.py both stand on format.py
and neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The stage of every module, in flow order; a module may import its own stage or an earlier one.
STAGES: dict[str, int] = {
    # the floor everything stands on
    "pipeline": 0, "pipeline.errors": 0, "pipeline.config": 0, "pipeline.faults": 0, "pipeline.format": 0,
    "pipeline.remote": 0, "pipeline.lock": 0, "pipeline.cluster": 0,
    "pipeline.datasets": 1, "pipeline.datasets.records": 1, "pipeline.datasets.dfew": 1,
    "pipeline.datasets.manifest": 1, "pipeline.index": 1,
    "pipeline.decode": 2,
    "pipeline.align": 3,
    "pipeline.write": 4, "pipeline.read": 4,
    "pipeline.build": 5,
    "pipeline.mix": 6,
    "pipeline.stream": 7, "pipeline.verify": 7, "pipeline.inspect": 7,
    "train": 8, "train.metrics": 8, "train.model": 8, "train.loop": 8, "train.cli": 9, "train.__main__": 9,
    "pipeline.cli": 9,
    # tools beside the flow: they may stand on the floor only
    "pipeline.tools": 0, "pipeline.tools.make_sample": 0,
}
FORBIDDEN = {("pipeline.read", "pipeline.write"), ("pipeline.write", "pipeline.read")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted([*ROOT.joinpath("pipeline").rglob("*.py"), *ROOT.joinpath("train").rglob("*.py")]):
        name = _module_name(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # the longest target that is one of our modules (`from pipeline import __version__` is `pipeline`)
            deps |= {t for t in targets if t in STAGES}
        graph[name] = {d for d in deps if d != name}
    return graph


def test_every_module_has_a_stage() -> None:
    assert sorted(set(_imports()) - set(STAGES)) == [], "give the new module a stage in STAGES"


def test_no_module_imports_a_later_stage() -> None:
    bad = [f"{m} (stage {STAGES[m]}) imports {d} (stage {STAGES[d]})"
           for m, deps in _imports().items() for d in sorted(deps)
           if STAGES[d] > STAGES[m] or (m, d) in FORBIDDEN]
    assert bad == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
