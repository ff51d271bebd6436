"""Istio AuthorizationPolicy import: random meshes and policies, judged by an oracle written here from
Istio's reference (not from the importer), against the imported program's verdicts on TCP and UDP
flows and HTTP requests; the documented rule for HTTP-only fields on TCP ports; the AND with
NetworkPolicies; errors at YAML positions for what is not imported."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from anyplane.compiler.importers.k8s import convert
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow, Request
from anyplane.ir.interp import evaluate
from anyplane.ir.source import DiagnosticError

from ..conftest import example_cluster, run
from ..importers.test_import_k8s import SETTINGS

# Pods: (name, namespace, app label, service account, address); Services give ports their protocols.
PODS = [("web", "shop", "web", "web", "10.1.0.1"), ("api", "shop", "api", "api", "10.1.0.2"),
        ("db", "data", "db", "db", "10.1.0.3"), ("ops", "ops", "ops", "default", "10.1.0.4")]
SERVICES = {"web": [("http-web", 8000)], "api": [("http", 8000), ("tcp-admin", 9000)], "db": [("tcp-pg", 9000)],
            "ops": []}
OUTSIDE = ["203.0.113.7", "10.9.9.9"]
PORTS = (8000, 9000, 9999)
REQUESTS = [Request("GET", "/ip"), Request("POST", "/ip"), Request("GET", "/admin/x"), Request("DELETE", "/a/b"),
            Request("GET", "/ip", "a.example"), Request("GET", "/admin/x", headers=(("x-debug", "1"),)),
            Request("POST", "/a/b", "b.example", (("x-debug", "2"),))]


def cluster() -> list[dict]:
    out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in ("shop", "data", "ops")]
    for name, ns, app, account, ip in PODS:
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
                    "spec": {"serviceAccountName": account, "containers": [{"name": "c"}]}, "status": {"podIP": ip}})
        if SERVICES[name]:
            out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                        "spec": {"selector": {"app": app},
                                 "ports": [{"name": n, "port": p + 1, "targetPort": p} for n, p in SERVICES[name]]}})
    return out


# -- random policies -------------------------------------------------------------------------------

def _some(draw, values, size=2):
    return draw(st.lists(st.sampled_from(values), min_size=1, max_size=size, unique=True))


@st.composite
def sources(draw):
    src = {}
    for key, values in (("principals", ["cluster.local/ns/shop/sa/web", "cluster.local/ns/shop/*", "*/sa/db", "*"]),
                        ("namespaces", ["shop", "data", "op*", "*"]),
                        ("ipBlocks", ["10.1.0.0/30", "10.1.0.4", "203.0.113.0/24", "0.0.0.0/0"])):
        pick = draw(st.sampled_from([None, None, "pos", "not"]))
        if pick:
            src[key if pick == "pos" else "not" + key[0].upper() + key[1:]] = _some(draw, values)
    return {"source": src}


@st.composite
def operations(draw):
    op = {}
    if draw(st.booleans()):
        op[draw(st.sampled_from(["ports", "notPorts"]))] = _some(draw, ["8000", "9000"])
    if draw(st.booleans()):
        op["methods"] = _some(draw, ["GET", "POST", "*"])
    if draw(st.booleans()):
        op["paths"] = _some(draw, ["/ip", "/admin/*", "*", "/a/*"])
    if draw(st.integers(0, 3)) == 0:
        op["hosts"] = _some(draw, ["a.example", "b.example"])
    return {"operation": op}


@st.composite
def rules(draw):
    rule = {}
    if draw(st.booleans()):
        rule["from"] = draw(st.lists(sources(), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["to"] = draw(st.lists(operations(), min_size=1, max_size=2))
    when = []
    if draw(st.integers(0, 3)) == 0:
        when.append(draw(st.sampled_from([{"key": "request.headers[x-debug]", "values": ["1", "2"]},
                                          {"key": "request.headers[x-debug]", "values": ["*"]},
                                          {"key": "request.headers[x-debug]", "notValues": ["*"]},
                                          {"key": "source.namespace", "values": ["shop"]},
                                          {"key": "destination.port", "notValues": ["9000"]}])))
    if when:
        rule["when"] = when
    return rule


@st.composite
def authz(draw):
    out = []
    for k in range(draw(st.integers(1, 4))):
        spec = {"action": draw(st.sampled_from(["ALLOW", "ALLOW", "DENY", "AUDIT"]))}
        where = draw(st.sampled_from(["shop", "data", "istio-system"]))
        if draw(st.integers(0, 2)):
            spec["selector"] = {"matchLabels": {"app": draw(st.sampled_from(["web", "api", "db", "ops"]))}}
        if draw(st.integers(0, 5)):
            spec["rules"] = draw(st.lists(rules(), min_size=0 if spec["action"] == "ALLOW" else 1, max_size=3))
        out.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": f"ap{k}", "namespace": where}, "spec": spec})
    return out


# -- the oracle: Istio's reference, on one connection or request ------------------------------------

def _str(pattern: str, text: str | None) -> bool:
    if text is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return text.endswith(pattern[1:])
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return text == pattern


def _field(values, not_values, test) -> bool:
    if values is not None and not any(test(v) for v in values):
        return False
    return not (not_values is not None and any(test(v) for v in not_values))


def _source_ok(src: dict, peer) -> bool:
    ip, pod = peer
    princ = f"cluster.local/ns/{pod[1]}/sa/{pod[3]}" if pod else None
    ns = pod[1] if pod else None
    in_block = lambda v: ipaddress.ip_address(ip) in ipaddress.ip_network(v, strict=False)  # noqa: E731
    return (_field(src.get("principals"), src.get("notPrincipals"), lambda v: _str(v, princ))
            and _field(src.get("namespaces"), src.get("notNamespaces"), lambda v: _str(v, ns))
            and _field(src.get("ipBlocks"), src.get("notIpBlocks"), in_block))


HTTP_ONLY = ("methods", "paths", "hosts")


def _rule_matches(rule: dict, action: str, peer, port: int, request, on_http: bool) -> bool:
    """One rule on one connection (`request` None) or request. On a TCP port Istio drops an ALLOW rule
    with HTTP-only fields, and ignores those fields in a DENY rule."""
    http_fields = any(k in (i.get("operation") or {}) for i in rule.get("to") or [] for k in HTTP_ONLY) or \
        any(c["key"].startswith("request.headers") for c in rule.get("when") or [])
    if http_fields and not on_http and action == "ALLOW":
        return False
    evaluate_http = on_http and request is not None
    if http_fields and on_http and request is None:
        return False  # a connection that carries no request on an HTTP port: HTTP conditions cannot hold
    for c in rule.get("when") or []:
        key, values, not_values = c["key"], c.get("values"), c.get("notValues")
        if key == "source.namespace":
            ok = _field(values, not_values, lambda v: _str(v, peer[1][1] if peer[1] else None))
        elif key == "destination.port":
            ok = _field(values, not_values, lambda v: int(v) == port)
        elif not evaluate_http:
            ok = True  # a header condition on a TCP port, in a DENY rule: ignored
        else:
            got = dict(request.headers).get(key[len("request.headers["):-1])
            ok = _field(values, not_values, lambda v: got is not None if v == "*" else got == v)
        if not ok:
            return False
    if rule.get("from") and not any(_source_ok(i["source"], peer) for i in rule["from"]):
        return False
    if not rule.get("to"):
        return True
    for item in rule["to"]:
        op = item["operation"]
        if not _field(op.get("ports"), op.get("notPorts"), lambda v: int(v) == port):
            continue
        if evaluate_http:
            path_ok = lambda v: v == "*" or (request.path.startswith(v[:-1]) if v.endswith("/*")  # noqa: E731
                                              else request.path == v)
            if not (_field(op.get("methods"), None, lambda v: v in ("*", request.method))
                    and _field(op.get("paths"), None, path_ok)
                    and _field(op.get("hosts"), None, lambda v: v == request.host)):
                continue
        return True
    return False


def mtls_mode(peer_auth, dst_pod, port: int) -> str:
    """Istio's resolution (ComposePeerAuthentication): a policy selecting the pod, else the namespace's,
    else the mesh's (root namespace); UNSET inherits from the level above, a port's UNSET from its own
    policy's mode; PERMISSIVE by default."""
    def mine(p, selected):
        ns, sel = p["metadata"]["namespace"], p["spec"].get("selector")
        if selected:
            return ns == dst_pod[1] and sel is not None and sel["matchLabels"]["app"] == dst_pod[2]
        return sel is None and ns == dst_pod[1] if ns != "istio-system" else sel is None
    mode = "PERMISSIVE"
    for layer in ([p for p in peer_auth if p["metadata"]["namespace"] == "istio-system" and mine(p, False)],
                  [p for p in peer_auth if p["metadata"]["namespace"] != "istio-system" and mine(p, False)],
                  [p for p in peer_auth if mine(p, True)]):
        for p in layer:
            got = (p["spec"].get("mtls") or {}).get("mode", "UNSET")
            if got != "UNSET":
                mode = got
            on_port = ((p["spec"].get("portLevelMtls") or {}).get(port) or {}).get("mode", "UNSET")
            if on_port != "UNSET":
                mode = on_port
    return mode


