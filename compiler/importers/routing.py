"""Istio VirtualService and DestinationRule (networking.istio.io) as anyplane routes and limits.

A Service that a VirtualService or DestinationRule names (`reviews`, `reviews.NS`,
`reviews.NS.svc.cluster.local`) becomes one anyplane service; each pod (or workload) it selects
becomes a version of it, so its rules still name each pod (`NS_reviews.reviews-v1-7d9`). Then:

- a DestinationRule's subsets are sets of those versions (by their labels); its traffic policy is
  the service's `limits`: `connectionPool.tcp.maxConnections`, `http.http1MaxPendingRequests`,
  `http.http2MaxRequests`, `http.maxRetries`, and `outlierDetection.consecutive5xxErrors` (or
  `consecutiveGatewayErrors`) with `baseEjectionTime`;
- each `http` rule of a VirtualService is one `route` per `match` entry: `uri` exact or prefix
  ending in `/`, `method` exact, `authority` exact, `headers` exact (a regex `.*` is "present"),
  `withoutHeaders` the same way for "absent"; its destinations (this Service's subsets, or the
  Service) with their weights; `timeout`; `retries` (attempts, perTryTimeout, retryOn). A subset
  of several pods shares its weight evenly between them.

Istio tries a VirtualService's rules in order; anyplane orders routes by how specific their
matches are (Gateway API). A rule that anyplane would prefer over an earlier rule it overlaps is
an error at the rule, as is everything else these files can say that anyplane cannot: TCP and TLS
routes, redirects, rewrites, faults, mirrors, header changes, gateways, destinations in other
Services, and regex matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anyplane.ir.actions import RETRY_CONDITIONS
from anyplane.ir.flow import HTTP_METHODS
from anyplane.ir.http import header_problem, host_problem, is_canonical

from .istio import _quote, printable

SUFFIX = ".svc.cluster.local"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
HTTP_KEYS = ("name", "match", "route", "timeout", "retries")
REFUSED_HTTP = ("redirect", "rewrite", "fault", "mirror", "mirrorPercentage", "mirrors", "headers", "corsPolicy",
                "delegate", "directResponse")


@dataclass
class Routed:
    """A Service some VirtualService or DestinationRule names: its anyplane name and its pods."""

    namespace: str
    k8s_name: str
    name: str
    pods: list
    span: object
    ports: tuple = ()  # the Service's port numbers


def _duration(p, obj, key: str) -> str | None:
    text = obj.get(key)
    if text is None:
        return None
    m = _DURATION.fullmatch(str(text))
    ms = round(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
    if not m or ms <= 0 or ms != float(m.group(1)) * _UNITS[m.group(2)]:
        p.fail(obj, f"{key}: {text!r} is not a whole number of milliseconds (e.g. 250ms, 2s)")
        return None
    return f"{ms}ms"


class _Parse:
    def __init__(self, reader, path: str, label: str):
        self.reader, self.path, self.label, self.ok = reader, path, label, True

    def fail(self, obj, message: str) -> None:
        self.reader.fail(self.path, obj if isinstance(obj, dict) else {}, f"{self.label}: {message}")
        self.ok = False


def _host(host: str, ns: str) -> tuple[str, str] | None:
    """(namespace, Service name) a host names, or None for a host outside the cluster."""
    if host.endswith(SUFFIX):
        parts = host[: -len(SUFFIX)].split(".")
        return (parts[1], parts[0]) if len(parts) == 2 else None
    parts = host.split(".")
    if len(parts) == 1:
        return ns, parts[0]
    return (parts[1], parts[0]) if len(parts) == 2 else None


def _version_name(pod) -> str:
    name = pod.name.replace(".", "__")
    return name if _NAME.fullmatch(name) else f"pod_{name}"


def read(reader, pods, services, objects, span_of, selects):
    """(routed services, statements [(text, span, why)]); sets each routed pod's name to SERVICE.VERSION."""
    named: dict = {}
    for path, obj in objects:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        ns = meta.get("namespace") or "default"
        hosts = spec.get("hosts") if obj["kind"] == "VirtualService" else [spec.get("host")]
        for h in hosts or []:
            where = _host(str(h), ns) if isinstance(h, str) else None
            if where is None:
                reader.fail(path, spec, f"{obj['kind']} {ns}/{meta.get('name')}: host {h!r} is not a Service of the "
                                        "cluster (NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local)")
                continue
            named.setdefault(where, (path, obj))
    routed: dict = {}
    for (ns, name), (path, obj) in sorted(named.items()):
        svc = next((o for _, o in services if (o.get("metadata") or {}).get("name") == name
                    and ((o.get("metadata") or {}).get("namespace") or "default") == ns), None)
        if svc is None:
            reader.fail(path, obj, f"{obj['kind']}: no Service {ns}/{name} in the input (it says which pods are routed)")
            continue
        selector = (svc.get("spec") or {}).get("selector") or {}
        chosen = [p for p in pods if p.namespace == ns and selector
                  and selects({"matchLabels": selector}, p.labels, path, reader)]
        if not chosen:
            reader.fail(path, obj, f"{obj['kind']}: Service {ns}/{name} selects no pod")
            continue
        bases = {p.name_in_policy.split(".")[0] for p in chosen if p.name_in_policy}
        anyplane_name = bases.pop() if len(bases) == 1 and all(p.name_in_policy for p in chosen) else \
            f"{ns}_{name}".replace(".", "__")
        for p in chosen:
            if any(p in r.pods for r in routed.values()):
                reader.fail(path, obj, f"pod {p.namespace}/{p.name} is in two routed Services")
                continue
            if not p.name_in_policy:
                p.name_in_policy = f"{anyplane_name}.{_version_name(p)}"
            elif "." not in p.name_in_policy:
                p.base = True
        for p in chosen:
            if p.base:
                p.siblings = tuple(sorted(x.ident for x in chosen if "." in x.ident))
        numbers = tuple(sorted({port.get("port") for port in (svc.get("spec") or {}).get("ports") or []
                                if isinstance(port, dict) and isinstance(port.get("port"), int)}))
        routed[(ns, name)] = Routed(ns, name, anyplane_name, chosen, span_of(path, obj), numbers)
    statements = []
    subsets: dict = {}
    for path, obj in objects:
        if obj["kind"] == "DestinationRule":
            statements += _destination_rule(reader, path, obj, routed, subsets, span_of, selects)
    for path, obj in objects:
        if obj["kind"] == "VirtualService":
            statements += _virtual_service(reader, path, obj, routed, subsets, span_of)
    return list(routed.values()), statements


