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
    ("networking.istio.io/v1", "VirtualService"): "@kubernetes-models/istio/networking.istio.io/v1/VirtualService",
    ("networking.istio.io/v1", "DestinationRule"): "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "@kubernetes-models/cilium/cilium.io/v2/CiliumNetworkPolicy",
}
SCRIPT = """
import { readFileSync } from "node:fs";
const modules = JSON.parse(process.argv[2]);
const docs = JSON.parse(readFileSync(0, "utf8"));
const errors = [];
for (const [i, doc] of docs.entries()) {
  const where = modules[`${doc.apiVersion} ${doc.kind}`];
  if (!where) { errors.push(`${i}: no schema for ${doc.apiVersion} ${doc.kind}`); continue; }
  const cls = (await import(where))[doc.kind];
  try { new cls(doc).validate(); } catch (e) { errors.push(`${i} ${doc.kind} ${doc.metadata?.name}: ${e.message}`); }
}
console.log(JSON.stringify(errors));
"""


def require() -> None:
    if not (KMODELS / "node_modules" / "@kubernetes-models").is_dir():
        if CI:
            pytest.fail("the resource schemas are not installed (make kmodels)")
        pytest.skip("the resource schemas are not installed (make kmodels)")


def violations(docs: list[dict]) -> list[str]:
    """What the published schemas say against each document (empty: all valid)."""
    require()
    script = KMODELS / "validate.mjs"
    if not script.exists() or script.read_text() != SCRIPT:
        script.write_text(SCRIPT)
    modules = {f"{api} {kind}": m for (api, kind), m in MODULES.items()}
    done = subprocess.run(["node", str(script), json.dumps(modules)], input=json.dumps(docs), capture_output=True,
                          text=True, cwd=KMODELS, timeout=120)
    if done.returncode:
        raise RuntimeError(f"node failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)