def istio_allows(policies, src_ip: str, dst_pod, proto: str, port: int, request, peer_auth=()) -> bool:
    if proto != "tcp":
        return True
    on_http = any(p == port and not n.startswith("tcp") for n, p in SERVICES[dst_pod[0]])
    src_pod = next((p for p in PODS if p[4] == src_ip), None)
    mode = mtls_mode(peer_auth, dst_pod, port)
    if mode == "STRICT" and src_pod is None:
        return False  # no certificate: refused before any AuthorizationPolicy
    peer = (src_ip, src_pod if mode != "DISABLE" else None)  # without mTLS a source has no identity
    mine = [p for p in policies if p["metadata"]["namespace"] in (dst_pod[1], "istio-system")
            and (not p["spec"].get("selector") or p["spec"]["selector"]["matchLabels"]["app"] == dst_pod[2])
            and p["spec"]["action"] != "AUDIT"]
    hit = lambda action: any(_rule_matches(r, action, peer, port, request, on_http)  # noqa: E731
                             for p in mine if p["spec"]["action"] == action for r in p["spec"].get("rules") or [])
    if hit("DENY"):
        return False
    if not any(p["spec"]["action"] == "ALLOW" for p in mine):
        return True
    return hit("ALLOW")


def import_mesh(*objects: list[dict]):
    imported = convert([("mesh.yaml", yaml.safe_dump_all(cluster() + [o for objs in objects for o in objs]))])
    return compile_sources([("<kubernetes>", imported.text)]).program, imported.text


def mismatches(program, oracle) -> list:
    bad = []
    for src in [p[4] for p in PODS] + OUTSIDE:
        for dst in PODS:
            if src == dst[4]:
                continue
            a, b = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst[4]))
            for port in PORTS:
                for proto, number in (("tcp", 6), ("udp", 17)):
                    for request in [None] + (REQUESTS if proto == "tcp" else []):
                        got = evaluate(program, Flow(4, a, b, number, 40000, port, http=request)).verdict == "allow"
                        if got != oracle(src, dst, proto, port, request):
                            bad.append((src, dst[0], proto, port, request, not got))
    return bad


