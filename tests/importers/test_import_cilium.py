"""CiliumNetworkPolicy import (layers 3 and 4), against Cilium's documented semantics written out here.

For random clusters, NetworkPolicies and CiliumNetworkPolicies (endpoint, CIDR-with-except and entity
peers, ports with ANY and named ports, deny sections, enableDefaultDeny), every flow between pods and
outside addresses gets from the imported policy the verdict Cilium gives it: an endpoint a rule
selects is in default deny for each direction the rule has; allows (Cilium's and the
NetworkPolicies') add up; denies win.
"""

from __future__ import annotations

import ipaddress
import json
import re

import yaml
from hypothesis import given
from hypothesis import strategies as st


from anyplane.compiler.importers.k8s import convert
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow, Request
from anyplane.ir.interp import evaluate
from anyplane.ir.source import DiagnosticError

from ..conftest import example_cluster, run
from ..importers.test_import_admin import _np_side
from ..importers.test_import_k8s import NAMESPACES, SETTINGS, _labels_match, clusters, import_cluster, mismatches, policies

PORTS = (53, 80, 5432, 8080, 9000)


def _endpoint_selector(draw) -> dict:
    return draw(st.sampled_from([{}, {"matchLabels": {"app": "web"}}, {"matchLabels": {"k8s:tier": "a"}},
                                 {"matchLabels": {"io.kubernetes.pod.namespace": "ops"}},
                                 {"matchLabels": {"io.cilium.k8s.namespace.labels.team": "edge", "app": "db"}},
                                 {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "db"]}]},
                                 {"matchLabels": {"io.cilium.k8s.policy.serviceaccount": "frontend"}},
                                 {"matchLabels": {"k8s:io.cilium.k8s.policy.serviceaccount": "default"}}]))


@st.composite
def cilium_rule(draw, direction: str, deny: bool):
    prefix = "from" if direction == "ingress" else "to"
    rule = {}
    if draw(st.integers(0, 9)) == 0:
        return rule  # `{}`: matches nothing, its section still puts the endpoints in default deny
    kinds = draw(st.lists(st.sampled_from(["Endpoints", "CIDRSet", "Entities"]), max_size=2, unique=True))
    for kind in kinds:
        if kind == "Endpoints":
            rule[prefix + kind] = [_endpoint_selector(draw) for _ in range(draw(st.integers(1, 2)))]
        elif kind == "CIDRSet":
            cidr = draw(st.sampled_from(["0.0.0.0/0", "203.0.113.0/24", "10.0.0.0/8"]))
            item = {"cidr": cidr}
            if draw(st.booleans()):
                item["except"] = [{"0.0.0.0/0": "192.168.0.0/16", "203.0.113.0/24": "203.0.113.0/29",
                                   "10.0.0.0/8": "10.9.0.0/16"}[cidr]]
            rule[prefix + kind] = [item]
        else:
            rule[prefix + kind] = [draw(st.sampled_from(["world", "cluster", "all"]))]
    if draw(st.booleans()) or not rule:
        ports = []
        for _ in range(draw(st.integers(1, 2))):
            p = draw(st.sampled_from([{"port": "80"}, {"port": "5432", "protocol": "TCP"}, {"port": "53", "protocol": "UDP"},
                                      {"port": "8000", "endPort": 9000, "protocol": "TCP"},
                                      {"port": "http", "protocol": "TCP"}]))
            ports.append(p)
        rule["toPorts"] = [{"ports": ports}]
    if draw(st.integers(0, 3)) == 0:  # ICMP messages beside (or instead of) the ports
        types = draw(st.lists(st.sampled_from([8, 0, 13, "EchoRequest", "8"]), min_size=1, max_size=2))
        rule["icmps"] = [{"fields": [{"type": t, **({"family": "IPv4"} if draw(st.booleans()) else {})}
                                     for t in types]}]
    return rule


