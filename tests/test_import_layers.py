"""Imports run one way: no module imports, at any depth, a module that imports it back.

Every import counts, at module level or inside a function; only imports under
`if TYPE_CHECKING:` do not (they never run).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"memagent": ROOT / "memagent", "memagent_server": ROOT / "service" / "memagent_server"}


def module_files() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name `path` imports (absolute, `from x import y` as x.y and x)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imported_names(path, module) & files.keys() - {module} for module, path in files.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not cycles, "import circles:\n" + "\n".join(sorted(set(cycles)))


# Plain data that every layer shares, torch-free and importing nothing of memagent.
SHARED = {"memagent.sampling"}


def test_the_model_layer_imports_nothing_above_it():
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("memagent.model"):
            above = {m for m in imports if m.startswith("memagent.") and not m.startswith("memagent.model")} - SHARED
            assert not above, f"{module} imports {sorted(above)} from above the model layer"


def test_the_service_never_touches_the_model_layer():
    for module, imports in import_graph().items():
        if module.startswith("memagent_server"):
            assert not {m for m in imports if m.startswith("memagent.model")}, module
