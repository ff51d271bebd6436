"""`anyplane import --workloads PODS.yaml`: a cluster's policies as workloads selected by the
cluster's own labels, and its pods as the binding that gives them addresses.

What must hold:
- bound to the pods, the written policy decides every flow between pods and outside addresses as
  the NetworkPolicies do (the API's semantics, tests/importers/test_import_k8s.py's oracle), for today's pods
  and for pods created later with the same labels; a pod's traffic to itself, which never leaves
  the pod, is the one thing it leaves out;
- it decides as the direct import (which reads the manifests per pod) on the examples and recipes,
  Cilium's and the admin tiers' included;
- unbound, `verify`, `map` and `-t k8s` run over the identities, and the export is about the
  size of the input;
- what a selector cannot tell apart (pods of one label set with other service accounts, ports or
  address blocks; a Service routed by version) is an error at a position, never a wrong policy.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anyplane.compiler import binding
from anyplane.compiler.importers.k8s import convert
from anyplane.compiler.pipeline import compile_sources, load
from anyplane.ir.flow import Flow
from anyplane.ir import fields as F
from anyplane.ir.interp import evaluate
from anyplane.ir.match import int_ranges
from anyplane.ir.source import DiagnosticError

from ..conftest import ROOT, examples, run
from ..importers.test_import_k8s import SETTINGS, allowed, mismatches, replicated

PORTS = (53, 80, 5000, 5432, 5100, 6000, 8080, 8100, 9000)


def _bound(text: str, pods_yaml: str, tmp_path: Path):
    path = tmp_path / "pods.yaml"
    path.write_text(pods_yaml)
    return compile_sources([("imported.ap", text)], binding=binding.read([str(path)])).program


def _later(pods: list[dict], n: int) -> list[dict]:
    """Pods created after the import: copies of some of today's (same namespace, labels and ports) at new
    addresses."""
    out = []
    for k, p in enumerate(pods[:n]):
        twin = json.loads(json.dumps(p))
        twin["metadata"]["name"] = f"later{k}"
        twin["status"]["podIP"] = f"10.1.7.{k + 1}"
        out.append(twin)
    return out


@SETTINGS
@given(st.data())
def test_workloads_bound_to_todays_and_later_pods_decide_as_networkpolicy_does(tmp_path_factory, data):
    namespaces, pods, nps = replicated(data)
    untiered = data.draw(st.sets(st.sampled_from(["web", "db", "api"])))
    first: dict = {}
    for p in pods:  # the pods of one label set run one template (one set of named ports), as replicas do
        if p["metadata"]["labels"]["app"] in untiered and data.draw(st.booleans()):
            del p["metadata"]["labels"]["tier"]  # a key some pods lack: `!tier` tells them apart
        key = (p["metadata"]["namespace"], tuple(sorted(p["metadata"]["labels"].items())))
        p["spec"] = first.setdefault(key, p["spec"])
    try:
        imported = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))], workloads=True)
    except DiagnosticError as exc:  # label sets the policies do not tell apart, whose named ports differ
        assert all("differ in their container ports" in d.message for d in exc.diagnostics), exc.diagnostics
        event("refused: pods no selector tells apart resolve a named port differently")
        return
    event(f"imported: {len(first)} label sets, {len(pods)} pods")
    if "!" in imported.text:
        event("a workload with !key")
    assert not re.search(r"^service ", imported.text, re.M) and re.search(r"^workload ", imported.text, re.M)
    later = _later(pods, data.draw(st.integers(0, 3)))
    everyone = pods + later
    written = yaml.safe_load_all(binding.write(imported.binding))
    today = [d for d in written if d]
    assert sorted(d["status"]["podIP"] for d in today) == sorted(p["status"]["podIP"] for p in pods)
    program = _bound(imported.text, yaml.safe_dump_all(today + later), tmp_path_factory.mktemp("b"))
    bad = [m for m in mismatches(program, everyone, lambda *f: allowed(everyone, nps, *f), PORTS) if m[0] != m[1]]
    assert not bad, (bad[:5], imported.text)


def _addresses(program) -> list[int]:
    """(family, address) of every endpoint prefix's first, second and last address."""
    out = set()
    for e in program.endpoints:
        p = e.prefix
        last = p.first + (1 << (p.width - p.length)) - 1
        out |= {(p.family, p.first), (p.family, min(p.first + 1, last)), (p.family, last)}
    return sorted(out)


def _ports(program) -> list[int]:
    out = {22, 53, 80, 443, 8080, 9090}
    for e in program.acl.entries:
        for lo, hi in int_ranges(e.match.get(F.DPORT)) or ():
            out |= {lo, hi, max(lo - 1, 0), min(hi + 1, 65535)}
    return sorted(out)


