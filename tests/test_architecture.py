"""The package's shape: no import cycles, no private names imported across modules, nothing below the public API
importing the root package, and a module map in docs/architecture.md that lists every module.

The layers themselves are the import-linter contract in pyproject.toml (`lint-imports`, run by `make lint`).
Imports inside functions count everywhere here: grimp reads every import statement of a module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "microstream"
# Layers above the public API (they may use `import microstream as ms`); see [tool.importlinter] in pyproject.toml.
ABOVE_API = ("cli", "cluster", "unikernel_backend", "warmup")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("microstream", cache_dir=None)


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_graph_sees_imports_inside_functions(graph):
    # pipeline.py imports each source module inside the method that uses it: the graph must have those edges
    details = graph.get_import_details(importer="microstream.pipeline", imported="microstream.sources.mqtt")
    assert details, "grimp no longer reports function-level imports; the cycle test would be blind to them"


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    described = []
    for component in cycles:
        edges = [f"{a} -> {b} (line {d['line_number']}: {d['line_contents']})"
                 for a in component for b in component
                 for d in graph.get_import_details(importer=a, imported=b)]
        described.append("\n    ".join(edges))
    assert not cycles, "import cycles:\n  " + "\n  ".join(described)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: str, path: Path, node: ast.AST) -> list[tuple[str, list[str]]]:
    """(microstream module, names taken from it) for an import statement."""
    if isinstance(node, ast.ImportFrom):
        target = _resolve(module, path.name == "__init__.py", node)
        return [(target, [a.name for a in node.names])]
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    return []


def test_no_private_names_imported_across_modules():
    offences = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target, names in _imported(module, path, node):
                if target == module or not (target == "microstream" or target.startswith("microstream.")):
                    continue
                if any(n.startswith("_") and not n.startswith("__") for n in [*target.split("."), *names]):
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offences, "private names imported across modules:\n  " + "\n  ".join(offences)


def test_only_the_top_layers_import_the_root_package(graph):
    # the layers contract has `microstream` as its container, so it cannot see `import microstream as ms`
    offenders = []
    for module in sorted(graph.find_modules_that_directly_import("microstream")):
        layer = module.split(".")[1]
        if layer not in ABOVE_API:
            lines = [d["line_contents"] for d in graph.get_import_details(importer=module, imported="microstream")]
            offenders.append(f"{module}: {lines}")
    assert not offenders, "modules below the public API importing the root package:\n  " + "\n  ".join(offenders)


def _module_map() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"^## Module map\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "docs/architecture.md has no '## Module map' section"
    return match.group(1)


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def test_module_map_lists_every_module():
    section = _module_map()
    listed = set(re.findall(r"`([\w/]+\.py)`", section))
    missing = []
    for _, path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and not _has_code(path):
            continue  # a package docstring only: the package's row covers it
        if rel not in listed:
            missing.append(rel)
    assert not missing, f"docs/architecture.md's module map does not list: {missing}"
    stale = sorted(rel for rel in listed if not (PACKAGE / rel).exists())
    assert not stale, f"docs/architecture.md's module map lists modules that do not exist: {stale}"