@SETTINGS
@given(authz())
def test_imported_authorization_policies_decide_as_istio_does(policies):
    program, text = import_mesh(policies)
    bad = mismatches(program, lambda s, d, proto, port, req: istio_allows(policies, s, d, proto, port, req))
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]}\n{yaml.safe_dump_all(policies)}\n{text}"


@st.composite
def peer_authentications(draw):
    out = []
    for k in range(draw(st.integers(1, 3))):
        spec = {}
        where = draw(st.sampled_from(["shop", "data", "istio-system"]))
        if where != "istio-system" and draw(st.booleans()):
            spec["selector"] = {"matchLabels": {"app": draw(st.sampled_from(["web", "api", "db"]))}}
            if draw(st.booleans()):
                spec["portLevelMtls"] = {draw(st.sampled_from(PORTS)): {"mode": draw(st.sampled_from(
                    ["STRICT", "PERMISSIVE", "UNSET"]))}}
        if draw(st.integers(0, 3)):
            spec["mtls"] = {"mode": draw(st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]))}
        out.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": f"pa{k}", "namespace": where}, "spec": spec})
    # Istio takes one policy per level: the oracle and the importer agree on the order of the rest, so
    # keep one per (namespace, selector).
    seen, kept = set(), []
    for p in out:
        key = (p["metadata"]["namespace"], str(p["spec"].get("selector")))
        if key not in seen:
            seen.add(key)
            kept.append(p)
    return kept


@SETTINGS
@given(authz(), peer_authentications())
def test_peer_authentication_decides_with_the_policies_as_istio_does(policies, peer_auth):
    """STRICT (for the pod or one port) refuses clients outside the mesh before any AuthorizationPolicy;
    DISABLE leaves sources without principal or namespace; PERMISSIVE and UNSET change nothing."""
    try:
        program, text = import_mesh(policies, peer_auth)
    except DiagnosticError as exc:  # refused, never guessed: certificates on some ports of a pod only
        assert all("not imported (its peers' certificates would count on some ports" in d.message
                   for d in exc.diagnostics), exc.diagnostics
        assume(False)
    bad = mismatches(program, lambda s, d, proto, port, req: istio_allows(policies, s, d, proto, port, req,
                                                                          peer_auth))
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]}\n{yaml.safe_dump_all(policies + peer_auth)}\n{text}"


def _policy(name, ns, spec):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _verdict(program, src, dst, port, request=None, proto=6):
    f = Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), proto, 40000, port, http=request)
    return evaluate(program, f).verdict


def test_http_only_fields_on_a_tcp_port_follow_istios_documented_rule():
    """The TCP task of Istio's documentation: an ALLOW rule with `methods` on a TCP port never matches;
    a DENY rule with `methods` on a TCP port denies the port outright."""
    allow = [_policy("tcp-allow", "data", {"selector": {"matchLabels": {"app": "db"}}, "rules": [
        {"to": [{"operation": {"ports": ["9000"]}}]},
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9001"]}}]}]})]
    program, _ = import_mesh(allow)
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9000) == "allow"
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9001) == "deny"
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9001, proto=17) == "allow", "Istio does not judge UDP"
    deny = [_policy("tcp-deny", "data", {"action": "DENY", "selector": {"matchLabels": {"app": "db"}}, "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]})]
    program, _ = import_mesh(deny)
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9000) == "deny"
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9001) == "allow"
    # On an HTTP port the same DENY reads the method.
    http_deny = [_policy("get-deny", "shop", {"action": "DENY", "selector": {"matchLabels": {"app": "api"}}, "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["8000"]}}]}]})]
    program, _ = import_mesh(http_deny)
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, Request("GET", "/")) == "deny"
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, Request("POST", "/")) == "allow"


def test_network_policy_and_istio_must_both_allow():
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "api-from-web", "namespace": "shop"},
          "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                "ports": [{"port": 8000}]}]}}
    ap = _policy("api-get", "shop", {"selector": {"matchLabels": {"app": "api"}}, "rules": [
        {"from": [{"source": {"namespaces": ["shop", "ops"]}}], "to": [{"operation": {"methods": ["GET"]}}]}]})
    program, _ = import_mesh([np, ap])
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, Request("GET", "/ip")) == "allow"
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, Request("POST", "/ip")) == "deny", "Istio says no"
    assert _verdict(program, "10.1.0.4", "10.1.0.2", 8000, Request("GET", "/ip")) == "deny", "the NetworkPolicy says no"
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 9000) == "deny", "both say no"


def test_commands_read_authorization_policies_and_point_into_them(tmp_path):
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(cluster() + [
        _policy("api-get", "shop", {"selector": {"matchLabels": {"app": "api"}}, "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}],
             "to": [{"operation": {"methods": ["GET"], "paths": ["/ip"]}}]}]})]))
    out = run("explain", str(tmp_path / "mesh.yaml"), "--flow", "shop_web -> shop_api http POST /ip")
    assert "verdict   deny" in out.stdout and "AuthorizationPolicy shop/api-get" not in out.stdout
    assert f"{tmp_path / 'mesh.yaml'}:" in out.stdout
    out = run("explain", str(tmp_path / "mesh.yaml"), "--flow", "shop_web -> shop_api http GET /ip")
    assert "verdict   allow" in out.stdout
    imported = run("import", str(tmp_path / "mesh.yaml"))
    assert "# AuthorizationPolicy shop/api-get" in imported.stdout
    assert "service shop_api { address 10.1.0.2/32  port 8000 http  port 9000 tcp }" in imported.stdout


