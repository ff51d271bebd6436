"""AdminNetworkPolicy and BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1), and
ClusterNetworkPolicy (v1alpha2), which replaces them: the cluster administrator's tiers around
NetworkPolicy.

For one direction of one connection (the ingress of the destination pod, the egress of the source
pod), as the API defines it:

    1. AdminNetworkPolicies, lowest `priority` first, rules in order: the first rule whose subject
       selects the pod and whose peers and ports hold the traffic decides: Allow, Deny, or Pass
       (skip the remaining admin rules);
    2. otherwise NetworkPolicy: if policies isolate the pod in this direction, what they allow;
    3. otherwise the BaselineAdminNetworkPolicy (`default`), rules in order: Allow or Deny;
    4. otherwise allowed.

ClusterNetworkPolicy says the same with `tier: Admin` (step 1) or `tier: Baseline` (step 3, where
policies too have priorities), actions Accept, Deny and Pass (a Pass in the Baseline tier goes on
to step 4), and `protocols` (tcp, udp with a destinationPort number or range, or a
destinationNamedPort) for ports. An input with both API versions is refused: no implementation
orders one against the other.

Peers: `namespaces` (every pod of the matching namespaces), `pods` (namespaceSelector and
podSelector), and for egress `networks` (CIDRs: addresses inside or outside the cluster, pods
included). `nodes` peers are refused (anyplane does not read Nodes). Ports: `portNumber`,
`portRange`, `namedPort` (looked up on the destination pod, any protocol). `domainNames` peers are
refused too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from anyplane.ir.source import Span

from .ports import ALL, NONE, Ports

ACTIONS = {"AdminNetworkPolicy": ("Allow", "Deny", "Pass"), "BaselineAdminNetworkPolicy": ("Allow", "Deny"),
           "ClusterNetworkPolicy": ("Accept", "Deny", "Pass")}
TIERS = {"Admin": "admin", "Baseline": "baseline"}
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


@dataclass
class AdminRule:
    tier: str          # "admin" or "baseline"
    priority: int
    order: int
    direction: str     # "ingress" or "egress"
    action: str
    subject: frozenset  # ids (Pod.ident) the policy's subject selects
    peers: list         # ("pods", frozenset of idents) | ("networks", [ip_network])
    ports: list | None  # (proto, lo, hi), named: ("*", name, None); None: every port
    span: Span
    label: str


def read(reader, pods, objects, span_of, selects, drop=frozenset(), structure=None) -> list[AdminRule]:
    """The admin tiers' rules, in the order they decide; errors go to `reader.fail`. `drop` leaves out
    policies (`("admin", n)`) or rules (`("admin", n, direction, number)`); `structure` gets what each
    policy holds, as for NetworkPolicies (the redundancy questions)."""
    out: list[AdminRule] = []
    priorities: dict[tuple, str] = {}
    kinds = {obj.get("kind") for _, obj in objects}
    if "ClusterNetworkPolicy" in kinds and kinds & {"AdminNetworkPolicy", "BaselineAdminNetworkPolicy"}:
        path, obj = next((p, o) for p, o in objects if o.get("kind") == "ClusterNetworkPolicy")
        reader.fail(path, obj, "ClusterNetworkPolicy (v1alpha2) replaces AdminNetworkPolicy and "
                               "BaselineAdminNetworkPolicy (v1alpha1): an input with both is refused, as no "
                               "implementation orders one against the other")
        return out
    for n, (path, obj) in enumerate(objects):
        kind, meta, spec = obj.get("kind"), obj.get("metadata") or {}, obj.get("spec") or {}
        name = meta.get("name")
        label = f"{kind} {name}"
        if not str(obj.get("apiVersion", "")).startswith("policy.networking.k8s.io/"):
            reader.fail(path, obj, f"{label}: apiVersion {obj.get('apiVersion')!r} is not policy.networking.k8s.io")
            continue
        if kind == "ClusterNetworkPolicy":
            tier = TIERS.get(spec.get("tier"))
            if tier is None:
                reader.fail(path, spec, f"{label}: tier {spec.get('tier')!r} is not Admin or Baseline")
                continue
        else:
            tier = "admin" if kind == "AdminNetworkPolicy" else "baseline"
        priority = 0
        if tier == "admin" or kind == "ClusterNetworkPolicy":
            priority = spec.get("priority")
            if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
                reader.fail(path, spec, f"{label}: priority {priority!r} is not 0-1000")
                continue
            if (tier, priority) in priorities:
                reader.fail(path, spec, f"{label}: priority {priority} is also {priorities[tier, priority]}'s; the API "
                                        "leaves the order of two such policies undefined")
                continue
            priorities[tier, priority] = label
        elif name != "default":
            reader.fail(path, meta, f"{label}: the API admits one BaselineAdminNetworkPolicy, named 'default'")
            continue
        subject = _subject(reader, pods, path, spec.get("subject"), label, selects)
        if subject is None:
            continue
        key = ("admin", n)
        held = {"label": label, "span": span_of(path, obj), "selects": len(subject), "rules": [], "key": key,
                "pods": frozenset(subject)}
        if structure is not None:
            structure.append(held)
        for direction, side in (("ingress", "from"), ("egress", "to")):
            for order, r in enumerate(spec.get(direction) or []):
                action = r.get("action")
                if action not in ACTIONS[kind]:
                    reader.fail(path, r, f"{label}: action {action!r} is not one of {', '.join(ACTIONS[kind])}")
                    continue
                peers = _peers(reader, pods, path, r.get(side) or [], direction, label, selects)
                ports = _protocols(reader, path, r.get("protocols"), label) if kind == "ClusterNetworkPolicy" \
                    else _ports(reader, path, r.get("ports"), label)
                action = "Allow" if action == "Accept" else action
                if peers is None or ports is False:
                    continue
                held["rules"].append({"direction": direction, "number": order + 1, "span": span_of(path, r),
                                      "admits_none": all(kind == "pods" and not what for kind, what in peers)})
                if key in drop or key + (direction, order + 1) in drop:
                    continue
                out.append(AdminRule(tier, priority, order, direction, action, subject, peers, ports,
                                     span_of(path, r), label + (f" rule {r.get('name')}" if r.get("name") else "")))
    out.sort(key=lambda r: (r.tier != "admin", r.priority, r.order))
    return out


def _pods_of(reader, pods, path, ns_sel, pod_sel, selects) -> frozenset:
    spaces = {n for n, labels in reader.namespaces.items() if selects(ns_sel or {}, labels, path, reader)}
    return frozenset(p.ident for p in pods if p.namespace in spaces and selects(pod_sel or {}, p.labels, path, reader))


def _subject(reader, pods, path, subject, label, selects):
    if not isinstance(subject, dict) or len([k for k in ("namespaces", "pods") if k in subject]) != 1:
        reader.fail(path, subject if isinstance(subject, dict) else {}, f"{label}: subject takes one of namespaces, pods")
        return None
    if "namespaces" in subject:
        return _pods_of(reader, pods, path, subject["namespaces"], {}, selects)
    sel = subject["pods"] or {}
    return _pods_of(reader, pods, path, sel.get("namespaceSelector"), sel.get("podSelector"), selects)


def _peers(reader, pods, path, items, direction, label, selects):
    out = []
    for peer in items:
        if "namespaces" in peer:
            out.append(("pods", _pods_of(reader, pods, path, peer["namespaces"], {}, selects)))
        elif "pods" in peer:
            sel = peer["pods"] or {}
            out.append(("pods", _pods_of(reader, pods, path, sel.get("namespaceSelector"), sel.get("podSelector"),
                                         selects)))
        elif "networks" in peer and direction == "egress":
            try:
                out.append(("networks", [ipaddress.ip_network(n, strict=True) for n in peer["networks"]]))
            except (TypeError, ValueError) as exc:
                reader.fail(path, peer, f"{label}: networks: {exc}")
                return None
        elif "nodes" in peer:
            reader.fail(path, peer, f"{label}: nodes peers are not imported (anyplane does not read Nodes)")
            return None
        elif "domainNames" in peer:
            reader.fail(path, peer, f"{label}: domainNames peers are not imported (they follow DNS answers, which "
                                    "a policy over addresses cannot prove anything about)")
            return None
        else:
            reader.fail(path, peer, f"{label}: a {direction} peer takes namespaces, pods"
                                    + (", networks" if direction == "egress" else ""))
            return None
    return out


def _ports(reader, path, items, label):
    if items is None:
        return None
    out = []
    for p in items:
        if "namedPort" in p:
            out.append(("*", str(p["namedPort"]), None))
            continue
        spec = p.get("portNumber") or p.get("portRange")
        proto = (spec or {}).get("protocol", "TCP")
        if proto not in PROTOCOLS:
            reader.fail(path, p, f"{label}: protocol {proto}: anyplane takes TCP and UDP ports here")
            return False
        lo, hi = (spec.get("port"), spec.get("port")) if "portNumber" in p else (spec.get("start"), spec.get("end"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not 1 <= lo <= hi <= 65535:
            reader.fail(path, p, f"{label}: ports {lo!r}-{hi!r} are not a port or a range (1-65535)")
            return False
        out.append((PROTOCOLS[proto], lo, hi))
    return out


def _protocols(reader, path, items, label):
    """ClusterNetworkPolicy's `protocols` as the port list of `_ports` (None: every protocol and port)."""
    if items is None:
        return None
    out = []
    for p in items:
        chosen = [k for k in ("tcp", "udp", "sctp", "destinationNamedPort") if p.get(k) is not None]
        if len(chosen) != 1:
            reader.fail(path, p, f"{label}: a protocol takes exactly one of tcp, udp, sctp, destinationNamedPort")
            return False
        if chosen[0] == "destinationNamedPort":
            out.append(("*", p["destinationNamedPort"], None))
            continue
        if chosen[0] == "sctp":
            reader.fail(path, p, f"{label}: protocol SCTP: anyplane takes TCP and UDP ports here")
            return False
        port = p[chosen[0]].get("destinationPort")
        if port is None:
            out.append((chosen[0], 1, 65535))
            continue
        lo, hi = (port.get("number"),) * 2 if port.get("range") is None else \
            (port["range"].get("start"), port["range"].get("end"))
        if (port.get("number") is None) == (port.get("range") is None) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not 1 <= lo <= hi <= 65535:
            reader.fail(path, port, f"{label}: destinationPort takes a number or a range within 1-65535")
            return False
        out.append((chosen[0], lo, hi))
    return out


