"""Mutual TLS in the language, the IR, the interpreter and Z3 (the real Envoy is in test_mtls.py).

Under `mtls`, a workload source is its certificate toward a workload's sidecar ports, and its
addresses on connections without one; strict refuses plaintext there. The Z3 encoding must agree with
the interpreter flow by flow (certificates included), and every witness must re-evaluate as claimed.
"""

from __future__ import annotations

import json

import pytest
import z3

from anyplane.compiler import binding
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir import fields as F
from anyplane.ir.addr import parse_address
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import as_seen, evaluate, match_holds, owner
from anyplane.ir.match import Absent, InSet
from anyplane.ir.source import DiagnosticError
from anyplane.verify.context import Analysis

from ..conftest import ROOT, run

WEB = "spiffe://cluster.local/ns/shop/sa/web"
POLICY = """\
workload web { namespace shop  labels app=web  account web  port 8080 http }
workload api { namespace shop  labels app=api  port 9090 http }
service legacy { address 10.9.0.0/24  port 80 http }
external office { address 192.0.2.0/24 }
mtls MODE
default deny
allow web -> api http GET /items/*
allow legacy -> api tcp 9090
allow web -> legacy
allow office -> api, web
deny any -> web tcp 8080 priority 5
"""
PODS = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: shop, labels: {app: web}},
   spec: {serviceAccountName: web}, status: {podIP: 10.1.0.5}}
