"""The library's shape (issue 17): no import cycles among speechmerge modules, function-level
imports only where a heavy or optional dependency is deferred on purpose (with a comment
saying so), and no module over 500 lines without a note in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "speechmerge"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str, path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported speechmerge module, node, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:  # imports under `if TYPE_CHECKING:` / try at module level
        if isinstance(node, ast.If | ast.Try):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, path, node)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            out.append((name, node, id(node) in top))
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for name, _, _ in imports(m, path):
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != m:
                g[m].add(name)
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    """Function-level imports count too: a circle hidden inside a function is still one. A
    package's own __init__ importing its submodules is not an edge back to it."""
    g = graph()
    for m in g:  # `speechmerge.x.y` imports of `speechmerge.x` reach the package's __init__
        g[m] = {n for n in g[m] if not m.startswith(n + ".")}
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def deferred_imports() -> list[tuple[str, int, str]]:
    """Function-level imports without a comment on the import or the line above it."""
    bad = []
    for m, path in MODULES.items():
        lines = path.read_text().splitlines()
        for _, node, at_top in imports(m, path):
            if at_top:
                continue
            first = node.lineno - 1
            window = lines[max(first - 1, 0) : (node.end_lineno or node.lineno)]
            if not any("#" in line for line in window):
                bad.append((str(path.relative_to(ROOT)), node.lineno, lines[first].strip()))
    return sorted(set(bad))


def test_function_level_imports_say_why():
    assert deferred_imports() == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_are_explained(module):
    lines = len(MODULES[module].read_text().splitlines())
    if lines <= MAX_LINES:
        return
    doc = (ROOT / "docs/architecture.md").read_text()
    rel = str(MODULES[module].relative_to(ROOT))
    assert rel in doc and "lines" in doc, (
        f"{rel} has {lines} lines; say why in docs/architecture.md"
    )