def identity_services(pods, routed: list) -> list:
    """Read-back pods named SERVICE.VERSION that no routed Service holds, gathered into their services
    (with the pod named SERVICE, the addresses the service owns beside its versions)."""
    held = {id(p) for r in routed for p in r.pods}
    groups: dict = {}
    for p in pods:
        if id(p) not in held and p.name_in_policy and "." in p.name_in_policy:
            groups.setdefault(p.name_in_policy.split(".", 1)[0], []).append(p)
    out = []
    for name, members in sorted(groups.items()):
        base = [p for p in pods if id(p) not in held and p.name_in_policy == name]
        for p in base:
            p.base, p.siblings = True, tuple(sorted(x.ident for x in members))
        out.append(Routed(members[0].namespace, name, name, base + members, members[0].span))
    return out


def _destination_rule(reader, path, obj, routed, subsets, span_of, selects) -> list:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = meta.get("namespace") or "default"
    p = _Parse(reader, path, f"DestinationRule {ns}/{meta.get('name')}")
    where = _host(str(spec.get("host")), ns)
    if where not in routed:
        return []
    svc = routed[where]
    for key in spec:
        if not key.startswith("__") and key not in ("host", "subsets", "trafficPolicy", "exportTo"):
            p.fail(spec, f"{key} is not imported")
    for s in spec.get("subsets") or []:
        labels = {k: v for k, v in (s.get("labels") or {}).items() if not k.startswith("__")}
        if s.get("trafficPolicy"):
            p.fail(s, "a subset's own trafficPolicy is not imported (anyplane's limits are per service)")
        members = [x for x in svc.pods if selects({"matchLabels": labels}, x.labels, path, reader)]
        subsets[(where, s.get("name"))] = (members, span_of(path, s))
    policy = spec.get("trafficPolicy") or {}
    items = []
    for key in policy:
        if not key.startswith("__") and key not in ("connectionPool", "outlierDetection", "loadBalancer", "tls"):
            p.fail(policy, f"trafficPolicy.{key} is not imported")
    pool = policy.get("connectionPool") or {}
    for section, key, limit in (("tcp", "maxConnections", "max-connections"),
                                ("http", "http1MaxPendingRequests", "max-pending"),
                                ("http", "http2MaxRequests", "max-requests"), ("http", "maxRetries", "max-retries")):
        value = (pool.get(section) or {}).get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                p.fail(pool, f"connectionPool.{section}.{key}: {value!r} is not a count")
                continue
            items.append(f"{limit} {value}")
    for section, body in pool.items():
        for key in body if isinstance(body, dict) else ():
            if not key.startswith("__") and key not in ("maxConnections", "http1MaxPendingRequests",
                                                         "http2MaxRequests", "maxRetries"):
                p.fail(body, f"connectionPool.{section}.{key} is not imported")
    outlier = policy.get("outlierDetection")
    if outlier:
        kinds = [(k, c) for k, c in (("consecutive5xxErrors", "5xx"), ("consecutiveGatewayErrors", "gateway-error"))
                 if outlier.get(k)]
        ejection = _duration(p, outlier, "baseEjectionTime") or "30000ms"
        if len(kinds) != 1:
            p.fail(outlier, "outlierDetection: anyplane ejects on one kind of error: give consecutive5xxErrors or "
                            "consecutiveGatewayErrors")
        else:
            items.append(f"eject {outlier[kinds[0][0]]} consecutive {kinds[0][1]} for {ejection}")
        for key in outlier:
            if not key.startswith("__") and key not in ("consecutive5xxErrors", "consecutiveGatewayErrors",
                                                         "baseEjectionTime", "interval", "maxEjectionPercent"):
                p.fail(outlier, f"outlierDetection.{key} is not imported")
    if items and p.ok:
        return [(f"limits {svc.name} {{ {'  '.join(items)} }}", span_of(path, policy), f"DestinationRule {ns}/"
                 f"{meta.get('name')}")]
    return []


