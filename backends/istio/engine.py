"""Istio as an engine: a cluster whose network plugin enforces NetworkPolicies and whose sidecars
(run by istiod) enforce AuthorizationPolicies.

    emit(program) -> networkpolicies.yaml        the policy's L4 projection, as `-t k8s` writes it
                     authorizationpolicies.yaml  per workload with HTTP rules: what the requests need
                     services.yaml               which ports are HTTP (Istio reads requests only there),
                                                 and a Service per routed service
                     virtualservices.yaml        routes: weighted versions, retries, timeouts
                     destinationrules.yaml       versions as subsets, circuit breaking
                     adminnetworkpolicies.yaml   where the L4 projection needs the admin tier (as -t k8s)
                     identities.yaml             which pods each identity stands for (as -t k8s)
                     report.txt

A connection passes when the NetworkPolicies and the destination's sidecar both let it. The
NetworkPolicies say the L4 projection exactly (backends/kube/export.py). On a workload with HTTP
rules, the AuthorizationPolicies add the requests' conditions:

    DENY   one rule per HTTP deny: its sources (ipBlocks), its ports among the workload's HTTP
           ports, its methods, paths, host and header conditions
    ALLOW  (under `default deny` only) one rule per allow that reaches an HTTP port, with its HTTP
           conditions if it has any; and one rule for every port that is not HTTP, which the
           NetworkPolicies decide alone

Where NetworkPolicy cannot say the L4 projection (some TCP ports of an address denied while every
other protocol passes) or an L4 deny sits under an HTTP allow, every TCP decision toward the
workloads is written as AuthorizationPolicies instead, cell by cell (`_tcp_rules`), and the
NetworkPolicies let TCP to the workloads through (`open_tcp_to_workloads`).

Istio applies every DENY before any ALLOW, and an ALLOW policy closes what it does not match. So
the export is exact when, among the rules that reach a workload's HTTP port, no allow takes
precedence over a deny it overlaps where either of them has HTTP conditions (an HTTP deny under an
allow, or an L4 deny under an HTTP allow): such a deny is an error at its rule. So is a request
rate limit, which AuthorizationPolicy cannot say. Routes and limits become VirtualServices and
DestinationRules (`routing`) over a Service per routed service, whose pods carry its label. The
driver reads the output back through the importer (NetworkPolicies, AuthorizationPolicies, Services,
VirtualServices and DestinationRules together) and proves it.
"""

from __future__ import annotations

from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.addr import Prefix
from anyplane.ir.flow import Flow
from anyplane.ir.interp import match_holds, owner
from anyplane.ir.match import (Absent, Match, Present, StrExact, StrPrefix, exact_values, int_ranges, merge_ranges,
                               to_itself)
from anyplane.ir.match import options as alternatives
from anyplane.ir.nodes import Program, ordered
from anyplane.ir.project import project_l4
from anyplane.ir import yaml11
from anyplane.ir.source import DiagnosticError, error
from anyplane.ir.space import merge

from .. import base
from ..kube.export import CAPABILITY as K8S_CAPABILITY
from ..kube.export import KubernetesExporter, regions_of, split
from ..kube.export import export as k8s_export
from ..kube.selectors import k8s_name

CAPABILITY = base.Capability(**dict(vars(K8S_CAPABILITY), engine="istio",
                                    fields=K8S_CAPABILITY.fields + ("http", "http.method", "http.path", "http.host",
                                                                    "http.header.*")))
TCP = 6
L3 = (F.SRC_IP, F.SRC_ID, F.DST_IP, F.DST_ID)


def _ports(entry) -> list[tuple[int, int]]:
    fm = entry.match.get(F.DPORT)
    return merge_ranges(int_ranges(fm)) if fm is not None else [(0, 65535)]


def _tcp(entry) -> bool:
    fm = entry.match.get(F.PROTO)
    return fm is None or match_holds(Match.of({F.PROTO: fm}), Flow(4, 0, 0, TCP, 1, 1), None, None)