@pytest.mark.parametrize("spec, message", [
    ({"action": "CUSTOM", "provider": {"name": "opa"}}, "CUSTOM hands the decision"),
    ({"rules": [{"to": [{"operation": {"notPaths": ["/admin/*"]}}]}]}, "notPaths is not imported"),
    ({"rules": [{"to": [{"operation": {"paths": ["/api*"]}}]}]}, "paths: '/api*' is not imported"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/../b"]}}]}]}, "not in normal form"),
    ({"rules": [{"to": [{"operation": {"methods": ["get"]}}]}]}, "methods: 'get' is not imported"),
    ({"rules": [{"to": [{"operation": {"hosts": ["*.example.com"]}}]}]}, "hosts: '*.example.com'"),
    ({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}, "requestPrincipals is not imported"),
    ({"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]}, "condition 'request.auth"),
    ({"rules": [{"when": [{"key": "request.headers[x-a]", "values": ["a*"]}]}]}, "header values are exact"),
    ({"rules": [{"when": [{"key": "request.headers[transfer-encoding]", "values": ["x"]}]}]}, "transfer-encoding"),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "is not a port"),
    ({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "targetRefs is not imported"),
])
def test_what_cannot_be_imported_is_an_error_at_its_position(spec, message):
    text = yaml.safe_dump_all(cluster()) + "---\n" + yaml.safe_dump(_policy("bad", "shop", spec))
    with pytest.raises(DiagnosticError) as exc:
        convert([("mesh.yaml", text)])
    found = [d for d in exc.value.diagnostics if message in d.message]
    assert found, [d.message for d in exc.value.diagnostics]
    assert found[0].span.file == "mesh.yaml" and found[0].span.line > text.count("\n") - 12


# -- VirtualService and DestinationRule ---------------------------------------------------------------

def _routing_cluster(vs_http: list, dr_extra: dict | None = None) -> list[dict]:
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"reviews-{v}", "namespace": "shop", "labels": {"app": "reviews", "version": v}},
             "status": {"podIP": f"10.1.2.{k + 1}"}} for k, v in enumerate(("v1", "v2", "v3"))]
    pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "page", "namespace": "shop",
                                                                   "labels": {"app": "page"}},
                 "status": {"podIP": "10.1.1.1"}})
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
           "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}}
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "reviews", "namespace": "shop"},
          "spec": {"host": "reviews.shop.svc.cluster.local",
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}},
                               {"name": "new", "labels": {"version": "v3"}}], **(dr_extra or {})}}
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "shop"}, "spec": {"hosts": ["reviews"], "http": vs_http}}
    return pods + [svc, dr, vs]


def _route_of(program, request: Request):
    d = evaluate(program, Flow(4, int(ipaddress.ip_address("10.1.1.1")), int(ipaddress.ip_address("10.1.2.1")), 6,
                               40000, 9080, http=request))
    return d.route.action if d.route else None


def test_virtual_service_routes_and_destination_rule_limits_are_imported():
    http = [{"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/reviews/"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"uri": {"exact": "/health"}}], "route": [{"destination": {"host": "reviews"}}],
             "timeout": "250ms"},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 75},
                       {"destination": {"host": "reviews.shop", "subset": "new"}, "weight": 25}],
             "timeout": "2s", "retries": {"attempts": 3, "perTryTimeout": "0.5s", "retryOn": "5xx,connect-failure"}}]
    pool = {"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100},
                                                 "http": {"http1MaxPendingRequests": 10, "maxRetries": 2}},
                              "outlierDetection": {"consecutiveGatewayErrors": 5, "baseEjectionTime": "30s"}}}
    imported = convert([("mesh.yaml", yaml.safe_dump_all(_routing_cluster(http, pool)))])
    program = compile_sources([("<kubernetes>", imported.text)]).program
    jason = _route_of(program, Request("GET", "/reviews/1", headers=(("end-user", "jason"),)))
    assert [(b.version, b.weight) for b in jason.split] == [("reviews-v2", 100)]
    other = _route_of(program, Request("GET", "/reviews/1"))
    assert [(b.version, b.weight) for b in other.split] == [("reviews-v1", 75), ("reviews-v3", 25)]
    assert other.timeout_ms == 2000 and other.retry.attempts == 3 and other.retry.per_try_ms == 500
    assert other.retry.on == ("5xx", "connect-failure")
    health = _route_of(program, Request("GET", "/health"))
    assert health.split == () and health.timeout_ms == 250
    (limits,) = program.limits
    assert limits.service == "shop_reviews"
    b = limits.breaker
    assert (b.max_connections, b.max_pending, b.max_retries, b.max_requests) == (100, 10, 2, None)
    assert (b.outlier.consecutive, b.outlier.on, b.outlier.ejection_ms) == (5, "gateway-error", 30000)
    # Each pod is a version of the routed service; the addresses its prefix holds beyond them stay outside.
    assert "version reviews-v1 address 10.1.2.1/32" in imported.text
    d = evaluate(program, Flow(4, int(ipaddress.ip_address("10.1.2.0")), int(ipaddress.ip_address("10.1.1.1")), 6,
                               40000, 80))
    assert d.src_id.startswith("outside")


