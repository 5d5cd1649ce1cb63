"""The house rule: recipes, embed and train import `cache/`, `contracts/` and the root helpers, never each other;
the analysis stage (`explain`) may import embed and train, and nothing imports it, nor the tooling packages."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data_recipes", "embed", "train", "explain")
# what each package may import of the project (besides itself and the root modules errors / devices)
ALLOWED = {
    "contracts": set(),
    "cache": {"contracts"},
    "data_recipes": {"cache", "contracts"},
    "embed": {"cache", "contracts"},
    "train": {"cache", "contracts"},
    "explain": {"cache", "contracts", "embed", "train"},
    "mutate": {"cache", "contracts", "embed", "train"},
}
ROOT_MODULES = {"errors", "devices", "lazy", "__init__"}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, first package name under dogmacache) of every `dogmacache.X` import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [
                f"{node.module}.{alias.name}" for alias in node.names if node.module == "dogmacache"
            ]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dogmacache" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def violations() -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        folder = ROOT / package
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            for line, target in project_imports(path):
                if target in (package, *ROOT_MODULES) or target in allowed or target == "__version__":
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{line} imports dogmacache.{target}")
    return bad


def test_stages_import_only_the_contracts_and_the_cache():
    checked = [p for package in ALLOWED for p in (ROOT / package).rglob("*.py")] if True else []
    assert len(checked) > 30  # the walk saw the packages
    assert violations() == []


def test_the_rule_catches_a_stage_importing_another(tmp_path):
    source = "from dogmacache.data_recipes.gasperini import x\nimport dogmacache.cache\nfrom dogmacache import train\n"
    (tmp_path / "m.py").write_text(source)
    assert project_imports(tmp_path / "m.py") == [(1, "data_recipes"), (2, "cache"), (3, "train")]


@pytest.mark.parametrize("package", ["bench", "demo", "explain", "mutate"])
def test_nothing_in_the_stages_imports_the_tooling_or_analysis(package):
    users = [
        f"{path.relative_to(ROOT)}:{line}"
        for stage in ("cache", "contracts", *STAGES[:3])
        for path in (ROOT / stage).rglob("*.py")
        for line, target in project_imports(path)
        if target == package
    ]
    assert users == []


def module_graph(package: str) -> dict[str, set[str]]:
    """Within one package: module -> the package's modules it imports, at any depth of the file (lazy imports
    inside functions count: they close a circle at run time just the same). A package's `__init__` is its own
    module; `from dogmacache.P.sub import name` counts as an import of `sub` (and of `sub.name` where that is a
    module)."""
    folder = ROOT / package
    modules = {
        ".".join(p.relative_to(folder).with_suffix("").parts).removesuffix(".__init__").removesuffix("__init__")
        for p in folder.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        name = ".".join(path.relative_to(folder).with_suffix("").parts).removesuffix(".__init__")
        name = "" if name == "__init__" else name
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                # `from dogmacache.P import sub` imports the module sub, not what P's __init__ defines
                named = [f for f in subs if ".".join(f.split(".")[2:]) in modules]
                found = named if len(named) == len(subs) else [node.module, *named]
            for full in found:
                parts = full.split(".")
                if parts[:2] != ["dogmacache", package]:
                    continue
                target = ".".join(parts[2:])
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (a circle of imports), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", ["contracts", "cache", "data_recipes", "embed", "train", "explain", "mutate"])
def test_no_circle_of_imports_inside_a_stage(package):
    graph = module_graph(package)
    assert len(graph) > 1
    assert cycles(graph) == []


def test_the_circle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