@st.composite
def cilium_policies(draw, n: int):
    out = []
    for k in range(n):
        spec = {"endpointSelector": _endpoint_selector(draw)}
        for direction in ("ingress", "egress"):
            for deny in (False, True):
                if draw(st.integers(0, 3)) == 0:
                    spec[direction + ("Deny" if deny else "")] = [draw(cilium_rule(direction, deny))
                                                                  for _ in range(draw(st.integers(1, 2)))]
        if draw(st.integers(0, 4)) == 0:
            spec["enableDefaultDeny"] = {"ingress": draw(st.booleans()), "egress": draw(st.booleans())}
        out.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                    "metadata": {"name": f"cnp{k}", "namespace": draw(st.sampled_from(sorted(NAMESPACES)))},
                    "spec": spec})
    return out


# -- Cilium's semantics, from its documentation ----------------------------------------------------

def _endpoint_labels(pod: dict) -> dict:
    ns = pod["metadata"]["namespace"]
    out = dict(pod["metadata"]["labels"])
    out["io.kubernetes.pod.namespace"] = ns
    out["io.cilium.k8s.policy.serviceaccount"] = pod["spec"].get("serviceAccountName") or "default"
    for k, v in dict(NAMESPACES.get(ns, {}), **{"kubernetes.io/metadata.name": ns}).items():
        out["io.cilium.k8s.namespace.labels." + k] = v
    return out


def _strip(sel: dict) -> dict:
    out = {"matchLabels": {k.split(":", 1)[-1] if k.startswith("k8s:") else k: v
                           for k, v in (sel.get("matchLabels") or {}).items()}}
    if sel.get("matchExpressions"):
        out["matchExpressions"] = sel["matchExpressions"]
    return out


def _selects(sel: dict, pod: dict, policy_ns: str, peer: bool) -> bool:
    s = _strip(sel)
    names_ns = "io.kubernetes.pod.namespace" in s["matchLabels"] or any(
        e["key"] == "io.kubernetes.pod.namespace" for e in s.get("matchExpressions", []))
    if pod["metadata"]["namespace"] != policy_ns and (not peer or not names_ns):
        return False
    return _labels_match(s, _endpoint_labels(pod))


def _peer(rule: dict, direction: str, policy_ns: str, ip: str, pod: dict | None) -> bool:
    prefix = "from" if direction == "ingress" else "to"
    if not rule:
        return False  # `{}` matches no peer
    keys = [k for k in rule if k not in ("toPorts", "icmps")]
    if not keys:
        return True
    for sel in rule.get(prefix + "Endpoints") or []:
        if pod is not None and _selects(sel, pod, policy_ns, True):
            return True
    for item in (rule.get(prefix + "CIDRSet") or []) + [{"cidr": c} for c in rule.get(prefix + "CIDR") or []]:
        a = ipaddress.ip_address(ip)
        if pod is None and a in ipaddress.ip_network(item["cidr"]) and \
                not any(a in ipaddress.ip_network(e) for e in item.get("except", [])):
            return True
    for entity in rule.get(prefix + "Entities") or []:
        if entity == "all" or (entity == "world" and pod is None) or (entity == "cluster" and pod is not None):
            return True
    return False


def _port(rule: dict, proto: str, port: int | None, dst_pod: dict | None) -> bool:
    """The rule's L4 part: `toPorts` and `icmps` together (either restricts the rule to what it lists;
    the ICMP flows asked are echo requests, type 8)."""
    if not rule.get("toPorts") and not rule.get("icmps"):
        return True
    if proto == "ICMP":
        return any(f.get("family", "IPv4") == "IPv4" and f["type"] in (8, "8", "EchoRequest")
                   for item in rule.get("icmps") or [] for f in item["fields"])
    for tp in rule.get("toPorts") or []:
        for p in tp["ports"]:
            want = p.get("protocol", "ANY")
            if want not in ("ANY", proto) or port is None:
                continue
            if not p["port"].isdigit():
                if dst_pod is not None and any(c.get("name") == p["port"] and c["containerPort"] == port
                                               and c.get("protocol", "TCP") == proto
                                               for c in dst_pod["spec"]["containers"][0]["ports"]):
                    return True
                continue
            if int(p["port"]) <= port <= p.get("endPort", int(p["port"])):
                return True
    return False


