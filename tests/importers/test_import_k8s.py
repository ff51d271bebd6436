"""Kubernetes NetworkPolicy import, against the API's semantics written out here (not the importer's).

For random clusters (namespaces, pods with labels and named ports) and random
policies (pod, namespace and ipBlock peers with except, numbered, ranged and
named ports, TCP and UDP, ingress and egress), every flow between pods and
chosen outside addresses gets from the imported policy the verdict the
NetworkPolicy rules give it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anyplane.compiler.importers.k8s import convert
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate

from ..conftest import example_cluster, examples, run

NAMESPACES = {"shop": {"team": "shop"}, "ops": {"team": "ops"}, "edge": {"team": "edge", "tier": "front"}}
LABELS = st.fixed_dictionaries({"app": st.sampled_from(["web", "db", "api"]), "tier": st.sampled_from(["a", "b"])})
NAMED = {"http": 8080, "pg": 5432, "dns": 53}
OUTSIDE = ["203.0.113.7", "198.51.100.9", "10.9.9.9", "192.168.1.1"]


@st.composite
def clusters(draw):
    pods = []
    for n in range(draw(st.integers(2, 5))):
        ports = draw(st.lists(st.sampled_from(sorted(NAMED)), max_size=2, unique=True))
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"p{n}", "namespace": draw(st.sampled_from(sorted(NAMESPACES))),
                                  "labels": draw(LABELS)},
                     "spec": {"containers": [{"name": "c", "ports": [
                         {"name": p, "containerPort": NAMED[p], "protocol": "UDP" if p == "dns" else "TCP"}
                         for p in ports]}]},
                     "status": {"podIP": f"10.1.0.{n + 1}"}})
    return pods


def selector(draw):
    kind = draw(st.sampled_from(["all", "labels", "in", "notin", "exists"]))
    if kind == "all":
        return {}
    if kind == "labels":
        return {"matchLabels": {"app": draw(st.sampled_from(["web", "db", "api"]))}}
    op = {"in": "In", "notin": "NotIn", "exists": "Exists"}[kind]
    expr = {"key": draw(st.sampled_from(["app", "tier", "team"])), "operator": op}
    if op != "Exists":
        expr["values"] = draw(st.lists(st.sampled_from(["web", "db", "a", "shop", "ops"]), min_size=1, max_size=2,
                                       unique=True))
    return {"matchExpressions": [expr]}


@st.composite
def peers(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block", "block"]))
    if kind == "block":
        cidr = draw(st.sampled_from(["0.0.0.0/0", "10.0.0.0/8", "203.0.113.0/24", "10.1.0.0/29"]))
        block = {"cidr": cidr}
        if draw(st.integers(0, 3)):
            inside = {"0.0.0.0/0": "192.168.0.0/16", "10.0.0.0/8": "10.1.0.0/30",
                      "203.0.113.0/24": "203.0.113.0/29", "10.1.0.0/29": "10.1.0.2/32"}[cidr]
            block["except"] = [inside]
        return {"ipBlock": block}
    out = {}
    if kind in ("pod", "both"):
        out["podSelector"] = selector(draw)
    if kind in ("ns", "both"):
        out["namespaceSelector"] = selector(draw)
    return out


@st.composite
def ports(draw):
    kind = draw(st.sampled_from(["num", "range", "named", "udp"]))
    if kind == "num":
        return {"port": draw(st.sampled_from([80, 5432, 8080]))}
    if kind == "range":
        lo = draw(st.sampled_from([5000, 8000]))
        return {"port": lo, "endPort": lo + draw(st.sampled_from([0, 100, 1000]))}
    if kind == "named":
        return {"port": draw(st.sampled_from(sorted(NAMED))), "protocol": draw(st.sampled_from(["TCP", "UDP"]))}
    return {"port": 53, "protocol": "UDP"}


@st.composite
def policies(draw, n: int):
    out = []
    for k in range(n):
        spec = {"podSelector": selector(draw)}
        types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        if types:
            spec["policyTypes"] = types
        for key, direction in (("ingress", "from"), ("egress", "to")):
            if draw(st.booleans()):
                rules = []
                for _ in range(draw(st.integers(0, 2))):
                    rule = {}
                    if draw(st.booleans()):
                        rule[direction] = draw(st.lists(peers(), min_size=1, max_size=2))
                    if draw(st.booleans()):
                        rule["ports"] = draw(st.lists(ports(), min_size=1, max_size=2))
                    rules.append(rule)
                spec[key] = rules
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"np{k}", "namespace": draw(st.sampled_from(sorted(NAMESPACES)))},
                    "spec": spec})
    return out


def replicated(data) -> tuple[list[dict], list[dict], list[dict]]:
    """(namespaces, pods, policies): a random cluster with replicas of its pods (same labels) in any
    namespace, and random policies."""
    pods = data.draw(clusters())
    for extra in range(data.draw(st.integers(0, 8))):
        twin = json.loads(json.dumps(data.draw(st.sampled_from(pods))))
        twin["metadata"]["name"] = f"r{extra}"
        twin["metadata"]["namespace"] = data.draw(st.sampled_from(sorted(NAMESPACES)))
        twin["status"]["podIP"] = f"10.1.1.{extra + 1}"
        pods.append(twin)
    nps = data.draw(policies(data.draw(st.integers(1, 4))))
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(l)}}
                  for n, l in NAMESPACES.items()]
    return namespaces, pods, nps


# -- the semantics, from the API reference -------------------------------------------------------

def _labels_match(sel: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and labels.get(k) in vals) or \
                (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels):
            return False
    return True


def _ns_labels(ns: str) -> dict:
    return dict(NAMESPACES.get(ns, {}), **{"kubernetes.io/metadata.name": ns})


def _peer_has(peer: dict, policy_ns: str, ip: str, pod: dict | None) -> bool:
    if "ipBlock" in peer:  # addresses outside the cluster: pods are peers through selectors only
        if pod is not None:
            return False
        b = peer["ipBlock"]
        a = ipaddress.ip_address(ip)
        return a in ipaddress.ip_network(b["cidr"]) and not any(a in ipaddress.ip_network(x) for x in b.get("except", []))
    if pod is None:
        return False
    ns = pod["metadata"]["namespace"]
    if "namespaceSelector" in peer:
        if not _labels_match(peer["namespaceSelector"], _ns_labels(ns)):
            return False
    elif ns != policy_ns:
        return False
    return _labels_match(peer.get("podSelector", {}), pod["metadata"]["labels"])


def _port_has(p: dict, proto: str, port: int, dst_pod: dict | None) -> bool:
    if p.get("protocol", "TCP") != proto:
        return False
    want = p.get("port")
    if want is None:
        return True
    if isinstance(want, str):
        if dst_pod is None:
            return False
        return any(c.get("name") == want and c["containerPort"] == port and c.get("protocol", "TCP") == proto
                   for c in dst_pod["spec"]["containers"][0]["ports"])
    return want <= port <= p.get("endPort", want)


def allowed(pods, nps, src_ip, dst_ip, proto, port) -> bool:
    by_ip = {p["status"]["podIP"]: p for p in pods}
    by_ip.update({e["ip"]: p for p in pods for e in p["status"].get("podIPs", ())})  # every address of a pod
    src, dst = by_ip.get(src_ip), by_ip.get(dst_ip)

    def side(pod, direction, key, peer_key, peer_ip, peer_pod, dst_pod):
        selecting = [np for np in nps if np["metadata"]["namespace"] == pod["metadata"]["namespace"]
                     and _labels_match(np["spec"]["podSelector"], pod["metadata"]["labels"])
                     and direction in np["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if "egress" in np["spec"] else []))]
        if not selecting:
            return True
        for np in selecting:
            for rule in np["spec"].get(key) or []:
                if rule.get(peer_key) and not any(_peer_has(x, np["metadata"]["namespace"], peer_ip, peer_pod)
                                                  for x in rule[peer_key]):
                    continue
                if rule.get("ports") and not any(_port_has(x, proto, port, dst_pod) for x in rule["ports"]):
                    continue
                return True
        return False

    if src is not None and src is dst:  # a pod cannot block access to itself
        return True
    ok = True
    if dst is not None:
        ok &= side(dst, "Ingress", "ingress", "from", src_ip, src, dst)
    if src is not None:
        ok &= side(src, "Egress", "egress", "to", dst_ip, dst, dst)
    return ok


SETTINGS = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def import_cluster(pods: list[dict], *policies: list[dict]):
    """(program, policy text): the namespaces, these pods (or workloads) and policies, imported."""
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(l)}}
                  for n, l in NAMESPACES.items()]
    imported = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + [p for ps in policies for p in ps]))])
    return compile_sources([("<kubernetes>", imported.text)]).program, imported.text


def mismatches(program, pods: list[dict], oracle, ports, icmp: bool = False) -> list:
    """Flows between the pods and outside addresses (TCP and UDP on `ports`, and an ICMP echo) whose
    verdict in the program differs from `oracle(src, dst, proto, port)`."""
    ips = [p["status"]["podIP"] for p in pods] + OUTSIDE
    cases = [(proto, number, port) for proto, number in (("TCP", 6), ("UDP", 17)) for port in ports]
    cases += [("ICMP", 1, None)] if icmp else []
    bad = []
    for src in ips:
        for dst in ips:
            if src in OUTSIDE and dst in OUTSIDE:
                continue
            a, b = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst))
            for proto, number, port in cases:
                f = Flow(4, a, b, number, 40000, port) if port else Flow(4, a, b, 1, icmp_type=8, icmp_code=0)
                want = oracle(src, dst, proto, port)
                if (evaluate(program, f).verdict == "allow") != want:
                    bad.append((src, dst, proto, port, want))
    return bad


@SETTINGS
@given(st.data())
def test_imported_policies_decide_as_networkpolicy_does(data):
    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(1, 4))))
    program, text = import_cluster(pods, nps)
    ports = (53, 80, 5000, 5432, 5100, 6000, 8080, 8100, 9000)
    bad = mismatches(program, pods, lambda *f: allowed(pods, nps, *f), ports)
    assert not bad, (bad[:5], text)


OUTSIDE6 = ["2001:db8::7", "fd00:9::1"]


@SETTINGS
@given(st.data())
def test_dual_stack_pods_are_decided_on_every_address(data):
    """A pod's IPv6 address (status.podIPs) is the pod's as its IPv4 one is: selectors admit it, ipBlocks
    outside the cluster do not, and flows over either version get NetworkPolicy's verdict."""
    pods = data.draw(clusters())
    for k, p in enumerate(pods):
        if data.draw(st.booleans()):
            p["status"]["podIPs"] = [{"ip": p["status"]["podIP"]}, {"ip": f"fd00:1::{k + 1:x}"}]
    event(f"{sum('podIPs' in p['status'] for p in pods)} of {len(pods)} pods dual stack")
    nps = data.draw(policies(data.draw(st.integers(1, 4))))
    for np in nps:  # IPv6 blocks beside the IPv4 ones
        for key in ("ingress", "egress"):
            for rule in np["spec"].get(key) or []:
                for peer in rule.get("from" if key == "ingress" else "to") or []:
                    if "ipBlock" in peer and data.draw(st.booleans()):
                        peer["ipBlock"] = {"cidr": data.draw(st.sampled_from(["::/0", "2001:db8::/32", "fd00::/8"]))}
    program, text = import_cluster(pods, nps)
    ips = [(6, e["ip"]) for p in pods for e in p["status"].get("podIPs", ())[1:]] + [(6, a) for a in OUTSIDE6]
    bad = []
    for src_v, src in ips:
        for dst_v, dst in ips:
            if (src in OUTSIDE6 and dst in OUTSIDE6) or src == dst:
                continue
            a, b = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst))
            for proto, number in (("TCP", 6), ("UDP", 17)):
                for port in (53, 80, 5432, 8080):
                    want = allowed(pods, nps, src, dst, proto, port)
                    if (evaluate(program, Flow(6, a, b, number, 40000, port)).verdict == "allow") != want:
                        bad.append((src, dst, proto, port, want))
    assert not bad, (bad[:5], text)
    ports = (53, 80, 5000, 5432, 5100, 6000, 8080, 8100, 9000)
    bad = mismatches(program, pods, lambda *f: allowed(pods, nps, *f), ports)
    assert not bad, (bad[:5], text)


