"""Istio's and Cilium's published resource schemas (the OpenAPI schemas of their CRDs, as the
kubernetes-models packages carry them; `make kmodels` installs them in `.kmodels/`), applied to the
exporters' output by Node.js."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import CI

ROOT = Path(__file__).resolve().parent.parent
KMODELS = ROOT / ".kmodels"
MODULES = {
    ("security.istio.io/v1", "AuthorizationPolicy"): "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy",
    ("security.istio.io/v1", "PeerAuthentication"): "@kubernetes-models/istio/security.istio.io/v1/PeerAuthentication",
    ("networking.istio.io/v1", "VirtualService"): "@kubernetes-models/istio/networking.istio.io/v1/VirtualService",
    ("networking.istio.io/v1", "DestinationRule"): "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "@kubernetes-models/cilium/cilium.io/v2/CiliumNetworkPolicy",
}
SCRIPT = """
import { createInterface } from "node:readline";
const modules = JSON.parse(process.argv[2]);
const classes = {};
for await (const line of createInterface({ input: process.stdin })) {
  const errors = [];
  for (const [i, doc] of JSON.parse(line).entries()) {
    const key = `${doc.apiVersion} ${doc.kind}`;
    if (!modules[key]) { errors.push(`${i}: no schema for ${key}`); continue; }
    classes[key] ??= (await import(modules[key]))[doc.kind];
    try { new classes[key](doc).validate(); } catch (e) { errors.push(`${i} ${doc.kind} ${doc.metadata?.name}: ${e.message}`); }
  }
  console.log(JSON.stringify(errors));
}
"""
_node: subprocess.Popen | None = None


def require() -> None:
    if not (KMODELS / "node_modules" / "@kubernetes-models").is_dir():
        if CI:
            pytest.fail("the resource schemas are not installed (make kmodels)")
        pytest.skip("the resource schemas are not installed (make kmodels)")


def violations(docs: list[dict]) -> list[str]:
    """What the published schemas say against each document (empty: all valid). One Node.js process
    per test run answers every call."""
    global _node
    require()
    if _node is None or _node.poll() is not None:
        script = KMODELS / "validate.mjs"
        if not script.exists() or script.read_text() != SCRIPT:
            script.write_text(SCRIPT)
        modules = {f"{api} {kind}": m for (api, kind), m in MODULES.items()}
        _node = subprocess.Popen(["node", str(script), json.dumps(modules)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=KMODELS)
    _node.stdin.write(json.dumps(docs) + "\n")
    _node.stdin.flush()
    line = _node.stdout.readline()
    if not line:
        raise RuntimeError("the schema validator (node) stopped")
    return json.loads(line)