def _direction(cnps, nps, pod, direction, peer_ip, peer_pod, dst_pod, proto, port) -> bool:
    key = direction.lower()
    ns = pod["metadata"]["namespace"]
    selecting = [c for c in cnps if c["metadata"]["namespace"] == ns and _selects(c["spec"]["endpointSelector"], pod, ns, False)]
    for c in selecting:
        for rule in c["spec"].get(key + "Deny") or []:
            if _peer(rule, key, ns, peer_ip, peer_pod) and _port(rule, proto, port, dst_pod):
                return False
    # enableDefaultDeny: when given, it says; when not, a direction with rules is in default deny.
    closed = any((c["spec"].get("enableDefaultDeny") or {}).get(key) is True
                 or ((c["spec"].get(key) or c["spec"].get(key + "Deny"))
                     and (c["spec"].get("enableDefaultDeny") or {}).get(key) is not False) for c in selecting)
    np = _np_side(nps, pod, direction, key, "from" if key == "ingress" else "to", peer_ip, peer_pod, dst_pod,
                  proto, port)
    if np is None and not closed:
        return True
    if np:
        return True
    return any(_peer(rule, key, c["metadata"]["namespace"], peer_ip, peer_pod) and _port(rule, proto, port, dst_pod)
               for c in selecting for rule in c["spec"].get(key) or [])


def allowed(pods, nps, cnps, src_ip, dst_ip, proto, port) -> bool:
    by_ip = {p["status"]["podIP"]: p for p in pods}
    src, dst = by_ip.get(src_ip), by_ip.get(dst_ip)
    if src is not None and src is dst:
        return True
    ok = True
    if dst is not None:
        ok &= _direction(cnps, nps, dst, "Ingress", src_ip, src, dst, proto, port)
    if src is not None:
        ok &= _direction(cnps, nps, src, "Egress", dst_ip, dst, dst, proto, port)
    return ok


@SETTINGS
@given(st.data())
def test_imported_cilium_policies_decide_as_cilium_does(data):
    pods = data.draw(clusters())
    for pod in pods:  # service accounts, which Cilium gives each endpoint as a label
        account = data.draw(st.sampled_from([None, "frontend", "backend"]))
        if account:
            pod["spec"]["serviceAccountName"] = account
    nps = data.draw(policies(data.draw(st.integers(0, 2))))
    cnps = data.draw(cilium_policies(data.draw(st.integers(1, 3))))
    program, text = import_cluster(pods, nps, cnps)
    bad = mismatches(program, pods, lambda *f: allowed(pods, nps, cnps, *f), PORTS, icmp=True)
    assert not bad, (bad[:5], text[-2500:])


