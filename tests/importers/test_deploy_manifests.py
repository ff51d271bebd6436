"""The Kubernetes manifests docs/deploy.md shows are valid against Kubernetes' published schemas, and
run what they say: `anyplane serve` with the policy they carry."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from anyplane.backends.envoy.push import envoy_binary

from ..conftest import run
from ..envoyrun import require_envoy

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_match_the_published_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, "1.37", strict=True)


def test_the_configmap_policy_compiles_and_the_args_are_serve_options(tmp_path):
    cm = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    done = run("compile", str(tmp_path / "policy.ap"), "-t", "envoy", "--deployment", str(tmp_path / "deployment.yaml"),
               "--xds", "anyplane-xds.anyplane.svc:18000", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    boot = yaml.safe_load((tmp_path / "out" / "web" / "bootstrap.yaml").read_text())
    assert boot["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
    require_envoy()
    checked = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(tmp_path / "out" / "web" / "bootstrap.yaml")],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "xds-configmap.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    helped = run("serve", "--help").stdout
    assert all(a.split("=")[0] in helped for a in args if a.startswith("--"))