def test_the_import_is_per_rule_not_per_pair():
    """40 namespaces, each with two replicas of web and of db, and per namespace one NetworkPolicy
    whose ingress rule admits every pod of every namespace on TCP 80 to its web pods: one allow per
    rule naming the 80 identities it admits (per pair it was 40 x 80 lines), and the verdicts hold
    for a pod of another namespace, the pod's own namespace, and the db pods the policy leaves open."""
    docs = []
    for k in range(40):
        ns = f"n{k}"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i, app in enumerate(["web", "web", "db", "db"]):
            docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{app}-{i}", "namespace": ns,
                                                                          "labels": {"app": app}},
                         "status": {"podIP": f"10.2.{k}.{i + 1}"}})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "web", "namespace": ns},
                     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{
                         "from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]}})
    imported = convert([("c.yaml", yaml.safe_dump_all(docs))])
    allows = [line for line in imported.text.splitlines() if line.startswith("allow")]
    per_rule = [line for line in allows if " tcp 80 " in line]
    assert len(per_rule) == 40 and all(line.count(",") == 79 for line in per_rule), allows[:3]
    assert len(allows) == 40 + 40 * 2  # and each web pod to itself
    program = compile_sources([("<kubernetes>", imported.text)]).program
    for src, dst, port, want in (("10.2.7.3", "10.2.30.1", 80, True), ("10.2.30.2", "10.2.30.1", 80, True),
                                 ("10.2.7.3", "10.2.30.1", 81, False), ("203.0.113.9", "10.2.30.1", 80, False),
                                 ("203.0.113.9", "10.2.30.3", 81, True)):
        assert _verdict(program, src, dst, "TCP", port) == want, (src, dst, port)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_rule_left_out_is_the_import_less_the_lines_only_it_writes(data):
    """What `verify` asks of each NetworkPolicy rule compares the import with and without it. Without it
    is the whole import less the lines the rule alone writes (compiler/importers/redundancy.py); the
    same for a whole policy whose isolations other policies make too. Held against the cluster
    imported again with the rule or policy dropped, flow by flow."""
    from anyplane.compiler.importers import IMPORTED
    from anyplane.compiler.importers.redundancy import _Lines
    from anyplane.verify.context import Analysis
    from anyplane.verify.diff import changed_without, diff

    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(0, 2))))
    for k in range(data.draw(st.integers(1, 2))):  # and rules that select some pod and admit some peer
        direction, side = data.draw(st.sampled_from([("ingress", "from"), ("egress", "to")]))
        rule = {side: data.draw(st.lists(peers(), min_size=1, max_size=2))}
        if data.draw(st.booleans()):
            rule["ports"] = data.draw(st.lists(ports(), min_size=1, max_size=2))
        nps.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"extra{k}", "namespace": data.draw(st.sampled_from(pods))["metadata"]
                                 ["namespace"]},
                    "spec": {"podSelector": {}, direction: [rule] * data.draw(st.integers(1, 2))}})
        if data.draw(st.booleans()):  # its isolation made by another policy too
            nps.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": f"deny{k}", "namespace": nps[-1]["metadata"]["namespace"]},
                        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(l)}}
                  for n, l in NAMESPACES.items()]
    texts = [("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))]
    whole = convert(texts)
    assert whole.depends is not None
    base = compile_sources([(IMPORTED, whole.text)]).program
    keys = [p["key"] + (r["direction"], r["number"]) for p in whole.structure for r in p["rules"]]
    keys += [p["key"] for p in whole.structure if not p["alone"]]
    key = data.draw(st.sampled_from(keys))
    rules = {key} if len(key) == 3 else {key + (r["direction"], r["number"]) for r in whole.structure[key[0]]["rules"]}
    event("a rule" if len(key) == 3 else "a policy")
    again = convert(texts, frozenset({key}), partition=whole.partition)
    dropped = compile_sources([(IMPORTED, again.text)]).program
    gone = {id(e) for e in _Lines(base, whole.depends).only(rules)}
    less = dataclasses.replace(base, acl=dataclasses.replace(base.acl, entries=tuple(
        e for e in base.acl.entries if id(e) not in gone)))
    bad = mismatches(less, pods, lambda src, dst, proto, port: _verdict(dropped, src, dst, proto, port),
                     (53, 80, 5000, 5432, 5100, 6000, 8080, 8100, 9000))
    assert not bad, (key, bad[:5], whole.text)
    # What `verify` asks of the rule, in the import's own Analysis, is what the diff of the two says
    # (a flow it finds is re-evaluated in the interpreter by changed_without itself).
    changed = changed_without(Analysis(base), [e for e in base.acl.entries if id(e) in gone])
    differs = diff(base, dropped, limit=1).differs
    event("the rule adds something" if differs else "the rule is redundant")
    assert (changed is not None) == differs, (key, changed, whole.text)


def test_an_identity_of_several_pods_is_named_with_the_pod_a_witness_uses(tmp_path):
    """Three web replicas are one identity: the witness of `query` names the pod at its address and how
    many the identity holds, in text and JSON; `map` lists the identity's pods."""
    docs = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"web-{k}", "namespace": "shop",
                                                              "labels": {"app": "web"}},
             "status": {"podIP": f"10.1.0.{k + 1}"}} for k in range(3)]
    docs += [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
              "status": {"podIP": "10.1.0.9"}},
             {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
              "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    done = run("query", str(path), "10.1.0.2 -> 10.1.0.9 tcp 5432")
    assert done.returncode == 0, done.stderr
    assert "10.1.0.2 (shop_app-web: pod shop/web-1, one of 3) -> 10.1.0.9 (shop_db)" in done.stdout
    witness = json.loads(run("query", str(path), "10.1.0.3 -> 10.1.0.9 tcp 5432", "--format", "json").stdout)["witness"]
    assert (witness["src_owner"], witness["src_pod"], witness["src_pods"]) == ("shop_app-web", "shop/web-2", 3)
    assert "dst_pod" not in witness  # one pod: its identity is named after it
    nodes = {n["name"]: n for n in json.loads(run("map", str(path), "--format", "json").stdout)["nodes"]}
    assert nodes["shop_app-web"]["pods"] == ["shop/web-0", "shop/web-1", "shop/web-2"] and "pods" not in nodes["shop_db"]
    assert "shop_app-web stands for 3 pods no policy tells apart: shop/web-0, shop/web-1, shop/web-2" in \
        run("map", str(path)).stdout


def test_commands_read_manifests_and_point_into_them(tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
         "status": {"podIP": "10.1.0.10"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
         "spec": {"containers": [{"name": "pg", "ports": [{"name": "pg", "containerPort": 5432}]}]},
         "status": {"podIP": "10.1.0.20"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "pg"}]}]}},
    ]))
    x = json.loads(run("explain", str(tmp_path), "--flow", "10.1.0.10 -> 10.1.0.20 tcp 5432", "--format", "json").stdout)
    assert x["verdict"] == "allow" and x["rule"].startswith(str(tmp_path / "cluster.yaml") + ":")
    x = json.loads(run("explain", str(tmp_path), "--flow", "10.1.0.10 -> 10.1.0.20 tcp 5433", "--format", "json").stdout)
    new = x["as_new"]  # (the packet passes as a reply of db's own connection to web, which nothing isolates)
    assert new["verdict"] == "deny" and new["rule"].startswith(str(tmp_path / "cluster.yaml") + ":")
    text = run("import", str(tmp_path)).stdout
    assert "allow shop_web -> shop_db tcp 5432 priority 20" in text and "# NetworkPolicy shop/db" in text
    (tmp_path / "broken.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    done = run("check", str(tmp_path))
    assert done.returncode == 1 and "broken.yaml:1:1: error: Pod default/x has no address" in done.stderr


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                    st.sampled_from(["TCP", "UDP", "SCTP", "In", "Exists", "10.0.0.0/8", "web", "pg", "Ingress"]))
KEYS = st.sampled_from(["kind", "metadata", "name", "namespace", "labels", "spec", "status", "podIP", "podSelector",
                        "namespaceSelector", "ipBlock", "cidr", "except", "ingress", "egress", "from", "to",
                        "ports", "port", "endPort", "protocol", "matchLabels", "matchExpressions", "key",
                        "operator", "values", "policyTypes", "containers", "items"])
