"""`compile -t istio`: NetworkPolicies for the L4 projection, AuthorizationPolicies for the requests,
Services for the HTTP ports. Random policies either compile and are proved through the importer
(NetworkPolicies, AuthorizationPolicies and Services read together), with concrete requests
re-judged in the read-back; or are refused at a rule. The importer itself is held to Istio's
semantics in tests/importers/test_import_istio.py."""

from __future__ import annotations

import ipaddress
import json

import kubernetes_validate
import pytest
import yaml
from hypothesis import assume, event, given
from hypothesis import strategies as st

from anyplane.backends import registry
from anyplane.compiler import api
from anyplane.compiler.importers import read_back
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow, Request
from anyplane.ir.interp import evaluate
from anyplane.ir.owners import owned_addresses
from anyplane.ir.source import DiagnosticError

from ...conftest import ROOT, examples, run
from ...crd_schemas import MODULES as SCHEMAS
from ...crd_schemas import violations
from ...strategies import policies
from ...backends.kube.test_export_k8s import K8S_VERSION, SETTINGS

SHOP = """
service web { address 10.0.1.0/24, fd00:0:0:1::/64  port 8080 http  port 9000 tcp }
service api { address 10.0.2.0/24  port 9080 http }
service db  { address 10.0.3.10/32 port 5432 tcp }
external internet { address 0.0.0.0/0, ::/0 }
external office { address 192.168.0.0/16 }
default deny
allow internet -> web http GET /, /static/*
allow office -> web tcp 9000
allow web -> api http GET, POST /api/* header "x-tenant" present
allow api -> db tcp 5432
deny any -> api http * /api/admin/* priority 10
deny office -> web http GET /static/secret priority 5
allow office -> api tcp 9080
allow internet -> api http DELETE /api/x host "a.example"
"""


def _compiled(text: str):
    return api.Compiled(None, None, compile_sources([("p.ap", text)]).program, None)


def _files(out) -> dict:
    return {a.path: a.data for a in out.artifacts}


REQUESTS = [None, Request("GET", "/"), Request("POST", "/a"), Request("GET", "/a/b"), Request("DELETE", "/x"),
            Request("GET", "/static/secret", headers=(("x-tenant", "t"),)), Request("PUT", "/api/admin/1", "h.example")]


def _requests_agree(program, back) -> list:
    """Concrete TCP connections and requests between addresses of every identity, judged by the policy
    and by the read-back."""
    owned = owned_addresses(program)
    workloads = set(registry.get("istio").workloads(program))
    addresses = [(name, a) for name in sorted(owned) for a in owned[name][:1]]
    ports = sorted({p.number for i in program.identities for p in i.ports} | {80})
    bad = []
    for na, (fa, a) in addresses:
        for nb, (fb, b) in addresses:
            if fa != fb or a == b or not ({na, nb} & workloads):
                continue  # traffic between addresses outside the workloads is no cluster's to decide
            for port in ports:
                for req in REQUESTS:
                    f = Flow(fa, a, b, 6, 40000, port, http=req)
                    if evaluate(program, f).verdict != evaluate(back, f).verdict:
                        bad.append(f.text)
    return bad


