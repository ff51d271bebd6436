"""AdminNetworkPolicy and BaselineAdminNetworkPolicy import, against the API's tiers written out here.

For random clusters, NetworkPolicies, up to three AdminNetworkPolicies (Allow, Deny, Pass; pods,
namespaces and networks peers; port numbers, ranges and named ports) and a baseline, every flow
between pods and outside addresses (TCP and UDP ports, and ICMP for "the other protocols") gets
from the imported policy the verdict the tiers give it.
"""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from anyplane.compiler.importers.k8s import convert
from anyplane.ir.source import DiagnosticError

from ..conftest import run
from ..importers.test_import_k8s import (SETTINGS, _labels_match, _ns_labels, _peer_has, _port_has, clusters, import_cluster,
                              mismatches, policies)

PORTS = (53, 80, 5000, 5432, 6000, 8080, 9000)


def _pod_selector(draw):
    return draw(st.sampled_from([{}, {"matchLabels": {"app": "web"}}, {"matchLabels": {"tier": "a"}},
                                 {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "api"]}]}]))


def _ns_selector(draw):
    return draw(st.sampled_from([{}, {"matchLabels": {"team": "shop"}}, {"matchLabels": {"tier": "front"}},
                                 {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ops"]}]}]))


@st.composite
def admin_peer(draw, egress: bool):
    kind = draw(st.sampled_from(["namespaces", "pods"] + (["networks"] if egress else [])))
    if kind == "namespaces":
        return {"namespaces": _ns_selector(draw)}
    if kind == "pods":
        return {"pods": {"namespaceSelector": _ns_selector(draw), "podSelector": _pod_selector(draw)}}
    return {"networks": draw(st.lists(st.sampled_from(["10.1.0.0/29", "203.0.113.0/24", "0.0.0.0/0", "10.1.0.2/32"]),
                                      min_size=1, max_size=2, unique=True))}


@st.composite
def admin_ports(draw):
    kind = draw(st.sampled_from(["number", "range", "named", "udp"]))
    if kind == "number":
        return {"portNumber": {"protocol": "TCP", "port": draw(st.sampled_from([80, 5432, 8080]))}}
    if kind == "range":
        return {"portRange": {"protocol": "TCP", "start": 5000, "end": draw(st.sampled_from([5000, 6000]))}}
    if kind == "named":
        return {"namedPort": draw(st.sampled_from(["http", "pg", "dns"]))}
    return {"portNumber": {"protocol": "UDP", "port": 53}}


@st.composite
def admin_policy(draw, kind: str, priority: int, n: int):
    actions = ["Allow", "Deny", "Pass"] if kind == "AdminNetworkPolicy" else ["Allow", "Deny"]
    subject = draw(st.sampled_from(["namespaces", "pods"]))
    spec = {"subject": {"namespaces": _ns_selector(draw)} if subject == "namespaces" else
            {"pods": {"namespaceSelector": _ns_selector(draw), "podSelector": _pod_selector(draw)}}}
    if kind == "AdminNetworkPolicy":
        spec["priority"] = priority
    for direction, side in (("ingress", "from"), ("egress", "to")):
        rules = []
        for k in range(draw(st.integers(0, 3))):
            rule = {"name": f"r{k}", "action": draw(st.sampled_from(actions)),
                    side: draw(st.lists(admin_peer(direction == "egress"), min_size=1, max_size=2))}
            if draw(st.booleans()):
                rule["ports"] = draw(st.lists(admin_ports(), min_size=1, max_size=2))
            rules.append(rule)
        if rules:
            spec[direction] = rules
    name = f"anp{n}" if kind == "AdminNetworkPolicy" else "default"
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


# -- the tiers, from the API reference ----------------------------------------------------------

def _selects_pod(sel: dict, pod: dict) -> bool:
    return _labels_match(sel.get("namespaceSelector") or {}, _ns_labels(pod["metadata"]["namespace"])) and \
        _labels_match(sel.get("podSelector") or {}, pod["metadata"]["labels"])


def _subject(policy: dict, pod: dict) -> bool:
    s = policy["spec"]["subject"]
    if "namespaces" in s:
        return _labels_match(s["namespaces"], _ns_labels(pod["metadata"]["namespace"]))
    return _selects_pod(s["pods"], pod)


def _admin_peer(peer: dict, ip: str, pod: dict | None) -> bool:
    if "networks" in peer:  # CIDRs: any address, pods included
        return any(ipaddress.ip_address(ip) in ipaddress.ip_network(n) for n in peer["networks"])
    if pod is None:
        return False
    if "namespaces" in peer:
        return _labels_match(peer["namespaces"], _ns_labels(pod["metadata"]["namespace"]))
    return _selects_pod(peer["pods"], pod)


def _admin_port(p: dict, proto: str, port: int | None, dst_pod: dict | None) -> bool:
    if "namedPort" in p:
        return dst_pod is not None and port is not None and any(
            c.get("name") == p["namedPort"] and c["containerPort"] == port and c.get("protocol", "TCP") == proto
            for c in dst_pod["spec"]["containers"][0]["ports"])
    spec = p.get("portNumber") or p.get("portRange")
    if spec.get("protocol", "TCP") != proto or port is None:
        return False
    lo, hi = (spec["port"], spec["port"]) if "portNumber" in p else (spec["start"], spec["end"])
    return lo <= port <= hi


def _np_side(nps, pod, direction, key, peer_key, peer_ip, peer_pod, dst_pod, proto, port):
    """None when no NetworkPolicy isolates the pod in this direction, else whether one admits it."""
    selecting = [np for np in nps if np["metadata"]["namespace"] == pod["metadata"]["namespace"]
                 and _labels_match(np["spec"]["podSelector"], pod["metadata"]["labels"])
                 and direction in np["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if "egress" in np["spec"] else []))]
    if not selecting:
        return None
    for np in selecting:
        for rule in np["spec"].get(key) or []:
            if rule.get(peer_key) and not any(_peer_has(x, np["metadata"]["namespace"], peer_ip, peer_pod)
                                              for x in rule[peer_key]):
                continue
            if rule.get("ports") and (port is None or not any(_port_has(x, proto, port, dst_pod) for x in rule["ports"])):
                continue
            return True
    return False


def _direction(anps, banp, nps, pod, direction, peer_ip, peer_pod, dst_pod, proto, port) -> bool:
    key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in sorted(anps, key=lambda p: p["spec"]["priority"]):
        if not _subject(policy, pod):
            continue
        passed = False
        for rule in policy["spec"].get(key) or []:
            if not any(_admin_peer(x, peer_ip, peer_pod) for x in rule[side]):
                continue
            if rule.get("ports") and not any(_admin_port(x, proto, port, dst_pod) for x in rule["ports"]):
                continue
            if rule["action"] == "Pass":
                passed = True
                break
            return rule["action"] == "Allow"
        if passed:
            break
    np = _np_side(nps, pod, direction, key, "from" if key == "ingress" else "to", peer_ip, peer_pod, dst_pod,
                  proto, port)
    if np is not None:
        return np
    if banp is not None and _subject(banp, pod):
        for rule in banp["spec"].get(key) or []:
            if not any(_admin_peer(x, peer_ip, peer_pod) for x in rule[side]):
                continue
            if rule.get("ports") and not any(_admin_port(x, proto, port, dst_pod) for x in rule["ports"]):
                continue
            return rule["action"] == "Allow"
    return True


def allowed(pods, nps, anps, banp, src_ip, dst_ip, proto, port) -> bool:
    by_ip = {p["status"]["podIP"]: p for p in pods}
    src, dst = by_ip.get(src_ip), by_ip.get(dst_ip)
    if src is not None and src is dst:
        return True
    ok = True
    if dst is not None:
        ok &= _direction(anps, banp, nps, dst, "Ingress", src_ip, src, dst, proto, port)
    if src is not None:
        ok &= _direction(anps, banp, nps, src, "Egress", dst_ip, dst, dst, proto, port)
    return ok


@SETTINGS
@given(st.data())
def test_imported_admin_tiers_decide_as_the_api_says(data):
    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(0, 2))))
    priorities = data.draw(st.lists(st.integers(0, 1000), min_size=0, max_size=3, unique=True))
    anps = [data.draw(admin_policy("AdminNetworkPolicy", p, n)) for n, p in enumerate(priorities)]
    banp = data.draw(admin_policy("BaselineAdminNetworkPolicy", 0, 0)) if data.draw(st.booleans()) else None
    program, text = import_cluster(pods, nps, anps, [banp] if banp else [])
    bad = mismatches(program, pods, lambda *f: allowed(pods, nps, anps, banp, *f), PORTS, icmp=True)
    assert not bad, (bad[:5], text[-3000:])


def test_tiers_on_a_hand_written_cluster(tmp_path):
    """The recipe the API documents: the admin denies a namespace everything except DNS, passes
    monitoring to the namespaces' own policies, and the baseline isolates what no policy covers."""
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops", "labels": {"team": "ops"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
         "status": {"podIP": "10.1.0.10"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prom", "namespace": "ops", "labels": {"app": "prom"}},
         "status": {"podIP": "10.1.0.20"}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "guard"},
         "spec": {"priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "shop"}}},
                  "ingress": [{"name": "monitoring", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "ops"}}}]}],
                  "egress": [{"name": "dns", "action": "Allow", "to": [{"networks": ["203.0.113.53/32"]}],
                              "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}]},
                             {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
         "metadata": {"name": "default"},
         "spec": {"subject": {"namespaces": {}}, "ingress": [{"name": "deny-all", "action": "Deny",
                                                               "from": [{"namespaces": {}}]}]}},
    ]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(docs))

    def verdict(flow):
        """The verdict on the flow opening a connection (not as a reply of one the other way)."""
        import json
        done = run("explain", str(tmp_path), "--flow", flow, "--format", "json")
        assert done.returncode == 0, done.stderr
        x = json.loads(done.stdout)
        return (x.get("as_new") or x)["verdict"]
    assert verdict("10.1.0.10 -> 203.0.113.53 udp 53") == "allow"
    assert verdict("10.1.0.10 -> 203.0.113.54 tcp 443") == "deny"       # the admin's Deny
    assert verdict("10.1.0.10 -> 10.1.0.20 tcp 9090") == "deny"         # networks 0.0.0.0/0 holds pods too
    assert verdict("10.1.0.20 -> 10.1.0.10 tcp 8080") == "deny"         # passed to policies; none: the baseline
    assert verdict("198.51.100.1 -> 10.1.0.10 tcp 8080") == "allow"     # the baseline's peers are pods only