@pytest.mark.parametrize("http, message", [
    ([{"match": [{"uri": {"prefix": "/reviews"}}], "route": [{"destination": {"host": "reviews"}}]}],
     "uri prefix '/reviews'"),
    ([{"match": [{"uri": {"prefix": "/"}}], "route": [{"destination": {"host": "reviews"}}]},
      {"match": [{"uri": {"prefix": "/api/"}}], "route": [{"destination": {"host": "reviews"}}], "timeout": "1s"}],
     "Istio tries first, but anyplane orders routes"),
    ([{"route": [{"destination": {"host": "ratings"}}]}], "not to another Service"),
    ([{"redirect": {"uri": "/x"}}], "http.redirect is not imported"),
    ([{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}], "subset 'v9'"),
    ([{"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50}]}], "do not add up to 100"),
    ([{"match": [{"uri": {"regex": "/r.*"}}], "route": [{"destination": {"host": "reviews"}}]}], "only exact"),
    ([{"route": [{"destination": {"host": "reviews"}}], "retries": {"attempts": 2, "retryOn": "5xx,deadline"}}],
     "retryOn deadline"),
    ([{"route": [{"destination": {"host": "reviews"}}], "timeout": "1.5ms"}], "whole number of milliseconds"),
])
def test_what_routing_cannot_say_is_an_error_at_its_position(http, message):
    with pytest.raises(DiagnosticError) as exc:
        convert([("mesh.yaml", yaml.safe_dump_all(_routing_cluster(http)))])
    found = [d for d in exc.value.diagnostics if message in d.message]
    assert found, [d.message for d in exc.value.diagnostics]
    assert found[0].span.file == "mesh.yaml" and found[0].span.line > 1


def test_a_destination_port_that_is_the_services_only_port_is_the_service():
    """`destination.port` picks a port of the Service: with one port it says nothing more, and the routes
    are those written without it; a port the Service does not have (or one of several) is refused."""
    def routes(port):
        dest = {"host": "reviews", "subset": "v2", **({"port": {"number": port}} if port else {})}
        http = [{"match": [{"uri": {"prefix": "/reviews/"}}], "route": [{"destination": dest}]}]
        return convert([("mesh.yaml", yaml.safe_dump_all(_routing_cluster(http)))]).text

    assert routes(9080) == routes(None)
    program = compile_sources([("<kubernetes>", routes(9080))]).program
    assert [b.version for b in _route_of(program, Request("GET", "/reviews/1")).split] == ["reviews-v2"]
    with pytest.raises(DiagnosticError) as exc:
        routes(9090)
    (d,) = [d for d in exc.value.diagnostics if "destination.port" in d.message]
    assert "the Service's only one (this Service has port 9080)" in d.message and d.span.file == "mesh.yaml"


def test_the_istio_example_decides_as_its_policies_say():
    from anyplane.compiler.pipeline import load

    program = load(["examples/istio"]).program

    def verdict(src, dst, port, request=None, proto=6):
        f = Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), proto, 40000, port, http=request)
        return evaluate(program, f)

    page, details, reviews1, ratings, mysql, prom = ("10.20.0.10", "10.20.0.11", "10.20.0.21", "10.20.0.30",
                                                     "10.20.0.40", "10.30.0.5")
    internet = "203.0.113.9"
    assert verdict(internet, page, 9080, Request("GET", "/productpage")).verdict == "allow"
    assert verdict(internet, page, 9080, Request("POST", "/productpage")).verdict == "deny"
    assert verdict(page, details, 9080, Request("GET", "/details/1")).verdict == "allow"
    assert verdict(ratings, details, 9080, Request("GET", "/details/1")).verdict == "deny", "wrong principal"
    assert verdict(page, reviews1, 9080, Request("DELETE", "/reviews/1")).verdict == "deny", "the DENY wins"
    assert verdict(ratings, mysql, 3306).verdict == "allow"
    assert verdict(reviews1, mysql, 3306).verdict == "deny"
    assert verdict(prom, mysql, 15020).verdict == "allow", "the root namespace's policy applies to every pod"
    assert verdict(prom, mysql, 3306).verdict == "deny"
    assert verdict(internet, mysql, 53, proto=17).verdict == "allow", "Istio does not judge UDP"
    jason = verdict(page, reviews1, 9080, Request("GET", "/reviews/1", headers=(("end-user", "jason"),)))
    assert jason.verdict == "allow" and [b.version for b in jason.route.action.split] == ["reviews-v2"]
    other = verdict(page, reviews1, 9080, Request("GET", "/reviews/1"))
    assert [(b.version, b.weight) for b in other.route.action.split] == [("reviews-v1", 90), ("reviews-v3", 10)]
    done = run("verify", "examples/istio")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run("explain", "examples/istio", "--flow", "10.20.0.30 -> 10.20.0.11 tcp 9080 http GET /details/1")
    assert "verdict   deny" in done.stdout and "examples/istio/authorization.yaml:" in done.stdout


def test_a_host_written_with_its_port_and_dot_spellings_is_one_host():
    policy = _policy("deny-host", "shop", {"action": "DENY", "selector": {"matchLabels": {"app": "api"}}, "rules": [
        {"to": [{"operation": {"hosts": ["A.example", "a.example:*", "a.example.", "a.example.:*"]}}]}]})
    program, text = import_mesh([policy])
    assert text.count('host "a.example"') >= 1 and "a.example:" not in text
    sent = Request.sent_as("GET", "/x", "a.example.:8000")
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, sent) == "deny"
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000, Request("GET", "/x", "b.example")) == "allow"


GATEWAY = ("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: default}\n"
           "spec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, "
           "protocol: HTTP}\n    hosts: ['*']\n")


