"""The manifest reader: Namespaces, Pods, workload controllers and their `Addresses`, and every
policy object read as it is (its kind checked against schema.py), for the tiers to translate.

`Reader.read` takes the YAML (read as Kubernetes reads it, ir/yaml11.py); `Pod` is a pod (or a
workload controller standing for its pods) with its labels, ports and addresses; `selects` is a
LabelSelector against labels, noting the keys it reads (what tells pods apart).
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from anyplane.ir import yaml11
from anyplane.ir.source import Diagnostic, DiagnosticError, Span, error, warning

from . import schema

MAX_IDENT = 63  # the longest name a policy takes (compiler/symbols.py)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob")
_CLUSTER_SCOPED = ("Namespace", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy",
                   "CiliumClusterwideNetworkPolicy", "Node")
#: Istio kinds whose refusal says more than "not read" (see `object`).
_LATER = ("PeerAuthentication", "RequestAuthentication", "Sidecar", "ServiceEntry", "EnvoyFilter")
#: Kinds of the policy groups that decide no traffic between workloads: left out with a note.
_ELSEWHERE = {"Gateway": "it configures a gateway's listeners for traffic entering or leaving the mesh"}


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
    others: tuple = ()  # its further addresses (status.podIPs beyond podIP: dual stack), for a binding
    #: Istio PeerAuthentication: the TCP ports (ranges) whose sidecar refuses a client without a mesh
    #: certificate (STRICT), whether its sidecar reads peers' certificates at all (not DISABLE), and the
    #: policy that says so (span, label)
    strict: tuple = ()
    certified: bool = True
    mtls_why: tuple | None = None
    node: str = ""  # spec.nodeName: the node it runs on (Cilium's `host` and `remote-node` read it)

    def __setattr__(self, key, value) -> None:
        # `ident` and `networks` are read millions of times by the composition: kept until a field changes.
        object.__setattr__(self, key, value)
        self.__dict__.pop("_ident", None)
        self.__dict__.pop("_networks", None)

    @property
    def ident(self) -> str:
        kept = self.__dict__.get("_ident")
        if kept is None:
            kept = self.__dict__["_ident"] = self._make_ident()
        return kept

    def _make_ident(self) -> str:
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
        kept = self.__dict__.get("_networks")
        if kept is None:
            kept = self.__dict__["_networks"] = tuple(ipaddress.ip_network(p) for p in self.prefixes) or \
                tuple(ipaddress.ip_network(a) for a in (self.address, *self.others))
        return list(kept)

    @property
    def single(self) -> bool:
        """One address of each IP version it has (a pod, dual stack or not)."""
        nets = self.networks
        return all(n.num_addresses == 1 for n in nets) and len({n.version for n in nets}) == len(nets)


MANIFEST_SUFFIXES = (".yaml", ".yml")


def is_manifest(path: str) -> bool:
    """Whether a path names a manifest (by its suffix)."""
    return path.endswith(MANIFEST_SUFFIXES)


def span_of_object(path: str, obj) -> Span:
    """Where a mapping or list of a manifest begins (the top of the file for anything else)."""
    return yaml11.span_of(obj, Span(path, 1, 1, 1, 2))


#: `--namespace NS`: the namespace of objects whose metadata names none (as `kubectl apply -n NS`).
NAMESPACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("anyplane_namespace", default=None)
#: `--strict-kinds`: an object of a policy group that is left out (it decides no traffic between
#: workloads) is an error rather than a note.
STRICT_KINDS: contextvars.ContextVar[bool] = contextvars.ContextVar("anyplane_strict_kinds", default=False)
_STRICT = " (--strict-kinds: every object of a policy group is read or refused; remove it from the input)"


class Reader:
    def __init__(self, namespace: str | None = None):
        self.namespace = namespace if namespace is not None else NAMESPACE.get()
        self.strict_kinds = STRICT_KINDS.get()
        self.errors: list[Diagnostic] = []
        self.notes: list[Diagnostic] = []  # warnings: what Kubernetes reads otherwise than it looks
        self.namespaces: dict[str, dict] = {}
        self.pods: list[Pod] = []
        self.policies: list[tuple[str, dict]] = []
        self.admin: list[tuple[str, dict]] = []
        self.workloads: list[tuple[str, dict]] = []
        self.cilium: list[tuple[str, dict]] = []
        self.istio: list[tuple[str, dict]] = []
        self.peer_auth: list[tuple[str, dict]] = []
        self.services: list[tuple[str, dict]] = []
        self.routing: list[tuple[str, dict]] = []
        self.entries: list[tuple[str, list]] = []  # ServiceEntry addresses: (a name for them, networks)
        self.addresses: dict[str, tuple[list, Span, str]] = {}  # "ns/name" -> (networks, where, path)
        self.seen: dict[tuple, Span] = {}  # (group, kind, namespace, name) -> where it is
        self.peer_lists: dict[tuple, list] = {}  # (id of a NetworkPolicy peer list, namespace) -> its peers
        self.keys_read: set = set()  # every label key some selector reads
        self.by_namespace: dict[str, list] = {}  # namespace -> its pods (once every pod is read)
        self.checks: dict[tuple, list] = {}  # ("json" | "schema", id of an object) -> its problems
        self.selected: dict[tuple, list] = {}  # (namespace | None, a selector's contents) -> what it selects
        self.namespace_index: tuple[int, dict] = (-1, {})  # (namespaces indexed, {(key, value): their names})
        self.unaddressed: list[tuple[str, dict, list]] = []  # Pods without status.podIP: (path, object, ports)
        self.nodes: dict[str, list] = {}  # Node name -> its addresses (networks): status.addresses
        self.apiserver: list = []  # the API server's addresses: Endpoints or EndpointSlices of default/kubernetes

    def fail(self, path: str, obj, message: str) -> None:
        self.errors.append(error(span_of_object(path, obj), "import", message))

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
                if self.namespace is not None and not self.placed(obj):
                    continue
                obj = self.checked(path, obj, where)
                if obj is None:
                    continue
                self.object(path, obj)  # `checked` held it to its kind's schema: what fails here is a bug

    def placed(self, obj) -> bool:
        """A namespaced object without a namespace is put in `--namespace`'s, as `kubectl apply -n` does;
        one that names another is refused, as kubectl refuses it. False when refused."""
        meta = obj.get("metadata") if isinstance(obj, yaml11.Mapping) else None
        if not isinstance(meta, yaml11.Mapping) or obj.get("kind") in _CLUSTER_SCOPED:
            return True
        written = meta.get("namespace")
        if written is None:
            meta["namespace"] = self.namespace
            meta.key_spans["namespace"] = meta.value_spans["namespace"] = meta.span
            return True
        if written != self.namespace:
            self.errors.append(error(meta.value_spans.get("namespace", meta.span), "manifest", (
                f"the namespace here ({written}) does not match --namespace {self.namespace}; kubectl refuses "
                "the same: drop one of them")))
            return False
        return True

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
        if known is None and kind in _ELSEWHERE and group in schema.POLICY_GROUPS:
            self._left_out(path, obj, f"{label}: left out, since {_ELSEWHERE[kind]}, not traffic between workloads")
            return None
        if known is None and self.strict_kinds and (group, kind) in schema.NOT_POLICY:
            self._left_out(path, obj, f"{label}: left out, since it decides no traffic between workloads")
            return None
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
            ports = _ports(obj.get("spec"))
            for p_name, number, _ in ports:
                if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                    self.fail(path, obj, f"Pod {ns}/{name}: container port {p_name or ''} {number!r} is not a port "
                                         "number (1-65535)")
                    return
            address = status.get("podIP") or next((p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")), None)
            if not address:  # an Addresses document may give it one (workload_pods, once all is read)
                self.unaddressed.append((path, obj, ports))
                return
            try:
                address = str(ipaddress.ip_address(str(address)))
            except ValueError:
                self.fail(path, status, f"Pod {ns}/{name}: {address!r} is not an IP address")
                return
            others = []
            for entry in status.get("podIPs") or []:
                ip = entry.get("ip") if isinstance(entry, dict) else None
                try:
                    ip = str(ipaddress.ip_address(str(ip))) if ip else None
                except ValueError:
                    self.fail(path, status, f"Pod {ns}/{name}: podIPs: {ip!r} is not an IP address")
                    return
                if ip and ip != address and ip not in others:
                    others.append(ip)
            node = (obj.get("spec") or {}).get("nodeName")
            self.pods.append(Pod(ns, name, _labels(meta), address, ports, span_of_object(path, obj),
                                 account=_account(obj.get("spec")), others=tuple(others),
                                 node=node if isinstance(node, str) else ""))
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
                where = getattr(table, "key_spans", {}).get(key) or span_of_object(path, table)
                self.addresses[key] = (parsed, where, path)
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
        elif kind == "ServiceEntry":
            self.service_entry(path, obj, f"ServiceEntry {ns}/{name}")
        elif kind == "Node":
            nets = self._networks(path, obj, f"Node {name}", [a.get("address") for a in
                                                              (obj.get("status") or {}).get("addresses") or []
                                                              if a.get("type") in ("InternalIP", "ExternalIP")])
            if nets is not None:
                self.nodes[name] = nets
        elif kind in ("Endpoints", "EndpointSlice") and ns == "default" and (
                name == "kubernetes" if kind == "Endpoints" else
                (meta.get("labels") or {}).get("kubernetes.io/service-name") == "kubernetes"):
            ips = [a.get("ip") for sub in obj.get("subsets") or [] for a in sub.get("addresses") or []] \
                if kind == "Endpoints" else [ip for e in obj.get("endpoints") or [] for ip in e.get("addresses") or []]
            nets = self._networks(path, obj, f"{kind} default/{name}", ips)
            if nets is not None:
                self.apiserver += [n for n in nets if n not in self.apiserver]
        elif kind == "PeerAuthentication":
            self.peer_auth.append((path, obj))
        elif kind in ("RequestAuthentication", "Sidecar", "Gateway", "EnvoyFilter"):
            self.fail(path, obj, f"{kind} {name}: not imported yet (NetworkPolicy, AdminNetworkPolicy, "
                                 "BaselineAdminNetworkPolicy, CiliumNetworkPolicy, AuthorizationPolicy, "
                                 "PeerAuthentication, VirtualService, DestinationRule, Services, Pods, workload "
                                 "controllers and Namespaces are); remove it from the input rather than have it "
                                 "ignored")

    def _networks(self, path: str, obj: dict, label: str, addresses: list) -> list | None:
        """Host networks of addresses written in an object (None, with an error, for one that is not an
        address)."""
        out = []
        for a in addresses:
            try:
                net = ipaddress.ip_network(ipaddress.ip_address(str(a)))
            except ValueError:
                self.fail(path, obj, f"{label}: {a!r} is not an IP address")
                return None
            if net not in out:
                out.append(net)
        return out

    def service_entry(self, path: str, obj: dict, label: str) -> None:
        """A ServiceEntry outside the mesh names addresses: they become an external of their own (for maps
        and answers). It decides no traffic; one that gives no address (resolved by DNS) is left out."""
        if not str(obj.get("apiVersion", "")).startswith("networking.istio.io/"):
            self.fail(path, obj, f"{label}: apiVersion {obj.get('apiVersion')!r} is not networking.istio.io")
            return
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        if spec.get("location", "MESH_EXTERNAL") != "MESH_EXTERNAL":
            self.fail(path, spec, f"{label}: location {spec.get('location')!r}: anyplane reads ServiceEntries of "
                                  "addresses outside the mesh (MESH_EXTERNAL); mesh workloads are read as Pods")
            return
        hosts = spec.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            self.fail(path, spec, f"{label}: `hosts` is a list of names")
            return
        texts = [(spec, a) for a in spec.get("addresses") or []] + \
            [(e, e.get("address")) for e in spec.get("endpoints") or [] if isinstance(e, dict)
             and spec.get("resolution") == "STATIC"]
        networks = []
        for where, text in texts:
            try:
                networks.append(ipaddress.ip_network(str(text), strict=False))
            except ValueError:
                self.fail(path, where, f"{label}: {text!r} is not an IP address or CIDR")
                return
        if not networks:
            self._left_out(path, obj, f"{label}: left out, since it names no address (its hosts resolve by DNS), "
                                      "and decides no traffic")
            return
        self.entries.append((hosts[0], networks))

    def _left_out(self, path: str, obj, message: str) -> None:
        """An object read and not imported: a note, or under --strict-kinds an error."""
        if self.strict_kinds:
            self.errors.append(error(span_of_object(path, obj), "import", message + _STRICT))
        else:
            self.notes.append(warning(span_of_object(path, obj), "import", message))

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
            out.append(Pod(ns, name, _labels(template.get("metadata")), str(nets[0].network_address),
                           _ports(template.get("spec")), span_of_object(path, obj),
                           prefixes=tuple(str(n) for n in nets), kind=kind, account=_account(template.get("spec"))))
            self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        for path, obj, ports in self.unaddressed:
            meta = obj.get("metadata") or {}
            ns, name = meta.get("namespace") or "default", meta.get("name")
            key = next((k for k in (f"Pod/{ns}/{name}", f"{ns}/{name}") if k in self.addresses), None)
            if key is None:
                self.fail(path, obj, f"Pod {ns}/{name} has no address: anyplane needs status.podIP (kubectl get pods "
                                     f"-o yaml shows it), or an Addresses entry {ns}/{name}: [ADDRESS]")
                continue
            used.add(key)
            nets = self.addresses[key][0]
            if len(nets) != 1 or nets[0].num_addresses != 1:
                self.errors.append(error(self.addresses[key][1], "import", f"Addresses: {key} is a Pod: give its "
                                                                           "one address"))
                continue
            out.append(Pod(ns, name, _labels(meta), str(nets[0].network_address), ports, span_of_object(path, obj),
                           account=_account(obj.get("spec"))))
            self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        for key, (_, where, path) in self.addresses.items():
            if key not in used:  # one Addresses file may serve several inputs
                self.notes.append(warning(where, "import", f"Addresses: {key} names no pod or workload controller in "
                                                           "this input: left unused"))
        return out


def _labels(meta) -> dict:
    """A pod's (or a pod template's) labels, without the reader's own `__` keys."""
    return {k: v for k, v in ((meta or {}).get("labels") or {}).items() if not k.startswith("__")}


