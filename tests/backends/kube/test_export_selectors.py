"""`compile -t k8s|cilium` of an imported cluster: policies over the cluster's own namespaces and labels.

The exported NetworkPolicies are applied to the real pods, with the labels they already carry (no
relabelling), and to a copy of every pod created after the export (same namespace and labels, a new
address and name). Over every pair of those pods and a few outside addresses, they must decide as the
original policies do: judged by the importer's NetworkPolicy semantics (held against
network-config-analyzer in tests/importers/test_nca_agreement.py) and the reference interpreter.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
import yaml

from anyplane.compiler import api
from anyplane.compiler.pipeline import load
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate

from ...importers.test_nca_agreement import NAMESPACES, PODS, SCENARIOS

OUTSIDE = ("8.8.8.8", "10.0.0.1", "10.10.9.9", "172.16.0.1", "192.168.1.1")
PORTS = ((6, 53), (17, 53), (6, 80), (6, 5432), (6, 8080), (6, 9090))


def _later(pods: dict) -> dict:
    """The cluster with a pod created later beside each: same namespace and labels, a new address."""
    out = copy.deepcopy(pods)
    for k, pod in enumerate(pods["items"]):
        twin = copy.deepcopy(pod)
        twin["metadata"]["name"] += "-later"
        address = f"10.99.0.{k + 1}"
        twin["status"]["podIP"] = address
        twin["status"]["podIPs"] = [{"ip": address}]
        out["items"].append(twin)
    return out


def _export(tmp_path, scenario, target: str = "k8s") -> dict:
    compiled = load([str(NAMESPACES), str(PODS), str(scenario)])
    out = api.compile_target(compiled, target)
    proof = api.prove_export(compiled, target, out)
    assert proof.proved, proof.counterexample
    return {a.path: a.data for a in out.artifacts}


def _verdicts(paths: list[str], addresses: list[str]) -> dict:
    program = load(paths).program
    out = {}
    for a in addresses:
        for b in addresses:
            if a == b or (a in OUTSIDE and b in OUTSIDE):
                continue
            for proto, port in PORTS:
                flow = Flow(4, int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b)), proto, 40000, port)
                out[(a, b, proto, port)] = evaluate(program, flow).verdict
    return out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_the_export_selects_todays_and_tomorrows_pods_by_their_own_labels(tmp_path, scenario):
    files = _export(tmp_path, scenario)
    exported = [d for d in yaml.safe_load_all(files["networkpolicies.yaml"]) if d]
    identities = yaml.safe_load(files["identities.yaml"])["identities"]
    pods = yaml.safe_load(PODS.read_text())
    namespaces = {p["metadata"]["namespace"] for p in pods["items"]}
    assert {np["metadata"]["namespace"] for np in exported} <= namespaces
    # The cluster's labels select its pods: no identity label where they single the pods out.
    tagged = {name for name, spec in identities.items() if "anyplane.io/identity" in spec["labels"]}
    for name, spec in identities.items():
        assert spec["namespace"] in namespaces
        if name not in tagged:
            assert all(any(p["metadata"]["namespace"] == spec["namespace"]
                           and p["metadata"].get("labels", {}).get(k) == v for p in pods["items"])
                       for k, v in spec["labels"].items())
    assert not tagged, tagged  # these pods differ in labels only: none needs one
    later = _later(pods)
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(later))
    (tmp_path / "exported.yaml").write_text(files["networkpolicies.yaml"] + files.get("adminnetworkpolicies.yaml", ""))
    addresses = [p["status"]["podIP"] for p in later["items"]] + list(OUTSIDE)
    want = _verdicts([str(NAMESPACES), str(tmp_path / "pods.yaml"), str(scenario)], addresses)
    got = _verdicts([str(NAMESPACES), str(tmp_path / "pods.yaml"), str(tmp_path / "exported.yaml")], addresses)
    differ = [(k, want[k], got[k]) for k in want if want[k] != got[k]]
    assert not differ, differ[:5]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.stem.startswith(("03", "08", "12", "15", "21"))],
                         ids=lambda p: p.stem)
def test_the_cilium_export_selects_by_the_clusters_labels_too(tmp_path, scenario):
    files = _export(tmp_path, scenario, "cilium")
    assert "anyplane.io/identity" not in files["ciliumnetworkpolicies.yaml"]
    later = _later(yaml.safe_load(PODS.read_text()))
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(later))
    (tmp_path / "exported.yaml").write_text(files["ciliumnetworkpolicies.yaml"])
    addresses = [p["status"]["podIP"] for p in later["items"]] + list(OUTSIDE)
    want = _verdicts([str(NAMESPACES), str(tmp_path / "pods.yaml"), str(scenario)], addresses)
    got = _verdicts([str(NAMESPACES), str(tmp_path / "pods.yaml"), str(tmp_path / "exported.yaml")], addresses)
    differ = [(k, want[k], got[k]) for k in want if want[k] != got[k]]
    assert not differ, differ[:5]


def test_pods_that_labels_cannot_tell_apart_get_an_identity_label(tmp_path):
    """Two pods with the same labels whose named port `http` is a different number are decided apart by a
    policy on port `http`; no selector of their labels can tell them apart, so the export names each
    with the identity label (and says so in identities.yaml). Pods decided alike share their selector."""
    pods = yaml.safe_load(PODS.read_text())
    twin = copy.deepcopy(pods["items"][0])
    twin["metadata"]["name"] = "web-9090"
    twin["spec"]["containers"][0]["ports"][0]["containerPort"] = 9090
    twin["status"]["podIP"] = "10.10.1.77"
    twin["status"]["podIPs"] = [{"ip": "10.10.1.77"}]
    pods["items"].append(twin)
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(pods))
    (tmp_path / "np.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: frontend}\n"
        "spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports: [{port: http}]\n")
    compiled = load([str(NAMESPACES), str(tmp_path / "pods.yaml"), str(tmp_path / "np.yaml")])
    out = api.compile_target(compiled, "k8s")
    identities = yaml.safe_load(next(a.data for a in out.artifacts if a.path == "identities.yaml"))["identities"]
    tagged = {n for n, spec in identities.items() if spec["labels"].get("anyplane.io/identity") == n}
    web = {n for n, spec in identities.items() if any(a in ("10.10.1.1/32", "10.10.1.77/32") for a in spec["addresses"])}
    assert web == tagged and len(web) == 2, identities
    assert api.prove_export(compiled, "k8s", out).proved


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "multiple-selectors"


def test_a_recipe_exports_as_the_policy_it_was(tmp_path):
    """ahmetb's recipe "allowing traffic with multiple selectors" (one policy, 23 lines) over 15 pods exports
    as one NetworkPolicy with the recipe's own selectors, not one policy per pod."""
    compiled = load([str(RECIPE)])
    out = api.compile_target(compiled, "k8s")
    files = {a.path: a.data for a in out.artifacts}
    exported = [d for d in yaml.safe_load_all(files["networkpolicies.yaml"]) if d]
    assert len(exported) == 1, files["networkpolicies.yaml"]
    spec = exported[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app": "bookstore", "role": "db"}}
    assert spec["policyTypes"] == ["Ingress"]
    peers = [item["podSelector"]["matchLabels"] for rule in spec["ingress"] for item in rule["from"]]
    assert sorted(peers, key=lambda m: sorted(m.items())) == [
        {"app": "bookstore", "role": "api"}, {"app": "bookstore", "role": "search"},
        {"app": "inventory", "role": "web"}]
    policy_lines = sum(1 for line in (RECIPE / "policy.yaml").read_text().splitlines() if not line.startswith("#"))
    assert files["networkpolicies.yaml"].count("\n") <= 2 * policy_lines
    assert api.prove_export(compiled, "k8s", out).proved