def holds(rule: AdminRule, peer, within) -> bool:
    """Whether a rule's peers hold a peer (a Pod, or an outside block); `within(peer, net)`."""
    for kind, what in rule.peers:
        if kind == "pods" and getattr(peer, "ident", None) in what:
            return True
        if kind == "networks" and any(within(peer, net) for net in what):
            return True
    return False


def _tier(rules: list[AdminRule], tier: str, subject, peer, direction: str, undecided: Ports, ports_of, within):
    """One tier's rules in order, each deciding the cells no earlier rule of the tier decided:
    (allowed, passed, still undecided, allowing rules, denying rules)."""
    allowed = passed = NONE
    allows, denies = [], []
    for rule in rules:
        if rule.tier != tier or rule.direction != direction or subject.ident not in rule.subject \
                or not holds(rule, peer, within):
            continue
        cells = ports_of(rule.ports) & undecided
        if not cells:
            continue
        if rule.action == "Allow":
            allowed, allows = allowed | cells, allows + [(rule.span, rule.label)]
        elif rule.action == "Deny":
            denies.append((rule.span, rule.label))
        else:
            passed = passed | cells
        undecided = undecided - cells
    return allowed, passed, undecided, allows, denies


def decide(rules: list[AdminRule], subject, peer, direction: str, isolated: bool, np_allowed: Ports,
           ports_of, within) -> tuple[Ports, list, list]:
    """What one direction admits, through the tiers: (ports, allowing rules, denying rules) where the
    rules are (span, label) of those that decided some of it."""
    allowed, passed, undecided, allows, denies = _tier(rules, "admin", subject, peer, direction, ALL, ports_of,
                                                       within)
    to_np = passed | undecided
    if isolated:
        return allowed | (to_np & np_allowed), allows, denies
    base, base_passed, rest, base_allows, base_denies = _tier(rules, "baseline", subject, peer, direction, to_np,
                                                              ports_of, within)
    # What the baseline passes goes on to the next tier: there is none, so Kubernetes' default allows it.
    return allowed | base | base_passed | rest, allows + base_allows, denies + base_denies


def restricts(rules: list[AdminRule], ident: str, direction: str) -> bool:
    """Whether some admin or baseline rule may decide this pod's traffic in this direction."""
    return any(r.direction == direction and ident in r.subject for r in rules)


def networks(rules: list[AdminRule]) -> list:
    return [n for r in rules for kind, what in r.peers if kind == "networks" for n in what]