def test_a_mesh_policy_exports_and_is_proved(tmp_path):
    (tmp_path / "p.ap").write_text(SHOP)
    done = run("compile", str(tmp_path / "p.ap"), "-t", "istio", "-o", str(tmp_path / "out"), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "proved: istio (read back through the importer) decides exactly what the policy decides" in done.stderr
    out = tmp_path / "out"
    authz = [d for d in yaml.safe_load_all((out / "authorizationpolicies.yaml").read_text()) if d]
    by_name = {a["metadata"]["name"]: a["spec"] for a in authz}
    assert by_name["anyplane-api-deny"]["rules"] == [{"to": [{"operation": {"ports": ["9080"],
                                                                             "paths": ["/api/admin/*"]}}]}]
    allow = by_name["anyplane-api-allow"]["rules"]
    assert {"from": [{"source": {"ipBlocks": ["10.0.1.0/24"]}}],  # api has no IPv6 address
            "to": [{"operation": {"ports": ["9080"], "methods": ["GET", "POST"], "paths": ["/api/*"]}}],
            "when": [{"key": "request.headers[x-tenant]", "values": ["*"]}]} in allow
    assert {"to": [{"operation": {"notPorts": ["9080"]}}]} in allow
    assert "anyplane-db-deny" not in by_name and "anyplane-db-allow" not in by_name, "db has no HTTP rules"
    assert ["a.example", "a.example:*", "a.example.", "a.example.:*"] in [
        op["operation"].get("hosts") for r in by_name["anyplane-api-allow"]["rules"] for op in r.get("to", [])]
    assert violations(authz) == []
    for doc in yaml.safe_load_all((out / "services.yaml").read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in yaml.safe_load_all((out / "networkpolicies.yaml").read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    proof = json.loads((out / "proof.json").read_text())
    assert proof["proved"] is True
    assert "DECODE_AND_MERGE_SLASHES" in (out / "report.txt").read_text(), "the mesh must see paths as anyplane does"


def test_a_tampered_export_is_caught_by_the_proof():
    compiled = _compiled(SHOP)
    out = api.compile_target(compiled, "istio")
    files = _files(out)
    kept = [d for d in yaml.safe_load_all(files["authorizationpolicies.yaml"])
            if d and d["metadata"]["name"] != "anyplane-api-deny"]
    files["authorizationpolicies.yaml"] = yaml.safe_dump_all(kept)
    back = read_back("istio", files)
    bad = _requests_agree(compiled.program, back)
    assert any("/api/admin/1" in b for b in bad), bad
    out.read_back = lambda: back
    proof = api.prove_export(compiled, "istio", out)
    assert not proof.proved and proof.counterexample


@pytest.mark.parametrize("rule, fragment", [
    ("deny any -> api http DELETE /*\nallow web -> api http * /* priority 5",
     "Istio applies every DENY policy before any ALLOW"),
    ("deny web -> api http GET /admin/*\nallow web -> api http GET /* priority 5",
     "Istio applies every DENY policy before any ALLOW"),
    ("allow web -> api http GET /api/* rate 10/s", "cannot limit rates"),
])
def test_what_istio_cannot_say_is_an_error_at_the_rule(tmp_path, rule, fragment):
    base = "\n".join(line for line in SHOP.splitlines() if not line.startswith(("allow", "deny")))
    (tmp_path / "p.ap").write_text(base + "\n" + rule + "\n")
    done = run("compile", str(tmp_path / "p.ap"), "-t", "istio", "-o", str(tmp_path / "out"))
    assert done.returncode == 1
    assert fragment in done.stderr, done.stderr
    assert f"{tmp_path / 'p.ap'}:" in done.stderr and "^" in done.stderr


def test_an_l4_deny_under_an_http_allow_goes_to_the_sidecar_and_is_proved(tmp_path):
    """`allow web -> api http GET /health` above `deny web -> api tcp 9080`: NetworkPolicy cannot deny a
    port whose requests are partly allowed, so every TCP decision toward the workloads is written as
    AuthorizationPolicies (an ALLOW of GET /health closing the rest), the NetworkPolicies let TCP to
    them through, and the read-back is proved."""
    base = "\n".join(line for line in SHOP.splitlines() if not line.startswith(("allow", "deny")))
    (tmp_path / "p.ap").write_text(base + "\ndeny web -> api tcp 9080\nallow web -> api http GET /health priority 5\n")
    done = run("compile", str(tmp_path / "p.ap"), "-t", "istio", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "proved: istio" in done.stderr
    policies = [d for d in yaml.safe_load_all((tmp_path / "out" / "authorizationpolicies.yaml").read_text()) if d]
    api_allow = next(d for d in policies if d["metadata"]["name"] == "anyplane-api-allow")
    assert any(op["operation"].get("paths") == ["/health"] for r in api_allow["spec"]["rules"] for op in r.get("to", []))


def test_every_imported_istio_input_goes_back_to_istio_and_is_proved():
    """The Istio example and random AuthorizationPolicies (tests/importers/test_import_istio.py's generator), imported
    (with random PeerAuthentications) and exported with -t istio: each export reads back to exactly the
    imported policy, and Istio's schema takes it."""
    from hypothesis import HealthCheck, settings

    from anyplane.compiler.importers.k8s import convert
    from anyplane.compiler.pipeline import load

    from ...importers.test_import_istio import authz, cluster, peer_authentications

    compiled = load([str(ROOT / "examples" / "istio")])
    assert api.prove_export(compiled, "istio", api.compile_target(compiled, "istio")).proved

    @settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(authz(), peer_authentications())
    def check(policies, peer_auth):
        try:
            imported = convert([("mesh.yaml", yaml.safe_dump_all(cluster() + policies + peer_auth))])
        except DiagnosticError:  # two PeerAuthentications at one level, say: refused by the importer
            event("not imported")
            return
        compiled = compile_sources([("<kubernetes>", imported.text)])
        out = api.compile_target(compiled, "istio")
        proof = api.prove_export(compiled, "istio", out)
        assert proof.proved, (proof.counterexample, yaml.safe_dump_all(policies))
        written = [d for d in yaml.safe_load_all(_files(out)["authorizationpolicies.yaml"]) if d]
        assert violations(written) == []  # Istio's published schema takes them
    check()


def test_under_default_allow_only_denies_are_written(tmp_path):
    text = SHOP.replace("default deny", "default allow")
    out = api.compile_target(_compiled(text), "istio")
    authz = [d for d in yaml.safe_load_all(_files(out)["authorizationpolicies.yaml"]) if d]
    assert {a["spec"]["action"] for a in authz} == {"DENY"}
    assert api.prove_export(_compiled(text), "istio", out).proved


def exported_or_refused(text: str, target: str) -> None:
    """A policy compiles for `target` and is proved through its importer (concrete requests re-judged in the
    read-back, Istio's and Cilium's resources valid under their schemas), or is refused at one of its
    rules."""
    try:
        compiled = _compiled(text)
    except DiagnosticError:
        assume(False)
    program = compiled.program
    try:
        out = api.compile_target(compiled, target)
    except DiagnosticError as exc:
        spans = {r.origin for r in program.rules} | {program.default_origin} | \
            {e.origin for e in program.routes.entries} | {lim.origin for lim in program.limits}
        assert all(d.span in spans for d in exc.diagnostics), [str(d.span) for d in exc.diagnostics]
        event("refused: " + exc.diagnostics[0].message.split(":")[0][:60])
        return
    event("exported" + (" with HTTP rules" if any(e.layer == "L7" for e in program.acl.entries) else ""))
    assert not _requests_agree(program, out.read_back()), text
    written = [d for a in out.artifacts if a.path.endswith(".yaml") for d in yaml.safe_load_all(a.data)
               if isinstance(d, dict) and (d.get("apiVersion"), d.get("kind")) in SCHEMAS]
    if written:
        assert violations(written) == [], text
    proof = api.prove_export(compiled, target, out)
    assert proof.proved, (proof.counterexample, text)


def test_a_deny_to_part_of_a_workloads_addresses_is_refused_where_the_sidecars_decide_tcp():
    """An AuthorizationPolicy selects every pod of a workload: a deny toward one address inside it (where
    the NetworkPolicies cannot say it, so the sidecars decide TCP) is refused at the rule, not dropped."""
    text = "service a { address 10.0.0.0/16 port 80 http }\ndefault allow\ndeny a -> 10.0.1.7 tcp 79\n"
    with pytest.raises(DiagnosticError) as refused:
        api.compile_target(_compiled(text), "istio")
    assert [(d.span.line, "part of a's addresses is decided apart" in d.message)
            for d in refused.value.diagnostics] == [(3, True)]


@SETTINGS
@given(policies(max_rules=5, small=True))
def test_random_policies_export_exactly_or_are_refused_at_a_rule(text):
    exported_or_refused(text, "istio")


def test_read_back_addresses_are_the_identities():
    """ipBlocks carry the exact owned ranges: a source inside another identity's prefix is left out."""
    text = SHOP.replace("allow web -> api", "allow internet -> api")
    out = api.compile_target(_compiled(text), "istio")
    authz = [d for d in yaml.safe_load_all(_files(out)["authorizationpolicies.yaml"]) if d]
    blocks = [b for a in authz for r in a["spec"]["rules"] for f in r.get("from", [])
              for b in f["source"].get("ipBlocks", [])]
    inside = [b for b in blocks if ipaddress.ip_network(b).overlaps(ipaddress.ip_network("10.0.2.0/24"))]
    assert not any(ipaddress.ip_network(b).supernet_of(ipaddress.ip_network("10.0.1.0/24")) for b in inside)


MESH = """
service web { address 10.0.1.0/24  port 8080 http  port 9000 tcp }
service api { address 10.0.2.0/24, fd00:0:0:2::/64  port 9080 http  port 9081 grpc
              version a address 10.0.2.0/26  version b address 10.0.2.64/26 }
service db  { address 10.0.3.8/30 port 5432 tcp }
external internet { address 0.0.0.0/0, ::/0 }
external office { address 192.168.0.0/16 }
"""


@st.composite
def mesh_policies(draw):
    lines = [MESH, f"default {draw(st.sampled_from(['allow', 'deny']))}"]
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["allow", "allow", "deny"]))
        src = draw(st.sampled_from(["any", "web", "api", "office", "internet", "10.0.0.0/8", "web, office"]))
        dst = draw(st.sampled_from(["web", "web", "api", "api", "db", "any"]))
        l7 = draw(st.sampled_from(["", " http", " http GET /", " http * /api/*", " http GET, POST /api/*, /x",
                                   ' http DELETE /* header "x-a" present', ' http GET / host "h.example"',
                                   ' http PUT /api/admin header "x-b" = "1"', ' http GET /x header "x-a" absent']))
        l4 = draw(st.sampled_from(["", "", " tcp", " tcp 9080", " tcp 8080", " tcp 5432", " udp 53"]))
        if l7 and dst in ("db", "any"):
            l7 = ""
        if l7 and l4 not in ("", " tcp 9080", " tcp 8080"):
            l4 = ""
        prio = draw(st.sampled_from(["", "", " priority 5", " priority 9"]))
        lines.append(f"{action} {src} -> {dst}{l4}{l7}{prio}")
    lines += draw(st.lists(st.sampled_from([
        "route api http /api/* { to a 50%, b 50% }", "route api http GET /x { to b  timeout 1s }",
        'route api http /api/* header "x-a" present { retry 2 on 5xx per-try 100ms }',
        "limits api { max-connections 5  eject 3 consecutive gateway-error for 10s }"]), max_size=3, unique=True))
    return "\n".join(lines) + "\n"


@SETTINGS
@given(mesh_policies())
def test_mesh_policies_export_exactly_or_are_refused_at_a_rule(text):
    exported_or_refused(text, "istio")


ROUTED = """
service page { address 10.0.1.0/24 port 9080 http }
service reviews {
  address 10.0.2.0/24, fd00:0:0:2::/64
  port 9080 http
  version v1 address 10.0.2.0/26
  version v2 address 10.0.2.64/26
  version v3 address 10.0.2.128/26
}
external internet { address 0.0.0.0/0, ::/0 }
default deny
allow page -> reviews http GET, HEAD /reviews/*
deny any -> reviews http DELETE /* priority 10
route reviews http /reviews/* header "end-user" = "jason" { to v2 }
route reviews http GET /reviews/* { to v1 80%, v3 20%  timeout 2s  retry 3 on 5xx, connect-failure per-try 250ms }
route reviews http /reviews/health { timeout 250ms }
limits reviews { max-connections 100  max-pending 10  max-requests 500  max-retries 3  eject 5 consecutive 5xx for 30s }
"""


def test_routes_and_limits_become_virtual_services_and_destination_rules_read_back_alike(tmp_path):
    (tmp_path / "p.ap").write_text(ROUTED)
    done = run("compile", str(tmp_path / "p.ap"), "-t", "istio", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    (vs,) = [d for d in yaml.safe_load_all((tmp_path / "out" / "virtualservices.yaml").read_text()) if d]
    first = vs["spec"]["http"][0]
    assert first["match"] == [{"uri": {"exact": "/reviews/health"}}] and first["timeout"] == "250ms"
    split = vs["spec"]["http"][1]
    assert [(d["destination"]["subset"], d["weight"]) for d in split["route"]] == [("v1", 80), ("v3", 20)]
    assert split["retries"] == {"attempts": 3, "perTryTimeout": "250ms", "retryOn": "5xx,connect-failure"}
    (dr,) = [d for d in yaml.safe_load_all((tmp_path / "out" / "destinationrules.yaml").read_text()) if d]
    assert dr["spec"]["trafficPolicy"]["outlierDetection"] == {"consecutive5xxErrors": 5, "baseEjectionTime": "30s"}
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2", "v3"]
    assert violations([vs, dr]) == []
    for doc in yaml.safe_load_all((tmp_path / "out" / "services.yaml").read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("tamper, scope", [
    (lambda vs, dr: vs["spec"]["http"][1]["route"][0].update(weight=70) or
     vs["spec"]["http"][1]["route"][1].update(weight=30), "routes"),
    (lambda vs, dr: vs["spec"]["http"].reverse(), "routes"),
    (lambda vs, dr: dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"].update(maxConnections=99), "limits"),
])
def test_a_tampered_route_or_limit_is_caught(tamper, scope):
    compiled = _compiled(ROUTED)
    out = api.compile_target(compiled, "istio")
    files = _files(out)
    (vs,) = [d for d in yaml.safe_load_all(files["virtualservices.yaml"]) if d]
    (dr,) = [d for d in yaml.safe_load_all(files["destinationrules.yaml"]) if d]
    tamper(vs, dr)
    files["virtualservices.yaml"], files["destinationrules.yaml"] = yaml.safe_dump(vs), yaml.safe_dump(dr)
    try:
        back = read_back("istio", files)
    except DiagnosticError as exc:  # reversed rules: the importer refuses an order anyplane would not keep
        assert "Istio tries first" in str(exc.diagnostics[0].message)
        return
    out.read_back = lambda: back
    proof = api.prove_export(compiled, "istio", out)
    assert not proof.proved and proof.counterexample["scope"] == scope


def test_a_strict_mesh_goes_back_to_istio_as_peer_authentication(tmp_path):
    """An imported mesh under a STRICT PeerAuthentication takes no TCP from outside the cluster and UDP
    from anywhere: NetworkPolicy cannot say that, so -t istio writes a STRICT PeerAuthentication per
    workload (their sidecars refuse clients without a mesh certificate) and lets NetworkPolicy pass
    that TCP; the read-back (the PeerAuthentications included) is proved to decide as the policy."""
    from ...importers.test_import_istio import cluster

    strict = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    mesh = tmp_path / "in"
    mesh.mkdir()
    (mesh / "mesh.yaml").write_text(yaml.safe_dump_all(cluster() + [strict]))
    refused = run("compile", str(mesh), "-t", "k8s", "-o", str(tmp_path / "k8s"))
    assert refused.returncode == 1 and "cannot deny some ports of an address outside the cluster" in refused.stderr
    done = run("compile", str(mesh), "-t", "istio", "-o", str(tmp_path / "out"))
    assert done.returncode == 0 and "proved: istio" in done.stderr, done.stderr
    written = list(yaml.safe_load_all((tmp_path / "out" / "authorizationpolicies.yaml").read_text()))
    peer = [o for o in written if o and o["kind"] == "PeerAuthentication"]
    assert {o["metadata"]["namespace"] for o in peer} == {"data", "ops", "shop"}  # every pod's sidecar
    assert all(o["spec"]["mtls"] == {"mode": "STRICT"} for o in peer)
    assert violations(peer) == []
    permissive = dict(strict, spec={"mtls": {"mode": "PERMISSIVE"}})
    (mesh / "mesh.yaml").write_text(yaml.safe_dump_all(cluster() + [permissive]))
    done = run("compile", str(mesh), "-t", "istio", "-o", str(tmp_path / "out2"))
    assert done.returncode == 0 and "PeerAuthentication" not in (tmp_path / "out2" / "authorizationpolicies.yaml").read_text()