def _cidrs(held) -> list[str]:
    """[(region, family)] as the fewest CIDRs."""
    by_family: dict[int, list] = {}
    for r, family in held:
        by_family.setdefault(family, []).extend(r.ranges[family])
    return [str(p) for family in (4, 6) for lo, hi in merge(by_family.get(family, ()))
            for p in Prefix.range_of(family, lo, hi)]


class _Reach:
    """Which regions an entry's source side holds, and whether its destination side holds a workload."""

    def __init__(self, program: Program, regions):
        self.program, self.regions = program, regions

    def _probe(self, family, src, dst):
        return Flow(family, src, dst, TCP, 49152, 1)

    def sources(self, entry, workload) -> list:
        """[(region, family)] the entry's source side holds toward the workload (a DiagnosticError when it
        holds part of a workload's addresses of one family and not the rest)."""
        out = []
        src_part, dst_part = entry.match.only(F.SRC_IP, F.SRC_ID), entry.match.only(F.DST_IP, F.DST_ID)
        for family in workload.ranges:
            # The policy selects every pod of the workload: the entry holds for all its addresses, or none.
            held = [match_holds(dst_part, self._probe(family, 0, lo), None, owner(self.program, family, lo))
                    for lo, _ in workload.ranges[family]]
            if any(held) and not all(held):
                raise DiagnosticError([error(entry.origin, "istio", (
                    f"part of {workload.workload}'s addresses is decided apart from the rest; an AuthorizationPolicy "
                    "selects a workload's pods alike"))])
            if not held or not held[0]:
                continue
            dst = workload.probe(family)
            for r in self.regions:
                held = [match_holds(src_part, self._probe(family, lo, dst), owner(self.program, family, lo), None)
                        for lo, _ in r.ranges.get(family, ())]
                if any(held) and not all(held):
                    raise DiagnosticError([error(entry.origin, "istio", (
                        f"part of {r.workload}'s addresses is decided apart from the rest; an AuthorizationPolicy "
                        "source names a workload's pods alike"))])
                if any(held):
                    out.append((r, family))
        families = {}
        for r, family in out:
            families.setdefault(r, set()).add(family)
        for r, got in families.items():
            shared = set(r.ranges) & set(workload.ranges)
            if r.workload and got != shared:
                raise DiagnosticError([error(entry.origin, "istio", (
                    f"{r.workload}'s IPv4 and IPv6 addresses are decided apart here; an AuthorizationPolicy "
                    "source names a workload's pods alike"))])
        return out


def _operation(entry) -> tuple[dict, list]:
    """The entry's HTTP conditions as an Istio operation and `when` conditions."""
    op: dict = {}
    when = []
    for name, fm in entry.match.fields:
        if name == F.HTTP_METHOD:
            op["methods"] = sorted(exact_values(fm))
        elif name == F.HTTP_PATH:
            op["paths"] = sorted(o.value if isinstance(o, StrExact) else o.value + "*" for o in alternatives(fm))
        elif name == F.HTTP_HOST:
            # Istio compares the whole authority; the sidecar anyplane models drops a port and a final dot
            # first, so each host is written in the four forms a client may send it in.
            op["hosts"] = [form for o in alternatives(fm) for form in (o.value, f"{o.value}:*", f"{o.value}.",
                                                                       f"{o.value}.:*")]
        elif name.startswith(F.HEADER_PREFIX):
            key = f"request.headers[{name[len(F.HEADER_PREFIX):]}]"
            if isinstance(fm, Absent):
                when.append({"key": key, "notValues": ["*"]})
            elif isinstance(fm, Present):
                when.append({"key": key, "values": ["*"]})
            else:
                when.append({"key": key, "values": [o.value for o in alternatives(fm)]})
    if entry.layer == "L7" and not when and not ({"methods", "paths", "hosts"} & set(op)):
        op["methods"] = ["*"]  # any request, and only requests (an HTTP-only field keeps the rule off plain TCP)
    return op, when


