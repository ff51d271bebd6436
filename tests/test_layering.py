"""The import rules of the architecture, checked on the source files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "ir": {"ir"},
    "compiler": {"compiler", "ir", "backends", "verify"},
    "backends": {"backends", "ir"},
    "verify": {"verify", "ir"},
}
THIRD_PARTY_ONLY_IN_COMPILER = {"lark"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(["anyplane"] + base + ([node.module] if node.module else []))
            else:
                yield node.module


def _sources(top: str):
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("top", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(top):
    bad = []
    for path in _sources(top):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "anyplane" and len(parts) > 1 and parts[1] not in ALLOWED[top]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if parts[0] in ALLOWED and parts[0] != "anyplane":
                bad.append(f"{path.relative_to(ROOT)} imports top-level '{name}' (use anyplane.{name})")
            if top != "compiler" and parts[0] in THIRD_PARTY_ONLY_IN_COMPILER:
                bad.append(f"{path.relative_to(ROOT)} imports {name}; only compiler/ sees lark")
    assert not bad, "\n".join(bad)


#: The compiler's driver: the API and the placement and proof steps. Nothing else in compiler/ (the
#: commands included: they call the API) imports backends or verify.
DRIVER = {"api.py", "place.py"}


def test_only_the_driver_imports_backends_and_verify():
    bad = []
    for path in _sources("compiler"):
        if path.name in DRIVER and path.parent.name == "compiler":
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[:1] == ["anyplane"] and len(parts) > 1 and parts[1] in ("backends", "verify"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_outside_an_engine_folder_names_an_engine():
    """Engines are plugins: the compiler, verify and the shared backend modules reach them through the
    registry, whose list of built-in engines is the one place that names them."""
    engines = [p.name for p in (ROOT / "backends").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    bad = []
    for top in ("compiler", "verify", "ir", "backends"):
        for path in _sources(top):
            if top == "backends" and (path.parent.name in engines or path.name == "registry.py"):
                continue
            for name in _imports(path):
                parts = name.split(".")
                if parts[:2] == ["anyplane", "backends"] and len(parts) > 2 and parts[2] in engines:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_ast_stays_in_the_compiler():
    for top in ("ir", "backends", "verify"):
        for path in _sources(top):
            for name in _imports(path):
                assert "compiler" not in name.split("."), f"{path} imports {name}"


def test_installed_packages_live_under_anyplane():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "anyplane" or p.startswith("anyplane.") for p in config["packages"])
    folders = {folder: package for package, folder in config["package-dir"].items()}
    on_disk = {str(p.parent.relative_to(ROOT)) for top in ALLOWED for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk == set(folders), "every package folder must be mapped in package-dir"
    assert set(folders.values()) == set(config["packages"]), "every mapped package must be listed"