SHAPES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({"kind": st.sampled_from(["Pod", "NetworkPolicy", "Namespace", "List"]),
                                       "apiVersion": st.sampled_from(["v1", "networking.k8s.io/v1"])},
                                      optional={"metadata": SHAPES, "spec": SHAPES, "status": SHAPES,
                                                "items": SHAPES}), min_size=1, max_size=3))
def test_hostile_manifests_get_errors_at_positions_not_tracebacks(docs):
    from anyplane.ir.source import DiagnosticError

    text = yaml.safe_dump_all(docs)
    try:
        imported = convert([("h.yaml", text)])
    except DiagnosticError as exc:
        assert all(d.span is not None and d.span.file == "h.yaml" for d in exc.diagnostics)
        return
    try:
        compile_sources([("<kubernetes>", imported.text)])
    except DiagnosticError as exc:  # what the importer let through must still be a valid policy
        raise AssertionError(f"the imported text does not compile: {exc.diagnostics[0].message}\n{imported.text}")


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_valid_cluster_with_one_field_broken_gets_an_error_at_a_position(data):
    from anyplane.ir.source import DiagnosticError

    docs = data.draw(clusters()) + data.draw(policies(2))
    for _ in range(data.draw(st.integers(1, 3))):
        n = data.draw(st.integers(0, len(docs) - 1))
        path = data.draw(st.sampled_from([p for p in _paths(docs[n]) if p]))
        target = docs[n]
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = data.draw(SHAPES)
    try:
        imported = convert([("m.yaml", yaml.safe_dump_all(docs))])
    except DiagnosticError as exc:
        assert all(d.span is not None and d.span.file == "m.yaml" for d in exc.diagnostics)
        return
    try:
        compile_sources([("<kubernetes>", imported.text)])
    except DiagnosticError as exc:
        raise AssertionError(f"the imported text does not compile: {exc.diagnostics[0].message}\n{imported.text}")