def _string_match(p, obj, what: str) -> tuple[str, str] | None:
    """("exact" | "prefix" | "present", value) for an Istio StringMatch."""
    if not isinstance(obj, dict):
        p.fail({}, f"{what}: a StringMatch (exact, prefix or regex)")
        return None
    if "exact" in obj:
        return "exact", str(obj["exact"])
    if "prefix" in obj:
        return "prefix", str(obj["prefix"])
    if obj.get("regex") == ".*":
        return "present", ""
    p.fail(obj, f"{what}: only exact matches (and a prefix for uri, `regex: .*` for a header's presence) are "
                "imported")
    return None


def _match(p, m: dict) -> dict | None:
    """One HTTPMatchRequest as {"path", "kind", "method", "host", "headers"}."""
    out: dict = {"path": None, "kind": None, "method": None, "host": None, "headers": []}
    for key in m:
        if not key.startswith("__") and key not in ("uri", "method", "authority", "headers", "withoutHeaders", "name",
                                                     "ignoreUriCase"):
            p.fail(m, f"match.{key} is not imported")
    if m.get("ignoreUriCase"):
        p.fail(m, "ignoreUriCase is not imported (anyplane matches paths case-sensitively)")
    if "uri" in m:
        got = _string_match(p, m["uri"], "uri")
        if got:
            kind, value = got
            if kind == "prefix" and value != "/" and not value.endswith("/"):
                p.fail(m["uri"], f"uri prefix {value!r}: anyplane matches prefixes that end in '/' ('{value}/' is "
                                 f"'{value}/*'; add an exact match for {value!r} if it is meant)")
            elif kind == "present" or not value.startswith("/") or not is_canonical(value) or \
                    re.search(r'[\s,"#*]', value):
                p.fail(m["uri"], f"uri {value!r} is not a path in normal form")
            else:
                out["path"], out["kind"] = value, kind
    if "method" in m:
        got = _string_match(p, m["method"], "method")
        if got and (got[0] != "exact" or got[1] not in HTTP_METHODS):
            p.fail(m["method"], f"method: {got[1]!r} is not imported ({', '.join(HTTP_METHODS)} are)")
        elif got:
            out["method"] = got[1]
    if "authority" in m:
        got = _string_match(p, m["authority"], "authority")
        if got and (got[0] != "exact" or host_problem(got[1].lower())):
            p.fail(m["authority"], f"authority: {got[1]!r} is not an exact host in normal form")
        elif got:
            out["host"] = got[1].lower()
    for key, absent in (("headers", False), ("withoutHeaders", True)):
        for name, sm in (m.get(key) or {}).items():
            if name.startswith("__"):
                continue
            name = name.lower()
            if header_problem(name):
                p.fail(m, f"{key}.{name}: {header_problem(name)}")
                continue
            got = _string_match(p, sm, f"{key}.{name}")
            if got is None:
                continue
            if absent and got[0] != "present":
                p.fail(sm, f"withoutHeaders.{name}: only `regex: .*` (the header is absent) is imported")
            elif got[0] == "prefix" or (got[0] == "exact" and not printable(got[1])):
                p.fail(sm, f"headers.{name}: an exact printable value or `regex: .*` is imported")
            else:
                out["headers"].append((name, "absent" if absent else got[0], got[1]))
    return out


