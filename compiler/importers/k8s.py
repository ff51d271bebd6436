"""Kubernetes NetworkPolicy (networking.k8s.io/v1) as an anyplane policy.

Reads Namespaces, Pods and NetworkPolicies from manifests (several documents
per file); every Pod needs an address (`status.podIP`/`podIPs`). The
translation is exact for what it accepts, and refuses the rest at its YAML
position:

    a pod any policy selects for Ingress is isolated for ingress: it accepts what the union of
    those policies' ingress rules allows; the same for Egress; a flow from A to B is allowed when
    B's ingress and A's egress both allow it (a side that is not isolated allows everything)

In anyplane terms, with `default allow` (what Kubernetes does without policies):

    deny any -> B priority 10                 for each pod B isolated for ingress
    deny A -> any priority 10                 for each pod A isolated for egress
    allow A -> B PORTS priority 20            for each pair of pods with one side isolated: the
                                              ports both sides allow
    allow CIDR except pods -> B PORTS ...     ipBlock peers and "from anywhere", for addresses
    allow A -> CIDR except pods PORTS ...     that no pod owns (pods are the pairs above)

Peers: podSelector (in the policy's namespace), namespaceSelector, both
(pods matching in matching namespaces), ipBlock with `except` (addresses outside
the cluster: a pod is a peer only through selectors, as network-config-analyzer
reads it). A pod cannot block access to itself. Ports: TCP (default), UDP, a port or a range
(`endPort`), or a named port, resolved against the destination pod's container
ports. Replies of allowed connections are allowed, as Kubernetes says (anyplane
is stateful by default).
"""

from __future__ import annotations

import re

from anyplane.ir.source import DiagnosticError, Span, error

from . import admin, cilium, istio, routing
from .cluster import MANIFEST_SUFFIXES, Pod, Reader, selects, span_of_object, is_manifest
from .compose import (BOUNDS, Imported, covering_prefixes, identity_classes, outside_blocks, selectors, workload_classes,
                      write_policy)
from .networkpolicy import Rule, ipblock_networks, read_policy, rule_ports

__all__ = ["MANIFEST_SUFFIXES", "Imported", "Pod", "convert", "is_manifest", "read_back"]


