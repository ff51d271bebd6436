"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2), layers 3 and 4.

Cilium's documented semantics, which the importer follows:

- An endpoint (pod) that a rule selects goes into default deny for a direction when the rule has
  that direction's section (`ingress`/`ingressDeny`, `egress`/`egressDeny`), unless
  `enableDefaultDeny` says false for it. Kubernetes NetworkPolicies isolate as usual.
- What passes is the union of every allow (Cilium's and the NetworkPolicies'), less every deny:
  `ingressDeny`/`egressDeny` take precedence over all allows.
- Endpoint selectors match a pod's labels, plus `io.kubernetes.pod.namespace`, its service account as
  `io.cilium.k8s.policy.serviceaccount`, and the namespace's labels as
  `io.cilium.k8s.namespace.labels.KEY` (a `k8s:` or `any:` prefix is dropped). In a
  namespaced policy every selector (the subject, and peers without a namespace label) is limited to
  the policy's namespace; an empty peer selector is every pod of it.
- CIDR peers (`fromCIDR`, `fromCIDRSet` with `except`) are addresses outside the cluster. Entities:
  `all`; `cluster` (every pod and node); `host` (the node each selected pod runs on, from its
  `spec.nodeName` and the Node objects' addresses); `remote-node` (every other node); `kube-apiserver`
  (the Endpoints or EndpointSlice of Service default/kubernetes); `world` (every outside address that
  is none of those).
- A rule without peers (only `toPorts`) admits every peer. Ports: a number or a name (looked up on
  the destination pod), `endPort`, protocol TCP, UDP or ANY. `icmps` (types by number or Cilium's
  message name, family IPv4 or IPv6) admit those ICMP messages beside the rule's `toPorts`; a rule
  with either admits no other protocol.

- HTTP rules (`toPorts.rules.http`) on an ingress allow: on those ports, Cilium's proxy lets through
  the requests that match one of them (method names joined by `|`, a path written exactly or as
  `literal/.*`, an exact host, `headers` and `headerMatches` as exact values or presence); an allow
  of the same port without HTTP rules lets every request through, as Cilium merges them.

- An empty rule (`ingress: [{}]`) matches nothing: its section puts the selected endpoints in default
  deny for the direction, the documented way to deny all of it.

Refused at their position, never dropped: other L7 rules (Kafka, DNS), HTTP rules on egress or in a
deny, regexes beyond those, FQDN, service, group and node peers, the entities health, init, ingress
and unmanaged, `reserved:` labels, and a nodeSelector.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from anyplane.ir.flow import HTTP_METHODS
from anyplane.ir.http import header_problem, host_problem, is_canonical
from anyplane.ir.match import merge_ranges
from anyplane.ir.source import DiagnosticError, error

from .istio import _quote, printable
from .ports import ALL, NONE

ENTITIES = ("world", "cluster", "all", "host", "remote-node", "kube-apiserver")
NS_LABEL = "io.kubernetes.pod.namespace"
NS_PREFIX = "io.cilium.k8s.namespace.labels."
ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
PEER_KEYS = {"ingress": ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
             "egress": ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")}
REFUSED = ("toFQDNs", "toServices", "toGroups", "toRequires", "fromRequires", "toNodes", "fromNodes")
#: ICMP message names Cilium takes for `icmps` types (its ICMP rule API), by family.
ICMP_NAMES = {
    "IPv4": {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
             "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
             "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
             "ExtendedEchoReply": 43},
    "IPv6": {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
             "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
             "MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134,
             "NeighborSolicitation": 135, "NeighborAdvertisement": 136, "RedirectMessage": 137,
             "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139, "ICMPNodeInformationResponse": 140,
             "InverseNeighborDiscoverySolicitation": 141, "InverseNeighborDiscoveryAdvertisement": 142,
             "HomeAgentAddressDiscoveryRequest": 144, "HomeAgentAddressDiscoveryReply": 145,
             "MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
             "DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
             "ExtendedEchoRequest": 160, "ExtendedEchoReply": 161}}


@dataclass
class CiliumRule:
    direction: str    # "ingress" or "egress"
    deny: bool
    subject: frozenset  # pod idents
    #: None: every peer; else ("pods", idents) | ("cidr", net, excepts) | ("world", networks of the cluster's
    #: nodes and API server) | ("all",) | ("host", {node: networks}) | ("remote-node", {node: networks}) |
    #: ("kube-apiserver", networks) | ("nodes", networks)
    peers: list | None
    ports: list | None  # importer port list; None: every port and protocol
    span: object
    label: str
    #: HTTP rules on these (TCP) ports: anyplane HTTP parts, one of which a request must match
    http: tuple | None = None


def _labels(pod, namespaces) -> dict:
    out = dict(pod.labels)
    out[NS_LABEL] = pod.namespace
    out[ACCOUNT_LABEL] = pod.account  # Cilium derives it from the pod's service account
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


def read(reader, pods, objects, span_of, selects, parse_ports, structure: list | None = None) -> list[CiliumRule]:
    """Every policy's rules. A policy whose endpoints select no pod is added to `structure` (what the
    redundancy findings read) as one that selects nothing."""
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
        got = []
        for spec in specs:
            got += _rules(reader, pods, path, spec, ns, label, span_of, selects, parse_ports)
        out += got
        if structure is not None and got and not any(r.subject for r in got):
            structure.append({"label": label, "span": span_of(path, obj), "selects": 0, "rules": [],
                              "key": ("cilium", len(structure))})
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
                out += _rule(reader, pods, path, r, direction, key.endswith("Deny"), subject, ns, label, span_of,
                             selects, parse_ports)
        flag = default_deny.get(direction)
        if (sections and flag is not False) or flag is True:
            # Default deny for the direction: a deny of nothing that marks the subject as restricted.
            out.append(CiliumRule(direction, True, subject, [], None, span_of(path, spec),
                                  f"{label} puts its endpoints in default deny for {direction}"))
    return out


def _rule(reader, pods, path, r, direction, deny, subject, ns, label, span_of, selects, parse_ports):
    if not isinstance(r, dict):
        reader.fail(path, {}, f"{label}: a rule is a mapping of peers ({', '.join(PEER_KEYS[direction])}) and "
                              "toPorts")
        return []
    if not [k for k in r if not k.startswith("__")]:
        # `{}` matches nothing: its section puts the endpoints in default deny (Cilium's documented way
        # to deny every ingress or egress), and it allows or denies nothing itself.
        return []
    refused = [k for k in r if k in REFUSED or k.startswith(("to", "from")) and k not in PEER_KEYS[direction]
               and k != "toPorts" or (not k.startswith("__") and k not in PEER_KEYS[direction] + ("toPorts", "icmps"))]
    if refused:
        reader.fail(path, r, f"{label}: {', '.join(sorted(refused))} peers are not imported")
        return []
    peers = None
    if any(k in r for k in PEER_KEYS[direction]):
        peers = []
        for sel in r.get(PEER_KEYS[direction][0]) or []:
            clean = _clean(sel, path, reader, label)
            if clean is None:
                return []
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
            return []
        for entity in r.get(PEER_KEYS[direction][3]) or []:
            if entity not in ENTITIES:
                reader.fail(path, r, f"{label}: entity {entity!r} is not imported ({', '.join(ENTITIES)} are)")
                return []
            got = _entity(reader, pods, path, r, entity, subject, label)
            if got is None:
                return []
            peers += got
    ports = None
    l7 = []  # (ports, http parts) of toPorts entries with HTTP rules
    if r.get("toPorts"):
        ports = []
        for tp in r["toPorts"]:
            http = None
            if tp.get("rules"):
                http = _http_rules(reader, path, tp, tp["rules"], direction, deny, label)
                if http is None:
                    return []
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
                return []
            parsed = parsed or [("tcp", 0, 65535), ("udp", 0, 65535)]
            if http is None:
                ports += parsed
            else:
                l7.append(([x for x in parsed if x[0] == "tcp"], http))
    if r.get("icmps"):
        icmps = _icmps(reader, path, r["icmps"], label)
        if icmps is None:
            return []
        ports = (ports or []) + icmps
    out = []
    if ports is None or ports or not l7:
        out.append(CiliumRule(direction, deny, subject, peers, ports, span_of(path, r), label))
    out += [CiliumRule(direction, deny, subject, peers, tcp, span_of(path, r), label, http) for tcp, http in l7]
    return out


def node_networks(reader) -> list:
    """The addresses of the cluster's nodes and API server, which Cilium's entities tell from `world`."""
    return [n for nets in reader.nodes.values() for n in nets] + [n for n in reader.apiserver]


def node_blocks(reader, rules: list[CiliumRule], pods) -> list[tuple[str, list]]:
    """The nodes' and the API server's addresses as named blocks of outside addresses, where some rule
    names an entity that tells them from `world` ([] otherwise); a DiagnosticError for a pod at one of
    them (a pod on the host's network, whose traffic Cilium counts as the node's)."""
    entities = {item[0] for r in rules for item in r.peers or []}
    if not entities & {"world", "nodes", "host", "remote-node", "kube-apiserver"}:
        return []
    taken = {n: p for p in pods for n in p.networks}
    clash = next(((n, taken[n]) for n in node_networks(reader) if n in taken), None)
    if clash is not None:
        net, p = clash
        raise DiagnosticError([error(p.span, "import", (
            f"Pod {p.namespace}/{p.name} has the address {net.network_address} of a node or the API server (a pod "
            "on the host's network): Cilium counts its traffic as the node's; leave host-network pods out of the "
            "input"))])
    return [(f"node {name}", nets) for name, nets in sorted(reader.nodes.items())] + \
        ([("kube-apiserver", list(reader.apiserver))] if reader.apiserver else [])


def reads_nodes(rules: list[CiliumRule]) -> bool:
    """Whether some rule names `host` or `remote-node`: which node a pod runs on then tells pods apart."""
    return any(item[0] in ("host", "remote-node") for r in rules for item in r.peers or [])


def _entity(reader, pods, path, r, entity, subject, label) -> list | None:
    """The peers of one entity (None, with an error, where the input does not say where it is). Cilium's
    `cluster` is every endpoint of the cluster and its nodes (`host`, `remote-node`); `world` is every
    address outside it, which the API server's addresses are not either; `host` is the node each
    selected endpoint runs on, `remote-node` every other node."""
    if entity == "all":
        return [("all",)]
    if entity == "world":
        return [("world", tuple(node_networks(reader)))]
    if entity == "cluster":
        return [("pods", frozenset(p.ident for p in pods)), ("nodes", tuple(n for nets in reader.nodes.values()
                                                                            for n in nets))]
    if entity == "kube-apiserver":
        if not reader.apiserver:
            reader.fail(path, r, f"{label}: entity 'kube-apiserver' is the addresses of Service default/kubernetes: "
                                 "give its Endpoints or EndpointSlice (kubectl get endpoints kubernetes -o yaml)")
            return None
        return [("kube-apiserver", tuple(reader.apiserver))]
    if not reader.nodes:
        reader.fail(path, r, f"{label}: entity {entity!r} is the nodes' addresses: give the Node objects "
                             "(kubectl get nodes -o yaml)")
        return None
    if entity == "host":
        for p in pods:
            if p.ident in subject and p.node not in reader.nodes:
                reader.fail(path, r, f"{label}: entity 'host' is the node each selected pod runs on: Pod "
                                     f"{p.namespace}/{p.name} " + (f"runs on node {p.node!r}, which no Node object "
                                                                  "gives" if p.node else "names no node (spec.nodeName)"))
                return None
    return [(entity, dict(reader.nodes))]


def _icmps(reader, path, items, label) -> list | None:
    """`icmps: [{fields: [{type, family}]}]` as port-list items ("icmp" or "icmp6", type, type): the
    ICMP messages the rule admits beside its `toPorts` (None and an error when one is malformed)."""
    out = []
    for item in items if isinstance(items, list) else [items]:
        fields = item.get("fields") if isinstance(item, dict) else None
        if not isinstance(fields, list) or not fields:
            reader.fail(path, item if isinstance(item, dict) else {}, f"{label}: an icmps entry lists `fields` "
                                                                      "(type, family)")
            return None
        for f in fields:
            family = f.get("family", "IPv4") if isinstance(f, dict) else None
            t = f.get("type") if isinstance(f, dict) else None
            if family not in ICMP_NAMES:
                reader.fail(path, f if isinstance(f, dict) else item, f"{label}: icmps family {family!r} is not IPv4 "
                                                                      "or IPv6")
                return None
            if isinstance(t, str) and not t.isdigit():
                if t not in ICMP_NAMES[family]:
                    reader.fail(path, f, f"{label}: {t!r} is not an {family} ICMP message name Cilium takes "
                                         f"(or give its number)")
                    return None
                t = ICMP_NAMES[family][t]
            try:
                t = int(t)
            except (TypeError, ValueError):
                t = -1
            if isinstance(f.get("type"), bool) or not 0 <= t <= 255:
                reader.fail(path, f, f"{label}: icmps type {f.get('type')!r} is not an ICMP type (0-255)")
                return None
            proto = "icmp" if family == "IPv4" else "icmp6"
            out.append((proto, t, t))
    return out


_META = set(".^$*+?()[]{}|\\")


def _literal(regex: str) -> str | None:
    """The one string a regex matches when it has no operators (metacharacters escaped with a
    backslash are themselves), else None."""
    out, i = [], 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            if i + 1 >= len(regex) or regex[i + 1].isalnum():
                return None  # \d, \w ...: classes, not characters
            out.append(regex[i + 1])
            i += 2
            continue
        if ch in _META:
            return None
        out.append(ch)
        i += 1
    return "".join(out)


HTTP_FIELDS = ("method", "path", "host", "headers", "headerMatches")


def _http_rules(reader, path, tp, rules, direction, deny, label) -> tuple | None:
    """Cilium's `rules.http` of one toPorts entry as anyplane HTTP parts (None and an error when they
    cannot be said: other L7 protocols, egress, regexes beyond literals and `literal/.*`)."""
    others = [k for k in rules if not k.startswith("__") and k != "http"]
    if others or not rules.get("http"):
        reader.fail(path, tp, f"{label}: L7 rules other than http ({', '.join(others) or 'none'}) are not imported")
        return None
    if direction != "ingress" or deny:
        reader.fail(path, tp, f"{label}: HTTP rules are imported on ingress allows (Cilium's proxy at the "
                              "destination); egress HTTP rules are not yet")
        return None
    parts = []
    for h in rules["http"]:
        unknown = [k for k in h if not k.startswith("__") and k not in HTTP_FIELDS]
        if unknown:
            reader.fail(path, h, f"{label}: http.{unknown[0]} is not imported")
            return None
        text = " http"
        method = h.get("method")
        if method not in (None, "", ".*"):
            names = [_literal(m) for m in str(method).split("|")]
            if not all(n in HTTP_METHODS for n in names):
                reader.fail(path, h, f"{label}: method {method!r}: a method name or names joined by '|' "
                                     f"({', '.join(HTTP_METHODS)}) are imported")
                return None
            text += " " + ", ".join(sorted(set(names), key=HTTP_METHODS.index))
        elif method == ".*" or h.get("path") not in (None, "", ".*"):
            text += " *"
        p = h.get("path")
        if p not in (None, "", ".*"):
            p = str(p)
            lit = _literal(p[:-2]) if p.endswith("/.*") else _literal(p)  # "/a/.*" is the prefix "/a/"
            if lit is None or not lit.startswith("/") or not is_canonical(lit):
                reader.fail(path, h, f"{label}: path {p!r}: an exact path or a prefix written 'literal/.*' is "
                                     "imported (a path in normal form)")
                return None
            text += " " + (lit + "*" if p.endswith("/.*") else lit)
        host = h.get("host")
        if host not in (None, "", ".*"):
            # Cilium's schema takes a hostname here: a dot is taken as a dot (the regex would also match
            # any character there, a difference docs/import.md states)
            lit = _literal(str(host).replace("\\.", ".").replace(".", "\\."))
            if lit is None or host_problem(lit.lower()):
                reader.fail(path, h, f"{label}: host {host!r}: an exact host is imported")
                return None
            text += f" host {_quote(lit.lower())}"
        for header in h.get("headers") or []:
            name, _, value = str(header).partition(":")
            name, value = name.strip().lower(), value.strip()
            if header_problem(name) or not name or not printable(value):
                reader.fail(path, h, f"{label}: header {header!r}: "
                                     f"{header_problem(name) or ('no name' if not name else 'not printable ASCII')}")
                return None
            text += f" header {_quote(name)} " + (f"= {_quote(value)}" if value else "present")
        for m in h.get("headerMatches") or []:
            if m.get("mismatch") or m.get("secret") or not m.get("name"):
                reader.fail(path, m, f"{label}: headerMatches with a mismatch action or a secret are not imported")
                return None
            name = str(m["name"]).lower()
            value = m.get("value")
            if header_problem(name) or not printable(name) or (value and not printable(str(value))):
                reader.fail(path, m, f"{label}: headerMatches {name!r}: {header_problem(name) or 'not printable ASCII'}")
                return None
            text += f" header {_quote(name)} " + (f"= {_quote(str(value))}" if value else "present")
        parts.append(text)
    return tuple(parts)


def _holds(peers, peer, within, is_pod, subject=None) -> bool:
    """Whether a rule's peers hold a peer (a pod, or a block of outside addresses, which the nodes' and
    the API server's addresses are cut into blocks of their own) of `subject`, the pod the rule selects."""
    if peers is None:
        return True
    for item in peers:
        kind = item[0]
        if kind == "pods" and is_pod(peer) and peer.ident in item[1]:
            return True
        if kind == "all":
            return True
        if is_pod(peer):
            continue
        if kind == "world" and not any(within(peer, n) for n in item[1]):
            return True
        if kind == "cidr" and within(peer, item[1]) and not any(within(peer, e) for e in item[2]):
            return True
        if kind in ("nodes", "kube-apiserver") and any(within(peer, n) for n in item[1]):
            return True
        if kind in ("host", "remote-node") and any(
                within(peer, n) for node, nets in item[1].items() if (node == subject.node) == (kind == "host")
                for n in nets):
            return True
    return False


def restricts(rules: list[CiliumRule], ident: str, direction: str):
    """The rule that puts this pod in default deny for a direction (None: none does)."""
    return next(((r.span, r.label) for r in rules if r.direction == direction and r.deny and r.peers == []
                 and ident in r.subject), None)


def http_allows(rules: list[CiliumRule], subject, peer, within, is_pod) -> list:
    """[(TCP port ranges, anyplane HTTP part, (span, label))]: the requests Cilium's proxy lets through to
    `subject` from `peer` on ports where its HTTP rules apply."""
    out = []
    for r in rules:
        if r.http is None or r.direction != "ingress" or subject.ident not in r.subject:
            continue
        if _holds(r.peers, peer, within, is_pod, subject):
            ranges = tuple(merge_ranges([(lo, hi) for _, lo, hi in r.ports]))
            out += [(ranges, part, (r.span, r.label)) for part in r.http]
    return out


def http_ports(rules: list[CiliumRule], pod) -> list:
    """The numbered ports of a pod where Cilium's proxy reads HTTP."""
    return sorted({n for r in rules if r.http is not None and pod.ident in r.subject
                   for _, lo, hi in r.ports for n in range(lo, hi + 1) if hi - lo < 64})


def verdicts(rules: list[CiliumRule], subject, peer, direction: str, ports_of, within, is_pod, with_http=False):
    """(allowed ports, allowing rules, denied ports, denying rules) for one direction: HTTP rules aside, or
    (`with_http`) as if they allowed their ports outright."""
    allowed, denied, allows, denies = NONE, NONE, [], []
    for r in rules:
        if r.direction != direction or subject.ident not in r.subject or r.peers == [] or \
                (r.http is not None and not with_http):
            continue
        if not _holds(r.peers, peer, within, is_pod, subject):
            continue
        cells = ports_of(r.ports) if r.ports is not None else ALL
        if r.deny:
            denied, denies = denied | cells, denies + [(r.span, r.label)]
        else:
            allowed, allows = allowed | cells, allows + [(r.span, r.label)]
    return allowed, allows, denied, denies
