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

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from anyplane.ir import yaml11
from anyplane.ir.match import merge_ranges
from anyplane.ir.source import Diagnostic, DiagnosticError, Span, error

from . import admin, cilium, istio, routing, schema
from .ports import ALL, EVERY, NONE, Ports, _intersect

PORTS_ALL = "all"
MAX_IDENT = 63  # the longest name a policy takes (compiler/symbols.py)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
_CLUSTER_SCOPED = ("Namespace", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy",
                   "CiliumClusterwideNetworkPolicy")
#: Istio kinds whose refusal says more than "not read" (see `object`).
_LATER = ("PeerAuthentication", "RequestAuthentication", "Sidecar", "ServiceEntry", "Gateway", "EnvoyFilter")


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict
    address: str
    ports: list  # (name, number, protocol)
    span: Span
    #: Set when the pod stands for an identity of several addresses (reading an export back): its
    #: anyplane name and prefixes. A pod of one address is exempt from policy towards itself.
    name_in_policy: str | None = None
    prefixes: tuple = ()
    kind: str = "Pod"  # or the workload controller that stands for its pods (Deployment, ...)
    account: str = "default"  # the service account (Istio principals name it)
    protocols: dict = field(default_factory=dict)  # port -> "http" | "grpc" | "tcp" | "udp" (from Services)
    base: bool = False  # the addresses a routed service owns beside its versions (read back from an export)
    siblings: tuple = ()  # for a base: the service's versions, which its name covers too

    @property
    def ident(self) -> str:
        if self.name_in_policy:
            return self.name_in_policy
        text = f"{self.namespace}_{self.name.replace('.', '__')}"
        text = text if text[0].isalpha() else f"pod_{text}"
        if len(text) > MAX_IDENT:  # Kubernetes names run to 253 characters, policy names to 63: shorten, uniquely
            text = f"{text[:MAX_IDENT - 9].rstrip('_-')}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        return text

    @property
    def endpoint(self) -> str:
        """How rules name the pod: its identity, or (a service's own addresses beside its versions, which
        the service's name would cover too) the service except its versions."""
        if self.base and self.siblings:
            return f"{self.ident} except {', '.join(self.siblings)}"
        return self.ident

    @property
    def networks(self) -> list:
        return [ipaddress.ip_network(p) for p in self.prefixes] or [ipaddress.ip_network(self.address)]

    @property
    def single(self) -> bool:
        return sum(n.num_addresses for n in self.networks) == 1


@dataclass
class Rule:
    """One ingress or egress rule of a policy: peers (None: every peer) and ports (None: every port)."""

    peers: list | None
    ports: list | None
    span: Span
    policy: str
    key: tuple = ()  # (policy number, "ingress" | "egress", rule number from 1): what `drop` names


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


MANIFEST_SUFFIXES = (".yaml", ".yml")


def is_manifest(path: str) -> bool:
    """Whether a path names a manifest (by its suffix)."""
    return path.endswith(MANIFEST_SUFFIXES)


def _span(path: str, obj) -> Span:
    """Where a mapping or list of a manifest begins (the top of the file for anything else)."""
    return yaml11.span_of(obj, Span(path, 1, 1, 1, 2))


