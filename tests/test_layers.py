"""The package's layers: each sub-package imports only itself and the layers below it.

The flow data → members → run → refer → combine → serve → report is also the import order:
a module never imports a higher layer, not even inside a function, so no import circle can
form between sub-packages. Within a sub-package, modules must not import each other in a
circle either. Adding a module: put it in the sub-package that owns its concept; a test failure
here names the import that breaks the order.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ensemble"

#: Lowest first. ``app`` is the command line, the demo and the package's own ``__init__``.
LAYERS = (
    "core",
    "recipes",
    "data",
    "corrupt",
    "members",
    "run",
    "refer",
    "combine",
    "serve",
    "report",
    "app",
)


def _layer(module: str) -> str:
    """``ensemble.combine.base`` → ``combine``; top-level modules belong to ``app``."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1]
    return "app"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every ``ensemble.…`` module ``path`` imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ensemble.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ensemble"):
            if node.module == "ensemble":  # `from ensemble import x`: a sub-module, or the
                for alias in node.names:  # package's own name (then the package is imported)
                    module = f"ensemble.{alias.name}"
                    found.add(module if module in MODULES else "ensemble")
            else:
                found.add(node.module)
    return found


def test_every_sub_package_is_a_known_layer():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_no_higher_layer(module):
    own = LAYERS.index(_layer(module))
    higher = sorted(
        imported
        for imported in _imports(MODULES[module])
        if imported in MODULES and LAYERS.index(_layer(imported)) > own
    )
    assert not higher, f"{module} (layer {_layer(module)!r}) imports higher layers: {higher}"


def test_no_import_circles():
    graph = {
        name: {imported for imported in _imports(path) if imported in MODULES and imported != name}
        for name, path in MODULES.items()
    }
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                cycle = trail[trail.index(successor) :] + [successor]
                pytest.fail("import circle: " + " → ".join(cycle))
            if successor not in state:
                visit(successor, trail + [successor])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
