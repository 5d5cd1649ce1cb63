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
ROOT_MODULES = {"errors", "devices", "__init__"}


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
