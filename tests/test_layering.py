"""The import graph of the code: cli -> pipeline -> cache -> rpihmif, exit_codes at the bottom, no circle.

Every import counts, at module top or inside a function; the graph is read from the source with `ast`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import helpers

ROOT = helpers.ROOT
PACKAGES = ("rpihmif", "cache", "pipeline")
# a room may import only rooms of a lower rank (same rank: only itself)
RANK = {"exit_codes": -1, "rpihmif": 0, "cache": 1, "pipeline": 2, "pipeline.runtime": 2, "pipeline.io": 2, "pipeline.config": 2,
        "pipeline.stage_config": 3, "pipeline.preflight": 3, "pipeline.config_render": 3, "pipeline.data_stats": 4, "pipeline.extract": 4, "pipeline.train": 5,
        "pipeline.tag": 5, "cli": 9}


def modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py", "exit_codes": ROOT / "exit_codes.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Project modules `path` imports (relative imports resolved against `name`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES + ("cli", "exit_codes")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path, name) if m in mods and m != name} for name, path in mods.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else parts[0]


def test_every_room_has_a_rank():
    assert {room(m) for m in modules()} <= set(RANK), {room(m) for m in modules()} - set(RANK)


def test_no_upward_import():
    upward = [f"{a} -> {b}" for a, deps in graph().items() for b in deps
              if room(a) != room(b) and RANK[room(b)] >= RANK[room(a)]]
    assert upward == []


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle a depth-first walk meets, as [a, b, ..., a]."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    return found


def test_no_import_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]  # the walk finds one
    assert circles(graph()) == []


def test_model_library_stays_pure():
    """rpihmif imports no Ray, h5py or pyarrow (and no project package above it)."""
    for name, path in modules().items():
        if room(name) == "rpihmif":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not {m.split(".")[0] for m in names} & {"ray", "h5py", "pyarrow", "pipeline", "cache"}, name


def test_model_library_raises_plain_exceptions():
    """rpihmif knows no exit codes: it never imports exit_codes, and exit_codes imports nothing of the project."""
    g = graph()
    assert [m for m in g if room(m) == "rpihmif" and "exit_codes" in g[m]] == []
    assert g["exit_codes"] == set()


def test_contributing_layout_names_every_module():
    """CONTRIBUTING.md's "Layout of the code" tree has one line per module (a new module needs its line)."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout of the code"):]
    missing = [str(p.relative_to(ROOT)) for name, p in modules().items()
               if p.name != "__init__.py" and f" {p.name} " not in layout and f"\n{p.name} " not in layout]
    assert missing == []