class _Reader:
    def __init__(self):
        self.errors: list[Diagnostic] = []
        self.notes: list[Diagnostic] = []  # warnings: what Kubernetes reads otherwise than it looks
        self.namespaces: dict[str, dict] = {}
        self.pods: list[Pod] = []
        self.policies: list[tuple[str, dict]] = []
        self.admin: list[tuple[str, dict]] = []
        self.workloads: list[tuple[str, dict]] = []
        self.cilium: list[tuple[str, dict]] = []
        self.istio: list[tuple[str, dict]] = []
        self.services: list[tuple[str, dict]] = []
        self.routing: list[tuple[str, dict]] = []
        self.addresses: dict[str, tuple[list, Span, str]] = {}  # "ns/name" -> (networks, where, path)
        self.seen: dict[tuple, Span] = {}  # (group, kind, namespace, name) -> where it is
        self.peer_lists: dict[tuple, list] = {}  # (id of a NetworkPolicy peer list, namespace) -> its peers
        self.keys_read: set = set()  # every label key some selector reads
        self.by_namespace: dict[str, list] = {}  # namespace -> its pods (once every pod is read)
        self.checks: dict[tuple, list] = {}  # ("json" | "schema", id of an object) -> its problems

    def fail(self, path: str, obj, message: str) -> None:
        self.errors.append(error(_span(path, obj), "import", message))

    def read(self, path: str, text: str, parsed: dict | None = None) -> None:
        try:
            if parsed is not None and (path, text) in parsed:
                docs, notes = parsed[(path, text)]
            else:
                docs, notes = yaml11.load(path, text)
                if parsed is not None:
                    parsed[(path, text)] = docs, notes
        except DiagnosticError as exc:
            self.errors += exc.diagnostics
            return
        self.notes += notes
        if parsed is not None:
            self.checks = parsed.setdefault(("checked",), {})
        for doc in docs:
            if doc is None:
                continue  # an empty document
            kind = doc.get("kind") if isinstance(doc, yaml11.Mapping) else None
            listed = isinstance(kind, str) and kind.endswith("List")
            items = doc.get("items") if listed else [doc]
            if listed and not isinstance(items, yaml11.Sequence):
                self.fail(path, doc, f"{kind}: `items` is the list of objects")
                continue
            for i, obj in enumerate(items):
                where = items.item_spans[i] if listed else yaml11.span_of(doc, Span(path, 1, 1, 1, 2))
                obj = self.checked(path, obj, where)
                if obj is None:
                    continue
                try:
                    self.object(path, obj)
                except (AttributeError, TypeError, ValueError) as exc:
                    self.fail(path, obj, f"malformed {obj.get('kind', 'object')}: a field has the wrong shape ({exc})")

    def checked(self, path: str, obj, where: Span):
        """The object if it is one anyplane reads and its shape is right (schema.py); None otherwise, with
        an error for what Kubernetes would refuse or anyplane would misread, and nothing for kinds that
        decide no traffic."""
        if not isinstance(obj, yaml11.Mapping) or not isinstance(obj.get("kind"), str) or \
                not isinstance(obj.get("apiVersion"), str):
            self.errors.append(error(where, "manifest", "not a Kubernetes object: a mapping with `apiVersion` and "
                                                       "`kind` (strings) was expected"))
            return None
        if ("json", id(obj)) not in self.checks:  # an object read again (`parsed`) is checked once
            try:
                yaml11.check_json(obj, path, obj.span)
                self.checks[("json", id(obj))] = []
            except DiagnosticError as exc:
                self.checks[("json", id(obj))] = exc.diagnostics
        if self.checks[("json", id(obj))]:
            self.errors += self.checks[("json", id(obj))]
            return None
        group, version = schema.group_version(obj["apiVersion"])
        kind = obj["kind"]
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, yaml11.Mapping) else None
        label = f"{kind} {name}" if isinstance(name, str) else kind
        known = schema.KINDS.get((group, kind))
        if known is None:
            if group in schema.POLICY_GROUPS and (group, kind) not in schema.NOT_POLICY and kind not in _LATER:
                self.fail(path, obj, f"{label} ({obj['apiVersion']}): a policy kind anyplane does not read; remove "
                                     "it from the input rather than have it ignored")
            return None if kind not in _LATER else obj
        versions, shape = known
        if version not in versions:
            self.fail(path, obj, f"{label}: apiVersion {obj['apiVersion']!r}: anyplane reads {kind} as "
                                 + " or ".join(f"{group + '/' if group else ''}{v}" for v in versions))
            return None
        scoped = kind not in _CLUSTER_SCOPED
        space = meta.get("namespace") if scoped and isinstance(meta, yaml11.Mapping) else ""
        key = (group, kind, space or "default" if scoped else "", name)
        if not all(isinstance(k, str) for k in key):
            key = (id(obj),)  # a name or namespace of the wrong type: the schema says so below
        if key in self.seen:
            self.errors.append(error(obj.span, "manifest", f"{label}: a second object of this kind and name"
                                     + (f" in namespace {key[2]}" if scoped else "")
                                     + f" (the first is at {self.seen[key]}); Kubernetes keeps one object per "
                                       "name: remove one of them"))
            return None
        self.seen[key] = obj.span
        if ("schema", id(obj)) not in self.checks:
            self.checks[("schema", id(obj))] = schema.check(obj, path, shape, label)
        problems = self.checks[("schema", id(obj))]
        if problems:
            self.errors += problems
            return None
        return obj

    def object(self, path: str, obj: dict) -> None:
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        name, ns = meta.get("name"), meta.get("namespace") or "default"
        if kind in ("Namespace", "Pod", "NetworkPolicy"):
            for what, value in (("name", name), ("namespace", ns)):
                if not isinstance(value, str) or not _NAME.fullmatch(value):
                    self.fail(path, meta if isinstance(meta, dict) else obj,
                              f"{kind}: {what} {value!r} is not a Kubernetes name (lowercase letters, digits, '-', '.')")
                    return
        if kind == "Namespace":
            self.namespaces[name] = dict(meta.get("labels") or {})
            self.namespaces[name].setdefault("kubernetes.io/metadata.name", name)
        elif kind == "Pod":
            status = obj.get("status") or {}
            address = status.get("podIP") or next((p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")), None)
            if not address:
                self.fail(path, obj, f"Pod {ns}/{name} has no address: anyplane needs status.podIP "
                                     "(kubectl get pods -o yaml shows it)")
                return
            try:
                address = str(ipaddress.ip_address(str(address)))
            except ValueError:
                self.fail(path, status, f"Pod {ns}/{name}: {address!r} is not an IP address")
                return
            ports = [(p.get("name"), p.get("containerPort"), p.get("protocol", "TCP"))
                     for c in (obj.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            for p_name, number, _ in ports:
                if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                    self.fail(path, obj, f"Pod {ns}/{name}: container port {p_name or ''} {number!r} is not a port "
                                         "number (1-65535)")
                    return
            labels = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("__")}
            self.pods.append(Pod(ns, name, labels, address, ports, _span(path, obj), account=_account(obj.get("spec"))))
            self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        elif kind == "NetworkPolicy":
            if not str(obj.get("apiVersion", "")).startswith("networking.k8s.io/"):
                self.fail(path, obj, f"NetworkPolicy {ns}/{name}: apiVersion {obj.get('apiVersion')!r} is not "
                                     "networking.k8s.io/v1")
                return
            self.policies.append((path, obj))
            self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        elif kind in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"):
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                self.fail(path, meta if isinstance(meta, dict) else obj, f"{kind}: name {name!r} is not a Kubernetes name")
                return
            self.admin.append((path, obj))
        elif kind in WORKLOADS:
            self.workloads.append((path, obj))
        elif kind == "Addresses" and str(obj.get("apiVersion", "")).startswith("anyplane.io/"):
            table = obj.get("addresses")
            if not isinstance(table, dict):
                self.fail(path, obj, "Addresses: `addresses` maps NAMESPACE/NAME (or KIND/NAMESPACE/NAME) to "
                                     "address lists")
                return
            for key, nets in table.items():
                if key.startswith("__"):
                    continue
                try:
                    parsed = [ipaddress.ip_network(str(n), strict=True) for n in (nets if isinstance(nets, list) else [nets])]
                except ValueError as exc:
                    self.fail(path, table, f"Addresses: {key}: {exc}")
                    continue
                if not parsed:
                    self.fail(path, table, f"Addresses: {key} has no address")
                    continue
                self.addresses[key] = (parsed, _span(path, table), path)
        elif kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
            self.cilium.append((path, obj))
            if kind == "CiliumNetworkPolicy":
                self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        elif kind == "AuthorizationPolicy":
            self.istio.append((path, obj))
        elif kind == "Service":
            self.services.append((path, obj))
        elif kind in ("VirtualService", "DestinationRule"):
            if not str(obj.get("apiVersion", "")).startswith("networking.istio.io/"):
                self.fail(path, obj, f"{kind} {name}: apiVersion {obj.get('apiVersion')!r} is not networking.istio.io")
                return
            self.routing.append((path, obj))
        elif kind in ("PeerAuthentication", "RequestAuthentication", "Sidecar", "ServiceEntry", "Gateway",
                      "EnvoyFilter"):
            self.fail(path, obj, f"{kind} {name}: not imported yet (NetworkPolicy, AdminNetworkPolicy, "
                                 "BaselineAdminNetworkPolicy, CiliumNetworkPolicy, AuthorizationPolicy, "
                                 "VirtualService, DestinationRule, Services, Pods, workload controllers and "
                                 "Namespaces are); remove it from the input rather than have it ignored")

    def workload_pods(self) -> list[Pod]:
        """Each workload controller as the pods it makes: the template's labels and ports, the addresses an
        `anyplane.io/v1` Addresses document gives it."""
        out, used = [], set()
        for path, obj in self.workloads:
            kind, meta, spec = obj.get("kind"), obj.get("metadata") or {}, obj.get("spec") or {}
            name, ns = meta.get("name"), meta.get("namespace") or "default"
            if not all(isinstance(v, str) and _NAME.fullmatch(v) for v in (name, ns)):
                self.fail(path, meta if isinstance(meta, dict) else obj, f"{kind}: {name!r} in {ns!r} is not a "
                                                                         "Kubernetes name")
                continue
            template = (spec.get("jobTemplate", {}).get("spec", {}) if kind == "CronJob" else spec).get("template") or {}
            key = next((k for k in (f"{kind}/{ns}/{name}", f"{ns}/{name}") if k in self.addresses), None)
            if key is None:
                self.fail(path, obj, f"{kind} {ns}/{name} has no addresses: give them in an `apiVersion: "
                                     f"anyplane.io/v1, kind: Addresses` document ({ns}/{name}: [CIDR, ...])")
                continue
            used.add(key)
            nets = self.addresses[key][0]
            labels = {k: v for k, v in ((template.get("metadata") or {}).get("labels") or {}).items()
                      if not k.startswith("__")}
            ports = [(p.get("name"), p.get("containerPort"), p.get("protocol", "TCP"))
                     for c in (template.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            out.append(Pod(ns, name, labels, str(nets[0].network_address), ports, _span(path, obj),
                           prefixes=tuple(str(n) for n in nets), kind=kind, account=_account(template.get("spec"))))
            self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        for key, (_, where, path) in self.addresses.items():
            if key not in used:
                self.errors.append(error(where, "import", f"Addresses: {key} names no workload controller in "
                                                          "the input"))
        return out


def _account(spec) -> str:
    spec = spec if isinstance(spec, dict) else {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return account if isinstance(account, str) else "default"


def _selects(selector: dict | None, labels: dict, path: str, reader: _Reader) -> bool:
    """A LabelSelector against labels (an empty selector selects everything). The keys it reads are
    noted: pods that agree on every key any selector reads are one identity (`_classes`)."""
    if selector is None:
        return True
    reader.keys_read.update(selector.get("matchLabels") or ())
    reader.keys_read.update(e.get("key") for e in selector.get("matchExpressions") or () if isinstance(e, dict))
    for k, v in (selector.get("matchLabels") or {}).items():
        if k.startswith("__"):
            continue
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            reader.fail(path, expr, f"unknown selector operator {op!r}")
            return False
    return True


def _peers(reader: _Reader, path: str, ns: str, items) -> list:
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
            spaces = {ns}
        else:
            spaces = {n for n, labels in reader.namespaces.items() if _selects(ns_sel, labels, path, reader)}
        pods = [p for space in sorted(spaces) for p in reader.by_namespace.get(space, ())
                if _selects(pod_sel or {}, p.labels, path, reader)]
        out.append(("pods", pods, frozenset(id(p) for p in pods)))
    return out


def _ports(reader: _Reader, path: str, items) -> list | None:
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


def _resolve(ports: list | None, pod: Pod | None) -> dict | str:
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


def _union(sets: list) -> dict | str:
    if any(s == PORTS_ALL for s in sets):
        return PORTS_ALL
    out: dict = {}
    for s in sets:
        for proto, ranges in s.items():
            out.setdefault(proto, []).extend(ranges)
    return {proto: merge_ranges(r) for proto, r in out.items()}


def convert(sources: list[tuple[str, str]], drop: frozenset = frozenset(), pods: list[Pod] = (),
            partition: tuple = (frozenset(), ()), parsed: dict | None = None) -> Imported:
    """Manifests -> an anyplane policy (DiagnosticError for what cannot be imported). `drop` leaves
    out policies (`(n,)`, in input order from 0) or rules (`(n, "ingress"|"egress", number)`), to ask
    what each one adds; the outside addresses are cut as for the whole input all the same.
    `partition` (label keys, networks) adds to what tells pods apart: two versions compared are
    imported with the union of both's, so that they name the same identities (`Imported.partition`).
    `parsed` keeps the YAML read, by (path, text), for the next call on the same manifests (the
    objects are read again: nothing read from them is changed)."""
    reader = _Reader()
    _BOUNDS.clear()  # networks of this input only
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
        try:
            routed, route_lines = routing.read(reader, pods, reader.services, reader.routing, _span, _selects)
        except (AttributeError, TypeError, ValueError) as exc:
            reader.fail(reader.routing[0][0], reader.routing[0][1], f"malformed routing: a field has the wrong "
                                                                    f"shape ({exc})")
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
        try:
            structure.append(_policy(reader, pods, path, obj, ingress, egress, isolated_in, isolated_out, n, drop))
        except (AttributeError, TypeError, ValueError) as exc:
            reader.fail(path, obj, f"malformed NetworkPolicy: a field has the wrong shape ({exc})")
    for held in structure:  # whether some pod it isolates, no other NetworkPolicy isolates that way
        tables = {"ingress": isolated_in, "egress": isolated_out}
        held["alone"] = any(len(tables[d].get(ident, ())) <= 1 for d, idents in held.pop("isolates").items()
                            for ident in idents)
    admin_rules, cilium_rules = [], []
    if not reader.errors:
        for objects, read in ((reader.admin, lambda: admin.read(reader, pods, reader.admin, _span, _selects, drop,
                                                                structure)),
                              (reader.cilium, lambda: cilium.read(reader, pods, reader.cilium, _span, _selects,
                                                                  _ports))):
            try:
                got = read()
            except (AttributeError, TypeError, ValueError) as exc:
                reader.fail(objects[0][0], objects[0][1], f"malformed policy: a field has the wrong shape ({exc})")
                continue
            if objects is reader.admin:
                admin_rules = got
            else:
                cilium_rules = got
    istio_rules = []
    if (reader.istio or reader.routing) and not reader.errors:
        try:
            istio_rules = istio.read(reader, pods, reader.istio, _span, _selects)
            for p in pods:
                p.protocols = {}
            for ident, protocols in istio.port_protocols(reader, pods, reader.services, _selects).items():
                seen[ident].protocols = protocols
        except (AttributeError, TypeError, ValueError) as exc:
            first = (reader.istio or reader.routing)[0]
            reader.fail(first[0], first[1], f"malformed policy: a field has the wrong shape ({exc})")
    for p in pods:
        for n in cilium.http_ports(cilium_rules, p):
            if p.ident in istio.subjects(istio_rules):
                rule = next(r for r in cilium_rules if r.http is not None and p.ident in r.subject)
                reader.errors.append(error(rule.span, "import", f"{rule.label}: pod {p.namespace}/{p.name} has "
                                                                "both Cilium HTTP rules and Istio AuthorizationPolicies: "
                                                                "not imported together"))
                break
            p.protocols[n] = "http"
    if reader.errors:
        raise DiagnosticError(reader.errors + reader.notes)
    blocks = [net for _, obj in reader.policies for net in _networks(obj)] + admin.networks(admin_rules) + \
        [n for r in cilium_rules for item in r.peers or [] if item[0] == "cidr" for n in [item[1], *item[2]]] + \
        istio.networks(istio_rules)
    for r in routed:  # a routed service's prefix holds addresses beyond its pods: outside blocks of their own
        blocks += _covering(r.pods) + [n for p in r.pods for n in p.networks]
    keys, networks = reader.keys_read | set(partition[0]), blocks + list(partition[1])
    classes = _classes(pods, keys, networks, routed)
    out = _emit(pods, ingress, egress, isolated_in, isolated_out,
                len(reader.policies) + len(reader.admin) + len(reader.cilium) + len(reader.istio),
                _outside(blocks, pods), admin_rules, cilium_rules, istio_rules, routed, route_lines, classes)
    out.structure = structure
    out.notes = reader.notes
    for members, name in classes.values():
        if name is not None:
            for m in members:
                for n in m.networks:
                    out.members[(n.version, int(n.network_address))] = (f"{m.namespace}/{m.name}", len(members))
    out.partition = (frozenset(keys), tuple(sorted(set(networks), key=lambda n: (n.version, n))))
    return out


def _policy(reader, pods, path, obj, ingress, egress, isolated_in, isolated_out, n: int, drop) -> dict:
    """One NetworkPolicy: the pods it isolates and the rules it gives them (unless dropped); what it
    holds, for the redundancy questions."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns, name = meta.get("namespace") or "default", meta.get("name")
    label = f"NetworkPolicy {ns}/{name}"
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    selected = [p for p in reader.by_namespace.get(ns, ()) if _selects(spec.get("podSelector") or {}, p.labels, path,
                                                                       reader)]
    where = _span(path, spec.get("podSelector") if isinstance(spec.get("podSelector"), dict) else obj)
    held = {"label": label, "span": _span(path, obj), "selects": len(selected), "rules": [], "key": (n,),
            "isolates": {d.lower(): [p.ident for p in selected] for d in ("Ingress", "Egress") if d in types}}
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
            rule = Rule(peers, _ports(reader, path, r.get("ports")), _span(path, r), label, (n, key, number))
            held["rules"].append({"direction": key, "number": number, "span": rule.span,
                                  "admits_none": peers is not None and all(x[0] == "pods" and not x[1] for x in peers)})
            if (n,) in drop or (n, key, number) in drop:
                continue
            for p in selected:
                table[p.ident].append(rule)
    return held


def _networks(obj: dict) -> list:
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


def _outside(networks: list, pods: list[Pod]) -> list[tuple[str, list, str]]:
    """Addresses outside the cluster, cut where ipBlocks begin and end (as network-config-analyzer
    draws them): [(name, prefixes, "FIRST-LAST")]. IPv6 only when some block or pod is IPv6."""
    out = []
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
            out.append((name, prefixes, f"{first}-{last}"))
    return out


@dataclass
class Outside:
    """Addresses outside the cluster, one block of the cut (see `_outside`)."""

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
    hit = _BOUNDS.get(id(net))
    if hit is None or hit[0] is not net:
        hit = _BOUNDS[id(net)] = (net, (net.version, int(net.network_address), int(net.broadcast_address)))
    return hit[1]


_BOUNDS: dict = {}


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
    return Ports.of(_union([_resolve(r.ports, dst_pod) for r in hit])) if hit else NONE, \
        [(r.span, r.policy) for r in hit]


def _classes(pods: list[Pod], keys: set, blocks: list, routed) -> dict[int, tuple[list[Pod], str | None]]:
    """Pods no policy can tell apart, as one identity: id of the first (which stands for them all) -> (the
    pods, the identity's name; None for a pod alone, named as before). Two pods are alike when they share the namespace, the value of every label key some selector
    reads, the service account, the container ports (named ports resolve alike), the ports Services
    declare HTTP, and the address blocks of the policies that hold their addresses. Every decision the
    importer makes about a pod reads only these, so the first pod's decisions are every member's, and
    the policy grows with what the policies distinguish, not with the pods. Pods routed as a Service's
    versions, pods of workload controllers (whole prefixes) and pods read back from an export stay
    alone."""
    alone = {id(p) for r in routed for p in r.pods}
    blocks = list(dict.fromkeys(blocks))  # policies repeat their blocks: each is asked once per pod
    out: dict[int, list[Pod]] = {}
    by_key: dict[tuple, Pod] = {}
    for p in pods:
        if p.kind != "Pod" or p.name_in_policy or id(p) in alone or p.prefixes:
            out[id(p)] = [p]
            continue
        address = ipaddress.ip_network(p.address)
        key = (p.namespace, tuple(sorted((k, v) for k, v in p.labels.items() if k in keys)), p.account,
               tuple(sorted(map(str, p.ports))), tuple(sorted(p.protocols.items())), address.version,
               frozenset(n for n in blocks if n.version == address.version and address.subnet_of(n)))
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


def _emit(pods, ingress, egress, isolated_in, isolated_out, policies: int, outside=(), admin_rules=(),
          cilium_rules=(), istio_rules=(), routed=(), route_lines=(), classes=None) -> Imported:
    """The policy text for what was read: per pair with a pod at one end whose traffic some policy
    decides, the allows (and, for "all but" sets, the denies above them) that say exactly what passes."""
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
        emit(f"service {r.name} {{ address {', '.join(str(n) for n in _covering(members))}{ports}"
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
    for ident, why in sorted(restricted_in.items()):
        if ident not in named:
            continue
        where, label = why or next(((r.span, r.label) for r in admin_rules if r.direction == "ingress"
                                    and ident in r.subject), (None, ""))
        emit(f"deny any -> {named[ident]} priority 10", where, f"{label} decides its ingress")
    for ident, why in sorted(restricted_out.items()):
        if ident not in named:
            continue
        where, label = why or next(((r.span, r.label) for r in admin_rules if r.direction == "egress"
                                    and ident in r.subject), (None, ""))
        emit(f"deny {named[ident]} -> any priority 10", where, f"{label} decides its egress")

    def side(subject, peer, direction, with_http=False):
        table, isolated = (ingress, isolated_in) if direction == "ingress" else (egress, isolated_out)
        dst = subject if direction == "ingress" else (peer if isinstance(peer, Pod) else None)
        ports_of = lambda spec: Ports.of(_resolve(spec, dst))  # noqa: E731
        np_ports, np_why = _np(table[subject.ident], peer, dst)
        # Cilium merges its allows with the NetworkPolicies' and puts its denies above everything.
        c_allowed, c_allows, c_denied, c_denies = cilium.verdicts(cilium_rules, subject, peer, direction, ports_of,
                                                                  _within, lambda q: isinstance(q, Pod), with_http)
        closed = subject.ident in isolated or subject.ident in default_deny[direction]
        ports, allows, denies = admin.decide(admin_rules, subject, peer, direction, closed, np_ports | c_allowed,
                                             ports_of, _within)
        if closed:
            allows = allows + np_why + c_allows
            denies = denies + ([isolated[subject.ident][0]] if subject.ident in isolated else
                               [default_deny[direction][subject.ident]])
        return ports - c_denied, allows, c_denies + denies

    if not (admin_rules or cilium_rules or istio_rules):
        depends = _by_rules(emit, reps, blocks, name_of, classes, ingress, egress, set(restricted_in),
                            set(restricted_out))
        for text, span, why in route_lines:
            emit(text, span, why)
        return Imported("\n".join(lines) + "\n", origins, len(pods), policies, depends=depends)
    meshed = istio.subjects(istio_rules)
    proxied = {p.ident for p in pods if cilium.http_ports(cilium_rules, p)}
    ends = reps + blocks
    for a in ends:
        for b in ends:
            a_pod, b_pod = isinstance(a, Pod), isinstance(b, Pod)
            into = b_pod and b.ident in restricted_in
            out_of = a_pod and a.ident in restricted_out
            sidecar = b_pod and b.ident in meshed
            if not (into or out_of or sidecar):
                continue  # no policy decides this pair: the default allows it
            name_a, name_b = (name_of[id(a)] if a_pod else a.name), (name_of[id(b)] if b_pod else b.name)
            if a is b and a.single and classes[id(a)][1] is None:
                emit(f"allow {name_a} -> {name_a} priority 20", a.span, "a pod cannot block access to itself")
                continue
            if a is b and classes[id(a)][1] is not None:  # each pod of the class to itself, above every rule
                for m in classes[id(a)][0]:
                    emit(f"allow {m.address} -> {m.address} priority 90", m.span, "a pod cannot block access to itself")
            ing, ing_allow, ing_deny = side(b, a, "ingress") if b_pod else (ALL, [], [])
            egr, egr_allow, egr_deny = side(a, b, "egress") if a_pod else (ALL, [], [])
            allowed = ing & egr
            mesh = istio.decide(istio_rules, b, a, _http_ports(b), lambda q: isinstance(q, Pod), _within) \
                if sidecar and _families(a) & _families(b) else istio.Verdicts()
            if not (into or out_of) and mesh.silent:
                continue  # Istio leaves this pair alone, and nothing else decides it
            # Istio judges TCP at the destination's sidecar, after the network plugin: both must allow.
            allowed = allowed - Ports(tcp=mesh.denied)
            reachable = allowed.tcp
            if mesh.allowed is not None:
                allowed = allowed & Ports(tcp=mesh.allowed, udp=EVERY, other=True)
            allow_texts, deny_texts = allowed.rules()
            # What decided: the first rule that allowed (or denied) some of it; else what restricts the pair.
            restriction = [w for w in (restricted_in.get(b.ident) if into else None,
                                       restricted_out.get(a.ident) if out_of else None) if w] + \
                [(r.span, r.label) for r in admin_rules if (into and r.direction == "ingress" and b.ident in r.subject)
                 or (out_of and r.direction == "egress" and a.ident in r.subject)] + mesh.restricted
            why_allow = (ing_allow + egr_allow + mesh.allow_why + restriction or [(None, "")])[0]
            why_deny = (ing_deny + egr_deny + restriction or [(None, "")])[0]
            for suffix in allow_texts:
                emit(f"allow {name_a} -> {name_b}{suffix} priority 20", why_allow[0], why_allow[1])
            for suffix in deny_texts:
                emit(f"deny {name_a} -> {name_b}{suffix} priority 30", why_deny[0], why_deny[1])
            for ranges, why in mesh.denies:  # Istio's DENY rules, each named where it decides
                emit(f"deny {name_a} -> {name_b}{Ports(tcp=ranges).rules()[0][0]} priority 31", *why)
            if b_pod and b.ident in proxied:
                # Cilium's proxy lets through the requests its HTTP rules match, where the rules' ports
                # would pass if they were L4 allows (every tier and the source's egress considered).
                web = (side(b, a, "ingress", with_http=True)[0] & egr).tcp
                for ranges, part, why in cilium.http_allows(cilium_rules, b, a, _within, lambda q: isinstance(q, Pod)):
                    ports = _intersect(ranges, web)
                    if ports:
                        emit(f"allow {name_a} -> {name_b}{Ports(tcp=ports).rules()[0][0]}{part} priority 35", *why)
            for ranges, part, why in mesh.http_allows:
                ports = _intersect(ranges, reachable)
                if ports:
                    emit(f"allow {name_a} -> {name_b}{Ports(tcp=ports).rules()[0][0]}{part} priority 35", *why)
            for ranges, part, why in mesh.http_denies:
                emit(f"deny {name_a} -> {name_b}{Ports(tcp=ranges).rules()[0][0]}{part} priority 40", *why)
    for text, span, why in route_lines:
        emit(text, span, why)
    return Imported("\n".join(lines) + "\n", origins, len(pods), policies)


def _by_rules(emit, reps: list[Pod], blocks: list[Outside], name_of: dict, classes: dict, ingress: dict,
              egress: dict, isolated_in: set, isolated_out: set) -> dict[int, list[frozenset]]:
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
            return {Ports.of(_resolve(r.ports, None)): dsts}
        out: dict = {}
        for k in dsts:
            out.setdefault(Ports.of(_resolve(r.ports, ends[k] if isinstance(ends[k], Pod) else None)), set()).add(k)
        return out

    written: dict[tuple, list[int]] = {}  # (sources, destinations, ports) -> its lines
    depends: dict[int, list[frozenset]] = {}

    def allow(srcs, dsts, ports: Ports, r: Rule, *others: Rule) -> None:
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

    for k in sorted(closed_in | closed_out, key=names.__getitem__):  # a pod cannot block access to itself
        e = ends[k]
        if classes[id(e)][1] is not None:
            for m in classes[id(e)][0]:
                emit(f"allow {m.address} -> {m.address} priority 90", m.span, "a pod cannot block access to itself")
        elif e.single:
            emit(f"allow {names[k]} -> {names[k]} priority 20", e.span, "a pod cannot block access to itself")
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


def _covering(members: list[Pod]) -> list:
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


def _families(end) -> set:
    """The IP versions of a pod's or an outside block's addresses."""
    return {n.version for n in (end.networks if isinstance(end, Pod) else end.prefixes)}


def _http_ports(pod: Pod) -> tuple:
    """The pod's ports a Service declares HTTP (or gRPC), as ranges."""
    return tuple(merge_ranges([(n, n) for n, kind in pod.protocols.items() if kind in ("http", "grpc")]))


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