def _as_workloads(pods: list[dict]) -> list[dict]:
    """The same cluster as workload controllers (one per pod) and an Addresses document."""
    kinds = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"]
    out, table = [], {}
    for n, pod in enumerate(pods):
        meta = pod["metadata"]
        kind = kinds[n % len(kinds)]
        core = kind == "ReplicationController"  # core/v1, its selector a plain label map
        out.append({"apiVersion": "v1" if core else "apps/v1", "kind": kind,
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "spec": {"selector": dict(meta["labels"]) if core else {"matchLabels": dict(meta["labels"])},
                             "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod["spec"]}}})
        table[f"{meta['namespace']}/{meta['name']}"] = [pod["status"]["podIP"] + "/32"]
    return out + [{"apiVersion": "anyplane.io/v1", "kind": "Addresses", "addresses": table}]


@SETTINGS
@given(st.data())
def test_workload_controllers_with_addresses_decide_as_their_pods_would(data):
    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(1, 3))))
    program, _ = import_cluster(_as_workloads(pods), nps)
    bad = mismatches(program, pods, lambda *f: allowed(pods, nps, *f), (53, 80, 5432, 8080))
    assert not bad, bad[:5]


def test_a_workload_without_addresses_is_an_error_and_an_address_for_nothing_a_warning(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}},
        {"apiVersion": "anyplane.io/v1", "kind": "Addresses", "addresses": {"shop/api": ["10.0.0.0/24"]}},
    ]))
    done = run("check", str(path))
    assert done.returncode == 1
    assert f"{path}:1:1: error: Deployment shop/web has no addresses" in done.stderr
    # An entry for something not in this input is left unused (one file may serve several inputs).
    assert f"{path}:16:3: warning: Addresses: shop/api names no pod or workload controller in this input" \
        in done.stderr, done.stderr