def test_a_gateway_is_left_out_with_a_note_and_decides_nothing(tmp_path):
    example_cluster(tmp_path, "namespaces.yaml", "pods.yaml", "policies.yaml")
    without = run("import", str(tmp_path))
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    done = run("import", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning:") == 1 and "gateway.yaml:1:1: warning: Gateway edge: left out" in done.stderr
    assert done.stdout == without.stdout
    peer = tmp_path / "peer.yaml"
    peer.write_text("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict}\n"
                    "spec: {mtls: {mode: BOGUS}}\n")
    refused = run("verify", str(tmp_path))
    assert refused.returncode == 1 and "peer.yaml:4:14: error: PeerAuthentication default/strict: mtls.mode 'BOGUS' " \
        "is not one of UNSET, DISABLE, PERMISSIVE, STRICT" in refused.stderr, refused.stderr


def test_a_strict_mesh_refuses_the_outside_and_names_the_peer_authentication(tmp_path):
    strict = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    program, _ = import_mesh([strict])
    assert _verdict(program, "203.0.113.7", "10.1.0.2", 8000) == "deny"
    assert _verdict(program, "203.0.113.7", "10.1.0.2", 8000, proto=17) == "allow", "mTLS is TCP's"
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 8000) == "allow", "a pod presents its certificate"
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(cluster() + [strict]))
    out = run("explain", str(tmp_path / "mesh.yaml"), "--flow", "203.0.113.7 -> shop_api tcp 8000")
    import re

    line = int(re.search(r"as new +deny +\S*mesh\.yaml:(\d+) +deny outside -> (\w+, )*shop_api(, \w+)* tcp", out.stdout).group(1))
    text = (tmp_path / "mesh.yaml").read_text().splitlines()
    start = max(k for k in range(line) if k == 0 or text[k - 1] == "---")
    assert "kind: PeerAuthentication" in text[start:line + 8], "the deny points into the PeerAuthentication"


def test_a_service_entry_names_its_addresses_and_decides_nothing():
    """A ServiceEntry outside the mesh gives addresses a name (an external of their own, cut from the
    policies' blocks); it decides no traffic. One without addresses is left out with a note."""
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "payments", "namespace": "shop"},
             "spec": {"hosts": ["api.payments.example"], "addresses": ["203.0.113.0/25"],
                      "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], "resolution": "STATIC",
                      "endpoints": [{"address": "198.51.100.7"}]}}
    dns = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
           "metadata": {"name": "search", "namespace": "shop"},
           "spec": {"hosts": ["search.example"], "resolution": "DNS", "ports": [{"number": 443, "name": "https"}]}}
    deny = _policy("no-db", "data", {"selector": {"matchLabels": {"app": "db"}}, "action": "DENY",
                                     "rules": [{"from": [{"source": {"ipBlocks": ["203.0.113.0/24"]}}]}]})
    without_entries, _ = import_mesh([deny])
    program, text = import_mesh([entry, dns, deny])
    assert "external external_api_payments_example { address 198.51.100.7/32 }" in text
    assert "external external_api_payments_example_2 { address 203.0.113.0/25 }" in text
    for src in ("203.0.113.9", "203.0.113.200", "198.51.100.7", "192.0.2.1"):
        for dst in [p[4] for p in PODS]:
            for port in PORTS:
                assert _verdict(program, src, dst, port) == _verdict(without_entries, src, dst, port)
    d = evaluate(program, Flow(4, int(ipaddress.ip_address("203.0.113.9")), int(ipaddress.ip_address(PODS[0][4])),
                               6, 40000, 80))
    assert d.src_id == "external_api_payments_example_2"
    imported = convert([("mesh.yaml", yaml.safe_dump_all(cluster() + [entry, dns, deny]))])
    (note,) = [n for n in imported.notes if "search" in n.message]
    assert "left out" in note.message and note.span.file == "mesh.yaml"


def test_namespace_puts_manifests_without_one_where_kubectl_apply_n_would(tmp_path):
    """Istio's samples name no namespace: `--namespace` places them (pods, Services, policies alike), and
    an object that names another namespace is refused at that line, as kubectl refuses it."""
    objects = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
         "status": {"podIP": "10.4.0.2"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "labels": {"app": "db"}},
         "status": {"podIP": "10.4.0.3"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tool", "namespace": "ops", "labels": {"app": "t"}},
         "status": {"podIP": "10.4.9.9"}},
        _policy("db-from-web", None, {"selector": {"matchLabels": {"app": "db"}}, "rules": [
            {"from": [{"source": {"namespaces": ["bookinfo"]}}]}]})]
    del objects[3]["metadata"]["namespace"]
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(objects[:2] + objects[3:]))
    done = run("import", str(tmp_path / "mesh.yaml"), "--namespace", "bookinfo")
    assert done.returncode == 0, done.stderr
    assert "Pod bookinfo/web" in done.stdout and "AuthorizationPolicy bookinfo/db-from-web" in done.stdout
    program = compile_sources([("<kubernetes>", done.stdout)]).program
    assert _verdict(program, "10.4.0.2", "10.4.0.3", 8080) == "allow", "a source in the policy's namespace"
    assert _verdict(program, "203.0.113.5", "10.4.0.3", 8080) == "deny"
    without = run("import", str(tmp_path / "mesh.yaml"))
    assert without.returncode == 0 and "Pod default/web" in without.stdout
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump_all(objects))
    refused = run("verify", str(tmp_path / "mixed.yaml"), "-n", "bookinfo")
    assert refused.returncode == 1
    assert "mixed.yaml:" in refused.stderr and "(ops) does not match --namespace bookinfo" in refused.stderr
    bad = run("verify", str(tmp_path / "mesh.yaml"), "--namespace", "Not_A_Name")
    assert bad.returncode == 2 and "not a Kubernetes namespace name" in bad.stderr