def _exportable(entry) -> str | None:
    """Why AuthorizationPolicy cannot say an entry's HTTP conditions (None: it can)."""
    if not isinstance(entry.action, (Allow, Deny)):
        return "an Istio AuthorizationPolicy cannot limit rates (a sidecar rate limit is `-t envoy`'s)"
    for name, fm in entry.match.fields:
        for o in alternatives(fm):
            if name == F.HTTP_PATH and isinstance(o, StrPrefix) and not o.value.endswith("/"):
                return f"Istio matches a path prefix only as '/prefix/*', not {o.value!r}"
            if name == F.HTTP_PATH and isinstance(o, (StrExact, StrPrefix)) and "*" in o.value:
                return "Istio reads '*' in a path as a pattern"
            if name.startswith(F.HEADER_PREFIX) and isinstance(o, StrExact) and ("*" in o.value):
                return "Istio reads '*' in a header value as a pattern"
    return None


def _service_ports(ports) -> list[dict]:
    return [{"name": f"{proto}-{n}", "port": n, "targetPort": n, "protocol": "UDP" if proto == "udp" else "TCP"}
            for n, proto in sorted({(p.number, p.protocol) for p in ports})]


#: Istio names ports one by one (`ports`, `notPorts`): a rule's ports are written so while there are at
#: most this many.
MAX_LISTED_PORTS = 64


def _port_list(ranges: list[tuple[int, int]]) -> dict | None:
    """An operation's ports for TCP port ranges: {} (every port), {"ports": [...]}, {"notPorts": [...]}
    or None (too many either way)."""
    ranges = merge_ranges([(max(lo, 1), hi) for lo, hi in ranges if hi >= 1])
    if ranges == [(1, 65535)]:
        return {}
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count <= MAX_LISTED_PORTS:
        return {"ports": [str(n) for lo, hi in ranges for n in range(lo, hi + 1)]}
    missing, at = [], 1
    for lo, hi in ranges:
        missing += list(range(at, lo))
        at = hi + 1
    missing += list(range(at, 65536))
    return {"notPorts": [str(n) for n in missing]} if len(missing) <= MAX_LISTED_PORTS else None


TOO_MANY_PORTS = (f"an AuthorizationPolicy names TCP ports one by one (at most {MAX_LISTED_PORTS} here, or all but "
                  "that many): the ports this rule decides are too many")


def _rule(entry, ports: list, sources: set, every: set) -> dict | None:
    """One AuthorizationPolicy rule: `entry`'s HTTP conditions (None: none) on these TCP port ranges, from
    these (region, family) sources of the workload's peers (`every`); None when the ports cannot be listed."""
    listed = _port_list(ports)
    if listed is None:
        return None
    op, when = _operation(entry) if entry is not None else ({}, [])
    op = {**listed, **op}
    rule: dict = {}
    if sources != every:
        order = lambda x: (x[0].key, x[1])  # noqa: E731
        held, rest = _cidrs(sorted(sources, key=order)), _cidrs(sorted(every - sources, key=order))
        # The fewer blocks: those the sources hold, or those of the workload's other peers (no flow joins
        # the workload and an address of a version it does not have).
        rule["from"] = [{"source": {"ipBlocks": held} if len(held) <= len(rest) else {"notIpBlocks": rest}}]
    if op:
        rule["to"] = [{"operation": op}]
    if when:
        rule["when"] = when
    return rule


def open_tcp_to_workloads(program: Program) -> Program:
    """The program with every TCP connection to a workload let through (one entry above all): what the
    NetworkPolicies say when the AuthorizationPolicies decide TCP to the workloads."""
    import dataclasses

    from anyplane.ir.match import Exact, InSet
    from anyplane.ir.nodes import TOP_PRIORITY, Entry, Table

    workloads = tuple(sorted(r.workload for r in regions_of(program)[0] if r.workload))
    if not workloads:
        return program
    top = Entry(TOP_PRIORITY, Match.of({F.PROTO: Exact(TCP), F.DST_ID: InSet(workloads)}), Allow(),
                program.default_origin, program.rules[0].id if program.rules else "default")
    return dataclasses.replace(program, acl=Table(program.acl.name, (top, *program.acl.entries)))


