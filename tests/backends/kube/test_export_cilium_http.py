"""`compile -t cilium` with HTTP rules: L7 allows become Cilium HTTP rules on the destination's ingress
(and the port on the source's egress). Random mesh policies either export and are proved through the
Cilium importer, with concrete requests re-judged in the read-back, or are refused at a rule; Cilium
has no HTTP deny, so a deny that decides requests is an error."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given

from anyplane.compiler import api
from anyplane.compiler.importers import read_back

from ...conftest import run
from ...crd_schemas import violations
from ...backends.kube.test_export_istio import SETTINGS, _compiled, _files, _requests_agree, exported_or_refused, mesh_policies

SHOP = """
service web { address 10.0.1.0/24  port 8080 http  port 9000 tcp }
service api { address 10.0.2.0/24  port 9080 http }
service db  { address 10.0.3.8/30 port 5432 tcp }
external internet { address 0.0.0.0/0 }
external office { address 192.168.0.0/16 }
default deny
allow internet -> web http GET /, /static/*
allow office -> web tcp 9000
allow web -> api http GET, POST /api/* header "x-tenant" present
allow api -> db tcp 5432
allow office -> api tcp 9080
allow office -> api http DELETE /api/x host "a.example"
"""


def test_http_allows_become_cilium_http_rules_and_are_proved(tmp_path):
    (tmp_path / "p.ap").write_text(SHOP)
    done = run("compile", str(tmp_path / "p.ap"), "-t", "cilium", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "proved: cilium (read back through the importer)" in done.stderr
    policies = {p["metadata"]["name"]: p["spec"] for p in
                yaml.safe_load_all((tmp_path / "out" / "ciliumnetworkpolicies.yaml").read_text()) if p}
    api_in = [r for r in policies["anyplane-api"]["ingress"] if "rules" in r["toPorts"][0]]
    assert {"method": "GET|POST", "path": "/api/.*", "headers": ["x-tenant"]} in \
        [h for r in api_in for h in r["toPorts"][0]["rules"]["http"]]
    assert violations([p for p in yaml.safe_load_all((tmp_path / "out" / "ciliumnetworkpolicies.yaml").read_text())
                       if p]) == []
    web_out = policies["anyplane-web"]["egress"]
    assert any(r["toPorts"] == [{"ports": [{"port": "9080", "protocol": "TCP"}]}] for r in web_out), \
        "the source's egress lets the port through; the destination reads the requests"


def test_a_dropped_http_rule_is_caught_by_the_proof():
    compiled = _compiled(SHOP)
    out = api.compile_target(compiled, "cilium")
    files = _files(out)
    docs = [d for d in yaml.safe_load_all(files["ciliumnetworkpolicies.yaml"]) if d]
    for d in docs:
        for r in d["spec"].get("ingress", []):
            for tp in r.get("toPorts", []):
                if "rules" in tp:
                    tp["rules"]["http"] = tp["rules"]["http"][:1]
    files["ciliumnetworkpolicies.yaml"] = yaml.safe_dump_all(docs)
    back = read_back("cilium", files)
    assert _requests_agree(compiled.program, back)
    out.read_back = lambda: back
    assert not api.prove_export(compiled, "cilium", out).proved


@pytest.mark.parametrize("extra", [
    "deny any -> api http DELETE /* priority 5",
    'allow web -> api http GET /x header "x-a" absent',
])
def test_what_cilium_cannot_say_is_an_error_at_the_rule(tmp_path, extra):
    (tmp_path / "p.ap").write_text(SHOP + extra + "\n")
    done = run("compile", str(tmp_path / "p.ap"), "-t", "cilium", "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and f"{tmp_path / 'p.ap'}:14:" in done.stderr, done.stderr


@SETTINGS
@given(mesh_policies())
def test_mesh_policies_export_to_cilium_exactly_or_are_refused_at_a_rule(text):
    exported_or_refused(text, "cilium")


def _cilium_specs(tmp_path) -> dict:
    """`compile -t cilium` of tmp_path/p.ap, proved; each policy's spec by name, checked against Cilium's
    schema."""
    done = run("compile", str(tmp_path / "p.ap"), "-t", "cilium", "-o", str(tmp_path / "cilium"))
    assert done.returncode == 0 and "proved: cilium" in done.stdout + done.stderr, done.stderr
    docs = {d["metadata"]["name"]: d["spec"] for d in
            yaml.safe_load_all((tmp_path / "cilium" / "ciliumnetworkpolicies.yaml").read_text()) if d}
    assert violations([{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": n},
                        "spec": s} for n, s in docs.items()]) == []
    return docs


def test_icmp_types_become_cilium_icmps_and_are_proved(tmp_path):
    """NetworkPolicy cannot say ICMP types (an error at the rule for -t k8s); -t cilium writes them as
    `icmps` beside the ports, for the peers that may send them, and the round trip is proved."""
    (tmp_path / "p.ap").write_text(
        "service web { address 10.0.1.0/24 port 80 http }\nservice db { address 10.0.2.0/24 port 5432 tcp }\n"
        "external monitor { address 192.0.2.0/24 }\ndefault deny\nallow web -> db tcp 5432\n"
        "allow monitor -> web, db icmp type 8\nallow web -> db icmp type 3\nallow monitor -> web tcp 80\n")
    done = run("compile", str(tmp_path / "p.ap"), "-t", "k8s", "-o", str(tmp_path / "k8s"))
    assert done.returncode == 1 and f"{tmp_path / 'p.ap'}:6:" in done.stderr and "icmp.type" in done.stderr
    docs = _cilium_specs(tmp_path)
    web_from_monitor = next(r for r in docs["anyplane-web"]["ingress"] if r.get("fromCIDR") == ["192.0.2.0/24"])
    assert web_from_monitor["icmps"] == [{"fields": [{"type": 8, "family": "IPv4"}]}]
    assert web_from_monitor["toPorts"] == [{"ports": [{"port": "80", "protocol": "TCP"}]}]
    db_from_web = next(r for r in docs["anyplane-db"]["ingress"] if "fromEndpoints" in r)
    assert db_from_web["icmps"] == [{"fields": [{"type": 3, "family": "IPv4"}]}]


def test_what_passes_but_some_ports_or_types_becomes_a_cilium_deny_even_from_outside(tmp_path):
    """Everything passes but some ports or ICMP types: Kubernetes needs an AdminNetworkPolicy, which has
    no ingress peer for outside addresses (an error for -t k8s at the rule); Cilium's `ingressDeny`
    takes CIDRs and `icmps`, so -t cilium writes it and the round trip is proved."""
    (tmp_path / "p.ap").write_text(
        "service web { address 10.0.1.0/24 port 80 http }\nservice db { address 10.0.2.0/24 port 5432 tcp }\n"
        "external scanners { address 192.0.2.0/24 }\ndefault allow\ndeny scanners -> web icmp type 8\n"
        "deny scanners -> db tcp 22\ndeny web -> db icmp type 13\n")
    done = run("compile", str(tmp_path / "p.ap"), "-t", "k8s", "-o", str(tmp_path / "k8s"))
    assert done.returncode == 1 and f"{tmp_path / 'p.ap'}:5:" in done.stderr
    docs = _cilium_specs(tmp_path)
    assert docs["anyplane-web"]["ingressDeny"] == [
        {"fromCIDR": ["192.0.2.0/24"], "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]}]
    db = docs["anyplane-db"]["ingressDeny"]
    assert {"fromCIDR": ["192.0.2.0/24"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]} in db
    assert any(r.get("icmps") == [{"fields": [{"type": 13, "family": "IPv4"}]}] and "fromEndpoints" in r for r in db)