- {apiVersion: v1, kind: Pod, metadata: {name: api-1, namespace: shop, labels: {app: api}}, status: {podIP: 10.1.0.6}}
"""


def compiled(mode: str, tmp_path=None, pods: str = PODS):
    bound = None
    if tmp_path is not None:
        (tmp_path / "pods.yaml").write_text(pods)
        bound = binding.read([str(tmp_path / "pods.yaml")])
    return compile_sources([("mesh.ap", POLICY.replace("MODE", mode))], binding=bound)


def errors(text: str) -> list[tuple[int, str]]:
    try:
        compile_sources([("p.ap", text)])
    except DiagnosticError as exc:
        return [(d.span.line, d.code) for d in exc.diagnostics]
    return []


def flow(src: str, dst: str, port: int, peer: str | None) -> Flow:
    family, s = parse_address(src)
    return Flow(family, s, parse_address(dst)[1], 6, 49152, port, peer=peer)


def test_a_workload_source_is_its_certificate_toward_workloads_and_its_addresses_elsewhere(tmp_path):
    program = compiled("strict", tmp_path).program
    by_rule: dict[str, list] = {}
    for e in program.acl.entries:
        by_rule.setdefault(e.rule, []).append(e.match)
    # r1: the certificate at api's sidecar port, or web's addresses without one.
    cert, plain = by_rule["r1"]
    assert cert.get(F.SRC_PEER) == InSet((WEB,)) and cert.get(F.SRC_ID) is None
    assert cert.get(F.DPORT) is not None and cert.get(F.DST_ID) == InSet(("api",))
    assert plain.get(F.SRC_ID) == InSet(("web",)) and plain.get(F.SRC_PEER) == Absent()
    # r3 toward a service with addresses: addresses alone, no certificate in sight.
    assert [m.get(F.SRC_PEER) for m in by_rule["r3"]] == [None]
    # strict: plaintext is refused on each workload's sidecar ports, above every rule.
    refused = by_rule["mtls"]
    assert {m.get(F.DST_ID).values for m in refused} == {("api",), ("web",)}
    assert all(m.get(F.SRC_PEER) == Absent() for m in refused)
    assert {i.name: i.principal for i in program.identities} == {
        "api": "spiffe://cluster.local/ns/shop/sa/default", "legacy": None, "office": None, "web": WEB}

    web, api, office, stranger = "10.1.0.5", "10.1.0.6", "192.0.2.7", "198.51.100.1"
    assert evaluate(program, flow(stranger, api, 9090, WEB)).verdict == "deny"  # no request: not GET /items
    assert evaluate(program, flow(office, api, 9090, None)).verdict == "deny"  # strict: plaintext refused
    assert evaluate(program, flow(office, api, 9090, WEB)).verdict == "allow"  # office by address, with TLS
    assert evaluate(program, flow(office, api, 7000, None)).verdict == "allow"  # no sidecar on 7000
    # A certificate where no sidecar asks for one is nobody's business: the flow is its plaintext twin.
    assert evaluate(program, flow(web, "10.9.0.1", 80, "spiffe://cluster.local/ns/x/sa/y")).verdict == "allow"
    assert evaluate(program, flow(stranger, "10.9.0.1", 80, WEB)).verdict == "deny"


def test_permissive_judges_plaintext_by_address(tmp_path):
    program = compiled("permissive", tmp_path).program
    assert "mtls" not in {r.id for r in program.rules}
    office, api = "192.0.2.7", "10.1.0.6"
    assert evaluate(program, flow(office, api, 9090, None)).verdict == "allow"
    assert evaluate(program, flow("198.51.100.1", api, 9090, None)).verdict == "deny"


def test_off_is_no_mutual_tls_at_all(tmp_path):
    program = compiled("off", tmp_path).program
    assert program.mtls is None and all(i.principal is None for i in program.identities)
    assert not any(F.SRC_PEER in dict(e.match.fields) for e in program.acl.entries)


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_z3_agrees_with_the_interpreter_on_flows_with_and_without_certificates(mode, tmp_path):
    program = compiled(mode, tmp_path).program
    a = Analysis(program)
    terms = [(e, a.term(e.match)) for e in a.ordered]
    decision = a.code_term(list(range(len(a.ordered))))
    solver = z3.Solver(ctx=a.enc.ctx)
    solver.add(a.enc.wellformed)
    flows = FlowGen(program, seed=29).flows(500)
    assert sum(f.peer is not None for f in flows) > 100
    for f in flows:
        solver.push()
        solver.add(a.enc.pin(f))
        assert solver.check() == z3.sat, f.text
        model = solver.model()
        src, dst = owner(program, f.family, f.src), owner(program, f.family, f.dst)
        seen = as_seen(program, f, dst)
        for e, term in terms:
            assert z3.is_true(model.eval(term, model_completion=True)) == match_holds(e.match, seen, src, dst), \
                (e.origin.loc, f.text)
        code = model.eval(decision, model_completion=True).as_long()
        assert (code != 0) == (evaluate(program, f).verdict == "allow"), f.text
        solver.pop()


def test_every_witness_re_evaluates_as_claimed(tmp_path):
    """query's witnesses, for patterns that need a certificate, one that must not have one, and the
    rest, allow in the interpreter as claimed; a certificate in a witness is one a sidecar verifies."""
    from anyplane.compiler import api

    compiled_ = compiled("strict", tmp_path)
    program = compiled_.program
    answered = 0
    for pattern in ("198.51.100.1 -> api", "office -> api tcp 9090", "any -> web tcp 8080", "web -> api",
                    "legacy -> api", "any -> legacy http GET /x"):
        answer, _ = api.query(compiled_, pattern)
        if not answer.reachable:
            continue
        w, answered = answer.witness, answered + 1
        assert evaluate(program, w).verdict == "allow", (pattern, w.text)
        if w.peer is not None:
            assert as_seen(program, w, owner(program, w.family, w.dst)).peer == w.peer, w.text
    assert answered >= 5
    assert api.query(compiled_, "198.51.100.1 -> web tcp 8080")[0].reachable is False


def test_explain_shows_the_certificate_and_takes_one(tmp_path):
    (tmp_path / "pods.yaml").write_text(PODS)
    (tmp_path / "mesh.ap").write_text(POLICY.replace("MODE", "strict"))
    base = ["explain", str(tmp_path / "mesh.ap"), "--bind", str(tmp_path / "pods.yaml"), "--flow"]
    own = run(*base, "web -> api http GET /items/1")
    assert own.returncode == 0 and f"peer      {WEB} (web)" in own.stdout and "verdict   allow" in own.stdout
    plain = run(*base, "web -> api peer plaintext http GET /items/1")
    assert "peer      none: no client certificate (plaintext)" in plain.stdout and "mtls strict" in plain.stdout
    stolen = run(*base, f'office -> api tcp 9090 peer "{WEB}"', "--format", "json")
    assert json.loads(stolen.stdout)["peer"] == {"principal": WEB, "identities": ["web"]}
    bad = run(*base, 'web -> api tcp 9090 peer "web"')
    assert bad.returncode == 1 and "error: a peer is a SPIFFE ID" in bad.stderr


def test_checks_refuse_what_cannot_be_said_of_certificates():
    head = "workload web { namespace shop labels app=web }\nworkload api { namespace shop labels app=api port 80 http }\n"
    assert errors(head + "mtls strict\nallow any except web -> api\n") == [(4, "mtls-except")]
    assert errors(head + "mtls strict\nassert only web -> api\n") == [(4, "mtls-except")]
    assert errors(head + 'assert reachable web -> api tcp 80 peer "spiffe://a/b"\n') == [(3, "peer-in-pattern")]
    assert errors(head + 'mtls strict trust-domain "Bad Domain"\n') == [(3, "bad-trust-domain")]
    assert errors(head + "mtls strict\nmtls permissive\n") == [(4, "duplicate-clause")]
    assert errors("workload w { account Bad_Name }\n") == [(1, "bad-account")]
    assert errors(head + "allow any except web -> api\n") == []  # without mtls: addresses, as ever


def test_a_pod_that_runs_as_another_account_is_an_error_under_mtls(tmp_path):
    pods = PODS.replace("serviceAccountName: web", "serviceAccountName: default")
    with pytest.raises(DiagnosticError) as info:
        compiled("strict", tmp_path, pods)
    assert "runs as service account 'default', but workload 'web' runs as 'web'" in str(info.value.diagnostics[0])
    compiled("off", tmp_path, pods)  # without mutual TLS the account is no part of the policy


def test_exporters_that_cannot_carry_certificates_say_so(tmp_path):
    (tmp_path / "mesh.ap").write_text(POLICY.replace("MODE", "strict"))
    for target in ("k8s", "cilium", "istio"):
        done = run("compile", str(tmp_path / "mesh.ap"), "-t", target, "-o", str(tmp_path / target))
        assert done.returncode == 1 and f"-t {target} cannot carry mutual TLS" in done.stderr, done.stderr
        assert "mesh.ap:5:1" in done.stderr


def test_the_mesh_example_proves_on_every_engine_and_writes_certificates(tmp_path):
    example = ROOT / "examples" / "mesh"
    done = run("compile", str(example / "mesh.ap"), "--bind", str(example / "pods.yaml"), "-t", "all",
               "-o", str(tmp_path / "all"))
    assert done.returncode == 0 and "proved:" in done.stderr, done.stderr
    placement = (tmp_path / "all" / "placement.txt").read_text()
    assert "client certificate conditions: only the sidecar sees them" in placement  # mtls strict
    assert "client certificate allow: the sidecar checks its conditions" in placement  # checkout -> orders
    envoy = run("compile", str(example / "mesh.ap"), "--bind", str(example / "pods.yaml"), "-t", "envoy",
                "-o", str(tmp_path / "envoy"))
    assert envoy.returncode == 0, envoy.stderr
    cert = tmp_path / "envoy" / "checkout" / "certs" / "cert.yaml"
    assert oct(cert.stat().st_mode & 0o777) == "0o600"
    assert json.loads(cert.read_text())["resources"][0]["name"] == "spiffe://shop.example/ns/shop/sa/checkout"
    assert (tmp_path / "envoy" / "ca" / "ca.key").is_file()
    first_ca = (tmp_path / "envoy" / "ca" / "ca.pem").read_bytes()
    again = run("compile", str(example / "mesh.ap"), "--bind", str(example / "pods.yaml"), "-t", "envoy",
                "-o", str(tmp_path / "envoy"))
    assert again.returncode == 0
    assert (tmp_path / "envoy" / "ca" / "ca.pem").read_bytes() == first_ca  # the next compile keeps the CA
    assert cert.read_text() != ""
    assert run("verify", str(example / "mesh.ap")).returncode == 0
    stolen = run("query", str(example / "mesh.ap"), "internet -> orders")
    assert 'peer "spiffe://shop.example/ns/shop/sa/checkout" (checkout\'s)' in stolen.stdout, stolen.stdout


def test_a_workload_sets_its_own_sidecars_mode():
    text = """\