def _text(service: str, m: dict) -> str:
    parts = [f"route {service} http"]
    if m["method"]:
        parts.append(m["method"])
    if m["path"]:
        parts.append(m["path"] + "*" if m["kind"] == "prefix" else m["path"])
    if m["host"]:
        parts.append(f"host {_quote(m['host'])}")
    for name, kind, value in sorted(m["headers"]):
        parts.append(f"header {_quote(name)} " + ("absent" if kind == "absent" else "present" if kind == "present"
                                                  else f"= {_quote(value)}"))
    return " ".join(parts)


def _key(m: dict) -> tuple:
    """anyplane's route precedence (lower wins), as compiler/lower/routes.py ranks routes."""
    kind, body = (m["kind"], m["path"]) if m["path"] else ("prefix", "/")
    return (kind != "exact", -len(body) if kind == "prefix" else 0, m["method"] is None,
            -(len(m["headers"]) + (m["host"] is not None)))


def _overlap(a: dict, b: dict) -> bool:
    pa, pb = (a["path"] or "/", a["kind"] or "prefix"), (b["path"] or "/", b["kind"] or "prefix")
    if pa[1] == "exact" and pb[1] == "exact" and pa[0] != pb[0]:
        return False
    if pa[1] == "exact" and pb[1] == "prefix" and not pa[0].startswith(pb[0]):
        return False
    if pb[1] == "exact" and pa[1] == "prefix" and not pb[0].startswith(pa[0]):
        return False
    if pa[1] == pb[1] == "prefix" and not (pa[0].startswith(pb[0]) or pb[0].startswith(pa[0])):
        return False
    if a["method"] and b["method"] and a["method"] != b["method"]:
        return False
    if a["host"] and b["host"] and a["host"] != b["host"]:
        return False
    ha, hb = {n: (k, v) for n, k, v in a["headers"]}, {n: (k, v) for n, k, v in b["headers"]}
    for name in set(ha) & set(hb):
        (ka, va), (kb, vb) = ha[name], hb[name]
        if (ka == "absent") != (kb == "absent") or (ka == kb == "exact" and va != vb):
            return False
    return True