def test_without_mutual_tls_a_source_has_no_principal_or_namespace():
    """DISABLE on shop: api's sidecar reads no certificates, so a rule by principal or by namespace
    matches nobody there (Istio documents both as taken from the peer certificate); db in another
    namespace, still PERMISSIVE, keeps them."""
    disable = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "off", "namespace": "shop"}, "spec": {"mtls": {"mode": "DISABLE"}}}
    by_principal = [_policy(f"{app}-from-web", ns, {"selector": {"matchLabels": {"app": app}}, "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]}) for app, ns in (("api", "shop"),
                                                                                                    ("db", "data"))]
    by_namespace = [_policy("api-from-shop", "shop", {"selector": {"matchLabels": {"app": "api"}}, "rules": [
        {"from": [{"source": {"namespaces": ["shop"]}}]}]})]
    program, _ = import_mesh(by_principal, [disable])
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 9000) == "deny"
    assert _verdict(program, "10.1.0.1", "10.1.0.3", 9000) == "allow"
    program, _ = import_mesh(by_namespace, [disable])
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 9000) == "deny"
    program, _ = import_mesh(by_principal)
    assert _verdict(program, "10.1.0.1", "10.1.0.2", 9000) == "allow"


def test_peer_authentications_at_one_level_for_one_pod_are_an_error():
    """istiod keeps the older of two namespace-wide (or two workload) PeerAuthentications for a pod;
    manifests carry no creation time, so the import says so rather than guess. A port's UNSET takes its
    own policy's mode (istiod's ComposePeerAuthentication)."""
    def pa(name, spec, ns="shop"):
        return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}
    with pytest.raises(DiagnosticError) as info:
        import_mesh([pa("a", {"mtls": {"mode": "STRICT"}}), pa("b", {"mtls": {"mode": "PERMISSIVE"}})])
    assert "PeerAuthentication shop/a applies at the same level to pod shop/" in str(info.value.diagnostics[0])
    program, _ = import_mesh([pa("web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
                                         "portLevelMtls": {8000: {"mode": "UNSET"}, 9000: {"mode": "PERMISSIVE"}}})])
    assert _verdict(program, "203.0.113.7", "10.1.0.1", 8000) == "deny"
    assert _verdict(program, "203.0.113.7", "10.1.0.1", 9000) == "allow"


def test_strict_kinds_turns_what_is_left_out_into_errors_at_their_lines(tmp_path):
    """A Gateway, an Ingress and a ServiceEntry resolved by DNS decide no traffic between workloads: each is
    left out with a note at its line; `--strict-kinds` makes each an error there (exit 1), on every command
    that reads manifests, `diff` and `import` included."""
    objects = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
         "status": {"podIP": "10.4.0.2"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "shop"},
         "spec": {"selector": {"istio": "ingressgateway"}, "servers": []}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing", "namespace": "shop"},
         "spec": {}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "shop"},
         "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                  "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    lines = (tmp_path / "c.yaml").read_text().splitlines()
    starts = [k + 1 for k, line in enumerate(lines) if line.startswith("apiVersion:")]
    relaxed = run("check", str(tmp_path / "c.yaml"))
    assert relaxed.returncode == 0, relaxed.stderr
    assert f"c.yaml:{starts[1]}:1: warning: Gateway gw: left out" in relaxed.stderr
    assert f"c.yaml:{starts[3]}:1: warning: ServiceEntry shop/ext: left out" in relaxed.stderr
    for args in (["check"], ["import"], ["diff", str(tmp_path / "c.yaml")]):
        strict = run(*args, str(tmp_path / "c.yaml"), "--strict-kinds")
        assert strict.returncode == 1, (args, strict.stderr)
        for line, what in ((starts[1], "Gateway gw"), (starts[2], "Ingress ing"), (starts[3], "ServiceEntry shop/ext")):
            assert f"c.yaml:{line}:1: error: {what}: left out" in strict.stderr, (args, strict.stderr)
        assert "Traceback" not in strict.stderr


def _mesh_of(spaces: int) -> list[dict]:
    """`spaces` namespaces of three apps each (two pods per app), every app behind an HTTP Service; per
    namespace an ALLOW policy on the api (GETs from the web's account, its metrics from `ops`) and a
    namespace-wide DENY of /admin on the HTTP port."""
    out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}}]
    out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prom", "namespace": "ops",
                                                                   "labels": {"app": "prom"}},
                "spec": {"containers": [{"name": "c"}]}, "status": {"podIP": "10.200.0.1"}})
    for k in range(spaces):
        ns = f"team{k}"
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for j, app in enumerate(("web", "api", "db")):
            for r in range(2):
                out.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": f"{app}-{r}", "namespace": ns, "labels": {"app": app}},
                            "spec": {"serviceAccountName": app, "containers": [{"name": "c"}]},
                            "status": {"podIP": f"10.{k}.{j}.{r + 1}"}})
            out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        out.append(_policy("api", ns, {"selector": {"matchLabels": {"app": "api"}}, "rules": [
            {"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/web"]}}],
             "to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]},
            {"from": [{"source": {"namespaces": ["ops"]}}], "to": [{"operation": {"ports": ["9090"]}}]}]}))
        out.append(_policy("no-admin", ns, {"action": "DENY", "rules": [{"to": [{"operation": {
            "paths": ["/admin/*"], "ports": ["8080"]}}]}]}))
    return out


def test_the_import_writes_lines_that_grow_with_the_identities_not_their_pairs():
    """The tiers are decided per pair of identities, but the pairs one rule decides alike are one line:
    four times the namespaces gives about four times the lines (one line per pair gave sixteen), and
    the joined lines decide as Istio does."""
    sizes = {}
    for spaces in (2, 8):
        docs = _mesh_of(spaces)
        text = convert([("mesh.yaml", yaml.safe_dump_all(docs))]).text
        program = compile_sources([("<kubernetes>", text)]).program
        sizes[spaces] = len(program.rules)
    assert sizes[8] <= 5 * sizes[2], sizes
    policies = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    pods = {d["status"]["podIP"]: d for d in docs if d["kind"] == "Pod"}
    checked = 0
    for src in ("10.200.0.1", "10.7.0.2", "10.3.0.1", "203.0.113.9"):
        for dst, (ns, app) in (("10.3.1.2", ("team3", "api")), ("10.7.1.1", ("team7", "api")),
                               ("10.5.2.1", ("team5", "db"))):
            for port, request in ((8080, Request("GET", "/x")), (8080, Request("POST", "/x")),
                                  (8080, Request("GET", "/admin/a")), (9090, None), (5432, None)):
                got = evaluate(program, Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), 6,
                                             40000, port, http=request)).verdict == "allow"
                want = _mesh_allows(policies, pods.get(src), ns, app, port, request)
                assert got == want, (src, dst, port, request, got)
                checked += 1
    assert checked == 60