def test_what_is_not_imported_is_an_error_at_its_position(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "a", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "b", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "80"}],
                                                                   "rules": {"http": [{"method": "GET"}]}}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "d", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                                                                    "rules": {"http": [{"path": "/a.*"}]}}]},
                                                      {"toPorts": [{"ports": [{"port": "9092"}],
                                                                    "rules": {"kafka": [{"topic": "t"}]}}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["host"]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "e", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "ingress": [{"icmps": [{"fields": [{"type": "Bogus"}]}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "f", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "ingress": [{"icmps": [{"fields": [{"type": 8, "family": "IPv5"}]}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "g", "namespace": "shop"},
         "spec": {"endpointSelector": {}, "ingress": [{"icmps": [{"fields": [{"type": 300}]}]}]}},
    ]))
    done = run("check", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    for text in ("toFQDNs peers are not imported", "egress HTTP rules are not yet", "path '/a.*'",
                 "L7 rules other than http (kafka)",
                 "entity 'host' is the nodes' addresses: give the Node objects", "'Bogus' is not an IPv4 ICMP message name",
                 "icmps family 'IPv5' is not IPv4 or IPv6", "icmps type 300 is not an ICMP type"):
        assert text in done.stderr, done.stderr
    assert str(path) + ":" in done.stderr


# -- HTTP rules (toPorts.rules.http) ---------------------------------------------------------------

HTTP_RULES = [{"method": "GET"}, {"method": "GET|POST", "path": "/api/.*"}, {"path": "/health"},
              {"headers": ["X-Tenant: a"]}, {"method": "DELETE", "path": "/api/.*", "headerMatches": [{"name": "x-admin"}]},
              {"host": "shop\\.example"}]
REQUESTS = [None, Request("GET", "/"), Request("POST", "/api/x"), Request("GET", "/health"),
            Request("DELETE", "/api/1", headers=(("x-admin", "1"),)), Request("PUT", "/x", headers=(("x-tenant", "a"),)),
            Request("GET", "/apix"), Request("PATCH", "/", "shop.example")]


@st.composite
def http_policies(draw):
    out = []
    for k in range(draw(st.integers(1, 3))):
        rules = []
        for _ in range(draw(st.integers(1, 2))):
            rule = {}
            if draw(st.booleans()):
                rule["fromEndpoints"] = [_endpoint_selector(draw)]
            port = {"ports": [{"port": "8080", "protocol": "TCP"}]}
            if draw(st.integers(0, 3)):
                port["rules"] = {"http": draw(st.lists(st.sampled_from(HTTP_RULES), min_size=1, max_size=3, unique_by=repr))}
            rule["toPorts"] = [port]
            rules.append(rule)
        out.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                    "metadata": {"name": f"h{k}", "namespace": draw(st.sampled_from(sorted(NAMESPACES)))},
                    "spec": {"endpointSelector": _endpoint_selector(draw), "ingress": rules}})
    return out


def _http_matches(rule: dict, request) -> bool:
    if request is None:
        return False
    headers = dict(request.headers)
    for h in rule.get("headers", []):
        name, _, value = h.partition(":")
        if headers.get(name.strip().lower()) != value.strip():
            return False
    if any(m["name"] not in headers for m in rule.get("headerMatches", [])):
        return False
    return (re.fullmatch(rule.get("method", ".*"), request.method) is not None
            and re.fullmatch(rule.get("path", ".*"), request.path) is not None
            and (request.host is not None and re.fullmatch(rule["host"], request.host) is not None
                 if "host" in rule else True))


def http_allowed(pods, cnps, src_ip, dst_pod, request) -> bool:
    """Cilium at the destination, on port 8080: an endpoint with ingress rules lets through what a rule for
    the peer admits: the port outright, or the requests its HTTP rules match."""
    src_pod = next((p for p in pods if p["status"]["podIP"] == src_ip), None)
    mine = [c for c in cnps if _selects(c["spec"]["endpointSelector"], dst_pod, c["metadata"]["namespace"], False)]
    if not mine:
        return True
    for c in mine:
        for r in c["spec"]["ingress"]:
            if not _peer(r, "ingress", c["metadata"]["namespace"], src_ip, src_pod):
                continue
            for tp in r["toPorts"]:
                if "rules" not in tp or any(_http_matches(h, request) for h in tp["rules"]["http"]):
                    return True
    return False


@SETTINGS
@given(st.data())
def test_imported_http_rules_decide_as_ciliums_proxy_does(data):
    pods = data.draw(clusters())
    cnps = data.draw(http_policies())
    program, text = import_cluster(pods, cnps)
    bad = []
    for src in [p["status"]["podIP"] for p in pods] + ["203.0.113.7"]:
        for dst in pods:
            if src == dst["status"]["podIP"]:
                continue
            for request in REQUESTS:
                f = Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst["status"]["podIP"])), 6, 40000,
                         8080, http=request)
                if (evaluate(program, f).verdict == "allow") != http_allowed(pods, cnps, src, dst, request):
                    bad.append((src, dst["metadata"]["name"], request))
    assert not bad, (bad[:5], yaml.safe_dump_all(cnps), text[-2500:])


