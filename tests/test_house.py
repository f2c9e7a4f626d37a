"""The shape of the house, kept by tests: no file over 600 lines, no import circle (imports inside
functions included), floors that run one way, a docstring on every folder saying what it owns, and
every public name the documentation shows still importable where it says."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"cnnspec": REPO / "cnnspec", "cnnspec.backends": REPO / "backends", "cnnspec.calculators": REPO / "calculators"}
LONGEST = 600

# Lowest first: a module imports only from its own floor or below (docs/architecture.md).
FLOORS = [
    ("base", ["cnnspec.errors", "cnnspec.strictjson", "cnnspec.agreement", "cnnspec.calculators"]),
    ("layers", ["cnnspec.layers"]),
    ("spec", ["cnnspec.spec"]),
    ("graph", ["cnnspec.graph"]),
    ("data, runs, backends", ["cnnspec.data", "cnnspec.runs", "cnnspec.backends"]),
    ("porting", ["cnnspec.porting"]),
    ("harness, inference", ["cnnspec.harness", "cnnspec.inference"]),
    ("search, views, tracking", ["cnnspec.search", "cnnspec.views", "cnnspec.tracking"]),
    ("api", ["cnnspec.api"]),
    ("distributed, serving, experiments", ["cnnspec.distributed", "cnnspec.serving", "cnnspec.experiments"]),
    ("cli", ["cnnspec.cli", "cnnspec.__main__"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The cnnspec modules ``module`` imports anywhere in its text (its own package left out)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the module's own package
                package = module.split(".")[: -node.level] if not MODULES[module].name == "__init__.py" else module.split(".")
                base = ".".join([*package[: len(package) - (node.level - 1)], node.module]) if node.level > 1 else ".".join([*package, node.module])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


EDGES = {module: _imports(module) for module in MODULES}


def _floor(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def test_no_file_is_over_600_lines() -> None:
    long = {str(path.relative_to(REPO)): n for path in MODULES.values() if (n := len(path.read_text(encoding="utf-8").splitlines())) > LONGEST}
    assert long == {}


def test_there_is_no_import_circle() -> None:
    """Tarjan's strongly connected components: any component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert circles == [], "; ".join(" <-> ".join(c) for c in circles)


def test_the_checker_finds_a_circle_and_a_floor_broken() -> None:
    """The two rules above can fail: a made-up edge back down is caught by both."""
    assert "cnnspec.graph.dag" in EDGES["cnnspec.graph.load"]
    assert _floor("cnnspec.graph.dag") < _floor("cnnspec.harness.loop")  # type: ignore[operator]
    assert _floor("cnnspec.backends.torch_backend") == _floor("cnnspec.runs.folder")


def test_every_module_has_a_floor_and_imports_only_down() -> None:
    unplaced = sorted(m for m in MODULES if m != "cnnspec" and _floor(m) is None)
    assert unplaced == []
    upward = sorted(f"{m} ({FLOORS[_floor(m)][0]}) imports {n} ({FLOORS[_floor(n)][0]})"  # type: ignore[index]
                    for m, targets in EDGES.items() if m != "cnnspec" for n in targets
                    if n != "cnnspec" and _floor(n) > _floor(m))  # type: ignore[operator]
    assert upward == [], "\n".join(upward)


def test_every_folder_says_what_it_owns() -> None:
    for package, path in MODULES.items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            assert doc and len(doc) > 40, f"{package}: its __init__.py has no docstring saying what it owns"


def test_packaging_lists_every_folder() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    folders = {m for m, p in MODULES.items() if p.name == "__init__.py"} | {"cnnspec.specs"}
    assert listed == folders


# The names README.md and docs/ show people: each still importable from where they say.
PUBLIC = {
    "cnnspec": ["CnnspecError", "Diagnostic", "Graph", "Index", "Location", "Node", "SpecError", "SpecNotFound", "build", "embed",
                "evaluate", "features", "load_spec", "parse_spec", "predict", "resume", "similar", "train", "zoo_names", "__version__"],
    "cnnspec.errors": ["CnnspecError", "TrainingError"],
    "cnnspec.graph": ["Graph", "Node", "build_graph"],
    "cnnspec.backends": ["load_backend", "installed_backends", "BackendUnavailable"],
    "cnnspec.distributed.spark": ["scoring_udf", "score", "read_images", "session"],
    "cnnspec.calculators": ["conv_out_size", "pool_out_size", "same_padding", "ReceptiveField"],
    "cnnspec.data": ["Transform", "BadImage", "Listing", "Sample", "decode", "list_source"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module: str) -> None:
    loaded = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(loaded, name)]
    assert missing == []
    if module == "cnnspec":
        assert callable(cnnspec_index_load := loaded.Index.load), cnnspec_index_load  # `cnnspec.Index.load(path)`


def _cnnspec_references(tree: ast.AST) -> set[str]:
    """Every ``from cnnspec.x import y`` as ``cnnspec.x:y`` and every ``cnnspec.a.b.c`` chain a file names."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnnspec" and not node.level:
            found.update(f"{node.module}:{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            parts: list[str] = []
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute):
                parts.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "cnnspec" and len(parts) > 1:
                found.add(".".join(["cnnspec", *parts]))
    return found


def _resolves(reference: str) -> bool:
    module, _, name = reference.partition(":")
    parts = (module + ("." + name if name else "")).split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_benchmarks_and_tests_name_only_what_exists() -> None:
    """Benchmarks run only under ``make bench``: a moved module would break them unseen, so every
    name they and the tests import from cnnspec is looked up here."""
    files = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "tests").glob("*.py"))
    missing = {f"{path.relative_to(REPO)}: {reference}"
               for path in files for reference in _cnnspec_references(ast.parse(path.read_text()))
               if not _resolves(reference)}
    assert not missing, sorted(missing)
    assert not _resolves("cnnspec.harness.weights:initial_weights")  # the lookup can fail
    assert _resolves("cnnspec.graph.weights:initial_weights")