CASES = ["tests/recipes/multiple-selectors", "examples/kubernetes"]


@pytest.mark.parametrize("case", CASES)
def test_workloads_decide_as_the_direct_import(tmp_path, case):
    """Bound to the cluster's pods, the workloads' policy decides every flow among the pods' addresses
    and the outside blocks' as the per-pod import of the same manifests."""
    if not (ROOT / case).exists():
        pytest.fail(f"{case} is missing")
    direct = load([str(ROOT / case)]).program
    out = tmp_path / "p.ap"
    pods = tmp_path / "pods.yaml"
    done = run("import", str(ROOT / case), "--workloads", str(pods), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "workload " in out.read_text() and "service " not in out.read_text()
    bound = compile_sources([(str(out), out.read_text())], binding=binding.read([str(pods)])).program
    ends = _addresses(direct)
    ports = _ports(direct)
    checked = 0
    for fa, a in ends:
        for fb, b in ends:
            if fa != fb or a == b:
                continue
            for proto in (6, 17):
                for port in ports:
                    flow = Flow(fa, a, b, proto, 40000, port)
                    want, got = evaluate(direct, flow).verdict, evaluate(bound, flow).verdict
                    assert want == got, (case, str(flow), want, got)
                    checked += 1
    assert checked > 1000


def test_unbound_the_workloads_verify_map_and_export_at_the_size_of_the_input(tmp_path):
    case = ROOT / "tests/recipes/multiple-selectors"
    out, pods = tmp_path / "p.ap", tmp_path / "pods.yaml"
    assert run("import", str(case), "--workloads", str(pods), "-o", str(out)).returncode == 0
    done = run("verify", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    done = run("map", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    done = run("compile", str(out), "-t", "k8s", "-o", str(tmp_path / "k8s"))
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "k8s" / "networkpolicies.yaml").read_text()
    lines_in = sum(len(f.read_text().splitlines()) for f in case.glob("policy*.yaml"))
    assert len(written.splitlines()) <= 3 * lines_in, written
    assert "anyplane.io/identity" not in written
    done = run("compile", str(out), "--bind", str(pods), "-t", "ebpf", "-o", str(tmp_path / "ebpf"))
    assert done.returncode == 0, done.stderr


def _pod(name, labels, ip, account="default", ports=()):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"serviceAccountName": account,
                     "containers": [{"name": "c", "ports": [{"name": n, "containerPort": v} for n, v in ports]}]},
            "status": {"podIP": ip}}


POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "shop"},
          "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "pg"}]}]}}


@pytest.mark.parametrize("pods,message", [
    ([_pod("db-0", {"app": "db"}, "10.0.0.1", ports=[("pg", 5432)]),
      _pod("db-1", {"app": "db"}, "10.0.0.2", ports=[("pg", 6432)])], "differ in their container ports"),
], ids=["named ports"])
def test_what_no_selector_tells_apart_is_an_error_at_the_pod(tmp_path, pods, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(pods + [POLICY]))
    done = run("import", str(tmp_path / "c.yaml"), "--workloads", str(tmp_path / "pods.yaml"))
    assert done.returncode == 1, done.stderr
    assert "c.yaml:" in done.stderr and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "pods.yaml").exists()
    assert run("import", str(tmp_path / "c.yaml")).returncode == 0  # the per-pod import takes it


