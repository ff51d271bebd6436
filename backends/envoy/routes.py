"""Outbound traffic management: routes, weighted version clusters, timeouts, retries, circuit breaking.

    route entries of a service (priorities already in Gateway API precedence)
      -> an Envoy route each, named after its policy line, highest priority first
      -> a final catch-all route to the whole service
    limits of a service -> circuit breakers and outlier detection on its clusters
"""

from __future__ import annotations

import bisect

import re

from anyplane.ir import fields as F
from anyplane.ir.actions import Deny
from anyplane.ir.match import Absent, InSet, Present, StrExact, StrPrefix, options
from anyplane.ir.memo import per_program
from anyplane.ir.nodes import Entry, Program
from anyplane.ir.owners import ownership

from ..deployment import Deployment
from .inbound import TYPE, meets
from .normal import HCM, NORMALISE, authority, route_path


def _ms(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}s"


def cluster_name(identity: str, port: int) -> str:
    """`out|reviews|9080`, `out|reviews.v1|9080`."""
    return f"out|{identity}|{port}"


def _route_match(e: Entry) -> dict:
    m = e.match
    match: dict = {"prefix": "/"}
    path = m.get(F.HTTP_PATH)
    if isinstance(path, (StrExact, StrPrefix)):
        match = route_path(path.value, isinstance(path, StrExact))
    headers = []
    method = m.get(F.HTTP_METHOD)
    if method is not None:
        values = method.values if isinstance(method, InSet) else (method.value,)
        headers.append({"name": ":method", "string_match": {"exact": values[0]}} if len(values) == 1 else
                       {"name": ":method", "string_match": {"safe_regex": {
                           "regex": "^(" + "|".join(re.escape(v) for v in values) + ")$"}}})
    host = m.get(F.HTTP_HOST)
    if isinstance(host, StrExact):
        headers.append({"name": ":authority", "string_match": authority(host.value, port_suffix=True)})
    for name, fm in m.fields:
        if not name.startswith(F.HEADER_PREFIX):
            continue
        header = name[len(F.HEADER_PREFIX):]
        if isinstance(fm, StrExact):
            headers.append({"name": header, "string_match": {"exact": fm.value}})
        elif isinstance(fm, Present):
            headers.append({"name": header, "present_match": True})
        elif isinstance(fm, Absent):
            headers.append({"name": header, "present_match": True, "invert_match": True})
    if headers:
        match["headers"] = headers
    return match


def _route_action(e: Entry, port: int) -> dict:
    a = e.action
    weighted = [b for b in a.split if b.weight > 0]
    if len(weighted) > 1:
        out: dict = {"weighted_clusters": {"clusters": [
            {"name": cluster_name(b.identity, port), "weight": b.weight} for b in weighted]}}
    elif weighted:
        out = {"cluster": cluster_name(weighted[0].identity, port)}
    else:
        out = {"cluster": cluster_name(a.service, port)}
    if a.timeout_ms is not None:
        out["timeout"] = _ms(a.timeout_ms)
    if a.retry is not None and a.retry.attempts > 0:
        retry = {"retry_on": ",".join(a.retry.on or ("5xx", "connect-failure")), "num_retries": a.retry.attempts}
        if a.retry.per_try_ms is not None:
            retry["per_try_timeout"] = _ms(a.retry.per_try_ms)
        out["retry_policy"] = retry
    return out


def _services(program: Program):
    return [i for i in program.identities if i.version is None and i.kind == "service" and i.http_ports]


def _owned(program: Program) -> dict[str, tuple]:
    """Identity -> its endpoint prefixes."""
    return ownership(program).prefixes


def egress(program: Program, service: str) -> list:
    """Destination services this service's sidecar needs routes and clusters for: those some allow of the
    policy lets it reach (every one under `default allow`). Like an Istio Sidecar's egress hosts, from
    the policy: the other destinations are denied anyway, and a mesh of many services stays small."""
    dests = _services(program)
    if program.default == "allow":
        return dests
    reach = _reach(program).get(service, set())
    return [d for d in dests if d.name in reach]


@per_program
def _reach(program: Program) -> dict[str, set[str]]:
    """Service -> the services some allow lets it reach (computed once per program)."""
    owned = _owned(program)
    sides = {}  # service -> (its identities, their prefixes)
    for svc in {i.service for i in program.identities}:
        idents = set(program.service_identities(svc))
        sides[svc] = (idents, [p for i in idents for p in owned.get(i, ())])
    service_of = {i.name: i.service for i in program.identities}
    every = set(sides)
    # Every service prefix, by (family, length) and in address order: the services a CIDR meets are those
    # with a prefix around it (a supernet of it) or inside it, found without asking every service.
    by_length: dict[tuple[int, int], dict[int, set[str]]] = {}
    spans = []
    for svc, (_, prefixes) in sides.items():
        for q in prefixes:
            by_length.setdefault((q.family, q.length), {}).setdefault(q.value, set()).add(svc)
            spans.append((q.family, q.first, svc))
    spans.sort()

    def meeting(o) -> set[str]:
        out: set[str] = set()
        for (family, length), values in by_length.items():
            if family == o.family and length <= o.length:
                out |= values.get(o.supernet(length).value, set())
        k = bisect.bisect_left(spans, (o.family, o.first, ""))
        while k < len(spans) and spans[k][0] == o.family and spans[k][1] <= o.last:
            out.add(spans[k][2])
            k += 1
        return out

    def services(m, id_field, ip_field) -> set[str]:
        ids, ips = m.get(id_field), m.get(ip_field)
        if ids is None and ips is not None:
            return {svc for o in options(ips) for svc in meeting(o.prefix)}
        cand = every if ids is None else {service_of[v] for v in ids.values if v in service_of}
        if ips is None:
            return set(cand)
        return {s for s in cand if meets(m, id_field, ip_field, *sides[s])}

    reach: dict[str, set[str]] = {}
    for e in program.acl.entries:
        if isinstance(e.action, Deny):
            continue
        dsts = services(e.match, F.DST_ID, F.DST_IP)
        if dsts:
            for src in services(e.match, F.SRC_ID, F.SRC_IP):
                reach.setdefault(src, set()).update(dsts)
    return reach