workload gw { namespace edge labels app=gw account gw port 8443 http mtls permissive }
workload web { namespace shop labels app=web account web port 8080 http }
workload old { namespace shop labels app=old port 9000 tcp mtls off }
external internet { address 0.0.0.0/0 }
mtls strict
default deny
allow internet -> gw tcp 8443
allow gw -> web http GET /*
allow web -> old tcp 9000
"""
    program = compile_sources([("p.ap", text)]).program
    assert {i.name: i.mtls for i in program.identities} == {"gw": "permissive", "web": "strict", "old": None,
                                                            "internet": None}
    refused = [e.match.get(F.DST_ID).values for e in program.acl.entries if e.rule == "mtls"]
    assert refused == [("web",)]
    assert [e.match.get(F.SRC_PEER) for e in program.acl.entries if e.rule == "r3"] == [None]  # old asks for none
    assert errors("workload w { mtls strict }\n") == [(1, "mtls-without-domain")]


def test_tokens_go_over_tls_only(tmp_path):
    (tmp_path / "mesh.ap").write_text(POLICY.replace("MODE", "strict"))
    (tmp_path / "tokens.yaml").write_text("t" * 40 + ": spiffe://cluster.local/ns/shop/sa/web\n")
    (tmp_path / "short.yaml").write_text("abc: spiffe://cluster.local/ns/shop/sa/web\n")
    (tmp_path / "token").write_text("t" * 40 + "\n")
    clear = run("serve", str(tmp_path / "mesh.ap"), "--tokens", str(tmp_path / "tokens.yaml"), "--once")
    assert clear.returncode == 2 and "--tokens needs TLS" in clear.stderr
    short = run("serve", str(tmp_path / "mesh.ap"), "--tokens", str(tmp_path / "short.yaml"), "--once")
    assert short.returncode == 2 and "at least 32 printable characters" in short.stderr
    plain = run("compile", str(tmp_path / "mesh.ap"), "-t", "envoy", "-o", str(tmp_path / "out"), "--xds",
                "127.0.0.1:18000", "--xds-token-file", str(tmp_path / "token"))
    assert plain.returncode == 2 and "needs --xds-tls" in plain.stderr


def test_verify_warns_when_two_workloads_hold_one_certificate(tmp_path):
    (tmp_path / "p.ap").write_text("workload a { namespace s labels app=a }\nworkload b { namespace s labels app=b }\n"
                                   "workload c { namespace s labels app=c account c }\nmtls strict\nallow a -> c\n")
    done = run("verify", str(tmp_path / "p.ap"), "--format", "json")
    found = [f for f in json.loads(done.stdout)["findings"] if f["kind"] == "shared-identity"]
    assert len(found) == 1 and "'a' and 'b' hold one certificate" in found[0]["message"]
    assert found[0]["severity"] == "warning"


def test_serve_keeps_the_ca_it_makes_in_an_empty_ca_directory(tmp_path):
    """`serve --ca DIR` with a directory that holds no CA yet: the CA made for the policy's trust domain is
    written there (its key readable by its owner alone), and the next server loads it, so the sidecars
    keep trusting the certificates they hold across a restart."""
    from anyplane.compiler import api

    mesh = ROOT / "examples" / "mesh"
    keep = tmp_path / "ca"
    first = api.Serving([str(mesh / "mesh.ap")], bind=[str(mesh / "pods.yaml")], ca_keep=str(keep))
    assert first.check()
    made = first.plane.server.secrets.authority
    assert (keep / "ca.key").stat().st_mode & 0o777 == 0o600 and (keep / "ca.pem").is_file()
    again = api.Serving([str(mesh / "mesh.ap")], bind=[str(mesh / "pods.yaml")],
                        ca=((keep / "ca.pem").read_bytes(), (keep / "ca.key").read_bytes(), b""))
    assert again.check()
    assert again.plane.server.secrets.authority.bundle == made.bundle
    without = api.Serving([str(mesh / "mesh.ap")], bind=[str(mesh / "pods.yaml")])
    assert without.check() and without.plane.server.secrets.authority.bundle != made.bundle  # made per start