def test_a_label_set_split_by_another_key_is_two_workloads_with_does_not_exist(tmp_path):
    """Pods app=web with and without `canary`: two workloads, the stable one `!canary`, disjoint, and
    the binding puts each pod in its own."""
    pods = [_pod("web-0", {"app": "web"}, "10.0.0.1"), _pod("web-1", {"app": "web", "canary": "yes"}, "10.0.0.2"),
            _pod("db-0", {"app": "db"}, "10.0.0.3", ports=[("pg", 5432)])]
    policy = json.loads(json.dumps(POLICY))
    policy["spec"]["ingress"][0]["from"][0]["podSelector"] = {"matchLabels": {"app": "web"},
                                                              "matchExpressions": [{"key": "canary",
                                                                                    "operator": "DoesNotExist"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(pods + [policy]))
    imported = convert([("c.yaml", (tmp_path / "c.yaml").read_text())], workloads=True)
    assert "labels app=web, !canary" in imported.text and "labels app=web, canary=yes" in imported.text
    program = _bound(imported.text, binding.write(imported.binding), tmp_path)
    ip = lambda s: int(ipaddress.ip_address(s))  # noqa: E731
    assert evaluate(program, Flow(4, ip("10.0.0.1"), ip("10.0.0.3"), 6, 40000, 5432)).verdict == "allow"
    assert evaluate(program, Flow(4, ip("10.0.0.2"), ip("10.0.0.3"), 6, 40000, 5432)).verdict == "deny"


def test_a_usage_error_when_both_outputs_are_one_file(tmp_path):
    done = run("import", str(ROOT / "examples/kubernetes"), "--workloads", str(tmp_path / "x"), "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "another path" in done.stderr



def test_an_imported_file_verifies_as_its_manifests_do(tmp_path):
    """`anyplane import -o F` marks F `# anyplane: imported`: `verify F` passes where `verify` of the
    manifests does, the translation's dead and redundant lines reported as suppressed; without the mark
    they are the author's findings again. The mark after a statement is an error at it."""
    manifests = [str(ROOT / "examples/istio/authorization.yaml"), str(ROOT / "examples/istio/workloads.yaml")]
    assert run("verify", *manifests).returncode == 0
    out = tmp_path / "mesh.ap"
    assert run("import", *manifests, "-o", str(out)).returncode == 0
    text = out.read_text()
    assert "\n# anyplane: imported\n" in text
    done = run("verify", str(out), "--format", "json")
    assert done.returncode == 0, done.stdout[-2000:]
    found = json.loads(done.stdout)["findings"]
    assert found and all(f["suppressed"] for f in found if f["kind"] in ("dead", "redundant", "conflict"))
    (tmp_path / "mine.ap").write_text(text.replace("# anyplane: imported\n", ""))
    assert run("verify", str(tmp_path / "mine.ap")).returncode == 1
    lines = text.splitlines()
    (tmp_path / "late.ap").write_text("\n".join(lines[:12] + ["# anyplane: imported"] + lines[12:]) + "\n")
    late = run("check", str(tmp_path / "late.ap"))
    assert late.returncode == 1 and "goes before the file's first statement" in late.stderr


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_workloads_decide_as_the_per_pod_import_under_every_tier(tmp_path_factory, data):
    """Cilium policies, AdminNetworkPolicies, and Istio AuthorizationPolicies with PeerAuthentications
    (the oracle tests' generators): imported as workloads and bound to the pods, every flow between pods
    and outside addresses is decided as the per-pod import decides it; or the import is refused because
    pods no selector tells apart resolve a named port differently, or lie in different address blocks."""
    from ..importers.test_import_admin import admin_policy
    from ..importers.test_import_cilium import cilium_policies
    from ..importers.test_import_istio import PODS as MESH_PODS
    from ..importers.test_import_istio import authz, peer_authentications
    from ..importers.test_import_istio import cluster as mesh_cluster
    from ..importers.test_import_k8s import NAMESPACES, OUTSIDE, clusters

    spaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(v)}}
              for n, v in NAMESPACES.items()]
    pods = data.draw(clusters())
    ips = [p["status"]["podIP"] for p in pods] + OUTSIDE
    cases = [(spaces + pods + data.draw(cilium_policies(data.draw(st.integers(1, 3)))), ips),
             (spaces + pods + [data.draw(admin_policy("AdminNetworkPolicy", 10 + k, k))
                               for k in range(data.draw(st.integers(1, 2)))], ips),
             (mesh_cluster() + data.draw(authz()) + data.draw(peer_authentications()),
              [p[4] for p in MESH_PODS] + ["203.0.113.5", "10.9.9.9"])]
    for docs, addresses in cases:
        text = yaml.safe_dump_all(docs)
        try:
            direct = compile_sources([("<kubernetes>", convert([("c.yaml", text)]).text)]).program
        except DiagnosticError:
            event("an input the importer refuses")
            continue
        try:
            imported = convert([("c.yaml", text)], workloads=True)
        except DiagnosticError as exc:
            # Refused only where no selector can say it: a named port resolved two ways, or (the admin
            # tiers, Cilium and Istio read blocks as pods' addresses) a block that holds some pods of one
            # label set and not others.
            reasons = {"differ in their container ports": "a named port resolved two ways",
                       "differ in their address blocks": "a block holds some pods of one label set"}
            told = {why for d in exc.diagnostics for text, why in reasons.items() if text in d.message}
            assert told and all(any(t in d.message for t in reasons) for d in exc.diagnostics), \
                exc.diagnostics
            event(f"refused: {sorted(told)[0]}")
            continue
        program = _bound(imported.text, binding.write(imported.binding), tmp_path_factory.mktemp("b"))
        event("compared")
        for a in addresses:
            for b in addresses:
                if a == b:
                    continue
                src, dst = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
                for proto, port in ((6, 80), (6, 5432), (6, 8080), (6, 9080), (6, 8000), (17, 53), (1, None)):
                    flow = Flow(4, src, dst, proto, 40000, port) if port else Flow(4, src, dst, 1, icmp_type=8,
                                                                                   icmp_code=0)
                    assert evaluate(program, flow).verdict == evaluate(direct, flow).verdict, (a, b, proto, port)
