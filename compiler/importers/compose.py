"""The composition: pods into identities, and the tiers' verdicts into one anyplane policy text.

With NetworkPolicies alone the text is written per policy rule over sets of identities (`_by_rules`);
with the admin tiers, Cilium or Istio, what passes each pair of identities is known (`write_policy`),
and written as one line per set of pairs that the same rule decides alike. The pairs are not asked one
by one: each identity's rules cut the other ends into classes they cannot tell apart (bit sets), one
end of each class is asked, and a pair combines its three decisions (ingress, egress, Istio's) once
per triple. Outside addresses are cut where the policies' blocks begin and end (`outside_blocks`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from anyplane.ir.match import merge_ranges
from anyplane.ir.pairspace import bit_positions
from anyplane.ir.source import Span

from . import admin, cilium, istio
from .cluster import MAX_IDENT, Pod
from .networkpolicy import Rule, resolve_ports, union_ports
from .ports import ALL, EVERY, NONE, Ports, _intersect


@dataclass
class Imported:
    """The policy text, and where each of its lines comes from."""

    text: str
    origins: dict[int, Span] = field(default_factory=dict)  # line of `text` -> position in the manifests
    pods: int = 0
    policies: int = 0
    #: each NetworkPolicy read, in input order: {"label", "span", "selects" (pods), "alone" (some pod it
    #: isolates no other NetworkPolicy isolates that way), "rules": [{"direction", "number" (from 1),
    #: "span", "admits_none" (peers given, and none of them names an address)}]}
    structure: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # warnings about the manifests (Diagnostic)
    partition: tuple = (frozenset(), ())  # (label keys, networks) that told its pods apart
    #: per line of `text` that NetworkPolicy rules allow (when the import is per rule): the sets of rule
    #: keys (`Rule.key`) that each write it; the line stays while every rule of one set does. None:
    #: the import was per pair, and a rule left out changes lines of others.
    depends: dict[int, list[frozenset]] | None = None
    #: the pods of identities that stand for several: (IP version, address as an integer) -> (the pod,
    #: "NAMESPACE/NAME"; how many pods its identity holds)
    members: dict = field(default_factory=dict)
    #: how the cluster selects each identity's pods: name -> {"namespace", "labels" (the values of the
    #: label keys some selector reads), "unset" (keys read that other pods of its namespace carry and its
    #: own lack)}; the exporters write their selectors from it (backends/kube)
    selectors: dict = field(default_factory=dict)
    #: written as workloads (`convert(workloads=True)`): the pods that are their binding
    binding: list | None = None


def selectors(classes: dict, pods: list[Pod], keys: set) -> dict:
    """Per identity of the cluster's pods, the labels that select exactly its pods in its namespace
    (`Imported.selectors`). Every decision reads only the keys some selector reads, so a pod created
    later with the same namespace and the same values of those keys is decided as the identity."""
    carried: dict[str, set] = {}
    for p in pods:
        carried.setdefault(p.namespace, set()).update(k for k in p.labels if k in keys)
    out = {}
    for members, name in classes.values():
        p = members[0]
        if p.name_in_policy or p.base:  # read back from an export: not a cluster's own pods
            continue
        labels = {k: v for k, v in sorted(p.labels.items()) if k in keys}
        out[name or p.ident] = {"namespace": p.namespace, "labels": labels,
                                "unset": sorted(carried[p.namespace] - set(labels))}
    return out


def outside_blocks(networks: list, pods: list[Pod], named: list = ()) -> list[tuple[str, list, str]]:
    """Addresses outside the cluster, cut where ipBlocks begin and end (as network-config-analyzer
    draws them): [(name, prefixes, "FIRST-LAST")]. IPv6 only when some block or pod is IPv6. `named`:
    (name, networks) that ServiceEntries give (among `networks` too); a block inside one of them is named
    after it (the innermost)."""
    out = []
    named = [(re.sub("_+", "_", re.sub(r"[^a-z0-9_]", "_", name.lower())).strip("_") or "entry", n)
             for name, nets in named for n in nets]
    used: dict[str, int] = {}
    taken = {n for p in pods for n in p.networks}
    for version, bits in ((4, 32), (6, 128)):
        nets = [n for n in networks if n.version == version]
        if version == 6 and not nets and not any(n.version == 6 for p in pods for n in p.networks):
            continue
        cuts = sorted({0, 1 << bits} | {int(n.network_address) for n in nets}
                      | {int(n.broadcast_address) + 1 for n in nets})
        klass = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        for lo, hi in zip(cuts, cuts[1:]):
            first, last = klass(lo), klass(hi - 1)
            # A pod owns its own address: a block's prefix that is exactly a pod's address is left out.
            prefixes = [p for p in ipaddress.summarize_address_range(first, last) if p not in taken]
            if not prefixes:
                continue
            if len(prefixes) == 1:
                tail = str(prefixes[0]).replace(".", "_").replace(":", "_").replace("/", "_")
            else:
                tail = f"{first}_to_{last}".replace(".", "_").replace(":", "_")
            name = re.sub("_+", "_", f"outside_{tail}").rstrip("_") if len(cuts) > 2 else \
                ("outside" if version == 4 else "outside6")
            inside = [(n.prefixlen, entry) for entry, n in named
                      if n.version == version and int(n.network_address) <= lo and hi - 1 <= int(n.broadcast_address)]
            if inside:
                entry = max(inside)[1]
                used[entry] = used.get(entry, 0) + 1
                name = f"external_{entry}" + (f"_{used[entry]}" if used[entry] > 1 else "")
            out.append((name, prefixes, f"{first}-{last}"))
    return out


@dataclass
class Outside:
    """Addresses outside the cluster, one block of the cut (see `outside_blocks`)."""

    name: str
    prefixes: list
    span: str

    def __post_init__(self) -> None:
        self.version, self.first_int = self.first.version, int(self.first)

    @property
    def first(self):
        return self.prefixes[0].network_address


def _within(peer, net) -> bool:
    """A pod or outside block lies inside a network (asked millions of times: on integers)."""
    version, lo, hi = _bounds(net)
    if isinstance(peer, Outside):
        return peer.version == version and lo <= peer.first_int <= hi
    return all(n.version == version and lo <= b[1] and b[2] <= hi for n in peer.networks for b in (_bounds(n),))


def _bounds(net) -> tuple[int, int, int]:
    """(version, first, last) of a network, as integers (kept per network object)."""
    hit = BOUNDS.get(id(net))
    if hit is None or hit[0] is not net:
        hit = BOUNDS[id(net)] = (net, (net.version, int(net.network_address), int(net.broadcast_address)))
    return hit[1]


BOUNDS: dict = {}


def _holds(peer_spec, peer) -> bool:
    """A NetworkPolicy peer holds a pod (selectors) or an outside block (ipBlock less `except`)."""
    if peer_spec[0] == "pods":
        return peer_spec[2] is not None and id(peer) in peer_spec[2] if len(peer_spec) > 2 else \
            any(p is peer for p in peer_spec[1])
    _, net, excepts = peer_spec
    return isinstance(peer, Outside) and _within(peer, net) and not any(_within(peer, e) for e in excepts)


def _np(rules: list[Rule], peer, dst_pod) -> tuple[Ports, list]:
    """What the NetworkPolicy rules of one pod and direction admit from/to a peer, and which rules."""
    holds: dict[int, bool] = {}  # rules that share one peer list (a YAML alias) are asked once

    def admits(peers) -> bool:
        if id(peers) not in holds:
            holds[id(peers)] = any(_holds(x, peer) for x in peers)
        return holds[id(peers)]
    hit = [r for r in rules if r.peers is None or admits(r.peers)]
    return Ports.of(union_ports([resolve_ports(r.ports, dst_pod) for r in hit])) if hit else NONE, \
        [(r.span, r.policy) for r in hit]


def identity_classes(pods: list[Pod], keys: set, blocks: list, routed,
                     by_node: bool = False) -> dict[int, tuple[list[Pod], str | None]]:
    """Pods no policy can tell apart, as one identity: id of the first (which stands for them all) -> (the
    pods, the identity's name; None for a pod alone, named as before). Two pods are alike when they share the namespace, the value of every label key some selector
    reads, the service account, the container ports (named ports resolve alike), the ports Services
    declare HTTP, and the address blocks of the policies that hold their addresses. Every decision the
    importer makes about a pod reads only these, so the first pod's decisions are every member's, and
    the policy grows with what the policies distinguish, not with the pods. Pods routed as a Service's
    versions, pods of workload controllers (whole prefixes) and pods read back from an export stay
    alone. `by_node`: the node a pod runs on tells pods apart too (Cilium's `host` and `remote-node`)."""
    alone = {id(p) for r in routed for p in r.pods}
    blocks = list(dict.fromkeys(blocks))  # policies repeat their blocks: each is asked once per pod
    out: dict[int, list[Pod]] = {}
    by_key: dict[tuple, Pod] = {}
    for p in pods:
        if p.kind != "Pod" or p.name_in_policy or id(p) in alone or p.prefixes:
            out[id(p)] = [p]
            continue
        nets = p.networks
        key = (p.namespace, tuple(sorted((k, v) for k, v in p.labels.items() if k in keys)), p.account,
               tuple(sorted(map(str, p.ports))), tuple(sorted(p.protocols.items())),
               tuple(sorted(n.version for n in nets)),
               frozenset(b for b in blocks for n in nets if n.version == b.version and n.subnet_of(b)),
               p.node if by_node else "")
        first = by_key.setdefault(key, p)
        out.setdefault(id(first), []).append(p)
    taken = {p.ident for p in pods}
    named = {}
    for rep, members in out.items():
        name = None
        if len(members) > 1:
            name = _class_name(members, keys, taken)
            taken.add(name)
        named[rep] = (members, name)
    return named


def workload_classes(pods: list[Pod], keys: set, blocks: list, routed, named: set | None = None,
                     by_node: bool = False) -> tuple[dict, list]:
    """Pods as workloads (`anyplane import --workloads`): one class per selector, the pods of a namespace
    with the same values of every label key some selector reads ({id of the first: (the pods, its name)},
    errors). Every decision reads only those labels, the service account, the container and Service ports,
    the IP versions, and the address blocks that hold the pod's addresses (`blocks`: of the policies that
    read blocks as pods' addresses too, not NetworkPolicy's); pods of one selector that differ in the rest
    cannot be one workload and are an error (a policy's selector cannot tell them apart either). `named`:
    the port names the policies read (None: every container port counts)."""
    from anyplane.ir.source import error

    blocks = list(dict.fromkeys(blocks))
    errors: list = []
    if routed:
        r = routed[0]
        errors.append(error(r.span, "import", f"Service {r.namespace}/{r.k8s_name} is routed by version "
                                              "(VirtualService): its versions are written with addresses, not yet as "
                                              "workloads; import without --workloads"))
        return {}, errors
    groups: dict[tuple, list[Pod]] = {}
    for p in pods:
        groups.setdefault((p.namespace, tuple(sorted((k, v) for k, v in p.labels.items() if k in keys))), []).append(p)

    def held(p: Pod) -> tuple:
        out = []
        for n in p.networks:
            inside = frozenset(b for b in blocks if b.version == n.version and n.subnet_of(b))
            if any(b.version == n.version and b.overlaps(n) and b not in inside for b in blocks):
                return ("split",)
            out.append((n.version, inside))
        return tuple(sorted(set(out), key=lambda x: (x[0], sorted(map(str, x[1])))))

    what = (("service account", lambda p: p.account),
            ("container ports", lambda p: tuple(sorted(str(x) for x in p.ports if named is None or x[0] in named))),
            ("IP versions", lambda p: tuple(sorted({n.version for n in p.networks}))),
            ("ports Services declare", lambda p: tuple(sorted(p.protocols.items()))),
            ("address blocks of the policies that hold its addresses", held)) + \
        ((("node (Cilium's host and remote-node entities read it)", lambda p: p.node),) if by_node else ())
    out: dict[int, tuple[list[Pod], str]] = {}
    taken: set = set()
    for (ns, labels), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        first = members[0]
        for aspect, of in what:
            other = next((m for m in members[1:] if of(m) != of(first)), None)
            if other is not None or of(first) == ("split",):
                other = other or first
                shown = ",".join(f"{k}={v}" for k, v in labels) or "none that a policy reads"
                errors.append(error(other.span, "import",
                                    f"{other.kind} {ns}/{other.name} and {first.kind} {ns}/{first.name} carry the same "
                                    f"labels ({shown}) but differ in their {aspect}: no selector tells them apart, so "
                                    "they cannot be one workload or two; import without --workloads"
                                    if other is not first else
                                    f"{first.kind} {ns}/{first.name}: an address block holds part of its addresses; "
                                    "import without --workloads"))
                break
        name = _class_name(members, keys, taken)
        taken.add(name)
        out[id(first)] = (members, name)
    return out, errors


def _class_name(members: list[Pod], keys: set, taken: set) -> str:
    """A class of several pods: its namespace and the labels that make it one (unique, at most 63)."""
    first = members[0]
    shown = sorted((k, v) for k, v in first.labels.items() if k in keys)
    text = "_".join([first.namespace] + [f"{k.rsplit('/', 1)[-1]}-{v}" for k, v in shown] or ["pods"])
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", text if len(shown) else f"{first.namespace}_pods")
    text = text if text[0].isalpha() else f"pods_{text}"
    if len(text) > MAX_IDENT or text in taken:
        digest = hashlib.sha256("\0".join(sorted(p.ident for p in members)).encode()).hexdigest()[:8]
        text = f"{text[:MAX_IDENT - 9].rstrip('_-')}_{digest}"
    return text


#: Whether the tiers' import decides the pairs it can by class (`write_policy`); pair by pair is the
#: reference the tests hold it to.
BY_CLASS = True


def write_policy(pods, ingress, egress, isolated_in, isolated_out, policies: int, outside=(), admin_rules=(),
          cilium_rules=(), istio_rules=(), routed=(), route_lines=(), classes=None, workloads=None) -> Imported:
    """The policy text for what was read: per pair with a pod at one end whose traffic some policy
    decides, the allows (and, for "all but" sets, the denies above them) that say exactly what passes.
    `workloads` ({name: selector}, `selectors`): the classes are written as workloads selected by
    their labels, with no address (the pods are their binding), and without the lines that say a pod
    may reach itself: that traffic never leaves the pod, and no engine sees it."""
    lines: list[str] = []
    origins: dict[int, Span] = {}

    def emit(text: str, span: Span | None = None, why: str = "") -> int:
        if why:
            lines.append(f"# {why}" + (f" ({span.file}:{span.line})" if span is not None else ""))
        lines.append(text)
        if span is not None:
            origins[len(lines)] = span
        return len(lines)

    emit("# imported from Kubernetes manifests: NetworkPolicy, AdminNetworkPolicy, CiliumNetworkPolicy and Istio "
         "semantics (docs/import.md)")
    emit("# The rules below are the translation's: their dead, redundant and conflicting lines are not findings of "
         "yours (remove the next line to make them yours).")
    emit("# anyplane: imported")
    emit("default allow")
    in_service = {id(p): r for r in routed for p in r.pods}
    classes = classes if classes is not None else {id(p): ([p], None) for p in pods}
    reps = [p for p in pods if id(p) in classes]
    name_of = {id(p): classes[id(p)][1] or p.endpoint for p in reps}
    reps.sort(key=lambda p: name_of[id(p)])
    for p in reps:
        if id(p) in in_service:
            continue
        ports = "".join(f"  port {n} {kind}" for n, kind in sorted(p.protocols.items()))
        members, name = classes[id(p)]
        if workloads is not None:
            sel = workloads[name]
            words = [f"{k}={v}" for k, v in sel["labels"].items()] + [f"!{k}" for k in sel["unset"]]
            shown = ", ".join(m.name for m in members[:5]) + (f" and {len(members) - 5} more" if len(members) > 5 else "")
            emit(f"workload {name} {{ namespace {sel['namespace']}" + (f"  labels {', '.join(words)}" if words else "")
                 + f"{ports} }}", p.span, f"{len(members)} {'Pod' if len(members) == 1 else 'Pods'} today: {shown}")
            continue
        if name is None:
            emit(f"service {p.ident} {{ address {', '.join(str(n) for n in p.networks)}{ports} }}", p.span,
                 f"{p.kind} {p.namespace}/{p.name}")
            continue
        shown = ", ".join(m.name for m in members[:5]) + (f" and {len(members) - 5} more" if len(members) > 5 else "")
        emit(f"service {name} {{ address {', '.join(str(n) for m in members for n in m.networks)}{ports} }}",
             p.span, f"{len(members)} Pods of {p.namespace} that no policy tells apart: {shown}")
    for r in routed:  # a Service that is routed: its pods are its versions
        members = sorted(r.pods, key=lambda p: p.ident)
        protocols = {n: kind for p in members for n, kind in p.protocols.items()}
        ports = "".join(f"  port {n} {kind}" for n, kind in sorted(protocols.items()))
        versions = "".join(f"  version {p.ident.split('.', 1)[1]} address {', '.join(str(n) for n in p.networks)}"
                           for p in members if "." in p.ident)
        emit(f"service {r.name} {{ address {', '.join(str(n) for n in covering_prefixes(members))}{ports}"
             f"{versions} }}", r.span, f"Service {r.namespace}/{r.k8s_name}, routed; its pods: "
             + ", ".join(f"{p.kind} {p.namespace}/{p.name}" for p in members))
    if pods:
        emit("group k8s_pods { " + ", ".join(sorted(", ".join(str(n) for n in p.networks) if p.base else
                                                    classes[id(p)][1] or p.ident for p in reps)) + " }")
    blocks = [Outside(*o) for o in outside]
    for b in blocks:
        emit(f"external {b.name} {{ address {', '.join(str(p) for p in b.prefixes)} }}", None,
             f"addresses outside the cluster, {b.span} (named for maps and answers)")
    admin_rules = list(admin_rules)
    cilium_rules = list(cilium_rules)
    default_deny = {d: {p.ident: cilium.restricts(cilium_rules, p.ident, d) for p in pods
                        if cilium.restricts(cilium_rules, p.ident, d)} for d in ("ingress", "egress")}
    touched = {d: {p.ident for p in pods for r in cilium_rules if r.direction == d and p.ident in r.subject}
               for d in ("ingress", "egress")}
    restricted_in = {p.ident: isolated_in.get(p.ident, [default_deny["ingress"].get(p.ident)])[0] for p in pods
                     if p.ident in isolated_in or admin.restricts(admin_rules, p.ident, "ingress")
                     or p.ident in touched["ingress"]}
    restricted_out = {p.ident: isolated_out.get(p.ident, [default_deny["egress"].get(p.ident)])[0] for p in pods
                      if p.ident in isolated_out or admin.restricts(admin_rules, p.ident, "egress")
                      or p.ident in touched["egress"]}
    named = {p.ident: name_of[id(p)] for p in reps}  # a class's members are decided as its first pod
    for direction, restricted, deny in (("ingress", restricted_in, "deny any -> {} priority 10"),
                                        ("egress", restricted_out, "deny {} -> any priority 10")):
        for ident, why in sorted(restricted.items()):
            if ident not in named:
                continue
            where, label = why or next(((r.span, r.label) for r in admin_rules if r.direction == direction
                                        and ident in r.subject), (None, ""))
            emit(deny.format(named[ident]), where, f"{label} decides its {direction}")

    kept: dict[int, dict] = {}

    def mine(rules: list, subject) -> list:
        """The rules of one tier that select the subject (every tier's decisions filter by it), from an
        index of the tier's rules by the identities they select (made once per tier)."""
        by_subject = kept.get(id(rules))
        if by_subject is None:
            by_subject = kept[id(rules)] = {}
            for r in rules:
                for ident in r.subject:
                    by_subject.setdefault(ident, []).append(r)
        return by_subject.get(subject.ident, [])

    is_pod = lambda q: isinstance(q, Pod)  # noqa: E731
    alike: dict = {}  # each decision (a side's, or Istio's) once per value: `combined` keys on identity
    relevant: dict[tuple, tuple] = {}

    def relevant_of(subject, direction) -> tuple:
        """What of a peer one direction of the subject's reads: (NetworkPolicy peer lists, Cilium rules,
        admin rules, whether a named port is resolved on the peer)."""
        key = (subject.ident, direction)
        rules = relevant.get(key)
        if rules is None:
            table = ingress if direction == "ingress" else egress
            c_rules = [r for r in mine(cilium_rules, subject) if r.direction == direction]
            a_rules = [r for r in mine(admin_rules, subject) if r.direction == direction]
            named = direction == "egress" and any(hi is None for r in [*table[subject.ident], *c_rules, *a_rules]
                                                  for _, _, hi in r.ports or ())
            lists = list({id(r.peers): r.peers for r in table[subject.ident] if r.peers is not None}.values())
            rules = relevant[key] = (lists, c_rules, a_rules, named)
        return rules

    def side(subject, peer, direction, with_http=False):
        """What one direction of `subject`'s admits from or to `peer` (ports, allowing rules, denying
        rules), one object per value."""
        table, isolated = (ingress, isolated_in) if direction == "ingress" else (egress, isolated_out)
        dst = subject if direction == "ingress" else (peer if isinstance(peer, Pod) else None)
        ports_of = lambda spec: Ports.of(resolve_ports(spec, dst))  # noqa: E731
        np_ports, np_why = _np(table[subject.ident], peer, dst)
        # Cilium merges its allows with the NetworkPolicies' and puts its denies above everything.
        c_allowed, c_allows, c_denied, c_denies = cilium.verdicts(mine(cilium_rules, subject), subject, peer,
                                                                  direction, ports_of, _within, is_pod, with_http)
        closed = subject.ident in isolated or subject.ident in default_deny[direction]
        ports, allows, denies = admin.decide(mine(admin_rules, subject), subject, peer, direction, closed,
                                             np_ports | c_allowed, ports_of, _within)
        if closed:
            allows = allows + np_why + c_allows
            denies = denies + ([isolated[subject.ident][0]] if subject.ident in isolated else
                               [default_deny[direction][subject.ident]])
        ports, denies = alike.setdefault(("ports", ports - c_denied), ports - c_denied), c_denies + denies
        return alike.setdefault((ports, tuple(allows), tuple(denies)), (ports, allows, denies))

    if not (admin_rules or cilium_rules or istio_rules or any(p.strict for p in pods)):
        depends = _by_rules(emit, reps, blocks, name_of, classes, ingress, egress, set(restricted_in),
                            set(restricted_out), selves=workloads is None)
        for text, span, why in route_lines:
            emit(text, span, why)
        return Imported("\n".join(lines) + "\n", origins, len(pods), policies, depends=depends)
    # (action, ports, priority, span, label) -> {a destination end: its sources, a bit mask over the ends}
    pending: dict[tuple, dict[int, int]] = {}

    def pair(line: tuple, src: int, dst: int) -> None:
        by_dst = pending.setdefault(line, {})
        by_dst[dst] = by_dst.get(dst, 0) | 1 << src

    def mesh_of(b, a) -> istio.Verdicts:
        """Istio's decision at b's sidecar for a peer, one object per value."""
        got = istio.decide(mine(istio_rules, b), b, a, _http_ports(b), is_pod, _within)
        value = (got.denied, got.allowed, *(tuple(x) for x in (got.denies, got.http_allows, got.http_denies,
                                                               got.allow_why, got.restricted)))
        return alike.setdefault(("istio",) + value, got)

    # Every end's decision for one subject, a row at a time: the ends are cut (bit sets over `ends`) into
    # the classes that the subject's rules read alike, and one end of each class is asked.
    ends = reps + blocks
    every = (1 << len(ends)) - 1
    masks: dict[tuple, int] = {}
    rows: dict[tuple, list | None] = {}

    def mask(key: tuple, test, among=None) -> int:
        """The ends that pass `test`, as a bit set (remembered by `key`); `among`: the namespaces outside
        which none does (only their pods are asked)."""
        got = masks.get(key)
        if got is None:
            if among is None:
                got = int("".join("1" if test(e) else "0" for e in reversed(ends)) or "0", 2)
            else:
                got = sum(1 << k for ns in among for k in pods_in.get(ns, ()) if test(ends[k]))
            masks[key] = got
        return got

    pods_in: dict[str, list[int]] = {}  # namespace -> the positions of its pods among the ends
    for k, e in enumerate(ends):
        if isinstance(e, Pod):
            pods_in.setdefault(e.namespace, []).append(k)

    at = {id(e): k for k, e in enumerate(ends)}
    outside_at = [k for k, e in enumerate(ends) if not isinstance(e, Pod)]

    def np_mask(peers: list) -> int:
        """The ends a NetworkPolicy rule's peers hold: its selectors' pods (by the identities that stand
        for them), and the outside blocks in its ipBlocks."""
        key = ("np", id(peers))
        got = masks.get(key)
        if got is None:
            got = 0
            for spec in peers:
                if spec[0] == "pods":
                    if len(spec) > 2:
                        held = () if spec[2] is None else spec[2]
                        got |= sum(1 << at[x] for x in held if x in at)
                    else:
                        got |= sum(1 << at[id(p)] for p in spec[1] if id(p) in at)
                else:
                    got |= sum(1 << k for k in outside_at if _holds(spec, ends[k]))
            masks[key] = got
        return got

    def port_cuts() -> list[int]:
        if ("ports",) not in masks:
            groups: dict = {}
            for k, e in enumerate(ends):
                groups.setdefault(tuple(map(tuple, e.ports)) if is_pod(e) else None, []).append(k)
            masks[("ports",)] = [sum(1 << k for k in ks) for ks in groups.values()]
        return masks[("ports",)]

    def fill(cuts: list[int], ask) -> list:
        classes = [every]
        for cut in cuts:
            classes = [part for c in classes for part in (c & cut, c & ~cut) if part]
        # The largest class fills the row at once; the others are set end by end.
        largest = max(classes, key=int.bit_count)
        first = ask(ends[(largest & -largest).bit_length() - 1])
        out: list = [first] * len(ends)
        cells = [(largest, first)]
        for members in classes:
            if members is not largest:
                got = ask(ends[(members & -members).bit_length() - 1])
                cells.append((members, got))
                for k in bit_positions(members):
                    out[k] = got
        row_cells[id(out)] = cells
        return out

    row_cells: dict[int, list] = {}  # id of a row -> its classes: (the ends' bit set, the decision)

    def side_row(subject, direction, with_http=False) -> list:
        """`side(subject, end, direction)` for every end; `with_http`: Cilium's HTTP rules as if they
        allowed their ports outright."""
        key = (id(subject), direction, with_http)
        if key not in rows:
            lists, c_rules, a_rules, named = relevant_of(subject, direction)
            cuts = [mask(("pod",), is_pod)]
            cuts += [np_mask(peers) for peers in lists]
            for r in c_rules:
                local = any(item[0] in ("host", "remote-node") for item in r.peers or ())
                cuts.append(mask(("cilium", id(r), subject.node if local else None),
                                 lambda e, r=r: cilium._holds(r.peers, e, _within, is_pod, subject)))
            cuts += [mask(("admin", id(r)), lambda e, r=r: admin.holds(r, e, _within)) for r in a_rules]
            cuts += port_cuts() if named else []
            rows[key] = fill(cuts, lambda peer: side(subject, peer, direction, with_http))
        return rows[key]

    def mesh_row(b) -> list | None:
        """Istio's decision at b's sidecar for every end (None: some rule's blocks split a pod, which
        `istio.decide` reports at the rule, asked pair by pair)."""
        key = (id(b), "istio")
        if key not in rows:
            families = frozenset(n.version for n in b.networks)
            try:
                cuts = [mask(("pod",), is_pod)] + [
                    mask(("istio", id(r), families, b.certified),
                         lambda e, r=r: istio.holds(r, e, is_pod, _within, families, b.certified),
                         istio.namespaces_held(r))
                    for r in mine(istio_rules, b)]
                rows[key] = fill(cuts, lambda peer: mesh_of(b, peer))
            except istio.Split:
                rows[key] = None
        return rows[key]

    meshed = istio.subjects(istio_rules) | {p.ident for p in pods if p.strict}
    proxied = {p.ident for p in pods if cilium.http_ports(cilium_rules, p)}
    open_side = (ALL, [], [])  # a side no policy of the pod's decides (an outside block's)
    no_mesh = istio.Verdicts()
    combined: dict[tuple, tuple] = {}  # (ingress, egress, Istio) decisions, by identity -> what passes
    n = len(ends)
    is_pod_at = [isinstance(e, Pod) for e in ends]
    family_at = [_families(e) for e in ends]
    name_at = [name_of[id(e)] if is_pod_at[k] else e.name for k, e in enumerate(ends)]
    into_at = [is_pod_at[k] and e.ident in restricted_in for k, e in enumerate(ends)]
    out_at = [is_pod_at[k] and e.ident in restricted_out for k, e in enumerate(ends)]
    sidecar_at = [is_pod_at[k] and e.ident in meshed for k, e in enumerate(ends)]
    proxied_at = [is_pod_at[k] and e.ident in proxied for k, e in enumerate(ends)]
    # What restricts an end's ingress (egress): where the pair's lines point when no rule allowed or denied.
    closed_in = [[restricted_in[e.ident]] if into_at[k] and restricted_in[e.ident] else [] for k, e in enumerate(ends)]
    closed_out = [[restricted_out[e.ident]] if out_at[k] and restricted_out[e.ident] else []
                  for k, e in enumerate(ends)]
    admin_in = [[(r.span, r.label) for r in admin_rules if r.direction == "ingress" and e.ident in r.subject]
                if into_at[k] else [] for k, e in enumerate(ends)]
    admin_out = [[(r.span, r.label) for r in admin_rules if r.direction == "egress" and e.ident in r.subject]
                 if out_at[k] else [] for k, e in enumerate(ends)]
    decided_dsts = [k for k in range(n) if into_at[k] or sidecar_at[k]]
    rows_in: list = [None] * n
    # Pairs decided by class, not one by one: for each destination, the sources its ingress lets
    # nothing through from and whose decision at its sidecar is one class write Istio's lines alone
    # (what passes is nothing, whatever the source's egress says; Istio's lines do not depend on it).
    # Those sources are added to the lines at once. Classes where Istio closes ports at L4 (whose lines
    # point at the source's rules), or says nothing, and Cilium's proxied pods stay pair by pair.
    done = [0] * n
    visits_all = (1 << n) - 1
    out_mask = sum(1 << k for k in range(n) if out_at[k])
    decided = set(decided_dsts)
    meeting: dict = {}  # IP versions -> the ends that share one with them
    for j in range(n if BY_CLASS else 0):
        b = ends[j]
        if proxied_at[j] or not sidecar_at[j]:
            continue
        versions = frozenset(family_at[j])
        if versions not in meeting:
            meeting[versions] = sum(1 << k for k in range(n) if family_at[k] & family_at[j])
        visit = (visits_all if j in decided else out_mask) & meeting[versions] & ~(1 << j)
        mrow = mesh_row(b)
        if not visit or mrow is None:
            continue
        if is_pod_at[j]:
            rows_in[j] = rows_in[j] or side_row(b, "ingress")
            ing_cells = row_cells[id(rows_in[j])]
        else:
            ing_cells = [(visits_all, open_side)]
        for m1, ing_side in ing_cells:
            if ing_side[0] or not m1 & visit:
                continue  # the ingress lets something through: pair by pair
            for m2, mesh in row_cells[id(mrow)]:
                cell = m1 & m2 & visit
                if not cell or mesh.silent or mesh.denied:
                    continue
                key = (id(ing_side[0]), "any egress", id(mesh))
                texts = combined.get(key)
                if texts is None:
                    texts = combined[key] = _combine(ing_side[0], ALL, mesh)
                allow_texts, deny_texts, istio_lines = texts
                if allow_texts or deny_texts:
                    continue
                for line in istio_lines:
                    by_dst = pending.setdefault(line, {})
                    by_dst[j] = by_dst.get(j, 0) | cell
                done[j] |= cell
    for i, a in enumerate(ends):
        a_pod = is_pod_at[i]
        egr_row = side_row(a, "egress") if a_pod else None
        for j in (range(n) if out_at[i] else decided_dsts):  # pairs no policy decides: the default allows them
            if not family_at[i] & family_at[j]:
                continue  # no flow joins an IPv4-only end and an IPv6-only one
            if done[j] >> i & 1:
                continue  # decided with its class (above)
            b = ends[j]
            b_pod, into, out_of, sidecar = is_pod_at[j], into_at[j], out_at[i], sidecar_at[j]
            if a is b and workloads is not None:
                pass  # a pod to itself: no engine sees it
            elif a is b and a.single and classes[id(a)][1] is None:
                # The pod to itself, above every rule; the pair says what pods created later with its
                # labels may send each other.
                for net in a.networks:
                    emit(f"allow {net.network_address} -> {net.network_address} priority 90", a.span,
                         "a pod cannot block access to itself")
            elif a is b and classes[id(a)][1] is not None:  # each pod of the class to itself, above every rule
                for m in classes[id(a)][0]:
                    for net in m.networks:
                        emit(f"allow {net.network_address} -> {net.network_address} priority 90", m.span,
                             "a pod cannot block access to itself")
            if b_pod:
                row = rows_in[j]
                if row is None:
                    row = rows_in[j] = side_row(b, "ingress")
                ing_side = row[i]
            else:
                ing_side = open_side
            egr_side = egr_row[j] if a_pod else open_side
            mesh = no_mesh
            if sidecar:
                row = mesh_row(b)
                mesh = row[i] if row is not None else mesh_of(b, a)
            if not (into or out_of) and mesh.silent:
                continue  # Istio leaves this pair alone, and nothing else decides it
            # What passes depends on the ports and Istio's decision, not on which rules decided it.
            key = (id(ing_side[0]), id(egr_side[0]), id(mesh))
            texts = combined.get(key)
            if texts is None:
                texts = combined[key] = _combine(ing_side[0], egr_side[0], mesh)
            allow_texts, deny_texts, istio_lines = texts
            # What decided: the first rule that allowed (or denied) some of it; else what restricts the pair.
            if allow_texts:
                why = _first(ing_side[1], egr_side[1], mesh.allow_why, closed_in[j], closed_out[i], admin_in[j],
                             admin_out[i], mesh.restricted)
                for suffix in allow_texts:
                    pair(("allow", suffix, 20, *why), i, j)
            if deny_texts:
                why = _first(ing_side[2], egr_side[2], closed_in[j], closed_out[i], admin_in[j], admin_out[i],
                             mesh.restricted)
                for suffix in deny_texts:
                    pair(("deny", suffix, 30, *why), i, j)
            for line in istio_lines:  # Istio's DENY rules at L4, and its HTTP rules, each named where it decides
                pair(line, i, j)
            if proxied_at[j]:
                # Cilium's proxy lets through the requests its HTTP rules match, where the rules' ports
                # would pass if they were L4 allows (every tier and the source's egress considered).
                web = (side_row(b, "ingress", with_http=True)[i][0] & egr_side[0]).tcp
                for ranges, part, why in cilium.http_allows(mine(cilium_rules, b), b, a, _within, is_pod):
                    ports = _intersect(ranges, web)
                    if ports:
                        pair(("allow", f"{_tcp(ports)}{part}", 35, *why), i, j)
    # Lines of one action, ports, priority and origin are one line over every pair they hold: the
    # sources that share the same destinations are listed together (each priority has one action, so
    # joining lines changes no decision). A side that lists every end is `any`: the ends hold every
    # address of each IP version a pod has (the outside blocks are the rest), and no flow joins two
    # versions, so `any` adds no flow; a policy that names every source (an Istio DENY without `from`)
    # then writes one line per namespace, not one that lists the whole cluster.
    everyone = set(name_at)

    def side_of(names) -> list[str]:
        return ["any"] if len(names) >= len(everyone) and set(names) == everyone else _joined(names)
    for (action, suffix, priority, span, label), by_dst in pending.items():
        by_srcs: dict[int, list[str]] = {}  # the destinations that share their sources
        for dst, srcs in by_dst.items():
            by_srcs.setdefault(srcs, []).append(name_at[dst])
        for srcs, dsts in by_srcs.items():
            for src in side_of(sorted(name_at[k] for k in bit_positions(srcs))):
                for dst in side_of(dsts):
                    emit(f"{action} {src} -> {dst}{suffix} priority {priority}", span, label)
    for text, span, why in route_lines:
        emit(text, span, why)
    return Imported("\n".join(lines) + "\n", origins, len(pods), policies)


def _by_rules(emit, reps: list[Pod], blocks: list[Outside], name_of: dict, classes: dict, ingress: dict,
              egress: dict, isolated_in: set, isolated_out: set, selves: bool = True) -> dict[int, list[frozenset]]:
    """The allows of NetworkPolicies alone, per policy rule over sets of identities (never per pair).

    A flow from A to B passes when B's ingress and A's egress both admit it, a side that is not
    isolated admitting everything. The union over B's ingress rules and A's egress rules of what both
    admit is, rule by rule:

        B isolated, A not:  per ingress rule r of B:  allow (r's peers, less the isolated) -> r's subjects
        A isolated, B not:  per egress rule e of A:   allow e's subjects -> (e's peers, less the isolated)
        both isolated:      per ingress rule r and egress rule e whose subjects r admits:
                            allow (e's subjects in r's peers) -> (r's subjects in e's peers), r's ports & e's

    with the isolations' denies below them. So the rules grow with the policy's rules and the identities
    they name, and the flows each line allows are exactly those of the pairs it names. Returns, per
    allow line, the sets of rules that write it (`Imported.depends`)."""
    ends: list = reps + blocks
    index = {id(e): k for k, e in enumerate(ends)}
    rep_of = {id(m): index[rep] for rep, (members, _) in classes.items() for m in members}
    names = [name_of[id(e)] if isinstance(e, Pod) else e.name for e in ends]
    families = [_families(e) for e in ends]
    every = frozenset(range(len(ends)))
    outside = range(len(reps), len(ends))
    closed_in = frozenset(k for k, e in enumerate(reps) if e.ident in isolated_in)
    closed_out = frozenset(k for k, e in enumerate(reps) if e.ident in isolated_out)
    rules: dict[str, dict[int, tuple[Rule, set]]] = {"ingress": {}, "egress": {}}
    for k, e in enumerate(reps):
        for direction, table in (("ingress", ingress), ("egress", egress)):
            for r in table[e.ident]:
                rules[direction].setdefault(id(r), (r, set()))[1].add(k)
    admitted: dict[int, frozenset] = {}

    def peers(r: Rule) -> frozenset:
        if r.peers is None:
            return every
        if id(r.peers) not in admitted:  # rules that share one peer list (a YAML alias) read it once
            got: set = set()
            for spec in r.peers:
                if spec[0] == "pods":
                    got.update(rep_of[id(p)] for p in spec[1] if id(p) in rep_of)
                else:
                    got.update(k for k in outside if _holds(spec, ends[k]))
            admitted[id(r.peers)] = frozenset(got)
        return admitted[id(r.peers)]

    def by_ports(r: Rule, dsts) -> dict:
        """The destinations by what the rule's ports resolve to on them (named ports differ by pod)."""
        if r.ports is None:
            return {ALL: dsts}
        if all(hi is not None for _, _, hi in r.ports):
            return {Ports.of(resolve_ports(r.ports, None)): dsts}
        out: dict = {}
        for k in dsts:
            out.setdefault(Ports.of(resolve_ports(r.ports, ends[k] if isinstance(ends[k], Pod) else None)), set()).add(k)
        return out

    written: dict[tuple, list[int]] = {}  # (sources, destinations, ports) -> its lines
    depends: dict[int, list[frozenset]] = {}

    def allow(srcs, dsts, ports: Ports, r: Rule, *others: Rule) -> None:
        # No flow joins an IPv4-only end and an IPv6-only one: ends with no version the other side has go.
        versions = set().union(*(families[k] for k in dsts)) if dsts else set()
        srcs = {k for k in srcs if families[k] & versions}
        versions = set().union(*(families[k] for k in srcs)) if srcs else set()
        dsts = {k for k in dsts if families[k] & versions}
        if not (srcs and dsts and ports):
            return
        key = (frozenset(srcs), frozenset(dsts), ports)
        by = frozenset(x.key for x in (r, *others))
        if key in written:  # written already for other rules: this pair of rules writes it too
            for line in written[key]:
                depends[line].append(by)
            return
        written[key] = []
        texts, denies = ports.rules()
        assert not denies, "a NetworkPolicy rule admits every port or some TCP and UDP ports"
        # An endpoint written with `except` takes its own line (in a list, `except` would end it).
        for src in _lists(names, srcs):
            for dst in _lists(names, dsts):
                for suffix in texts:
                    line = emit(f"allow {src} -> {dst}{suffix} priority 20", r.span, r.policy)
                    written[key].append(line)
                    depends[line] = [by]

    for k in sorted(closed_in | closed_out, key=names.__getitem__) if selves else ():  # a pod reaches itself
        e = ends[k]
        if classes[id(e)][1] is not None:
            for m in classes[id(e)][0]:
                for n in m.networks:
                    emit(f"allow {n.network_address} -> {n.network_address} priority 90", m.span,
                         "a pod cannot block access to itself")
        elif e.single:  # the pod's identity to itself is the rules' (pods created later with its labels)
            for n in e.networks:
                emit(f"allow {n.network_address} -> {n.network_address} priority 90", e.span,
                     "a pod cannot block access to itself")
    for r, subjects in rules["ingress"].values():
        for ports, dsts in by_ports(r, subjects).items():
            allow(peers(r) - closed_out, dsts, ports, r)
    for r, subjects in rules["egress"].values():
        for ports, dsts in by_ports(r, peers(r) - closed_in).items():
            allow(subjects, dsts, ports, r)
    for r, subjects in rules["ingress"].values():
        sources = peers(r) & closed_out
        seen: dict[int, tuple[Rule, set]] = {}
        for k in sorted(sources):
            for e in egress[ends[k].ident]:
                seen.setdefault(id(e), rules["egress"][id(e)])
        for e, e_subjects in seen.values():
            srcs, dsts = e_subjects & sources, subjects & peers(e)
            if not (srcs and dsts):
                continue
            for ports, d in by_ports(r, dsts).items():
                for e_ports, both in by_ports(e, d).items():
                    allow(srcs, both, ports & e_ports, r, e)
    return depends


def _lists(names: list[str], members) -> list[str]:
    """Endpoint lists for a rule's side: the plain names in one, each name with `except` alone."""
    plain = sorted(names[k] for k in members if " except " not in names[k])
    return ([", ".join(plain)] if plain else []) + sorted(names[k] for k in members if " except " in names[k])


def _combine(ing: Ports, egr: Ports, mesh) -> tuple[list, list, list]:
    """What passes a pair, from what its destination's ingress, its source's egress and the destination's
    sidecar (Istio) decide: (suffixes to allow at priority 20, suffixes to deny at 30, Istio's own lines
    as `pending` keys).

    Istio judges TCP at the destination's sidecar, after the network plugin: both must allow. What
    Istio denies is said by its own lines above the others (priority 31): below them those ports may
    read as allowed, so that no line is written twice (a dead rule)."""
    reachable, allow_texts, deny_texts = _passing(ing, egr, mesh.denied, mesh.allowed)
    lines = [("deny", _tcp(ranges), 31, *why) for ranges, why in mesh.denies]
    lines += [("allow", f"{_tcp(ports)}{part}", 35, *why) for ranges, part, why in mesh.http_allows
              for ports in (_intersect(ranges, reachable),) if ports]
    lines += [("deny", f"{_tcp(ranges)}{part}", 40, *why) for ranges, part, why in mesh.http_denies]
    return allow_texts, deny_texts, lines


@functools.lru_cache(maxsize=1 << 16)
def _passing(ing: Ports, egr: Ports, denied: tuple, allowed: tuple | None) -> tuple:
    """(the TCP ports that reach the sidecar, suffixes to allow, suffixes to deny) for `_combine`: the
    same few port sets recur across namespaces."""
    passing = ing & egr
    reachable = (passing - Ports(tcp=denied)).tcp
    if allowed is not None:
        passing = passing & (Ports(tcp=allowed) | (ALL - Ports(tcp=EVERY)))
    return (reachable, *(passing | Ports(tcp=denied)).rules())


def _first(*whys) -> tuple:
    """The first (span, label) of the lists, else none."""
    return next((w[0] for w in whys if w), (None, ""))


def _joined(names) -> list[str]:
    """Endpoint lists for a rule's side from names: the plain ones in one, each with `except` alone."""
    return _lists(list(names), range(len(names)))


def covering_prefixes(members: list[Pod]) -> list:
    """A routed service's own prefixes: per IP version, the smallest prefix holding all its pods that is
    no version's own (two declarations of one prefix would be ambiguous). The addresses it holds beyond
    the pods stay outside the cluster: the outside blocks' prefixes there are longer, so they own them."""
    out = []
    versions = {n for p in members if "." in p.ident for n in p.networks}
    for version in (4, 6):
        nets = [n for p in members for n in p.networks if n.version == version]
        if not nets:
            continue
        net = nets[0]
        while not all(n.subnet_of(net) for n in nets) or net in versions:
            net = net.supernet()
        out.append(net)
    return out


@functools.lru_cache(maxsize=4096)
def _tcp(ranges: tuple) -> str:
    """The rule suffix that says these TCP ports (` tcp 80, 8080-8090`)."""
    return Ports(tcp=ranges).rules()[0][0]


def _families(end) -> set:
    """The IP versions of a pod's or an outside block's addresses."""
    return {n.version for n in (end.networks if isinstance(end, Pod) else end.prefixes)}


def _http_ports(pod: Pod) -> tuple:
    """The pod's ports a Service declares HTTP (or gRPC), as ranges."""
    return tuple(merge_ranges([(n, n) for n, kind in pod.protocols.items() if kind in ("http", "grpc")]))