def test_admin_errors_point_into_the_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "a"},
         "spec": {"priority": 5, "subject": {"namespaces": {}}, "egress": [
             {"action": "Allow", "to": [{"nodes": {"matchLabels": {"x": "node-a"}}}]}]}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "b"},
         "spec": {"priority": 5, "subject": {"namespaces": {}}}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
         "metadata": {"name": "other"}, "spec": {"subject": {"namespaces": {}}}},
    ]))
    done = run("check", str(bad))
    assert done.returncode == 1
    assert "nodes peers are not imported" in done.stderr
    assert "priority 5 is also AdminNetworkPolicy a's" in done.stderr
    assert "one BaselineAdminNetworkPolicy, named 'default'" in done.stderr
    assert f"{bad}:" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(DiagnosticError) as exc:
        convert([("bad.yaml", bad.read_text())])
    assert len(exc.value.diagnostics) == 3


def test_verify_says_what_each_admin_policy_and_rule_adds(tmp_path):
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
         "status": {"podIP": "10.1.0.10"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
         "status": {"podIP": "10.1.0.20"}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "ssh"},
         "spec": {"priority": 10, "subject": {"namespaces": {}}, "ingress": [
             {"name": "no-ssh", "action": "Deny", "from": [{"namespaces": {}}],
              "ports": [{"portNumber": {"protocol": "TCP", "port": 22}}]},
             {"name": "again", "action": "Deny",
              "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}],
              "ports": [{"portNumber": {"protocol": "TCP", "port": 22}}]},
             {"name": "nobody", "action": "Allow", "from": [{"namespaces": {"matchLabels": {"team": "none"}}}]}]}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "ghost"},
         "spec": {"priority": 20, "subject": {"namespaces": {"matchLabels": {"team": "none"}}},
                  "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}},
    ]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(docs))
    import json
    done = run("verify", str(tmp_path), "--format", "json")
    assert done.returncode == 0, done.stderr
    messages = sorted(f["message"] for f in json.loads(done.stdout)["findings"])
    assert messages == sorted([
        "AdminNetworkPolicy ghost selects no pod: it has no effect",
        "ingress rule 2 of AdminNetworkPolicy ssh is redundant: without it every flow is decided the same",
        "ingress rule 3 of AdminNetworkPolicy ssh admits no peer: its selectors select no pod",
    ]), messages