def test_an_addresses_entry_gives_a_bare_pod_its_address(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop",
                                                           "labels": {"app": "web"}}}
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "d", "namespace": "shop"},
          "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump_all([pod, np]))
    done = run("check", str(path))
    assert done.returncode == 1 and "Pod shop/web-1 has no address" in done.stderr and "Addresses entry" in done.stderr
    path.write_text(yaml.safe_dump_all([pod, np, {"apiVersion": "anyplane.io/v1", "kind": "Addresses",
                                                  "addresses": {"shop/web-1": ["10.4.0.7"]}}]))
    done = run("explain", str(path), "--flow", "192.0.2.1 -> 10.4.0.7 tcp 80")
    assert done.returncode == 0, done.stderr
    assert "shop_web-1" in done.stdout and "deny" in done.stdout, done.stdout
    path.write_text(yaml.safe_dump_all([pod, np, {"apiVersion": "anyplane.io/v1", "kind": "Addresses",
                                                  "addresses": {"shop/web-1": ["10.4.0.0/24"]}}]))
    done = run("check", str(path))
    assert done.returncode == 1 and "Addresses: shop/web-1 is a Pod: give its one address" in done.stderr


@SETTINGS
@given(st.data())
def test_identities_decide_every_pod_as_the_pods_alone_would(data):
    """Pods no policy tells apart are one identity. Held against the same cluster imported pod by pod
    (each pod made distinct by a label of its own that the partition is told to read): every flow
    between two pods, a pod and itself, and the outside gets the same verdict, and there are never
    more identities than pods."""
    pods = data.draw(clusters())
    for extra in range(data.draw(st.integers(0, 6))):  # replicas: more pods of the same labels
        twin = json.loads(json.dumps(data.draw(st.sampled_from(pods))))
        twin["metadata"]["name"] = f"r{extra}"
        twin["status"]["podIP"] = f"10.1.1.{extra + 1}"
        if data.draw(st.booleans()):  # same labels, other container ports: named ports resolve otherwise
            twin["spec"]["containers"][0]["ports"] = [
                {"name": p, "containerPort": NAMED[p] + 1, "protocol": "UDP" if p == "dns" else "TCP"}
                for p in data.draw(st.lists(st.sampled_from(sorted(NAMED)), max_size=2, unique=True))]
        pods.append(twin)
    nps = data.draw(policies(data.draw(st.integers(1, 3))))
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(l)}}
                  for n, l in NAMESPACES.items()]
    alone = json.loads(json.dumps(pods))
    for p in alone:
        p["metadata"]["labels"]["anyplane-test/pod"] = p["metadata"]["name"]
    grouped = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))])
    single = convert([("c.yaml", yaml.safe_dump_all(namespaces + alone + nps))],
                     partition=(frozenset({"anyplane-test/pod"}), ()))
    a = compile_sources([("<kubernetes>", grouped.text)]).program
    b = compile_sources([("<kubernetes>", single.text)]).program
    assert len([i for i in a.identities if i.kind == "service"]) <= len(pods)
    event("grouped" if len(a.identities) < len(b.identities) else "no two pods alike")
    bad = mismatches(a, pods, lambda src, dst, proto, port: _verdict(b, src, dst, proto, port),
                     (53, 54, 80, 5432, 5433, 8080, 8081), icmp=True)
    assert not bad, bad[:5]