def test_a_cilium_policy_that_selects_no_pod_is_a_finding(tmp_path):
    example_cluster(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: nobody, namespace: data}\n"
        "spec:\n  endpointSelector: {matchLabels: {app: ghost}}\n  ingress:\n  - fromEntities: [world]\n---\n"
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: data}\n"
        "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [cluster]\n")
    done = run("verify", str(tmp_path), "--format", "json")
    messages = [f["message"] for f in json.loads(done.stdout)["findings"]]
    assert messages == ["CiliumNetworkPolicy data/nobody selects no pod: it has no effect"], messages


# -- entities the cluster defines: host, remote-node, kube-apiserver ------------------------------------

def _node_cluster(apiserver_kind: str = "Endpoints") -> list[dict]:
    """Two nodes; pods a-1 (node n1) and a-2 (node n2) of app a, and b (node n1); the API server at an
    address of its own."""
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
              "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}
             for name, ip in (("n1", "10.250.0.1"), ("n2", "10.250.0.2"))]
    api = ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.250.0.10"}], "ports": [{"name": "https", "port": 6443}]}]}
           if apiserver_kind == "Endpoints" else
           {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.250.0.10"]}], "ports": [{"port": 6443}]})
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
             "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": {"podIP": ip}}
            for name, app, node, ip in (("a-1", "a", "n1", "10.1.0.1"), ("a-2", "a", "n2", "10.1.0.2"),
                                        ("b", "b", "n1", "10.1.0.3"))]
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}, *nodes, api, *pods]


def _cnp(name: str, spec: dict) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


ENTITY_POLICIES = [
    _cnp("a-from-its-host", {"endpointSelector": {"matchLabels": {"app": "a"}},
                             "ingress": [{"fromEntities": ["host"]}]}),
    _cnp("b-out", {"endpointSelector": {"matchLabels": {"app": "b"}}, "egress": [
        {"toEntities": ["kube-apiserver"], "toPorts": [{"ports": [{"port": "6443", "protocol": "TCP"}]}]},
        {"toEntities": ["remote-node"]}]}),
    _cnp("b-from-world", {"endpointSelector": {"matchLabels": {"app": "b"}},
                          "ingress": [{"fromEntities": ["world"]}]})]


def test_the_entities_a_cluster_defines_are_its_nodes_and_api_server():
    """Cilium's entities, as its documentation defines them: `host` is the node the selected endpoint
    runs on, `remote-node` every other node, `kube-apiserver` the addresses of Service default/kubernetes,
    and `world` none of those (nor any pod). Nodes come from Node objects, the API server from its
    Endpoints or EndpointSlice."""
    cases = [  # (source, destination, port, allowed)
        ("10.250.0.1", "10.1.0.1", 80, True), ("10.250.0.2", "10.1.0.2", 80, True),  # each from its own node
        ("10.250.0.2", "10.1.0.1", 80, False), ("10.250.0.1", "10.1.0.2", 80, False),  # not from the other
        ("203.0.113.5", "10.1.0.1", 80, False), ("10.1.0.3", "10.1.0.1", 80, False),
        ("10.1.0.3", "10.250.0.10", 6443, True), ("10.1.0.3", "10.250.0.10", 80, False),
        ("10.1.0.3", "10.250.0.2", 22, True),  # n2 is remote for b (on n1)
        ("10.1.0.3", "10.250.0.1", 22, False), ("10.1.0.3", "8.8.8.8", 53, False),
        ("203.0.113.5", "10.1.0.3", 8080, True),  # the world
        ("10.250.0.2", "10.1.0.3", 8080, False), ("10.250.0.10", "10.1.0.3", 8080, False),  # nodes, API server
        ("10.1.0.1", "10.1.0.3", 8080, False)]
    for kind in ("Endpoints", "EndpointSlice"):
        text = convert([("c.yaml", yaml.safe_dump_all(_node_cluster(kind) + ENTITY_POLICIES))]).text
        program = compile_sources([("<kubernetes>", text)]).program
        for src, dst, port, allowed in cases:
            flow = Flow(4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), 6, 40000, port)
            assert (evaluate(program, flow).verdict == "allow") == allowed, (kind, src, dst, port, text)
        assert "external_node_n1" in text and "external_kube_apiserver" in text