# -- ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2), which replaces both ------------------

@st.composite
def cnp_protocol(draw):
    kind = draw(st.sampled_from(["number", "range", "named", "udp", "any-tcp"]))
    if kind == "number":
        return {"tcp": {"destinationPort": {"number": draw(st.sampled_from([80, 5432, 8080]))}}}
    if kind == "range":
        return {"tcp": {"destinationPort": {"range": {"start": 5000, "end": draw(st.sampled_from([5001, 6000]))}}}}
    if kind == "named":
        return {"destinationNamedPort": draw(st.sampled_from(["http", "pg", "dns"]))}
    return {"udp": {"destinationPort": {"number": 53}}} if kind == "udp" else {"tcp": {}}


@st.composite
def cluster_network_policy(draw, tier: str, priority: int, n: int):
    subject = draw(st.sampled_from(["namespaces", "pods"]))
    spec = {"tier": tier, "priority": priority,
            "subject": {"namespaces": _ns_selector(draw)} if subject == "namespaces" else
            {"pods": {"namespaceSelector": _ns_selector(draw), "podSelector": _pod_selector(draw)}}}
    for direction, side in (("ingress", "from"), ("egress", "to")):
        rules = []
        for k in range(draw(st.integers(0, 3))):
            rule = {"name": f"r{k}", "action": draw(st.sampled_from(["Accept", "Deny", "Pass"])),
                    side: draw(st.lists(admin_peer(direction == "egress"), min_size=1, max_size=2))}
            if draw(st.booleans()):
                rule["protocols"] = draw(st.lists(cnp_protocol(), min_size=1, max_size=2))
            rules.append(rule)
        if rules:
            spec[direction] = rules
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": f"cnp{n}"}, "spec": spec}