def _verdict(program, src: str, dst: str, proto: str, port) -> bool:
    from anyplane.ir.flow import Flow
    from anyplane.ir.interp import evaluate

    a, b = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst))
    number = {"TCP": 6, "UDP": 17, "ICMP": 1}[proto]
    flow = Flow(4, a, b, number, icmp_type=8, icmp_code=0) if number == 1 else Flow(4, a, b, number, 49152, port)
    return evaluate(program, flow).verdict == "allow"


def _two_pods(extra_b: dict, policy: dict) -> tuple[str, list]:
    """Two pods of one namespace and one label, pod b changed by `extra_b`, and a policy."""
    pods = []
    for name, ip in (("a", "10.1.0.1"), ("b", "10.1.0.2")):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop",
                                                               "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"podIP": ip}}
        if name == "b":
            for path, value in extra_b.items():
                target = pod
                for step in path[:-1]:
                    target = target[step]
                target[path[-1]] = value
        pods.append(pod)
    return convert([("c.yaml", yaml.safe_dump_all(pods + [policy]))]).text, pods


def _np(spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "shop"},
            "spec": spec}


def _anp_networks() -> dict:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "a"},
            "spec": {"priority": 1, "subject": {"namespaces": {}},
                     "egress": [{"action": "Deny", "to": [{"networks": ["10.1.0.2/32"]}]}]}}


