"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2), layers 3 and 4.

Cilium's documented semantics, which the importer follows:

- An endpoint (pod) that a rule selects goes into default deny for a direction when the rule has
  that direction's section (`ingress`/`ingressDeny`, `egress`/`egressDeny`), unless
  `enableDefaultDeny` says false for it. Kubernetes NetworkPolicies isolate as usual.
- What passes is the union of every allow (Cilium's and the NetworkPolicies'), less every deny:
  `ingressDeny`/`egressDeny` take precedence over all allows.
- Endpoint selectors match a pod's labels, plus `io.kubernetes.pod.namespace` and the namespace's
  labels as `io.cilium.k8s.namespace.labels.KEY` (a `k8s:` or `any:` prefix is dropped). In a
  namespaced policy every selector (the subject, and peers without a namespace label) is limited to
  the policy's namespace; an empty peer selector is every pod of it.
- CIDR peers (`fromCIDR`, `fromCIDRSet` with `except`) are addresses outside the cluster; entities
  `world` (outside), `cluster` (every pod) and `all`.
- A rule without peers (only `toPorts`) admits every peer. Ports: a number or a name (looked up on
  the destination pod), `endPort`, protocol TCP, UDP or ANY.

Refused at their position, never dropped: L7 rules (`toPorts.rules`), FQDN, service, group, node
and other entity peers, `reserved:` labels, an empty rule (`{}`), and a nodeSelector.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .ports import ALL, NONE

