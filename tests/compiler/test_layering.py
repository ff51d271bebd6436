"""The import rules of the architecture, checked on the source files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _engines() -> list[str]:
    """The built-in engines' folders (the registry's list); other folders of backends/ are shared."""
    from anyplane.backends.registry import BUILTIN

    return [name for name, _ in BUILTIN]


def test_nothing_outside_an_engine_folder_names_an_engine():
    """Engines are plugins: the compiler, verify and the shared backend modules reach them through the
    registry, whose list of built-in engines is the one place that names them."""
    engines = _engines()
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


def test_no_engine_imports_another():
    """What engines share lives beside them (backends/base.py, classes.py, kube/, ...), never in one of
    them: an engine's folder imports no other engine's."""
    engines = _engines()
    bad = []
    for engine in engines:
        for path in sorted((ROOT / "backends" / engine).rglob("*.py")):
            for name in _imports(path):
                parts = name.split(".")
                if parts[:2] == ["anyplane", "backends"] and len(parts) > 2 and parts[2] in engines \
                        and parts[2] != engine:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_driver_names_no_engine_and_asks_engines_what_they_offer():
    """The API and the placement and proof steps reach engines through the registry (`get(target)`,
    `serving()`) and the interface `Engine` declares (`offers`, `reads_back_with`, ...): no engine's name
    as a string, and no getattr/hasattr on an engine."""
    engines = set(_engines())
    bad = []
    for name in sorted(DRIVER):
        path = ROOT / "compiler" / name
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in engines:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} names engine {node.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "engine":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} asks an engine with {node.func.id}")
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


def test_check_imports_no_engine_it_does_not_ask():
    """`check` asks only the engines that read HTTP (whether a rule's HTTP conditions can be enforced):
    the switch's protobuf and the kernel's loader are not imported for it."""
    import subprocess
    import sys

    code = ("import sys\nfrom anyplane.compiler.pipeline import load\nload(['examples/bookinfo.ap'])\n"
            "print(sorted(m for m in sys.modules if m.startswith(('anyplane.backends.', 'google.protobuf'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout
    assert "anyplane.backends.envoy.engine" in loaded  # the sidecar reads HTTP: asked
    for absent in ("anyplane.backends.p4.", "anyplane.backends.ebpf.", "anyplane.backends.cilium.",
                   "anyplane.backends.istio.", "google.protobuf"):
        assert absent not in loaded, absent


def test_the_registry_knows_which_built_in_engines_read_http():
    from anyplane.backends import registry

    builtin = {name for name, _ in registry.BUILTIN}
    readers = {e.name for e in registry.engines() if e.name in builtin and e.place and e.capability.sees_http}
    assert readers == set(registry.READS_HTTP)


def test_the_engines_keep_their_path_order_whichever_was_imported_first():
    """`check` imports the sidecar's engine before the others: the path order stays fabric, kernel,
    sidecar (placement's default path and every report read it)."""
    import subprocess
    import sys

    code = ("from anyplane.backends import registry\nregistry.http_readers()\n"
            "print(registry.places())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['fabric', 'kernel', 'sidecar']"