@pytest.mark.parametrize("extra_b,policy,flow,want_a,want_b", [
    ({}, _np({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}), 8080, True, True),
    ({("spec", "containers"): [{"name": "c", "ports": [{"name": "http", "containerPort": 9090}]}]},
     _np({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}), 9090, False, True),
    ({("metadata", "labels"): {"app": "db"}}, _np({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []}),
     8080, True, False),
    ({}, _anp_networks(), 8080, True, False),
], ids=["alike", "named-port", "label-read", "address-block"])
def test_what_tells_two_pods_apart(extra_b, policy, flow, want_a, want_b):
    """Alike pods are one identity; a named port that resolves otherwise, a label a selector reads, or an
    address block a policy names makes two."""
    text, pods = _two_pods(extra_b, policy)
    program = compile_sources([("<kubernetes>", text)]).program
    services = [i for i in program.identities if i.kind == "service"]
    assert len(services) == (1 if want_a == want_b and not extra_b and policy["kind"] == "NetworkPolicy" else 2)
    outside = "203.0.113.7" if policy["kind"] == "NetworkPolicy" else "10.1.0.1"
    for dst, want in (("10.1.0.1", want_a), ("10.1.0.2", want_b)):
        if policy["kind"] != "NetworkPolicy":  # the admin policy decides egress: from the other pod
            src, dst = ("10.1.0.2", "10.1.0.1") if dst == "10.1.0.1" else ("10.1.0.1", "10.1.0.2")
            assert _verdict(program, src, dst, "TCP", flow) == want, (src, dst)
            continue
        assert _verdict(program, outside, dst, "TCP", flow) == want, dst