def _virtual_service(reader, path, obj, routed, subsets, span_of) -> list:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = meta.get("namespace") or "default"
    label = f"VirtualService {ns}/{meta.get('name')}"
    p = _Parse(reader, path, label)
    for key in spec:
        if not key.startswith("__") and key not in ("hosts", "http", "exportTo", "gateways"):
            p.fail(spec, f"{key} routes are not imported (anyplane routes HTTP)" if key in ("tcp", "tls") else
                   f"{key} is not imported")
    if [g for g in spec.get("gateways") or [] if g != "mesh"]:
        p.fail(spec, "gateways other than `mesh` are not imported (anyplane routes inside the mesh)")
    out = []
    for host in spec.get("hosts") or []:
        where = _host(str(host), ns)
        if where not in routed:
            continue
        svc = routed[where]
        earlier: list = []
        for rule in spec.get("http") or []:
            for key in rule:
                if key in REFUSED_HTTP or (not key.startswith("__") and key not in HTTP_KEYS):
                    p.fail(rule, f"http.{key} is not imported")
            body = _route_body(p, rule, where, svc, subsets)
            matches = [_match(p, m) for m in rule.get("match") or [{}]]
            for m in matches:
                if m is None or not p.ok:
                    continue
                for other in earlier:
                    if _overlap(m, other) and _key(m) < _key(other):
                        p.fail(rule, f"this rule comes after `{_text(svc.name, other)}` in the VirtualService, which "
                                     "Istio tries first, but anyplane orders routes by how specific their matches are "
                                     "(Gateway API) and would prefer this one; reorder or narrow them")
                    elif _overlap(m, other) and _key(m) == _key(other) and _text("", m) == _text("", other):
                        p.fail(rule, f"this match repeats `{_text(svc.name, other)}`, which Istio takes first")
                earlier.append(m)
                if p.ok and body is not None:
                    out.append((f"{_text(svc.name, m)} {{ {body} }}", span_of(path, rule), label))
    return out


def _ports_text(ports: tuple) -> str:
    if not ports:
        return "this Service declares none"
    return "this Service has port " + str(ports[0]) if len(ports) == 1 else \
        "this Service has ports " + ", ".join(map(str, ports))


def _route_body(p, rule, where, svc, subsets) -> str | None:
    items = []
    weights = []
    destinations = rule.get("route") or []
    for d in destinations:
        dest = d.get("destination") or {}
        target = _host(str(dest.get("host")), where[0])
        if target != where:
            p.fail(d, f"destination {dest.get('host')!r}: anyplane routes a service's requests among its own "
                      "versions, not to another Service")
            return None
        port = dest.get("port")
        if port:
            # The Service's only port: the route is the Service's (anyplane routes a service, not a port).
            number = port.get("number") if isinstance(port, dict) else None
            if not (isinstance(number, int) and all(k == "number" or k.startswith("__") for k in port)
                    and svc.ports == (number,)):
                p.fail(dest, f"destination.port: anyplane routes a Service's requests whatever their port; a port "
                             f"is imported when it is the Service's only one ({_ports_text(svc.ports)})")
        weight = d.get("weight", 100 if len(destinations) == 1 else None)
        if not isinstance(weight, int) or isinstance(weight, bool):
            p.fail(d, "each destination of a split needs a weight")
            return None
        if dest.get("subset") is None:
            members = svc.pods
        elif (where, dest["subset"]) in subsets:
            members = subsets[(where, dest["subset"])][0]
        else:
            p.fail(dest, f"subset {dest['subset']!r} is not in a DestinationRule of the Service")
            return None
        if not members:
            p.fail(dest, f"subset {dest.get('subset')!r} selects no pod")
            return None
        if dest.get("subset") is None and len(destinations) == 1:
            continue  # the whole Service: no split
        if weight % len(members):
            p.fail(d, f"weight {weight} does not split evenly between the subset's {len(members)} pods")
            return None
        weights += [(m.name_in_policy.split(".", 1)[1], weight // len(members)) for m in members]
    if weights:
        if sum(w for _, w in weights) != 100:
            p.fail(rule, "the route's weights do not add up to 100")
            return None
        merged: dict = {}
        for version, w in weights:
            merged[version] = merged.get(version, 0) + w
        items.append("to " + ", ".join(f"{v} {w}%" for v, w in merged.items()))
    timeout = _duration(p, rule, "timeout")
    if timeout:
        items.append(f"timeout {timeout}")
    retries = rule.get("retries")
    if retries:
        attempts = retries.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            p.fail(retries, "retries.attempts is a count")
            return None
        text = f"retry {attempts}"
        on = [c.strip() for c in str(retries.get("retryOn") or "").split(",") if c.strip()]
        unknown = [c for c in on if c not in RETRY_CONDITIONS]
        if unknown:
            p.fail(retries, f"retryOn {', '.join(unknown)}: anyplane retries on {', '.join(RETRY_CONDITIONS)}")
            return None
        if on:
            text += " on " + ", ".join(on)
        per_try = _duration(p, retries, "perTryTimeout")
        if per_try:
            text += f" per-try {per_try}"
        items.append(text)
    return "  ".join(items)
