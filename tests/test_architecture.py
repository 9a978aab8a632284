"""The package's shape, checked from its source with `ast` (no import, no JAX): the import graph
has no cycle and never runs up a floor, no two modules share a file name, no function is long,
internal imports sit at module top outside the stage boundary, and every error the package
raises at its user is a UserError. These are the rules of the README's Layout section."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "gemma_tool_use"

# Floors, lowest first: a module imports its own subpackage, or a lower floor, never a higher one.
FLOORS = {
    "utils": 0,
    "config": 1,
    "model": 2,
    "format": 3,
    "generation": 4,
    "evaluation": 5,  # BFCL glue sits below data/: decontamination reads BFCL's entries
    "data": 6,
    "training": 7,
    "serving": 7,
    "export": 7,
    "orchestration": 8,
    "stages": 9,
    "report": 10,  # the report CLI
    "__main__": 10,
}
# Where lazy internal imports are the point: JAX must not load before prepare_runtime has set up
# the devices (stage runners; the stage frame that calls prepare_runtime).
LAZY_IMPORTS_ALLOWED = ("stages/", "orchestration/stage_context.py")
MAX_FUNCTION_LINES = 80
# Exceptions that never reach the user as a CLI error: BFCL's decoder signal, a data row skipped
# and counted, an HTTP 4xx/5xx answer to a client (the front door's slow and idle connections too), a
# server child that scripts and tests start.
NOT_USER_ERRORS = {
    "DecodeError",
    "RowError",
    "RequestError",
    "ShuttingDown",
    "Idle",
    "TooSlow",
    "ServerDidNotStart",
    "_NumberTooLarge",
    "_TooDeep",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _targets(name: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement reads: for `from m import x`, the submodule m.x
    where there is one, else m; for `import m`, m (or its nearest package module)."""
    if isinstance(node, ast.ImportFrom):
        raw = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
    else:
        raw = [a.name for a in node.names]
    out = []
    for target in raw:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target not in (name, "gemma_tool_use") and target not in out:
            out.append(target)
    return out


def _edges() -> dict[str, set[str]]:
    edges = defaultdict(set)
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                edges[name].update(_targets(name, node))
    return edges


def _floor(module: str) -> int:
    return FLOORS[module.split(".")[1]]


def test_every_subpackage_has_a_floor():
    assert {m.split(".")[1] for m in MODULES if m != "gemma_tool_use"} <= set(FLOORS)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by a depth-first walk, each as a path that ends where it started."""
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_edges())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_runs_up_a_floor():
    up = [
        f"{a} -> {b}"
        for a, bs in _edges().items()
        if a != "gemma_tool_use"
        for b in bs
        if b != "gemma_tool_use" and _floor(b) > _floor(a)
    ]
    assert not up, "imports that run up a floor:\n" + "\n".join(sorted(up))


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The graph reader is not blind: a module importing its importer is a cycle, and the
    config importing a stage is an upward import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from gemma_tool_use.stages.sft import run\nfrom gemma_tool_use.evaluation import bfcl\n")
    assert _targets("gemma_tool_use.config.schema", tree.body[0]) == ["gemma_tool_use.stages.sft"]
    assert _targets("gemma_tool_use.data.mix", tree.body[1]) == ["gemma_tool_use.evaluation.bfcl"]
    assert _floor("gemma_tool_use.stages.sft") > _floor("gemma_tool_use.config.schema")
    edges = _edges()
    assert "gemma_tool_use.utils.errors" in edges["gemma_tool_use.config.checks"]


def test_no_two_modules_share_a_file_name():
    names = defaultdict(list)
    for path in MODULES.values():
        if path.name != "__init__.py":
            names[path.name].append(str(path.relative_to(PACKAGE)))
    same = {k: v for k, v in names.items() if len(v) > 1}
    assert not same, f"modules sharing a file name: {same}"


@pytest.mark.parametrize("root", ["gemma_tool_use", "scripts"])
def test_no_function_is_long(root):
    long = []
    for path in sorted((REPO / root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - start + 1})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_internal_imports_sit_at_module_top():
    inner = []
    for name, tree in TREES.items():
        rel = str(MODULES[name].relative_to(PACKAGE))
        if rel.startswith(LAZY_IMPORTS_ALLOWED):
            continue
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and id(node) not in top
                and (node.module or "").startswith("gemma_tool_use")
            ):
                inner.append(f"{rel}:{node.lineno} from {node.module}")
    assert not inner, "internal imports inside functions (move them to the module top):\n" + "\n".join(inner)


def _bases(tree) -> dict[str, list[str]]:
    return {
        n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef)
    }


def test_every_user_facing_error_is_a_user_error():
    bases = {}
    for tree in TREES.values():
        bases.update(_bases(tree))

    def is_user_error(cls, seen=()):
        return cls == "UserError" or any(is_user_error(b, seen + (cls,)) for b in bases.get(cls, []) if b not in seen)

    def is_exception(cls, seen=()):
        return cls in ("Exception", "ValueError", "RuntimeError", "KeyboardInterrupt") or any(
            is_exception(b, seen + (cls,)) for b in bases.get(cls, []) if b not in seen
        )

    loose = sorted(
        c for c in bases if is_exception(c) and not is_user_error(c) and c not in NOT_USER_ERRORS and c != "Stopped"
    )
    assert not loose, f"exception types that are not UserErrors (one-line CLI errors): {loose}"


def test_entry_point_and_stage_runners_import_without_jax():
    """`--help`, config errors and preflight answer before JAX loads: importing the CLI and every
    stage runner must not import JAX (a runner imports its heavy modules after prepare_runtime)."""
    code = (
        "import sys, gemma_tool_use.__main__, gemma_tool_use.stages.sft, gemma_tool_use.stages.grpo, "
        "gemma_tool_use.stages.eval, gemma_tool_use.stages.predict, gemma_tool_use.stages.serve, "
        "gemma_tool_use.stages.export, gemma_tool_use.report; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'tunix', 'orbax'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
