"""The NetworkPolicy tier (networking.k8s.io/v1): which pods a policy isolates, and its rules with
their peers (selectors and ipBlocks) and ports (named ports resolved on the destination pod).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from anyplane.ir.match import merge_ranges
from anyplane.ir.source import Span

from .cluster import Pod, Reader, namespaces_selected, selector_key, selects, span_of_object

PORTS_ALL = "all"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


@dataclass
class Rule:
    """One ingress or egress rule of a policy: peers (None: every peer) and ports (None: every port)."""

    peers: list | None
    ports: list | None
    span: Span
    policy: str
    key: tuple = ()  # (policy number, "ingress" | "egress", rule number from 1): what `drop` names


def _peers(reader: Reader, path: str, ns: str, items) -> list:
    """Peers as ("pods", [Pod]) and ("block", network, [excepted networks])."""
    out = []
    for peer in items:
        block = peer.get("ipBlock")
        if block is not None:
            try:
                net = ipaddress.ip_network(block.get("cidr"), strict=False)
                excepts = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
            except (TypeError, ValueError) as exc:
                reader.fail(path, block, f"ipBlock: {exc}")
                continue
            out.append(("block", net, excepts))
            continue
        pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
        if ns_sel is None:
            spaces = [ns]
        else:
            spaces = _selected(reader, None, ns_sel, path,
                               lambda: namespaces_selected(ns_sel, path, reader))
        pods = [p for space in spaces for p in _selected(
            reader, space, pod_sel, path,
            lambda: [p for p in reader.by_namespace.get(space, ()) if selects(pod_sel or {}, p.labels, path, reader)])]
        out.append(("pods", pods, frozenset(id(p) for p in pods)))
    return out


def _selected(reader: Reader, space: str | None, selector, path: str, work) -> list:
    """What a selector selects among the namespaces (space None) or one namespace's pods, worked out
    once per selector's contents: the policies of a namespace repeat their selectors."""
    key = selector_key(selector)
    if key is None:
        return work()
    hit = reader.selected.get((space, key))
    if hit is None:
        hit = reader.selected[(space, key)] = work()
    return hit


def rule_ports(reader: Reader, path: str, items) -> list | None:
    if not items:
        return None
    out = []
    for p in items:
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            reader.fail(path, p, f"protocol {proto}: anyplane takes TCP and UDP ports here")
            continue
        port, end = p.get("port"), p.get("endPort")
        if port is None:
            out.append((PROTOCOLS[proto], 0, 65535))
        elif isinstance(port, str) and not port.isdigit():
            if end is not None:
                reader.fail(path, p, "endPort needs a numbered port")
            out.append((PROTOCOLS[proto], port, None))
        else:
            lo = int(port)
            hi = int(end) if end is not None else lo
            if isinstance(port, bool) or isinstance(end, bool) or not 1 <= lo <= hi <= 65535:
                reader.fail(path, p, f"ports: {port!r}" + (f"-{end!r}" if end is not None else "")
                            + " is not a port or a range of ports (1-65535, endPort >= port)")
                continue
            out.append((PROTOCOLS[proto], lo, hi))
    return out


def resolve_ports(ports: list | None, pod: Pod | None) -> dict | str:
    """Ports on a destination: "all", or {proto: [(lo, hi)]} (named ports looked up on the pod)."""
    if ports is None:
        return PORTS_ALL
    out: dict = {}
    for proto, lo, hi in ports:
        if hi is None:  # a named port ("*": any protocol, as AdminNetworkPolicy's namedPort)
            if pod is None:
                continue
            for name, number, p in pod.ports:
                if name == lo and (proto == "*" or PROTOCOLS.get(p, "") == proto) and number and p in PROTOCOLS:
                    out.setdefault(PROTOCOLS[p], []).append((number, number))
            continue
        out.setdefault(proto, []).append((lo, hi))
    return out


def union_ports(sets: list) -> dict | str:
    if any(s == PORTS_ALL for s in sets):
        return PORTS_ALL
    out: dict = {}
    for s in sets:
        for proto, ranges in s.items():
            out.setdefault(proto, []).extend(ranges)
    return {proto: merge_ranges(r) for proto, r in out.items()}


def read_policy(reader, pods, path, obj, ingress, egress, isolated_in, isolated_out, n: int, drop) -> dict:
    """One NetworkPolicy: the pods it isolates and the rules it gives them (unless dropped); what it
    holds, for the redundancy questions."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns, name = meta.get("namespace") or "default", meta.get("name")
    label = f"NetworkPolicy {ns}/{name}"
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    selected = [p for p in reader.by_namespace.get(ns, ()) if selects(spec.get("podSelector") or {}, p.labels, path,
                                                                       reader)]
    where = span_of_object(path, spec.get("podSelector") if isinstance(spec.get("podSelector"), dict) else obj)
    held = {"label": label, "span": span_of_object(path, obj), "selects": len(selected), "rules": [], "key": (n,),
            "isolates": {d.lower(): [p.ident for p in selected] for d in ("Ingress", "Egress") if d in types},
            "pods": frozenset(p.ident for p in selected)}
    for direction, key, table, isolated in (("Ingress", "ingress", ingress, isolated_in),
                                             ("Egress", "egress", egress, isolated_out)):
        if direction not in types:
            continue
        if (n,) not in drop:
            for p in selected:
                isolated.setdefault(p.ident, []).append((where, label))
        for number, r in enumerate(spec.get(key) or [], start=1):
            peers_key = "from" if key == "ingress" else "to"
            items = r.get(peers_key)
            if items and (id(items), ns) not in reader.peer_lists:  # one list shared by aliases: read once
                reader.peer_lists[id(items), ns] = _peers(reader, path, ns, items)
            peers = reader.peer_lists[id(items), ns] if items else None
            rule = Rule(peers, rule_ports(reader, path, r.get("ports")), span_of_object(path, r), label, (n, key, number))
            held["rules"].append({"direction": key, "number": number, "span": rule.span,
                                  "admits_none": peers is not None and all(x[0] == "pods" and not x[1] for x in peers)})
            if (n,) in drop or (n, key, number) in drop:
                continue
            for p in selected:
                table[p.ident].append(rule)
    return held


def ipblock_networks(obj: dict) -> list:
    """Every ipBlock network (and `except`) of a policy that reads (the broken ones are errors already)."""
    out = []
    spec = obj.get("spec") or {}
    for key, side in (("ingress", "from"), ("egress", "to")):
        for r in spec.get(key) or []:
            for peer in r.get(side) or []:
                block = peer.get("ipBlock") or {}
                for text in [block.get("cidr")] + list(block.get("except") or []):
                    try:
                        out.append(ipaddress.ip_network(text, strict=False))
                    except (TypeError, ValueError):
                        pass
    return out