def _cnp_protocol(p: dict, proto: str, port: int | None, dst_pod: dict | None) -> bool:
    if "destinationNamedPort" in p:
        return _admin_port({"namedPort": p["destinationNamedPort"]}, proto, port, dst_pod)
    (name, spec), = p.items()
    if name != proto.lower():
        return False
    dp = spec.get("destinationPort")
    if dp is None:
        return True
    lo, hi = (dp["number"], dp["number"]) if "number" in dp else (dp["range"]["start"], dp["range"]["end"])
    return port is not None and lo <= port <= hi


def _cnp_tier(cnps, tier, pod, key, side, peer_ip, peer_pod, dst_pod, proto, port):
    """"Accept", "Deny", "Pass" or None (no rule of the tier matched), as the v1alpha2 API reads its tiers."""
    for policy in sorted((p for p in cnps if p["spec"]["tier"] == tier), key=lambda p: p["spec"]["priority"]):
        if not _subject(policy, pod):
            continue
        for rule in policy["spec"].get(key) or []:
            if not any(_admin_peer(x, peer_ip, peer_pod) for x in rule[side]):
                continue
            if rule.get("protocols") and not any(_cnp_protocol(x, proto, port, dst_pod)
                                                 for x in rule["protocols"]):
                continue
            return rule["action"]
    return None


def _cnp_direction(cnps, nps, pod, direction, peer_ip, peer_pod, dst_pod, proto, port) -> bool:
    key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    admin = _cnp_tier(cnps, "Admin", pod, key, side, peer_ip, peer_pod, dst_pod, proto, port)
    if admin in ("Accept", "Deny"):
        return admin == "Accept"
    np = _np_side(nps, pod, direction, key, side, peer_ip, peer_pod, dst_pod, proto, port)
    if np is not None:
        return np
    return _cnp_tier(cnps, "Baseline", pod, key, side, peer_ip, peer_pod, dst_pod, proto, port) != "Deny"


def cnp_allowed(pods, nps, cnps, src_ip, dst_ip, proto, port) -> bool:
    by_ip = {p["status"]["podIP"]: p for p in pods}
    src, dst = by_ip.get(src_ip), by_ip.get(dst_ip)
    if src is not None and src is dst:
        return True
    ok = True
    if dst is not None:
        ok &= _cnp_direction(cnps, nps, dst, "Ingress", src_ip, src, dst, proto, port)
    if src is not None:
        ok &= _cnp_direction(cnps, nps, src, "Egress", dst_ip, dst, dst, proto, port)
    return ok


@SETTINGS
@given(st.data())
def test_imported_cluster_network_policies_decide_as_the_api_says(data):
    """Admin and Baseline tiers with Accept, Deny and Pass (a Pass in the Baseline tier goes on to
    Kubernetes' default: allowed), priorities in both tiers, protocols with numbers, ranges, named ports
    and whole protocols."""
    pods = data.draw(clusters())
    nps = data.draw(policies(data.draw(st.integers(0, 2))))
    cnps = []
    for tier in ("Admin", "Baseline"):
        for p in data.draw(st.lists(st.integers(0, 1000), max_size=2, unique=True)):
            cnps.append(data.draw(cluster_network_policy(tier, p, len(cnps))))
    program, text = import_cluster(pods, nps, cnps)
    bad = mismatches(program, pods, lambda *f: cnp_allowed(pods, nps, cnps, *f), PORTS, icmp=True)
    assert not bad, (bad[:5], text[-3000:])


def test_cluster_network_policy_beside_admin_network_policy_is_refused():
    docs = [{"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "c"},
             "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}}},
            {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "a"},
             "spec": {"priority": 2, "subject": {"namespaces": {}}}}]
    with pytest.raises(DiagnosticError) as err:
        convert([("c.yaml", yaml.safe_dump_all(docs))])
    assert "replaces AdminNetworkPolicy" in err.value.diagnostics[0].message
