"""The package's import structure, read from its source: no module imports another's
private name (or a private module), and the modules import one another without a cycle
(imports inside functions included: a lazy import that closes a cycle is one too)."""

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"


def modules() -> dict[str, Path]:
    found = {}
    for f in sorted((SRC / "scorelab").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def imports(path: Path, known) -> list[tuple[str, str, int]]:
    """(module, name or '', line) of each scorelab import in ``path``; ``from pkg import
    mod`` of a submodule counts as an import of that module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "scorelab":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in known
                             else (node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names
                      if a.name.split(".")[0] == "scorelab"]
    return found


def test_no_private_name_is_imported_across_modules():
    known = modules()
    bad = [f"{path.relative_to(SRC)}:{line} imports {target}{'.' + name if name else ''}"
           for mod, path in known.items() for target, name, line in imports(path, known)
           if target != mod and (name.startswith("_")
                                 or any(p.startswith("_") for p in target.split(".")))]
    assert not bad, "\n".join(bad)


def test_modules_import_each_other_without_a_cycle():
    known = modules()
    graph = {mod: sorted({t for t, _, _ in imports(path, known) if t in known and t != mod})
             for mod, path in known.items()}
    state, stack, cycles = {}, [], []

    def visit(mod):
        state[mod] = "open"
        stack.append(mod)
        for dep in graph[mod]:
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = "done"

    for mod in graph:
        if mod not in state:
            visit(mod)
    assert not cycles, "\n".join(cycles)