def test_entities_without_their_addresses_and_pods_on_different_nodes_as_one_workload_are_refused():
    bare = [d for d in _node_cluster() if d["kind"] not in ("Node", "Endpoints")]
    for policy, said in ((ENTITY_POLICIES[0], "entity 'host' is the nodes' addresses: give the Node objects"),
                         (ENTITY_POLICIES[1], "entity 'kube-apiserver' is the addresses of Service default/kubernetes")):
        try:
            convert([("c.yaml", yaml.safe_dump_all(bare + [policy]))])
        except DiagnosticError as exc:
            assert any(said in d.message for d in exc.diagnostics), exc.diagnostics
        else:
            raise AssertionError("imported without the entity's addresses")
    unplaced = [d for d in _node_cluster()]
    unplaced[-1] = {**unplaced[-1], "spec": {"containers": [{"name": "c"}]}}  # pod b names no node
    try:
        convert([("c.yaml", yaml.safe_dump_all(unplaced + [_cnp("b-host", {
            "endpointSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"fromEntities": ["host"]}]})]))])
    except DiagnosticError as exc:
        assert any("Pod shop/b names no node (spec.nodeName)" in d.message for d in exc.diagnostics), exc.diagnostics
    else:
        raise AssertionError("imported a host entity for a pod on no node")
    # A pod on the host's network has its node's address: Cilium counts its traffic as the node's.
    hosted = _node_cluster() + [{"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "agent", "namespace": "shop", "labels": {"app": "agent"}},
                                 "spec": {"nodeName": "n1", "hostNetwork": True, "containers": [{"name": "c"}]},
                                 "status": {"podIP": "10.250.0.1"}}]
    try:
        convert([("c.yaml", yaml.safe_dump_all(hosted + ENTITY_POLICIES))])
    except DiagnosticError as exc:
        assert any("Pod shop/agent has the address 10.250.0.1 of a node" in d.message for d in exc.diagnostics), \
            exc.diagnostics
    else:
        raise AssertionError("imported a pod at its node's address")
    # The pods of app a run on two nodes: no selector tells them apart, and `host` does.
    try:
        convert([("c.yaml", yaml.safe_dump_all(_node_cluster() + ENTITY_POLICIES))], workloads=True)
    except DiagnosticError as exc:
        assert any("differ in their node" in d.message for d in exc.diagnostics), exc.diagnostics
    else:
        raise AssertionError("pods on two nodes written as one workload under a host entity")


@SETTINGS
@given(st.data())
def test_imported_cilium_policies_go_back_to_cilium_and_are_proved(data):
    """Random Cilium policies (with `icmps`, entities, CIDR sets and NetworkPolicies beside them),
    imported, then written back with `-t cilium`: proved through the importer, ICMP types included (the
    export says them apart as `icmps`, in allows and in denies), or refused at a rule."""
    from hypothesis import event

    from anyplane.compiler import api

    from ..crd_schemas import violations

    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(0, 1))))
    cnps = data.draw(cilium_policies(data.draw(st.integers(1, 3))))
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(lab)}}
                  for n, lab in NAMESPACES.items()]
    imported = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps + cnps))])
    compiled = api.Compiled(None, None, compile_sources([("<kubernetes>", imported.text)]).program, None,
                            selectors=imported.selectors)
    icmp = any(e.match.get("icmp.type") is not None for e in compiled.program.acl.entries)
    try:
        out = api.compile_target(compiled, "cilium")
    except DiagnosticError as exc:
        event("refused: " + exc.diagnostics[0].message[:50])
        return
    event("proved" + (" with ICMP types" if icmp else ""))
    written = [d for d in yaml.safe_load_all(next(a.data for a in out.artifacts if a.path == "ciliumnetworkpolicies.yaml"))
               if d]
    assert violations(written) == []
    proof = api.prove_export(compiled, "cilium", out)
    assert proof.proved, (proof.counterexample, imported.text[-2000:])
