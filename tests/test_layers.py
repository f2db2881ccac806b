"""The layers of the package, read from the source with `ast`: library modules never import the command layer
(infusion_tf.cli, train/, eval/, bench/) nor another module's command-line `main`; the shared command-line pieces
(console) and the atomic writes (files) are leaves; and the imports that run when a module is imported form no
cycle."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "infusion_tf"
COMMAND_LAYER = ("infusion_tf.cli", "train", "eval", "bench")
LEAVES = ("infusion_tf.console", "infusion_tf.files")


def _modules() -> dict[str, ast.Module]:
    return {f"infusion_tf.{path.stem}" if path.stem != "__init__" else "infusion_tf": ast.parse(path.read_text())
            for path in sorted(PACKAGE.glob("*.py"))}


def _imports(nodes) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) of every import statement among `nodes` (ast nodes, walked)."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [alias.name for alias in node.names]
            found.append((node.module, names))
            if node.module == "infusion_tf":  # `from infusion_tf import data` imports the module infusion_tf.data
                found += [(f"infusion_tf.{name}", []) for name in names]
    return found


def _everywhere(tree: ast.Module):
    return _imports(ast.walk(tree))  # function bodies too: a lazy import is a dependency all the same


def _at_import_time(tree: ast.Module):
    """The imports that run when the module is imported: module level, including if/try blocks there."""
    nodes, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return _imports(nodes)


def _is_under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_library_modules_do_not_import_the_command_layer():
    offending = [(name, module) for name, tree in _modules().items() if name != "infusion_tf.cli"
                 for module, _ in _everywhere(tree) if _is_under(module, COMMAND_LAYER)]
    assert not offending, f"library modules import command-line modules: {offending}"


def test_no_module_imports_another_modules_command_line_main():
    offending = [(name, module, imported) for name, tree in _modules().items() if name != "infusion_tf.cli"
                 for module, names in _everywhere(tree) if _is_under(module, ("infusion_tf",))
                 for imported in names if imported == "main" or imported.endswith("_main")]
    assert not offending, f"only infusion_tf.cli may import a command's main: {offending}"


def test_console_and_files_are_leaves():
    modules = _modules()
    for leaf in LEAVES:
        inner = [module for module, _ in _everywhere(modules[leaf]) if _is_under(module, ("infusion_tf",))]
        assert not inner, f"{leaf} must import nothing of infusion_tf, imports {inner}"


def test_imports_at_import_time_form_no_cycle():
    """A module's import-time imports of other infusion_tf modules, followed, never lead back to it. (The package
    itself, infusion_tf/__init__.py, is imported before any of its modules and is left out.)"""
    modules = _modules()
    graph = {name: sorted({module for module, _ in _at_import_time(tree)
                           if module in modules and module not in (name, "infusion_tf")})
             for name, tree in modules.items()}
    state, cycles = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for successor in graph[node]:
            if state.get(successor) == "open":
                cycles.append(path[path.index(successor):] + [successor])
            elif successor not in state:
                visit(successor, path + [successor])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"