def outbound_listener(program: Program, service: str, deployment: Deployment) -> dict | None:
    """The listener the application's requests to other services go through."""
    vhosts = []
    by_service: dict[str, list] = {}
    for e in program.routes.entries:
        by_service.setdefault(e.action.service, []).append(e)
    for dest in egress(program, service):
        routes = sorted(by_service.get(dest.name, ()), key=lambda e: -e.priority)
        for k, port in enumerate(dest.http_ports):
            domains = [f"{dest.name}:{port}"] + ([dest.name] if k == 0 else [])
            vhosts.append({"name": f"{dest.name}:{port}", "domains": domains, "routes": [
                {"name": e.origin.loc, "match": _route_match(e), "route": _route_action(e, port)} for e in routes
            ] + [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster_name(dest.name, port)}}]})
    if not vhosts:
        return None
    host, port = deployment.sidecar(service).outbound
    return {"name": f"out|{service}", "address": {"socket_address": {"address": host, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": "outbound", "codec_type": "AUTO", **NORMALISE,
                "route_config": {"name": f"out|{service}", "virtual_hosts": vhosts},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def _endpoints(owned: dict[str, list], identities: list[str], dns: str, port: int, deployment: Deployment):
    """(cluster type, lb endpoints) for a set of identities (`owned`: identity -> its endpoint prefixes)."""
    given = [ep for i in identities for ep in deployment.endpoints.get(i, ())]
    if not given:
        rows = [p for i in identities for p in owned.get(i, ())]
        if rows and all(p.length == p.width for p in rows):
            given = [(str(p).split("/")[0], None) for p in rows]
    if given:
        return "STATIC", [{"endpoint": {"address": {"socket_address": {"address": a, "port_value": p or port}}}}
                          for a, p in given]
    return "STRICT_DNS", [{"endpoint": {"address": {"socket_address": {"address": dns, "port_value": port}}}}]


def _breaker(program: Program, service: str) -> dict:
    lim = next((x.breaker for x in program.limits if x.service == service), None)
    if lim is None:
        return {}
    out: dict = {}
    thresholds = {k: v for k, v in (("max_connections", lim.max_connections),
                                    ("max_pending_requests", lim.max_pending),
                                    ("max_requests", lim.max_requests), ("max_retries", lim.max_retries))
                  if v is not None}
    if thresholds:
        out["circuit_breakers"] = {"thresholds": [dict(priority="DEFAULT", **thresholds)]}
    o = lim.outlier
    if o is not None:
        detection = {"base_ejection_time": _ms(o.ejection_ms), "max_ejection_percent": 100, "interval": "1s"}
        if o.on == "5xx":
            detection.update(consecutive_5xx=o.consecutive, enforcing_consecutive_5xx=100)
        else:
            detection.update(consecutive_gateway_failure=o.consecutive, enforcing_consecutive_gateway_failure=100,
                             enforcing_consecutive_5xx=0)
        out["outlier_detection"] = detection
    return out


def outbound_clusters(program: Program, deployment: Deployment, service: str | None = None,
                      sds: str | None = None) -> list[dict]:
    """A cluster per destination service (of `service`'s egress, or all) and port, and per version, with its
    limits; toward a workload under mutual TLS, TLS with `service`'s certificate (`sds`: where secrets
    come from, backends/envoy/config.py)."""
    from .config import upstream_tls

    clusters = []
    owned = _owned(program)
    for dest in (egress(program, service) if service else _services(program)):
        idents = list(program.service_identities(dest.name))
        for port in dest.http_ports:
            members = [(dest.name, idents, dest.name)] + [
                (i, [i], f"{program.identity(i).version}.{dest.name}") for i in idents if i != dest.name]
            for ident, group, dns in members:
                kind, eps = _endpoints(owned, group, dns, port, deployment)
                name = cluster_name(ident, port)
                cluster = {"name": name, "type": kind, "connect_timeout": "1s",
                           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}}
                if dest.ports and any(p.number == port and p.protocol == "grpc" for p in dest.ports):
                    cluster["typed_extension_protocol_options"] = {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}}}
                cluster.update(_breaker(program, dest.name))
                peers = [program.identity(i).principal for i in group if program.identity(i).mtls]
                if program.mtls is not None and peers:
                    cluster["transport_socket"] = upstream_tls(program, service, peers, sds)
                clusters.append(cluster)
    return clusters