def test_a_mistake_read_for_many_pods_is_said_once(tmp_path):
    example_cluster(tmp_path)
    (tmp_path / "np.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad-op, namespace: backend}\n"
        "spec:\n  podSelector:\n    matchExpressions:\n    - {key: app, operator: in, values: [api]}\n"
        "  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions:\n"
        "        - {key: app, operator: in, values: [web]}\n")
    done = run("check", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 2, done.stderr
    assert "np.yaml:7:7: error: unknown selector operator 'in' (Kubernetes takes In, NotIn" in done.stderr
    assert "np.yaml:13:11: error: unknown selector operator 'in'" in done.stderr


def test_two_policies_that_contain_each_other_are_one_finding(tmp_path):
    """Two copies: each is redundant while the other stays, and removing both changes the cluster. One
    finding says so, at the later copy."""
    example_cluster(tmp_path)
    copy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: data}}\n" \
           "spec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
    (tmp_path / "np.yaml").write_text(copy.format("a") + "---\n" + copy.format("b"))
    done = run("verify", str(tmp_path), "--format", "json")
    found = json.loads(done.stdout)["findings"]
    assert [f["message"] for f in found] == [
        "NetworkPolicy data/b is equivalent to NetworkPolicy data/a here: each is redundant while the other stays, "
        "and removing both changes the cluster, so keep one"], found
    assert found[0]["location"].endswith("np.yaml:8:1") and found[0]["related"][0].endswith("np.yaml:1"), found


def test_a_redundant_policy_names_the_policy_that_covers_it(tmp_path):
    """`db-from-api` admits api to db on 5432; `db-from-shop` admits every pod of the namespace to db on
    every port. The first is redundant given the second (without the second, the first adds api's 5432);
    a policy that selects other pods is not named."""
    example_cluster(tmp_path)
    np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: data}}\n" \
         "spec:\n  podSelector: {{matchLabels: {{app: {}}}}}\n  policyTypes: [Ingress]\n  ingress:\n{}"
    (tmp_path / "np.yaml").write_text(
        np.format("cache-from-backend", "redis",
                  "  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backend}}}]\n") + "---\n"
        + np.format("db-from-api", "postgres", "  - from: [{namespaceSelector: {}}]\n    ports: [{port: 5432}]\n")
        + "---\n" + np.format("db-from-all", "postgres", "  - from: [{namespaceSelector: {}}]\n"))
    done = run("verify", str(tmp_path), "--format", "json")
    found = json.loads(done.stdout)["findings"]
    assert [f["message"] for f in found] == [
        "NetworkPolicy data/db-from-api is redundant given NetworkPolicy data/db-from-all: while NetworkPolicy "
        "data/db-from-all stays, every flow is decided the same without it"], found
    assert found[0]["related"][0].endswith("np.yaml:20"), found[0]["related"]
