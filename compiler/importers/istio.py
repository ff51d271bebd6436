"""Istio AuthorizationPolicy (security.istio.io), with Services for the ports' protocols.

Istio's documented semantics, which the importer follows (istiod builds the same from each
policy for the destination workload's sidecar):

- A policy applies to the pods its `selector` picks in its namespace; no selector: every pod of
  the namespace; in the root namespace (`istio-system`): every pod of the mesh.
- For a request (or a TCP connection) to a pod: if any DENY policy matches, it is denied; else, if
  the pod has no ALLOW policy, it is allowed; else it is allowed when some ALLOW policy matches.
  AUDIT policies decide nothing. A policy matches when one of its rules does; a rule when one of
  its `from` sources, one of its `to` operations, and every `when` condition match (a missing part
  matches everything); in each field the values are alternatives, and `notX` excludes its values.
- Only TCP is judged: the sidecar passes UDP and other protocols as they come. HTTP fields
  (methods, paths, hosts, `request.headers` conditions) are read on the ports a Service declares
  HTTP (port name `http`, `http2`, `grpc`, `grpc-web` or `appProtocol`); on every other port
  Istio's rule for HTTP-only fields applies: an ALLOW rule that has one never matches, a DENY
  rule matches without them. A port no Service declares is taken as TCP (Istio would sniff it;
  for both actions that is the stricter reading).
- PeerAuthentication: STRICT (for the pod, or per port) refuses a client outside the mesh (no
  certificate) before any AuthorizationPolicy; DISABLE leaves peers unidentified (principals and
  namespaces of sources match nothing); PERMISSIVE and UNSET change no decision. Every pod is taken to
  run a sidecar that presents its own certificate.
- Sources: `principals` (`cluster.local/ns/NS/sa/ACCOUNT`, the pod's service account),
  `namespaces`, `ipBlocks`, each with its `not` form; `*`, `prefix*` and `*suffix` patterns. An
  address outside the cluster has no principal and no namespace.

Refused at their position, never dropped: CUSTOM, `targetRef(s)`, request principals and JWT
conditions, `remoteIpBlocks`, SNI and experimental conditions, path templates and `*` patterns
in paths and hosts other than Istio's prefix form `/a/*`, `notPaths`/`notMethods`/`notHosts`,
header patterns other than an exact value or `*`, and methods outside GET, HEAD, POST, PUT,
DELETE, OPTIONS, TRACE, PATCH.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass, field

from anyplane.ir.flow import HTTP_METHODS
from anyplane.ir.http import header_problem, host_problem, is_canonical
from anyplane.ir.match import merge_ranges
from anyplane.ir.source import DiagnosticError, error, warning

from .ports import EVERY, _intersect, _minus, _union

ROOT_NAMESPACE = "istio-system"
TRUST_DOMAIN = "cluster.local"
HTTP_PROTOCOLS = {"http": "http", "http2": "http", "grpc": "grpc", "grpc-web": "http", "h2c": "http",
                  "kubernetes.io/h2c": "http"}
_PATH = re.compile(r"/[^\s,\"#*]*")
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
#: Products of alternatives (hosts x header values) above this are refused rather than spelled out.
MAX_PRODUCT = 64


@dataclass(frozen=True)
class Condition:
    """One source field: "principal", "namespace" or "ip", its values, and whether it is a `not`."""

    kind: str
    values: tuple
    negated: bool = False


@dataclass(frozen=True)
class Operation:
    """One `to` operation, with the rule's `destination.port` conditions: TCP port ranges (None:
    every port) and the HTTP fields (None: not constrained)."""

    ports: tuple | None
    methods: tuple | None = None
    paths: tuple | None = None
    hosts: tuple | None = None

    @property
    def http(self) -> bool:
        return any(v is not None for v in (self.methods, self.paths, self.hosts))


@dataclass
class AuthzRule:
    action: str                # "ALLOW" or "DENY"
    subject: frozenset         # pod idents
    sources: list | None       # alternatives, each a tuple of Conditions (all must hold); None: any source
    operations: list           # alternatives (at least one)
    headers: tuple             # (name, values | None (absent))...: each must hold
    span: object
    label: str

    @property
    def http(self) -> bool:
        """The rule has an HTTP-only field somewhere (Istio's rule for TCP ports applies)."""
        return bool(self.headers) or any(o.http for o in self.operations)


def _by_namespace(pods) -> dict:
    """The pods of each namespace, in order."""
    out: dict = {}
    for x in pods:
        out.setdefault(x.namespace, []).append(x)
    return out


def principal(pod) -> str:
    return f"{TRUST_DOMAIN}/ns/{pod.namespace}/sa/{pod.account}"


def _matches(pattern: str, text: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return text.endswith(pattern[1:])
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return text == pattern


class Split(Exception):
    """ipBlocks that hold some of a pod's addresses (of the families the destination has) and not others."""


def _holds(cond: Condition, peer, is_pod, within, families=(4, 6), certified: bool = True) -> bool:
    if cond.kind == "ip":
        if is_pod(peer):
            # a pod of several addresses is in the blocks when each of its networks that can reach the
            # destination (same IP version) is
            inside = [any(n.version == b.version and n.subnet_of(b) for b in cond.values)
                      for n in peer.networks if n.version in families]
            if any(inside) and not all(inside):
                raise Split(peer)
            hit = bool(inside) and all(inside)
        else:
            hit = any(within(peer, net) for net in cond.values)
    elif not is_pod(peer) or not certified:
        hit = False  # outside the mesh, or a sidecar that reads no certificates: no principal, no namespace
    else:
        text = principal(peer) if cond.kind == "principal" else peer.namespace
        hit = any(_matches(v, text) for v in cond.values)
    return hit != cond.negated


def namespaces_held(rule: AuthzRule) -> frozenset | None:
    """The namespaces outside which no peer holds the rule's sources (None: a peer anywhere may): each
    alternative names its namespaces through a principal (`TRUST_DOMAIN/ns/NS/sa/...`, exact or with a
    trailing `*` after the namespace) or a namespace (exact), not negated. An alternative with an ipBlock
    condition is not narrowed (its blocks are asked of every pod)."""
    if rule.sources is None:
        return None
    out: set = set()
    head = f"{TRUST_DOMAIN}/ns/"
    for alt in rule.sources:
        if any(c.kind == "ip" for c in alt):
            return None
        named = None
        for c in alt:
            if c.negated or c.kind not in ("principal", "namespace"):
                continue
            found: set = set()
            for v in c.values:
                if c.kind == "namespace":
                    if "*" in v:
                        break
                    found.add(v)
                    continue
                exact = not v.endswith("*")
                text = v if exact else v[:-1]
                if "*" in text:
                    break
                if not text.startswith(head):
                    if exact:
                        continue  # no pod's principal
                    break
                ns, slash, _ = text[len(head):].partition("/")
                if not slash:  # a prefix that ends inside the namespace's name
                    break
                found.add(ns)
            else:
                named = found if named is None else named & found
        if named is None:
            return None
        out |= named
    return frozenset(out)


def holds(rule: AuthzRule, peer, is_pod, within, families=(4, 6), certified: bool = True) -> bool:
    """The rule's sources (and source conditions) hold for a peer (of a destination of these IP versions;
    `certified`: whose sidecar reads peers' certificates)."""
    return rule.sources is None or any(all(_holds(c, peer, is_pod, within, families, certified) for c in alt)
                                       for alt in rule.sources)


class _Parse:
    """The fields of one policy, read with errors at their YAML position."""

    def __init__(self, reader, path: str, label: str):
        self.reader, self.path, self.label, self.ok = reader, path, label, True

    def fail(self, obj, message: str) -> None:
        self.reader.fail(self.path, obj, f"{self.label}: {message}")
        self.ok = False

    def strings(self, obj, key: str) -> tuple | None:
        values = obj.get(key)
        if values is None:
            return None
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            self.fail(obj, f"{key} is a list of non-empty strings")
            return None
        return tuple(values)

    def pattern(self, obj, key: str, values) -> None:
        for v in values or ():
            if "*" in v.strip("*") or v.count("*") > 1 or (v != "*" and v.startswith("*") and v.endswith("*")):
                self.fail(obj, f"{key}: {v!r} is not a pattern Istio takes (exact, `*`, `prefix*` or `*suffix`)")

    def networks(self, obj, key: str, values) -> tuple:
        out = []
        for v in values or ():
            try:
                out.append(ipaddress.ip_network(v, strict=False))
            except ValueError:
                self.fail(obj, f"{key}: {v!r} is not an address or CIDR")
        return tuple(out)

    def ports(self, obj, key: str, values) -> tuple:
        out = []
        for v in values or ():
            if not (v.isdigit() and 1 <= int(v) <= 65535):
                self.fail(obj, f"{key}: {v!r} is not a port (1-65535)")
                continue
            out.append((int(v), int(v)))
        return tuple(merge_ranges(out))


SOURCE_FIELDS = {"principals": "principal", "namespaces": "namespace", "ipBlocks": "ip"}
REFUSED_SOURCE = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks",
                  "serviceAccounts", "notServiceAccounts")
WHEN_SOURCE = {"source.principal": "principal", "source.namespace": "namespace", "source.ip": "ip"}


def _source(p: _Parse, src: dict) -> tuple:
    out = []
    for key in src:
        if key in REFUSED_SOURCE:
            p.fail(src, f"{key} is not imported (anyplane knows peers by address, namespace and service "
                        "account: JWT request principals and forwarded client addresses are not part of its model)")
        elif not key.startswith("__") and key not in SOURCE_FIELDS and key[3:4].lower() + key[4:] not in SOURCE_FIELDS:
            p.fail(src, f"unknown source field {key!r}")
    for key, kind in SOURCE_FIELDS.items():
        for negated, name in ((False, key), (True, "not" + key[0].upper() + key[1:])):
            values = p.strings(src, name)
            if values is None:
                continue
            if kind == "ip":
                values = p.networks(src, name, values)
            else:
                p.pattern(src, name, values)
            out.append(Condition(kind, values, negated))
    return tuple(out)


def _paths(p: _Parse, op: dict, values) -> tuple | None:
    """Istio paths as anyplane paths: exact `/a`, prefix `/a/*`, and `*` (every path)."""
    if values is None:
        return None
    out = []
    for v in values:
        written = "/*" if v == "*" else v
        body = written[:-1] if written.endswith("/*") else written
        if not _PATH.fullmatch(body) or "{" in v:
            p.fail(op, f"paths: {v!r} is not imported: anyplane matches exact paths and prefixes ending in '/*' "
                       "(path templates, suffixes and other patterns are not)")
        elif not is_canonical(body):
            p.fail(op, f"paths: {v!r} is not in normal form; requests are matched after normalisation, so this "
                       "path could never match (docs/language.md)")
        else:
            out.append(written)
    return tuple(out)


def _hosts(p: _Parse, op: dict, values) -> tuple | None:
    if values is None:
        return None
    out = []
    for v in values:
        # "api.example:*" and "api.example." are spellings of the host anyplane's sidecar compares without
        # a port and a final dot (so -t istio writes them beside it)
        host = v[:-2] if v.endswith(":*") else v
        host = host[:-1] if host.endswith(".") else host
        why = "a pattern (anyplane matches hosts exactly)" if "*" in host else host_problem(host.lower())
        if why:
            p.fail(op, f"hosts: {v!r} is not imported: {why}")
        elif host.lower() not in out:
            out.append(host.lower())
    return tuple(out)


def _operation(p: _Parse, op: dict, port_conds: list) -> Operation:
    for key in ("notPaths", "notMethods", "notHosts"):
        if key in op:
            p.fail(op, f"{key} is not imported: an anyplane rule cannot exclude {key[3:].lower()}; write the "
                       "exclusion as a DENY policy")
    for key in op:
        if not key.startswith("__") and key not in ("ports", "notPorts", "methods", "paths", "hosts", "notPaths",
                                                     "notMethods", "notHosts"):
            p.fail(op, f"unknown operation field {key!r}")
    ports = EVERY
    given = p.strings(op, "ports")
    if given is not None:
        ports = p.ports(op, "ports", given)
    excluded = p.strings(op, "notPorts")
    if excluded is not None:
        ports = _minus(ports, p.ports(op, "notPorts", excluded))
    for values, negated in port_conds:
        ports = _minus(ports, values) if negated else _intersect(ports, values)
    methods = p.strings(op, "methods")
    for m in methods or ():
        if m not in HTTP_METHODS and m != "*":
            p.fail(op, f"methods: {m!r} is not imported ({', '.join(HTTP_METHODS)} are)")
    if methods and "*" in methods:
        methods = ("*",)
    return Operation(None if ports == EVERY else tuple(ports), methods, _paths(p, op, p.strings(op, "paths")),
                     _hosts(p, op, p.strings(op, "hosts")))


def _rule(p: _Parse, r: dict, action: str, subject: frozenset) -> AuthzRule | None:
    extra: list = []
    port_conds: list = []
    headers: list = []
    for key in r:
        if not key.startswith("__") and key not in ("from", "to", "when"):
            p.fail(r, f"unknown rule field {key!r}")
    for cond in r.get("when") or []:
        key = cond.get("key")
        values, not_values = p.strings(cond, "values"), p.strings(cond, "notValues")
        if not isinstance(key, str):
            p.fail(cond, "a condition needs a key")
        elif key in WHEN_SOURCE:
            kind = WHEN_SOURCE[key]
            for negated, vals in ((False, values), (True, not_values)):
                if vals is not None:
                    if kind == "ip":
                        vals = p.networks(cond, key, vals)
                    else:
                        p.pattern(cond, key, vals)
                    extra.append(Condition(kind, vals, negated))
        elif key == "destination.port":
            for negated, vals in ((False, values), (True, not_values)):
                if vals is not None:
                    port_conds.append((p.ports(cond, key, vals), negated))
        elif key.startswith("request.headers[") and key.endswith("]"):
            name = key[len("request.headers["):-1].lower()
            why = header_problem(name) or (None if _TOKEN.fullmatch(name) else "not an HTTP header name")
            if why:
                p.fail(cond, f"{key}: {why}")
                continue
            if not_values is not None:
                if not_values != ("*",) or values is not None:
                    p.fail(cond, f"{key}: notValues other than ['*'] (the header is absent) are not imported")
                    continue
                headers.append((name, None))
                continue
            for v in values or ():
                if v != "*" and ("*" in v or not printable(v)):
                    p.fail(cond, f"{key}: {v!r} is not imported: header values are exact printable ASCII, or '*' "
                                 "(present)")
            headers.append((name, values or ("*",)))
        else:
            p.fail(cond, f"condition {key!r} is not imported (source.ip, source.namespace, source.principal, "
                         "destination.port and request.headers[...] are)")
    sources = None
    if r.get("from"):
        sources = []
        for item in r["from"]:
            src = item.get("source") if isinstance(item, dict) else None
            if not isinstance(src, dict):
                p.fail(item if isinstance(item, dict) else r, "a `from` entry needs a `source`")
                continue
            sources.append(_source(p, src) + tuple(extra))
    elif extra:
        sources = [tuple(extra)]
    operations = []
    for item in r.get("to") or []:
        op = item.get("operation") if isinstance(item, dict) else None
        if not isinstance(op, dict):
            p.fail(item if isinstance(item, dict) else r, "a `to` entry needs an `operation`")
            continue
        operations.append(_operation(p, op, port_conds))
    if not r.get("to"):
        operations.append(_operation(p, {}, port_conds))
    for o in operations:
        if len(o.hosts or ()) * max(1, _product(headers)) > MAX_PRODUCT:
            p.fail(r, f"the hosts and header values of this rule make more than {MAX_PRODUCT} combinations")
    return AuthzRule(action, subject, sources, operations, tuple(headers), None, p.label)


def _product(headers) -> int:
    n = 1
    for _, values in headers:
        n *= len(values or ("",))
    return n


def _security_object(reader, path: str, obj: dict, kind: str):
    """(namespace, spec, parse context labelled `KIND NAMESPACE/NAME`) of a security.istio.io object, or
    None (an error at its position) for one of another API group."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = meta.get("namespace") or "default"
    p = _Parse(reader, path, f"{kind} {ns}/{meta.get('name')}")
    if not str(obj.get("apiVersion", "")).startswith("security.istio.io/"):
        p.fail(obj, f"apiVersion {obj.get('apiVersion')!r} is not security.istio.io/v1")
        return None
    return ns, spec, p


def read(reader, pods, objects, span_of, selects) -> list[AuthzRule]:
    out: list[AuthzRule] = []
    by_ns = _by_namespace(pods)
    for path, obj in objects:
        found = _security_object(reader, path, obj, "AuthorizationPolicy")
        if found is None:
            continue
        ns, spec, p = found
        label = p.label
        action = spec.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY", "AUDIT"):
            p.fail(spec, f"action {action!r} is not imported (ALLOW, DENY and AUDIT are; CUSTOM hands the "
                         "decision to an external server anyplane cannot read)")
            continue
        for key in ("targetRef", "targetRefs", "provider"):
            if key in spec:
                p.fail(spec, f"{key} is not imported (policies for gateways and waypoints): use a `selector`")
        if not p.ok:
            continue
        selector = spec.get("selector")
        selector = {"matchLabels": selector.get("matchLabels") or {}} if isinstance(selector, dict) else {}
        subject = frozenset(x.ident for x in (pods if ns == ROOT_NAMESPACE else by_ns.get(ns, ()))
                            if selects(selector, x.labels, path, reader))
        if action == "AUDIT":
            continue  # logs, decides nothing
        rules = spec.get("rules")
        if rules is not None and not isinstance(rules, list):
            p.fail(spec, "rules is a list")
            continue
        if not rules and action == "ALLOW":
            # An ALLOW policy without rules matches nothing: the pods it selects allow nothing.
            out.append(AuthzRule(action, subject, [], [Operation(None)], (), span_of(path, spec), label))
            continue
        for r in rules or []:
            if not isinstance(r, dict):
                p.fail(spec, "a rule is a mapping")
                continue
            rule = _rule(p, r, action, subject)
            if rule is not None and p.ok:
                rule.span = span_of(path, r)
                out.append(rule)
    return out


MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def peer_authentication(reader, pods, objects, span_of, selects) -> None:
    """PeerAuthentication: each pod's mutual TLS as Istio resolves it (a policy with a selector in the
    pod's namespace, else the namespace's policy without one, else the mesh's in the root namespace;
    UNSET inherits, the mesh default is PERMISSIVE), set on the pods: the ports whose sidecar refuses a
    client without a mesh certificate (`strict`), and whether peers are identified at all (`certified`:
    not under DISABLE, where principals and namespaces of sources match nothing)."""
    layers: dict = {}  # pod ident -> [(rank, mode, ports {port: mode}, span, label)]
    for path, obj in objects:
        found = _security_object(reader, path, obj, "PeerAuthentication")
        if found is None:
            continue
        ns, spec, p = found
        label = p.label
        if not isinstance(spec, dict):
            p.fail(obj, "spec is a mapping")
            continue
        mtls = spec.get("mtls") or {}
        mode = mtls.get("mode", "UNSET") if isinstance(mtls, dict) else None
        if mode not in MTLS_MODES:
            p.fail(mtls or spec, f"mtls.mode {mode!r} is not one of {', '.join(MTLS_MODES)}")
            continue
        selector = spec.get("selector")
        ports: dict = {}
        for key, value in (spec.get("portLevelMtls") or {}).items():
            pm = value.get("mode", "UNSET") if isinstance(value, dict) else None
            if selector is None:
                p.fail(spec, "portLevelMtls needs a selector (Istio ignores it on a namespace or mesh policy)")
            elif not str(key).isdigit() or not 1 <= int(key) <= 65535:
                p.fail(spec, f"portLevelMtls: {key!r} is not a port")
            elif pm not in MTLS_MODES:
                p.fail(value if isinstance(value, dict) else spec, f"portLevelMtls {key}: mode {pm!r} is not one of "
                                                                    f"{', '.join(MTLS_MODES)}")
            elif pm == "DISABLE":
                p.fail(value, f"portLevelMtls {key}: DISABLE on one port is not imported (the peers' certificates "
                              "would count on some ports of the pod and not others)")
            elif pm != "UNSET":
                ports[int(key)] = pm
        if not p.ok:
            continue
        # istiod's levels: a selector with labels picks workloads (ignored in the root namespace); without
        # labels the policy is its namespace's, or in the root namespace the mesh's.
        labels = (selector.get("matchLabels") or {}) if isinstance(selector, dict) else {}
        rank = 2 if labels else (1 if ns != ROOT_NAMESPACE else 0)
        if rank == 2 and ns == ROOT_NAMESPACE:
            reader.notes.append(warning(span_of(path, obj), "import", f"{label}: left out, since istiod ignores a "
                                                                       "PeerAuthentication with a selector in the root "
                                                                       "namespace"))
            continue
        for pod in pods:
            if rank == 0 or (pod.namespace == ns and (rank == 1 or selects({"matchLabels": labels}, pod.labels, path,
                                                                             reader))):
                layers.setdefault(pod.ident, []).append((rank, mode, ports, span_of(path, obj), label))
    for pod in pods:
        mode, ports, why = "PERMISSIVE", {}, None
        mine = sorted(layers.get(pod.ident, ()), key=lambda t: t[0])
        for (rank, *_, label), (again, *_, span2, label2) in zip(mine, mine[1:]):
            if rank == again:  # istiod takes the older one: the manifests do not say which
                reader.errors.append(error(span2, "import", (
                    f"{label2}: {label} applies at the same level to pod {pod.namespace}/{pod.name}; istiod would "
                    "take the older of the two, which the manifests do not say: keep one")))
        for rank, m, pm, span, label in mine:
            if m != "UNSET":
                mode, why = m, (span, label)
            if pm:
                ports, why = pm, (span, label)
        if mode == "DISABLE" and ports:
            reader.errors.append(error(why[0], "import", (
                f"{why[1]}: pod {pod.namespace}/{pod.name} takes no certificates but on ports "
                f"{', '.join(map(str, sorted(ports)))}: not imported (its peers' certificates would count on some "
                "ports and not others)")))
            continue
        strict = [(n, n) for n, m in ports.items() if m == "STRICT"]
        others = [(n, n) for n, m in ports.items() if m != "STRICT"]
        pod.strict = tuple(merge_ranges(_minus(EVERY, others) if mode == "STRICT" else strict))
        pod.certified = mode != "DISABLE"
        pod.mtls_why = why if pod.strict or not pod.certified else None


def port_protocols(reader, pods, services, selects) -> dict:
    """{pod ident: {port: "http" | "grpc" | "tcp" | "udp"}}: the target ports Services declare, with the
    protocol Istio reads them as (port name prefix or appProtocol)."""
    out: dict = {}
    by_ns = _by_namespace(pods)
    for path, obj in services:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        ns = meta.get("namespace") or "default"
        selector = spec.get("selector")
        if not isinstance(selector, dict) or not selector:
            continue  # a Service without a selector names no pods
        chosen = [x for x in by_ns.get(ns, ()) if selects({"matchLabels": selector}, x.labels, path, reader)]
        for sp in spec.get("ports") or []:
            proto = str(sp.get("protocol", "TCP")).upper()
            name = str(sp.get("appProtocol") or sp.get("name") or "").lower()
            kind = "udp" if proto == "UDP" else HTTP_PROTOCOLS.get(name, HTTP_PROTOCOLS.get(name.split("-")[0], "tcp"))
            if proto not in ("TCP", "UDP"):
                continue
            target = sp.get("targetPort", sp.get("port"))
            for pod in chosen:
                number = target
                if isinstance(target, str) and not target.isdigit():
                    number = next((n for pn, n, _ in pod.ports if pn == target), None)
                    if number is None:
                        continue
                number = int(number)
                held = out.setdefault(pod.ident, {})
                if held.get(number, kind) != kind and "udp" not in (kind, held[number]):
                    reader.fail(path, sp, f"Service {ns}/{meta.get('name')}: port {number} of pod {pod.namespace}/"
                                          f"{pod.name} is {kind} here and {held[number]} in another Service")
                    continue
                if kind != "udp" or number not in held:
                    held[number] = kind
    return out


def networks(rules: list[AuthzRule]) -> list:
    """Every ipBlock of the policies, to cut the outside addresses at."""
    return [n for r in rules for alt in r.sources or () for c in alt if c.kind == "ip" for n in c.values]


def subjects(rules: list[AuthzRule]) -> set:
    return {ident for r in rules for ident in r.subject}


def printable(text: str) -> bool:
    """Printable ASCII only (what a header value in a policy may hold)."""
    return all(" " <= ch <= "~" for ch in text)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _l7(op: Operation, headers: tuple) -> list[str]:
    """The anyplane HTTP parts that say one operation with the rule's header conditions (hosts and header
    values are alternatives: one part per combination)."""
    head = " http"
    if op.methods is not None:
        head += " *" if "*" in op.methods else " " + ", ".join(sorted(set(op.methods), key=HTTP_METHODS.index))
    if op.paths is not None:
        head += " " + ", ".join(sorted(set(op.paths)))
    choices = [[f" host {_quote(h)}" for h in sorted(set(op.hosts))] if op.hosts is not None else [""]]
    for name, values in headers:
        if values is None:
            choices.append([f" header {_quote(name)} absent"])
        else:
            choices.append([f" header {_quote(name)} present" if v == "*" else f" header {_quote(name)} = {_quote(v)}"
                            for v in sorted(set(values))])
    return [head + "".join(c) for c in itertools.product(*choices)]


@dataclass
class Verdicts:
    """What Istio decides for TCP from one peer to one pod: ports its DENY rules close at L4 (and each
    rule's share with where it is written), ports its ALLOW rules open at L4 (None: the pod has no ALLOW
    policy, so what no DENY closes is open), and HTTP allows and denies as (port ranges, anyplane HTTP
    part, where). `restricted`: where the pod's first ALLOW policy is (it closes what no rule opens)."""

    denied: tuple = ()
    allowed: tuple | None = None
    denies: list = field(default_factory=list)
    http_allows: list = field(default_factory=list)
    http_denies: list = field(default_factory=list)
    allow_why: list = field(default_factory=list)
    restricted: list = field(default_factory=list)

    @property
    def silent(self) -> bool:
        """Istio decides nothing for this pair (every TCP connection and request passes)."""
        return not (self.denied or self.http_denies or self.allowed is not None)