def _mesh_allows(policies, src_pod, ns: str, app: str, port: int, request) -> bool:
    """Istio's decision for `_mesh_of`'s policies, written from its documentation: DENY first, then
    ALLOW policies that select the workload (none: allowed). The HTTP service port is 8080."""
    account = src_pod["spec"].get("serviceAccountName", "default") if src_pod else None
    src_ns = src_pod["metadata"]["namespace"] if src_pod else None
    for p in policies:
        if p["metadata"]["namespace"] != ns or p["spec"].get("action") != "DENY":
            continue
        if port == 8080 and request is not None and request.path.startswith("/admin/"):
            return False
    allows = [p for p in policies if p["metadata"]["namespace"] == ns and p["spec"].get("action", "ALLOW") == "ALLOW"
              and p["spec"]["selector"]["matchLabels"]["app"] == app]
    if not allows:
        return True
    for rule in allows[0]["spec"]["rules"]:
        source, operation = rule["from"][0]["source"], rule["to"][0]["operation"]
        if str(port) not in operation["ports"]:
            continue
        if "principals" in source and (src_pod is None or f"cluster.local/ns/{src_ns}/sa/{account}"
                                       not in source["principals"]):
            continue
        if "namespaces" in source and src_ns not in source["namespaces"]:
            continue
        if "methods" in operation and (request is None or request.method not in operation["methods"]):
            continue
        return True
    return False


def _isolated(ns: str) -> list[dict]:
    """NetworkPolicies that isolate a `_mesh_of` namespace's ingress: web takes 8080 from every pod, the
    api 8080 from its web and 9090 from `ops`, the db 5432 from its api."""
    def np(name, app, peers, port):
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": peers, "ports": [{"port": port}]}]}}
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": ns},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
            np("web", "web", [{"namespaceSelector": {}}], 8080),
            np("api", "api", [{"podSelector": {"matchLabels": {"app": "web"}}}], 8080),
            np("api-metrics", "api", [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}],
               9090),
            np("db", "db", [{"podSelector": {"matchLabels": {"app": "api"}}}], 5432)]


def _lines_with_origins(text: str) -> list[tuple[str, str]]:
    """An imported text's lines, each with the comment above it (where it comes from), in order of
    text: lines of one priority have one action, so their order decides nothing."""
    lines = text.splitlines()
    return sorted((lines[k - 1] if k and lines[k - 1].startswith("#") else "", line)
                  for k, line in enumerate(lines) if line and not line.startswith("#"))


def test_networkpolicies_and_istio_together_decide_as_both_do_at_cluster_shape(monkeypatch):
    """Isolated namespaces under Istio: most pairs (another namespace's pods to a pod whose ingress lets
    them nothing) are decided by class, not pair by pair, and write the very text pair by pair writes
    (lines and where each comes from); every flow is decided as the NetworkPolicies and Istio's
    documented semantics together decide it (both must let it through)."""
    from anyplane.compiler.importers import compose

    docs = _mesh_of(4)
    for k in range(4):
        docs += _isolated(f"team{k}")
    text = convert([("mesh.yaml", yaml.safe_dump_all(docs))]).text
    monkeypatch.setattr(compose, "BY_CLASS", False)
    assert _lines_with_origins(convert([("mesh.yaml", yaml.safe_dump_all(docs))]).text) == _lines_with_origins(text)
    program = compile_sources([("<kubernetes>", text)]).program
    policies = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    pods = {d["status"]["podIP"]: d for d in docs if d["kind"] == "Pod"}

    def np_allows(src_pod, ns: str, app: str, port: int) -> bool:
        same = src_pod is not None and src_pod["metadata"]["namespace"] == ns
        src_app = src_pod["metadata"]["labels"]["app"] if src_pod else None
        if app == "web":
            return src_pod is not None and port == 8080
        if app == "api":
            return (same and src_app == "web" and port == 8080) or \
                (src_pod is not None and src_pod["metadata"]["namespace"] == "ops" and port == 9090)
        return same and src_app == "api" and port == 5432
    checked = allowed = 0
    sources = ["10.200.0.1", "203.0.113.9"] + [f"10.{k}.{j}.1" for k in range(4) for j in range(3)]
    for src in sources:
        for dst, (ns, app) in (("10.1.0.2", ("team1", "web")), ("10.1.1.2", ("team1", "api")),
                               ("10.3.1.1", ("team3", "api")), ("10.3.2.2", ("team3", "db"))):
            for port, request in ((8080, Request("GET", "/x")), (8080, Request("POST", "/x")),
                                  (8080, Request("GET", "/admin/a")), (9090, None), (5432, None)):
                if src == dst:
                    continue  # a pod reaches itself
                got = evaluate(program, Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), 6,
                                             40000, port, http=request)).verdict == "allow"
                want = np_allows(pods.get(src), ns, app, port) and \
                    _mesh_allows(policies, pods.get(src), ns, app, port, request)
                assert got == want, (src, dst, port, request, got)
                checked += 1
                allowed += want
    assert checked == 275 and 0 < allowed < checked
