"""The package's structure: no import cycle among the modules of ``monai_mcx``, ``torch.load`` called in one place
(``monai_mcx/networks/weights.py``), no program in ``experiments/`` or ``scripts/`` editing ``sys.path``, and no module
over 600 lines.

The import graph is read from the source (``ast``), not by importing: an edge ``a -> b`` means that importing module
``a`` runs module ``b`` first (a module-level ``import`` / ``from ... import``; imports inside functions are not
edges, imports in class bodies are). Relative imports are resolved; ``from pkg import name`` points at the submodule
``pkg.name`` when there is one, else at ``pkg`` (its ``__init__`` must have run). A package the importer lives in is
already being imported, so it is an edge only when names are taken from its ``__init__``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from conftest import REPO

PACKAGE = "monai_mcx"
#: the one file allowed to call torch.load (the weights layer: weights_only=True, errors naming the file)
TORCH_LOAD_HOME = Path("monai_mcx") / "networks" / "weights.py"
#: folders whose code must read weights through the weights layer (tests may call torch.load)
TORCH_LOAD_SCOPE = ("monai_mcx", "scripts", "experiments", "monailabel_app")
#: folders of programs run from the repository root (``python -m experiments.<name>``, ``python scripts/<name>.py``):
#: they import ``monai_mcx`` and ``experiments`` from the root or as installed, never by editing ``sys.path``
SYS_PATH_SCOPE = ("experiments", "scripts")
MAX_LINES = 600


# ----------------------------------------------------------------------------------------------- the import graph
def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file of ``root / package`` (``__init__.py`` -> the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _module_level_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: not inside a function (or lambda), not under
    ``if TYPE_CHECKING:``."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it runs at import time}``, restricted to ``modules`` (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        own_pkg = name if is_pkg else name.rpartition(".")[0]
        ancestors = _ancestors(name)
        edges: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges |= (_ancestors(alias.name) | {alias.name}) - ancestors
                continue
            if node.level:
                base = own_pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            edges |= _ancestors(target) - ancestors
            takes_names = False
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    edges.add(sub)
                else:
                    takes_names = True
            if takes_names or target not in ancestors:
                edges.add(target)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursive Tarjan; the package is a few dozen modules deep at most
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        # shortest path back to start inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in prev and w != start:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        cycles.append([start] + list(reversed(path[1:])) + [start])
    return cycles


def test_cycle_finder_finds_a_cycle_in_a_fake_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    two = find_cycles({"x": {"y"}, "y": {"x"}, "p": {"q"}, "q": {"r"}, "r": {"p"}})
    assert sorted(map(tuple, two)) == [("p", "q", "r", "p"), ("x", "y", "x")]


def test_import_graph_resolves_relative_imports_and_ignores_function_level_ones(tmp_path):
    """A fake package on disk: ``pkg/__init__ -> pkg.a -> pkg.sub.b -> pkg.a`` is a cycle (through a relative
    import and a ``from pkg.sub import b`` of a submodule); the same imports inside a function are not."""
    files = {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "from pkg.sub import b\nthing = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import a\n",
        "pkg/c.py": "def f():\n    from pkg import a\n",
        "pkg/d.py": "import pkg.c\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = module_names(tmp_path, "pkg")
    graph = import_graph(modules)
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    # taking a NAME from the package __init__ that is still importing you is a cycle too
    (tmp_path / "pkg/sub/b.py").write_text("from pkg import thing\n")
    assert find_cycles(import_graph(module_names(tmp_path, "pkg"))) == [["pkg", "pkg.a", "pkg.sub.b", "pkg"]]


def test_no_import_cycle_in_monai_mcx():
    modules = module_names(REPO, PACKAGE)
    assert f"{PACKAGE}.model.load" in modules and f"{PACKAGE}.networks.weights" in modules
    graph = import_graph(modules)
    assert f"{PACKAGE}.networks.weights" in graph[f"{PACKAGE}.model.files"]  # the graph is not trivially empty
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in monai_mcx (module-level imports):\n  " + "\n  ".join(
        " -> ".join(c) for c in cycles
    )


# ----------------------------------------------------------------------------------------------- torch.load
def torch_load_calls(path: Path) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
    ]


def test_torch_load_finder(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import torch\n\ndef g(p):\n    return torch.load(p, weights_only=True)\nnp.load(p)\n")
    assert torch_load_calls(f) == [4]


def test_torch_load_only_in_the_weights_layer():
    offenders, scanned = [], set()
    for folder in TORCH_LOAD_SCOPE:
        for path in sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else []:
            rel = path.relative_to(REPO)
            scanned.add(rel)
            if rel == TORCH_LOAD_HOME:
                assert torch_load_calls(path), f"{rel} no longer calls torch.load: update TORCH_LOAD_HOME"
                continue
            offenders += [f"{rel}:{line}" for line in torch_load_calls(path)]
    assert Path("experiments") / "lesion_suite.py" in scanned and TORCH_LOAD_HOME in scanned
    assert not offenders, (
        f"torch.load called outside {TORCH_LOAD_HOME} (read weights with monai_mcx.model.load_model or "
        f"monai_mcx.networks.weights): {offenders}"
    )


# ----------------------------------------------------------------------------------------------- sys.path
def sys_path_uses(path: Path) -> list[int]:
    """Line numbers where ``path`` touches ``sys.path`` (``sys.path...`` or ``from sys import path``)."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            lines.append(node.lineno)
    return sorted(lines)


def test_sys_path_finder(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os.path\nimport sys\n\nsys.path.insert(0, 'x')\nos.path.join('a')\nfrom sys import path\n")
    assert sys_path_uses(f) == [4, 6]


def test_no_sys_path_edits_in_experiments_or_scripts():
    """The experiments run as ``python -m experiments.<name>`` from the repository root and import through the
    package (``experiments.common``, ``monai_mcx``): none of them, and no user script, edits ``sys.path``."""
    files = [p for folder in SYS_PATH_SCOPE for p in sorted((REPO / folder).rglob("*.py"))]
    assert REPO / "experiments" / "common.py" in files  # the scan is not trivially empty
    offenders = [f"{p.relative_to(REPO)}:{line}" for p in files for line in sys_path_uses(p)]
    assert not offenders, f"sys.path edited (run the program as a module from the repository root): {offenders}"


# ----------------------------------------------------------------------------------------------- module size
def test_no_module_over_600_lines():
    """No file in monai_mcx/ over 600 lines (a module that grows past it is split by concern). Files other work is
    splitting right now may make this fail until that work lands."""
    long = {
        str(p.relative_to(REPO)): n
        for p in sorted((REPO / PACKAGE).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
