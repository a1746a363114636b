"""The code's shape: no import cycle among croptune's modules, and no code that asks whether a
croptune module exists (every part ships; a lookup would hide a renamed module until run time)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "trainable", "search_spaces")
CODE = (*PACKAGES, "bench", "run_search.py")
LOOKUPS = {"find_spec", "import_module", "__import__"}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every module under the given packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the croptune modules it imports, at the top or inside functions alike (a lazy
    import is still a dependency: it only moves the failure to run time)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    kept = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(kept + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    deps.add(target if target in modules else base)
        graph[name] = {dep for dep in deps if dep in modules and dep != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_croptune_has_no_import_cycle():
    graph = import_graph(module_files(REPO))
    assert "tuner.tracking.hooks" in graph and "tuner.hooks" in graph["tuner.tracking.hooks"]  # the graph is real
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path):
    package = tmp_path / "tuner"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from tuner import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "c.py").write_text("import tuner.a\n")
    assert cycles(import_graph(module_files(tmp_path, ("tuner",)))) == [["tuner.a", "tuner.b"]]


def lookups_of_croptune_modules(path: Path, root: Path = REPO) -> list[str]:
    """Where one file looks a croptune module up by name: a find_spec / import_module / __import__
    call on a literal croptune name, or any string that is exactly a dotted croptune module name
    (a table of modules to look up; `python -m trainable` names a package, not a lookup)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args:
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            arg = node.args[0]
            if func in LOOKUPS and isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                    and arg.value.split(".")[0] in PACKAGES:
                bad.append(f"{path.relative_to(root)}:{node.lineno} {func}({arg.value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(rf"({'|'.join(PACKAGES)})(\.\w+)+", node.value):
            bad.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    return sorted(set(bad))


def test_no_code_asks_whether_a_croptune_module_exists(tmp_path):
    files = [REPO / "run_search.py", *(f for name in CODE[:-1] for f in sorted((REPO / name).rglob("*.py")))]
    assert len(files) > 50
    assert [hit for path in files for hit in lookups_of_croptune_modules(path)] == []
    planted = tmp_path / "tuner" / "plugin.py"
    planted.parent.mkdir()
    planted.write_text("import importlib.util\nif importlib.util.find_spec('tuner.tracking'):\n    pass\n"
                       "TABLE = {'ui': ('tuner.tracking.ui', 'main')}\nRUN = ['python', '-m', 'trainable']\n")
    assert lookups_of_croptune_modules(planted, tmp_path) == [
        "tuner/plugin.py:2 'tuner.tracking'", "tuner/plugin.py:2 find_spec('tuner.tracking')",
        "tuner/plugin.py:4 'tuner.tracking.ui'"]


def test_no_module_forwards_attributes_with_a_module_getattr():
    """A module-level __getattr__ re-exports lazily: readers cannot find where a name lives."""
    forwarding = [name for name, path in module_files(REPO).items()
                  if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
                         for node in ast.parse(path.read_text()).body)]
    assert forwarding == []