ENTITIES = ("world", "cluster", "all")
NS_LABEL = "io.kubernetes.pod.namespace"
NS_PREFIX = "io.cilium.k8s.namespace.labels."
PEER_KEYS = {"ingress": ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
             "egress": ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")}
REFUSED = ("toFQDNs", "toServices", "toGroups", "toRequires", "fromRequires", "toNodes", "fromNodes", "icmps")


@dataclass
class CiliumRule:
    direction: str    # "ingress" or "egress"
    deny: bool
    subject: frozenset  # pod idents
    peers: list | None  # None: every peer; else ("pods", idents) | ("cidr", net, excepts) | ("world",) | ("all",)
    ports: list | None  # importer port list; None: every port and protocol
    span: object
    label: str


def _labels(pod, namespaces) -> dict:
    out = dict(pod.labels)
    out[NS_LABEL] = pod.namespace
    for k, v in namespaces.get(pod.namespace, {}).items():
        out[NS_PREFIX + k] = v
    return out


def _clean(selector, path, reader, label) -> dict | None:
    """A selector with `k8s:`/`any:` prefixes dropped; None (and an error) for `reserved:` labels."""
    if selector is None:
        return {}
    out = {"matchLabels": {}, "matchExpressions": []}
    for k, v in (selector.get("matchLabels") or {}).items():
        if k.startswith("__"):
            continue
        if k.startswith("reserved:"):
            reader.fail(path, selector, f"{label}: reserved labels ({k}) are not imported")
            return None
        out["matchLabels"][k.split(":", 1)[1] if k.startswith(("k8s:", "any:")) else k] = v
    for e in selector.get("matchExpressions") or []:
        key = e.get("key", "")
        out["matchExpressions"].append(dict(e, key=key.split(":", 1)[1] if key.startswith(("k8s:", "any:")) else key))
    return out


def _names_namespace(selector: dict) -> bool:
    return NS_LABEL in selector.get("matchLabels", {}) or any(e.get("key") == NS_LABEL
                                                              for e in selector.get("matchExpressions", []))


def read(reader, pods, objects, span_of, selects, parse_ports) -> list[CiliumRule]:
    out: list[CiliumRule] = []
    for path, obj in objects:
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        clusterwide = kind == "CiliumClusterwideNetworkPolicy"
        ns = None if clusterwide else (meta.get("namespace") or "default")
        label = f"{kind} {(ns + '/') if ns else ''}{meta.get('name')}"
        if not str(obj.get("apiVersion", "")).startswith("cilium.io/"):
            reader.fail(path, obj, f"{label}: apiVersion {obj.get('apiVersion')!r} is not cilium.io/v2")
            continue
        specs = ([obj["spec"]] if obj.get("spec") else []) + list(obj.get("specs") or [])
        if not specs:
            reader.fail(path, obj, f"{label}: no spec")
            continue
        for spec in specs:
            out += _rules(reader, pods, path, spec, ns, label, span_of, selects, parse_ports)
    return out


def _select(reader, pods, path, selector, ns, selects, limit_ns: bool) -> frozenset:
    labelled = [(p, _labels(p, reader.namespaces)) for p in pods]
    return frozenset(p.ident for p, labels in labelled
                     if (not limit_ns or p.namespace == ns) and selects(selector, labels, path, reader))


def _rules(reader, pods, path, spec, ns, label, span_of, selects, parse_ports) -> list[CiliumRule]:
    if "nodeSelector" in spec:
        reader.fail(path, spec, f"{label}: nodeSelector policies (host firewall) are not imported")
        return []
    subject_sel = _clean(spec.get("endpointSelector"), path, reader, label)
    if subject_sel is None:
        return []
    subject = _select(reader, pods, path, subject_sel, ns, selects, ns is not None)
    default_deny = spec.get("enableDefaultDeny") or {}
    out = []
    for direction in ("ingress", "egress"):
        sections = [(key, spec.get(key)) for key in (direction, direction + "Deny") if spec.get(key)]
        for key, items in sections:
            for r in items:
                rule = _rule(reader, pods, path, r, direction, key.endswith("Deny"), subject, ns, label, span_of,
                             selects, parse_ports)
                if rule is not None:
                    out.append(rule)
        flag = default_deny.get(direction)
        if (sections and flag is not False) or flag is True:
            # Default deny for the direction: a deny of nothing that marks the subject as restricted.
            out.append(CiliumRule(direction, True, subject, [], None, span_of(path, spec),
                                  f"{label} puts its endpoints in default deny for {direction}"))
    return out


def _rule(reader, pods, path, r, direction, deny, subject, ns, label, span_of, selects, parse_ports):
    if not isinstance(r, dict) or not [k for k in r if not k.startswith("__")]:
        reader.fail(path, r if isinstance(r, dict) else {}, f"{label}: an empty rule: say which peers "
                                                            f"({', '.join(PEER_KEYS[direction])})")
        return None
    refused = [k for k in r if k in REFUSED or k.startswith(("to", "from")) and k not in PEER_KEYS[direction]
               and k != "toPorts" or (not k.startswith("__") and k not in PEER_KEYS[direction] + ("toPorts",))]
    if refused:
        reader.fail(path, r, f"{label}: {', '.join(sorted(refused))} peers are not imported")
        return None
    peers = None
    if any(k in r for k in PEER_KEYS[direction]):
        peers = []
        for sel in r.get(PEER_KEYS[direction][0]) or []:
            clean = _clean(sel, path, reader, label)
            if clean is None:
                return None
            peers.append(("pods", _select(reader, pods, path, clean, ns, selects,
                                          ns is not None and not _names_namespace(clean))))
        try:
            for cidr in r.get(PEER_KEYS[direction][1]) or []:
                peers.append(("cidr", ipaddress.ip_network(cidr, strict=False), []))
            for item in r.get(PEER_KEYS[direction][2]) or []:
                peers.append(("cidr", ipaddress.ip_network(item.get("cidr"), strict=False),
                              [ipaddress.ip_network(e, strict=False) for e in item.get("except") or []]))
        except (TypeError, ValueError) as exc:
            reader.fail(path, r, f"{label}: {exc}")
            return None
        for entity in r.get(PEER_KEYS[direction][3]) or []:
            if entity not in ENTITIES:
                reader.fail(path, r, f"{label}: entity {entity!r} is not imported (world, cluster, all are)")
                return None
            peers.append(("world",) if entity == "world" else ("all",) if entity == "all" else ("pods", frozenset(
                p.ident for p in pods)))
    ports = None
    if r.get("toPorts"):
        ports = []
        for tp in r["toPorts"]:
            if tp.get("rules"):
                reader.fail(path, tp, f"{label}: L7 rules (toPorts.rules) are not imported yet")
                return None
            items = []
            for p in tp.get("ports") or []:
                proto = str(p.get("protocol", "ANY")).upper()
                port = p.get("port")
                port = int(port) if isinstance(port, str) and port.isdigit() else port
                if port in (0, None):
                    port = None
                for pr in (("TCP", "UDP") if proto == "ANY" else (proto,)):
                    items.append({"protocol": pr, **({"port": port} if port is not None else {}),
                                  **({"endPort": p["endPort"]} if p.get("endPort") else {})})
            parsed = parse_ports(reader, path, items)
            if parsed is None and items:
                return None
            ports += parsed or [("tcp", 0, 65535), ("udp", 0, 65535)]
    return CiliumRule(direction, deny, subject, peers, ports, span_of(path, r), label)


def _holds(peers, peer, within, is_pod) -> bool:
    if peers is None:
        return True
    for item in peers:
        if item[0] == "pods" and is_pod(peer) and peer.ident in item[1]:
            return True
        if item[0] == "all":
            return True
        if item[0] == "world" and not is_pod(peer):
            return True
        if item[0] == "cidr" and not is_pod(peer) and within(peer, item[1]) and \
                not any(within(peer, e) for e in item[2]):
            return True
    return False


def restricts(rules: list[CiliumRule], ident: str, direction: str):
    """The rule that puts this pod in default deny for a direction (None: none does)."""
    return next(((r.span, r.label) for r in rules if r.direction == direction and r.deny and r.peers == []
                 and ident in r.subject), None)


def verdicts(rules: list[CiliumRule], subject, peer, direction: str, ports_of, within, is_pod):
    """(allowed ports, allowing rules, denied ports, denying rules) for one direction."""
    allowed, denied, allows, denies = NONE, NONE, [], []
    for r in rules:
        if r.direction != direction or subject.ident not in r.subject or r.peers == []:
            continue
        if not _holds(r.peers, peer, within, is_pod):
            continue
        cells = ports_of(r.ports) if r.ports is not None else ALL
        if r.deny:
            denied, denies = denied | cells, denies + [(r.span, r.label)]
        else:
            allowed, allows = allowed | cells, allows + [(r.span, r.label)]
    return allowed, allows, denied, denies
