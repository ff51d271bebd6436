"""kubectl as the reader of YAML: `kubectl annotate --local -f F x=y -o json` parses a file exactly as
Kubernetes does (go-yaml v2, then the JSON conversion of sigs.k8s.io/yaml) without a cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import CI


def require() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if CI:
            pytest.fail("kubectl is not installed (make test installs it)")
        pytest.skip("kubectl is not installed")
    return path


def read(text: str) -> tuple[list[dict] | None, str]:
    """(the documents as Kubernetes reads them, or None; kubectl's error message)."""
    kubectl = require()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.yaml"
        path.write_text(text, encoding="utf-8")
        got = subprocess.run([kubectl, "annotate", "--local", "-f", str(path), "anyplane.io/probe=1", "-o", "json"],
                             capture_output=True, text=True, timeout=60)
    if got.returncode:
        return None, got.stderr.strip()
    docs, decoder, rest = [], json.JSONDecoder(), got.stdout.strip()
    while rest:
        doc, end = decoder.raw_decode(rest)
        docs.append(doc)
        rest = rest[end:].lstrip()
    out = []
    for doc in docs:
        out += doc["items"] if doc.get("kind") == "List" else [doc]
    for doc in out:
        doc.get("metadata", {}).get("annotations", {}).pop("anyplane.io/probe", None)
        if doc.get("metadata", {}).get("annotations") == {}:
            del doc["metadata"]["annotations"]
    return out, ""