def decide(rules: list[AuthzRule], subject, peer, http_ports: tuple, is_pod, within) -> Verdicts:
    """Istio's decision for TCP from `peer` to the pod `subject` (whose HTTP ports are `http_ports`)."""
    v = Verdicts()
    mine = [r for r in rules if subject.ident in r.subject]
    first_allow = next((r for r in mine if r.action == "ALLOW"), None)
    if first_allow is not None:
        v.allowed = ()
        v.restricted = [(first_allow.span, f"{first_allow.label} (the pod allows only what its ALLOW policies "
                                           "match)")]
    tcp_only = _minus(EVERY, http_ports)
    families = {n.version for n in subject.networks}
    strict = getattr(subject, "strict", ())
    if strict and not is_pod(peer):
        # STRICT: a client outside the mesh has no certificate, and the sidecar refuses it before any policy.
        span, label = subject.mtls_why
        v.denied = _union(v.denied, strict)
        v.denies.append((strict, (span, f"{label} (STRICT: a client without a mesh certificate is refused)")))
    certified = getattr(subject, "certified", True)
    for r in mine:
        try:
            if not holds(r, peer, is_pod, within, families, certified):
                continue
        except Split:
            raise DiagnosticError([error(r.span, "import", (
                f"{r.label}: the ipBlocks hold some of pod {peer.namespace}/{peer.name}'s addresses and not others "
                "(Istio judges each address alone; anyplane knows the pod as one peer)"))]) from None
        why = (r.span, r.label)
        for op in r.operations:
            ports = op.ports if op.ports is not None else EVERY
            if r.action == "DENY":
                # HTTP fields are ignored on TCP ports, and read as written on HTTP ports.
                plain = _intersect(ports, tcp_only) if r.http else ports
                web = _intersect(ports, http_ports) if r.http else ()
                if plain:
                    v.denied = _union(v.denied, plain)
                    v.denies.append((plain, why))
                v.http_denies += [(web, part, why) for part in _l7(op, r.headers)] if web else []
            elif r.http:  # an ALLOW rule with HTTP fields never matches on TCP ports
                web = _intersect(ports, http_ports)
                v.http_allows += [(web, part, why) for part in _l7(op, r.headers)] if web else []
            else:
                v.allowed = _union(v.allowed, ports)
                v.allow_why.append(why)
    return v