def _ports(spec) -> list:
    """A pod spec's container ports: (name, number, protocol)."""
    return [(p.get("name"), p.get("containerPort"), p.get("protocol", "TCP"))
            for c in (spec or {}).get("containers") or [] for p in c.get("ports") or []]


def _account(spec) -> str:
    spec = spec if isinstance(spec, dict) else {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return account if isinstance(account, str) else "default"


def selector_key(selector: dict | None):
    """A selector's contents as a key (None for one with an unknown operator, or not plain data: such
    selectors are read pod by pod, so that their errors point at each)."""
    if selector is None:
        return ()
    try:
        labels = tuple(sorted((selector.get("matchLabels") or {}).items()))
        exprs = tuple((e.get("key"), e.get("operator"), tuple(e.get("values") or ()))
                      for e in selector.get("matchExpressions") or ())
        if any(op not in ("In", "NotIn", "Exists", "DoesNotExist") for _, op, _ in exprs):
            return None
        key = (labels, exprs)
        hash(key)
    except (AttributeError, TypeError):
        return None
    return key


def namespaces_selected(selector: dict, path: str, reader: Reader) -> list[str]:
    """The namespaces a selector selects, sorted. One of labels alone is looked up by its first label
    in an index of the namespaces' labels (a cluster's policies name namespaces by label hundreds of
    times); the others are asked of every namespace."""
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    first = None
    if isinstance(labels, dict) and not selector.get("matchExpressions"):
        first = next(((k, v) for k, v in labels.items() if not str(k).startswith("__")), None)
        try:
            hash(first)
        except TypeError:
            first = None
    if first is None:
        return sorted(n for n, got in reader.namespaces.items() if selects(selector, got, path, reader))
    if reader.namespace_index[0] != len(reader.namespaces):
        index: dict = {}
        for n, got in reader.namespaces.items():
            for pair in got.items():
                try:
                    index.setdefault(pair, []).append(n)
                except TypeError:
                    continue  # a value Kubernetes would refuse: no selector's label equals it
        reader.namespace_index = (len(reader.namespaces), index)
    reader.keys_read.update(labels)  # as `selects` notes them
    return sorted(n for n in reader.namespace_index[1].get(first, ())
                  if selects(selector, reader.namespaces[n], path, reader))


def selects(selector: dict | None, labels: dict, path: str, reader: Reader) -> bool:
    """A LabelSelector against labels (an empty selector selects everything). The keys it reads are
    noted: pods that agree on every key any selector reads are one identity (`identity_classes`)."""
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
            reader.fail(path, expr, f"unknown selector operator {op!r} (Kubernetes takes In, NotIn, Exists and "
                                    "DoesNotExist, with this case)")
            return False
    return True
