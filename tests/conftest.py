"""Shared fixtures: golden files (`pytest --update-golden`), compiling snippets, examples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anyplane.compiler.pipeline import compile_sources, load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "bookinfo": ["examples/bookinfo.ap"],
    "canary": ["examples/canary.ap"],
    "edge-firewall": ["examples/edge-firewall.ap"],
    "zero-trust": ["examples/zero-trust"],
}
CI = os.environ.get("CI") == "true"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from current output.")


@pytest.fixture(autouse=True)
def _run_from_root(monkeypatch):
    """Paths in spans are as given on the command line: run everything from the repository root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def golden(request):
    """golden(path, text): compare with tests/golden/<path>, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(relpath: str, text: str) -> None:
        path = ROOT / "tests" / "golden" / relpath
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"{relpath} differs from its golden file (pytest --update-golden to accept)"

    return check


def compile_text(text: str, path: str = "t.ap"):
    """Compile one in-memory policy file."""
    return compile_sources([(path, text)])


def load_example(name: str):
    """Compile one of the examples."""
    return load(EXAMPLES[name])