def authorization(program: Program, identities: dict, routed=frozenset(), tcp: bool = False) -> tuple[list[dict], list[dict]]:
    """(AuthorizationPolicies, Services) for the workloads whose requests have rules (a Service per
    workload with declared ports; a routed service's Service is written with its routes). `tcp`: every
    TCP decision toward a workload is written (the NetworkPolicies let TCP to workloads through:
    `open_tcp_to_workloads`), not only those of its HTTP ports."""
    regions, _ = regions_of(program)
    reach = _Reach(program, regions)
    entries = [e for e in ordered(program.acl) if _tcp(e)]
    errors = {}
    policies, services = [], []
    for w in sorted((r for r in regions if r.workload), key=lambda r: r.key):
        ident = program.identity(w.workload)
        ns, labels = identities[w.workload]["namespace"], identities[w.workload]["labels"]
        declared = sorted({(p.number, p.protocol) for p in ident.ports})
        if declared and ident.service not in routed:
            services.append({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": f"anyplane-{k8s_name(w.workload)}", "namespace": ns,
                                          "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                             "spec": {"selector": dict(labels), "ports": _service_ports(ident.ports)}})
        http = sorted(set(ident.http_ports))
        # Entries that reach one of the workload's HTTP ports (`tcp`: any TCP port of it; ports as ranges),
        # with the sources they hold there.
        hits = []
        for e in entries:
            if tcp and to_itself(e.match) is not None:
                continue  # a pod to itself: Kubernetes lets it through, and the read-back says so
            if tcp:
                ports = [(lo, hi) for lo, hi in _ports(e)] if e.layer != "L7" else \
                    [(p, p) for p in http if any(lo <= p <= hi for lo, hi in _ports(e))]
            else:
                ports = [(p, p) for p in http if any(lo <= p <= hi for lo, hi in _ports(e))]
            if ports:
                src = reach.sources(e, w)
                if src:
                    hits.append((e, ports, src))
        if not tcp and not any(e.layer == "L7" for e, _, _ in hits):
            continue
        for i, (a, a_ports, a_src) in enumerate(hits if not tcp else ()):
            for d, d_ports, d_src in hits[i + 1:]:
                if isinstance(a.action, Deny) or not isinstance(d.action, Deny) or "L7" not in (a.layer, d.layer):
                    continue
                meet = any(max(l1, l2) <= min(h1, h2) for l1, h1 in a_ports for l2, h2 in d_ports)
                if meet and any(r in d_src for r in a_src) and d.rule not in errors:
                    errors[d.rule] = error(d.origin, "istio", (
                        f"Istio applies every DENY policy before any ALLOW: this deny overlaps an allow that takes "
                        f"precedence over it ({a.origin}), which AuthorizationPolicies cannot say (give the deny a "
                        "higher priority, or narrow one of them)"))
        for e, _, _ in hits:
            why = _exportable(e) if e.layer == "L7" or tcp else None
            if why and e.rule not in errors:
                errors[e.rule] = error(e.origin, "istio", why)
        deny_rules, allow_rules = [], []
        every = {(r, f) for r in regions for f in w.ranges if r.probe(f) is not None}
        if tcp:
            deny_rules, allow_rules, closed = _tcp_rules(program, hits, every, errors)
            for action, rules in (("DENY", deny_rules), ("ALLOW", allow_rules)):
                if rules or (action == "ALLOW" and closed):
                    policies.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                     "metadata": {"name": f"anyplane-{k8s_name(w.workload)}-{action.lower()}",
                                                  "namespace": ns,
                                                  "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                                     "spec": {"selector": {"matchLabels": dict(labels)}, "action": action,
                                              "rules": rules}})
            continue
        for e, ports, src in hits:
            rule = _rule(e, ports, set(src), every)
            if rule is None:
                errors.setdefault(e.rule, error(e.origin, "istio", TOO_MANY_PORTS))
                continue
            if isinstance(e.action, Deny) and e.layer == "L7":
                deny_rules.append(rule)
            elif not isinstance(e.action, Deny) and program.default == "deny":
                allow_rules.append(rule)
        if program.default == "deny":
            allow_rules.append({"to": [{"operation": {"notPorts": [str(p) for p in http]}}]})
        for action, rules in (("DENY", deny_rules), ("ALLOW", allow_rules)):
            if rules or (action == "ALLOW" and program.default == "deny"):
                policies.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                 "metadata": {"name": f"anyplane-{k8s_name(w.workload)}-{action.lower()}",
                                              "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                                 "spec": {"selector": {"matchLabels": dict(labels)}, "action": action, "rules": rules}})
    if errors:
        raise DiagnosticError(list(errors.values()))
    return policies, services


def _tcp_rules(program: Program, hits: list, every: set, errors: dict) -> tuple[list, list, bool]:
    """Every TCP decision toward one workload as Istio rules: (DENY rules, ALLOW rules, whether an ALLOW
    policy must close what they do not match).

    The source regions and port intervals the entries tell apart cut the connections into cells. In a
    cell, the entries that hold it decide in order: requests conditions (L7) first, until an entry
    without them (or the default) decides the rest. Istio applies every DENY before any ALLOW, and an
    ALLOW policy closes what it does not match. So a cell the rest of which is allowed is an ALLOW of
    the cell, with a DENY for each L7 deny before it; one the rest of which is denied is an ALLOW for
    each L7 allow before it (and a DENY for each L7 deny). An L7 allow before an L7 deny in one cell
    would let Istio deny requests anyplane allows: an error at the deny."""
    cuts = {1, 65536}
    for _, ports, _ in hits:
        for lo, hi in ports:
            cuts |= {max(lo, 1), hi + 1}
    bounds = sorted(c for c in cuts if 1 <= c <= 65536)
    intervals = list(zip(bounds, [b - 1 for b in bounds[1:]]))
    full: dict[tuple, set] = {}  # interval -> sources whose cell is allowed outright
    conditional: dict[tuple, dict] = {}  # (entry index, verdict) -> {interval: sources}
    closed = program.default == "deny"
    for key in every:
        for lo, hi in intervals:
            conds, final = [], program.default
            for k, (e, ports, src) in enumerate(hits):
                if key not in src or not any(plo <= lo and hi <= phi for plo, phi in ports):
                    continue
                if e.layer == "L7":
                    conds.append((k, "deny" if isinstance(e.action, Deny) else "allow"))
                    continue
                final = "deny" if isinstance(e.action, Deny) else "allow"
                break
            seen_allow = None
            for k, verdict in conds:
                if verdict == "allow":
                    seen_allow = seen_allow if seen_allow is not None else k
                elif seen_allow is not None:
                    e = hits[k][0]
                    errors.setdefault(e.rule, error(e.origin, "istio", (
                        f"Istio applies every DENY policy before any ALLOW: this deny's requests may match an allow "
                        f"that takes precedence over it ({hits[seen_allow][0].origin}), which AuthorizationPolicies "
                        "cannot say (give the deny a higher priority, or narrow one of them)")))
            for k, verdict in conds:
                if verdict == "deny" or final == "deny":
                    conditional.setdefault((k, verdict), {}).setdefault((lo, hi), set()).add(key)
            if final == "allow":
                full.setdefault((lo, hi), set()).add(key)
            else:
                closed = True

    deny_rules, allow_rules = [], []
    if closed:  # the cells allowed outright, grouped by their sources
        by_sources: dict[frozenset, list] = {}
        for interval, sources in full.items():
            by_sources.setdefault(frozenset(sources), []).append(interval)
        for sources, ports in sorted(by_sources.items(), key=lambda kv: sorted(kv[1])):
            rule = _rule(None, ports, set(sources), every)
            if rule is None:
                errors.setdefault("<ports>", error(program.default_origin, "istio", TOO_MANY_PORTS))
                continue
            allow_rules.append(rule)
    for (k, verdict), cells in sorted(conditional.items()):
        e = hits[k][0]
        by_sources = {}
        for interval, sources in cells.items():
            by_sources.setdefault(frozenset(sources), []).append(interval)
        for sources, ports in sorted(by_sources.items(), key=lambda kv: sorted(kv[1])):
            rule = _rule(e, ports, set(sources), every)
            if rule is None:
                errors.setdefault(e.rule, error(e.origin, "istio", TOO_MANY_PORTS))
                continue
            (deny_rules if verdict == "deny" else allow_rules).append(rule)
    return deny_rules, allow_rules, closed


SERVICE_LABEL = "anyplane.io/service"


def _duration(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _route_match(entry) -> list[dict]:
    """A route entry's match as Istio HTTPMatchRequests (one per method)."""
    m: dict = {}
    for name, fm in entry.match.fields:
        if name == F.HTTP_PATH:
            m["uri"] = {"exact": fm.value} if isinstance(fm, StrExact) else {"prefix": fm.value}
        elif name == F.HTTP_HOST:
            m["authority"] = {"exact": fm.value}
        elif name.startswith(F.HEADER_PREFIX):
            header = name[len(F.HEADER_PREFIX):]
            if isinstance(fm, Absent):
                m.setdefault("withoutHeaders", {})[header] = {"regex": ".*"}
            else:
                m.setdefault("headers", {})[header] = {"regex": ".*"} if isinstance(fm, Present) else {"exact": fm.value}
    fm = entry.match.get(F.HTTP_METHOD)
    methods = sorted(exact_values(fm)) if fm else []
    out = [dict(m, method={"exact": method}) for method in methods] or [m]
    return [x for x in out if x] or []


def routing(program: Program, identities: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(VirtualServices, DestinationRules, Services) for the services with routes or limits."""
    services = sorted({e.action.service for e in program.routes.entries} | {lim.service for lim in program.limits})
    vss, drs, svcs = [], [], []
    for name in services:
        members = [i for i in program.identities if i.service == name and i.name in identities]
        if not members:
            continue
        ns = identities[members[0].name]["namespace"]
        host = f"anyplane-{k8s_name(name)}"
        svcs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": host, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                     "spec": {"selector": {SERVICE_LABEL: name},
                              "ports": _service_ports([p for i in members for p in i.ports])}})
        meta = {"name": host, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "anyplane"}}
        dr: dict = {"host": host}
        versions = [i for i in members if i.version is not None]
        if versions:
            dr["subsets"] = [{"name": i.version, "labels": dict(identities[i.name]["labels"])} for i in versions]
        limits = next((lim for lim in program.limits if lim.service == name), None)
        if limits is not None:
            b, policy = limits.breaker, {}
            pool = {}
            if b.max_connections is not None:
                pool["tcp"] = {"maxConnections": b.max_connections}
            http = {k: v for k, v in (("http1MaxPendingRequests", b.max_pending), ("http2MaxRequests", b.max_requests),
                                      ("maxRetries", b.max_retries)) if v is not None}
            if http:
                pool["http"] = http
            if pool:
                policy["connectionPool"] = pool
            if b.outlier is not None:
                key = "consecutive5xxErrors" if b.outlier.on == "5xx" else "consecutiveGatewayErrors"
                policy["outlierDetection"] = {key: b.outlier.consecutive,
                                              "baseEjectionTime": _duration(b.outlier.ejection_ms)}
            dr["trafficPolicy"] = policy
        drs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": dict(meta),
                    "spec": dr})
        http_rules = []
        for e in sorted((e for e in program.routes.entries if e.action.service == name), key=lambda e: -e.priority):
            rule: dict = {}
            match = _route_match(e)
            if match:
                rule["match"] = match
            a = e.action
            rule["route"] = [{"destination": {"host": host, "subset": b.version}, "weight": b.weight}
                             for b in a.split] or [{"destination": {"host": host}}]
            if a.timeout_ms is not None:
                rule["timeout"] = _duration(a.timeout_ms)
            if a.retry is not None:
                retries: dict = {"attempts": a.retry.attempts}
                if a.retry.per_try_ms is not None:
                    retries["perTryTimeout"] = _duration(a.retry.per_try_ms)
                if a.retry.on:
                    retries["retryOn"] = ",".join(a.retry.on)
                rule["retries"] = retries
            http_rules.append(rule)
        if http_rules:
            vss.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": dict(meta),
                        "spec": {"hosts": [host], "http": http_rules}})
    return vss, drs, svcs


class IstioEngine(KubernetesExporter):
    """`-t istio`: NetworkPolicies, AuthorizationPolicies and Services, read back through the importer."""

    name = "istio"
    capability = CAPABILITY
    reads_back_with = "istio"
    #: The read-back carries routes and limits: the driver compares them with the policy's.
    carries_routes = True

    def emit(self, program: Program, options: base.Options) -> base.Output:
        base.refuse_mtls(program, "istio", "PeerAuthentication and principals are not written yet")
        kubernetes = getattr(options.deployment, "kubernetes", None)
        routed = {e.action.service for e in program.routes.entries} | {lim.service for lim in program.limits}
        mapped = sorted(set((kubernetes or {}).get("workloads", {})) & {i.name for i in program.identities
                                                                         if i.service in routed})
        if mapped:
            raise DiagnosticError([error(program.default_origin, "istio", (
                f"{mapped[0]} has labels of its own in the deployment file, and its service has routes or limits: "
                f"-t istio labels a routed service's pods {SERVICE_LABEL}: SERVICE itself"))])

        def written(l4: Program, tcp: bool):
            policies, identities = k8s_export(l4, kubernetes, expressions=False, sidecars=True)
            for name, spec in identities.items():
                service = program.identity(name).service
                if service in routed:
                    spec["labels"][SERVICE_LABEL] = service
            return (policies, identities, *authorization(program, identities, routed, tcp))
        try:
            policies, identities, authz, services = written(project_l4(program), False)
        except DiagnosticError as refused:
            # What NetworkPolicy and HTTP-only AuthorizationPolicies cannot say of TCP to a workload (some
            # TCP ports of an address denied while every other protocol passes, as an Istio-only policy
            # decides; an L4 deny under an HTTP allow), the sidecars can: every TCP decision toward the
            # workloads goes to the AuthorizationPolicies, and the NetworkPolicies let that TCP through.
            try:
                policies, identities, authz, services = written(open_tcp_to_workloads(project_l4(program)), True)
            except DiagnosticError:
                raise refused from None
        authz = peer_authentications(identities) + authz
        vss, drs, route_services = routing(program, identities)
        services += route_services

        def dump(objects):
            return yaml11.dump_all(objects, sort_keys=False)
        nps, anps = split(policies)
        rows = base.rule_rows(program, lambda r: (base.ENFORCED, "", 0))
        out = base.Output([base.Artifact("networkpolicies.yaml", dump(nps)),
                           base.Artifact("authorizationpolicies.yaml", dump(authz)),
                           base.Artifact("services.yaml", dump(services)),
                           base.Artifact("virtualservices.yaml", dump(vss)),
                           base.Artifact("destinationrules.yaml", dump(drs)),
                           *([base.Artifact("adminnetworkpolicies.yaml", dump(anps))] if anps else []),
                           base.Artifact("identities.yaml", yaml11.dump({"identities": identities}, sort_keys=True))],
                          rows)
        report = out.report_text(self.name)
        if authz:
            report += MESH_CONFIG
        out.artifacts.append(base.Artifact("report.txt", report))
        return out


def peer_authentications(identities: dict) -> list[dict]:
    """A STRICT PeerAuthentication for each identity whose sidecar refuses TCP from outside the cluster
    (backends/kube/export.export with `sidecars`), selecting its pods as its NetworkPolicy does."""
    out, seen = [], set()
    for name, spec in sorted(identities.items()):
        key = (spec["namespace"], tuple(sorted(spec["labels"].items())))
        if spec.get("mtls") != "STRICT" or key in seen:
            continue  # identities selected alike are decided alike: one policy says it for them all
        seen.add(key)
        body: dict = {"mtls": {"mode": "STRICT"}}
        if spec["labels"]:
            body = {"selector": {"matchLabels": dict(spec["labels"])}, **body}
        out.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": f"anyplane-{k8s_name(name)}", "namespace": spec["namespace"],
                                 "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                    "spec": body})
    return out


#: What the AuthorizationPolicies assume of the mesh: requests normalised as anyplane's sidecar does.
MESH_CONFIG = """
The AuthorizationPolicies match paths in the normal form anyplane's sidecar uses (runs of slashes
merged, escapes of unreserved characters decoded). Istio's default normalisation (BASE) does not
merge slashes, so `//admin/x` would pass a DENY of /admin/*: configure the mesh with
  meshConfig.pathNormalization.normalization: DECODE_AND_MERGE_SLASHES
"""

ENGINE = IstioEngine()