def convert(sources: list[tuple[str, str]], drop: frozenset = frozenset(), pods: list[Pod] = (),
            partition: tuple = (frozenset(), ()), parsed: dict | None = None, workloads: bool = False) -> Imported:
    """Manifests -> an anyplane policy (DiagnosticError for what cannot be imported). `drop` leaves
    out policies (`(n,)`, in input order from 0) or rules (`(n, "ingress"|"egress", number)`), to ask
    what each one adds; the outside addresses are cut as for the whole input all the same.
    `partition` (label keys, networks) adds to what tells pods apart: two versions compared are
    imported with the union of both's, so that they name the same identities (`Imported.partition`).
    `parsed` keeps the YAML read, by (path, text), for the next call on the same manifests (the
    objects are read again: nothing read from them is changed). `workloads`: the pods' classes are
    written as workloads selected by their labels (`compose.workload_classes`), the pods being their
    binding (`Imported.binding`)."""
    reader = Reader()
    BOUNDS.clear()  # networks of this input only
    for path, text in sources:
        reader.read(path, text, parsed)
    reader.pods += reader.workload_pods() + list(pods)
    for p in pods:
        reader.namespaces.setdefault(p.namespace, {"kubernetes.io/metadata.name": p.namespace})
    pods = reader.pods
    for p in pods:
        reader.by_namespace.setdefault(p.namespace, []).append(p)
    routed, route_lines = [], []
    if reader.routing and not reader.errors:
        routed, route_lines = routing.read(reader, pods, reader.services, reader.routing, span_of_object, selects)
    routed += routing.identity_services(pods, routed)
    seen: dict[str, Pod] = {}
    for p in pods:
        if p.ident in seen:
            reader.errors.append(error(p.span, "import", f"Pod {p.namespace}/{p.name} appears twice"))
        seen[p.ident] = p
    ingress: dict[str, list[Rule]] = {p.ident: [] for p in pods}
    egress: dict[str, list[Rule]] = {p.ident: [] for p in pods}
    isolated_in: dict[str, list[Span]] = {}
    isolated_out: dict[str, list[Span]] = {}
    structure = []
    for n, (path, obj) in enumerate(reader.policies):
        structure.append(read_policy(reader, pods, path, obj, ingress, egress, isolated_in, isolated_out, n, drop))
    for held in structure:  # whether some pod it isolates, no other NetworkPolicy isolates that way
        tables = {"ingress": isolated_in, "egress": isolated_out}
        held["alone"] = any(len(tables[d].get(ident, ())) <= 1 for d, idents in held.pop("isolates").items()
                            for ident in idents)
    admin_rules, cilium_rules = [], []
    if not reader.errors:
        for objects, read in ((reader.admin, lambda: admin.read(reader, pods, reader.admin, span_of_object, selects, drop,
                                                                structure)),
                              (reader.cilium, lambda: cilium.read(reader, pods, reader.cilium, span_of_object, selects,
                                                                  rule_ports, structure))):
            got = read()
            if objects is reader.admin:
                admin_rules = got
            else:
                cilium_rules = got
    istio_rules = []
    if reader.peer_auth and not reader.errors:
        istio.peer_authentication(reader, pods, reader.peer_auth, span_of_object, selects)
    if (reader.istio or reader.routing) and not reader.errors:
        istio_rules = istio.read(reader, pods, reader.istio, span_of_object, selects)
        for p in pods:
            p.protocols = {}
        for ident, protocols in istio.port_protocols(reader, pods, reader.services, selects).items():
            seen[ident].protocols = protocols
    for p in pods:
        for n in cilium.http_ports(cilium_rules, p):
            if p.ident in istio.subjects(istio_rules) or p.strict:
                rule = next(r for r in cilium_rules if r.http is not None and p.ident in r.subject)
                reader.errors.append(error(rule.span, "import", f"{rule.label}: pod {p.namespace}/{p.name} has "
                                                                "both Cilium HTTP rules and Istio AuthorizationPolicies: "
                                                                "not imported together"))
                break
            p.protocols[n] = "http"
    if reader.errors:
        # One mistake read for many pods (a selector, say) is said once.
        raise DiagnosticError(list(dict.fromkeys(reader.errors + reader.notes)))
    blocks = [net for _, obj in reader.policies for net in ipblock_networks(obj)] + admin.networks(admin_rules) + \
        [n for r in cilium_rules for item in r.peers or [] if item[0] == "cidr" for n in [item[1], *item[2]]] + \
        istio.networks(istio_rules)
    for r in routed:  # a routed service's prefix holds addresses beyond its pods: outside blocks of their own
        blocks += covering_prefixes(r.pods) + [n for p in r.pods for n in p.networks]
    blocks += [n for _, nets in reader.entries for n in nets]  # named in maps and answers: cut there too
    nodes = cilium.node_blocks(reader, cilium_rules, pods)  # the nodes and the API server, named
    named = list(reader.entries) + nodes
    blocks += [n for _, nets in nodes for n in nets]
    by_node = cilium.reads_nodes(cilium_rules)
    keys, networks = reader.keys_read | set(partition[0]), blocks + list(partition[1])
    chosen = None
    if workloads:
        # NetworkPolicy's ipBlocks are outside addresses (pods are peers through selectors alone); the
        # other kinds' blocks also match pods' addresses, which a selector cannot say.
        by_address = admin.networks(admin_rules) + istio.networks(istio_rules) + \
            [n for r in cilium_rules for item in r.peers or [] if item[0] == "cidr" for n in [item[1], *item[2]]]
        # The named ports some rule reads (NetworkPolicy, the admin tiers, Cilium): only those must resolve
        # alike on one workload's pods.
        named_ports = {lo for table in (ingress, egress) for rules in table.values() for r in rules
                       for _, lo, hi in r.ports or () if hi is None}
        named_ports |= {lo for r in [*admin_rules, *cilium_rules] for _, lo, hi in r.ports or () if hi is None}
        classes, problems = workload_classes(pods, keys, by_address, routed, named_ports, by_node)
        if problems:
            raise DiagnosticError(problems)
        chosen = selectors(classes, pods, keys)
    else:
        classes = identity_classes(pods, keys, networks, routed, by_node)
    out = write_policy(pods, ingress, egress, isolated_in, isolated_out,
                len(reader.policies) + len(reader.admin) + len(reader.cilium) + len(reader.istio),
                outside_blocks(blocks, pods, named), admin_rules, cilium_rules, istio_rules, routed, route_lines, classes,
                chosen)
    if workloads:
        out.binding = pods
    out.structure = structure
    out.notes = reader.notes
    for members, name in classes.values():
        if name is not None:
            for m in members:
                for n in m.networks:
                    out.members[(n.version, int(n.network_address))] = (f"{m.namespace}/{m.name}", len(members))
    out.selectors = selectors(classes, pods, keys)
    out.partition = (frozenset(keys), tuple(sorted(set(networks), key=lambda n: (n.version, n))))
    return out


def read_back(sources: list[tuple[str, str]], identities: dict) -> Imported:
    """Resources written by an exporter (`k8s`, `cilium`, `istio`), read back with the pods its contract
    describes: one pod per identity (`identities.yaml`: namespace, labels, addresses), named as in the
    policy."""
    pods = [Pod(spec["namespace"], _pod_name(name), dict(spec["labels"]), spec["addresses"][0].split("/")[0], [],
                Span("identities.yaml", 1, 1, 1, 2), name_in_policy=name, prefixes=tuple(spec["addresses"]))
            for name, spec in sorted(identities.items())]
    return convert(sources, pods=pods)


def _pod_name(identity: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", identity.lower()).strip("-.") or "pod"
