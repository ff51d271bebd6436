"""An xDS control plane: every sidecar of a fleet gets its listeners and clusters over gRPC (ADS).

    server = XdsServer()
    server.publish(snapshot(built, version))      # {service: (listeners, clusters)}, the policy's digest
    grpc_server = start(server, "127.0.0.1:18000", tls=None)
    server.status()                               # every node: version sent, ACKed, NACKed and why

Both flavours of the aggregated service (envoy.service.discovery.v3):
- state of the world (StreamAggregatedResources): a type's response carries all of a node's
  resources of that type, versioned by the snapshot (the policy's digest);
- incremental (DeltaAggregatedResources): only the resources whose content changed, and the names
  of those removed; a resource's version is the hash of its content.

Listeners, routes, clusters and endpoints: each static cluster's endpoints go as an EDS resource and
each HTTP connection manager's route table as an RDS one (asked for by name).

A node is chosen by `node.cluster` (the service whose sidecar it is; `node.id` tells sidecars of one
service apart). Per node and type the server keeps the version and nonce it sent, the version the
node ACKed, and the last NACK (Envoy's message). A NACKed version is never resent: the node keeps
its last good configuration until the next snapshot. Clusters go before listeners: a node gets a
snapshot's listeners only once it has ACKed that snapshot's clusters, so a listener never refers to
a cluster the sidecar does not have yet. The snapshot is a function of the policy alone, so replicas
serving the same policy send the same versions, and a sidecar that reconnects to another replica is
sent nothing new.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import queue
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, descriptor_pool, json_format

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ORDER = (CDS, EDS, LDS, RDS)  # clusters (and their endpoints) before the listeners (and routes) that use them
NAMED = (EDS, RDS)            # types a node asks for by name (the others: everything it is given)
SHORT = {CDS: "clusters", EDS: "endpoints", LDS: "listeners", RDS: "routes"}
_MESSAGES = {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment, LDS: listener_pb2.Listener,
             RDS: route_pb2.RouteConfiguration}
_ADS = {"ads": {}, "resource_api_version": "V3"}
HCM = "envoy.filters.network.http_connection_manager"


def _import_type(full_name: str) -> None:
    """Load the generated module of a message type named in an `@type` (typed_config of filters)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return
    except KeyError:
        pass
    package = full_name.rsplit(".", 1)[0]
    mod = importlib.import_module(package)
    for info in pkgutil.iter_modules(mod.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def _types_in(obj) -> set[str]:
    out = set()
    if isinstance(obj, dict):
        if isinstance(obj.get("@type"), str):
            out.add(obj["@type"].rsplit("/", 1)[-1])
        for v in obj.values():
            out |= _types_in(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _types_in(v)
    return out


_PACKED: dict[str, bytes] = {}
_PACKED_MAX = 200_000


def pack(type_url: str, resource: dict) -> bytes:
    """A resource (Envoy's JSON form) as the serialized protobuf message. Remembered by content: a new
    version of the policy converts only the resources that changed (json_format is slow)."""
    import json

    key = type_url + hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()
    hit = _PACKED.get(key)
    if hit is not None:
        return hit
    for name in _types_in(resource):
        _import_type(name)
    msg = _MESSAGES[type_url]()
    json_format.ParseDict(resource, msg)
    data = msg.SerializeToString(deterministic=True)
    if len(_PACKED) >= _PACKED_MAX:
        _PACKED.clear()
    _PACKED[key] = data
    return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """What every service's sidecars should run: service -> type URL -> resource name -> message bytes."""

    version: str
    resources: dict

    def of(self, service: str, type_url: str) -> dict[str, bytes]:
        return self.resources.get(service, {}).get(type_url, {})


def split(listeners: list[dict], clusters: list[dict]) -> dict:
    """A sidecar's resources by type: each static cluster's endpoints become an EDS resource, each
    HTTP connection manager's inline route table an RDS one (so an endpoint or a route can change
    without its cluster or listener)."""
    import copy

    out = {CDS: {}, EDS: {}, LDS: {}, RDS: {}}
    for c in copy.deepcopy(clusters):
        if c.get("type", "STATIC") == "STATIC" and "load_assignment" in c:
            cla = c.pop("load_assignment")
            cla["cluster_name"] = c["name"]
            c["type"] = "EDS"
            c["eds_cluster_config"] = {"eds_config": dict(_ADS, ads={})}
            out[EDS][c["name"]] = cla
        out[CDS][c["name"]] = c
    for listener in copy.deepcopy(listeners):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                tc = f.get("typed_config") or {}
                if f.get("name") == HCM and "route_config" in tc:
                    rc = tc.pop("route_config")
                    rc.setdefault("name", f"{listener['name']}|routes")
                    tc["rds"] = {"config_source": dict(_ADS, ads={}), "route_config_name": rc["name"]}
                    out[RDS][rc["name"]] = rc
        out[LDS][listener["name"]] = listener
    return out


def snapshot(built: dict, version: str) -> Snapshot:
    """From `{service: (listeners, clusters)}` (backends/envoy/engine.build)."""
    out = {}
    for svc, (listeners, clusters) in built.items():
        out[svc] = {t: {name: pack(t, r) for name, r in rs.items()} for t, rs in split(listeners, clusters).items()}
    return Snapshot(version, out)


@dataclass
class TypeState:
    """One node's view of one resource type."""

    subscribed: bool = False
    names: frozenset | None = None  # the resources asked for by name (EDS, RDS); None: all
    sent_names: frozenset | None = None
    sent_version: str | None = None
    sent_nonce: str | None = None
    acked: str | None = None
    nacked: str | None = None
    error: str | None = None
    have: dict = field(default_factory=dict)  # delta: resource name -> version the node holds
    pending: dict = field(default_factory=dict)  # delta: nonce -> (have before, version)
    responses: int = 0
    bytes: int = 0


@dataclass
class Node:
    id: str
    service: str
    flavour: str
    peer: str
    connected: bool = True
    since: float = field(default_factory=time.time)
    types: dict = field(default_factory=lambda: {t: TypeState() for t in ORDER})

    def to_json(self, current: str | None) -> dict:
        return {"id": self.id, "service": self.service, "flavour": self.flavour, "peer": self.peer,
                "connected": self.connected,
                "types": {SHORT[t]: {"sent": s.sent_version, "acked": s.acked, "nacked": s.nacked,
                                     "error": s.error, "responses": s.responses, "bytes": s.bytes}
                          for t, s in self.types.items() if s.subscribed},
                "current": current is not None and any(s.subscribed for s in self.types.values())
                and all(s.acked == current for s in self.types.values() if s.subscribed)}


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The aggregated discovery service over one published snapshot at a time."""

    def __init__(self):
        self.snapshot: Snapshot | None = None
        self.nodes: dict[str, Node] = {}
        self._streams: set[queue.Queue] = set()
        self._lock = threading.Lock()
        self._nonce = 0
        self.published: list[tuple[float, str]] = []

    # -- publishing -----------------------------------------------------------------------------
    def publish(self, snap: Snapshot) -> None:
        with self._lock:
            if self.snapshot is not None and self.snapshot.version == snap.version:
                return
            self.snapshot = snap
            self.published.append((time.time(), snap.version))
            for q in self._streams:
                q.put(("snapshot",))

    def status(self) -> dict:
        with self._lock:
            current = self.snapshot.version if self.snapshot else None
            return {"version": current, "nodes": [n.to_json(current) for n in sorted(self.nodes.values(),
                                                                                     key=lambda n: n.id)]}

    def _next_nonce(self) -> str:
        with self._lock:
            self._nonce += 1
            return str(self._nonce)

    # -- the two flavours ------------------------------------------------------------------------
    def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        yield from self._serve(request_iterator, context, "sotw")

    def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        yield from self._serve(request_iterator, context, "delta")

    def _serve(self, requests, context, flavour: str):
        events: queue.Queue = queue.Queue()

        def pump():
            try:
                for r in requests:
                    events.put(("request", r))
            except grpc.RpcError:
                pass
            events.put(("end",))
        threading.Thread(target=pump, daemon=True).start()
        with self._lock:
            self._streams.add(events)
        node: Node | None = None
        try:
            while True:
                ev = events.get()
                if ev[0] == "end" or not context.is_active():
                    break
                if ev[0] == "request":
                    node = self._request(node, ev[1], flavour, context.peer())
                if node is not None:
                    for resp in self._due(node, flavour):
                        yield resp
        finally:
            with self._lock:
                self._streams.discard(events)
            if node is not None:
                node.connected = False

    def _request(self, node: Node | None, req, flavour: str, peer: str) -> Node:
        if node is None:
            node_id = req.node.id or peer
            with self._lock:
                node = Node(node_id, req.node.cluster, flavour, peer)
                self.nodes[node_id] = node
        if req.type_url not in node.types:
            return node  # a type this server does not serve: answered with nothing
        st = node.types[req.type_url]
        st.subscribed = True
        if flavour == "delta":
            if req.type_url in NAMED:
                st.names = (st.names or frozenset()) | set(req.resource_names_subscribe)
                st.names = st.names - set(req.resource_names_unsubscribe)
            if not req.response_nonce:
                st.have = dict(req.initial_resource_versions)
            elif req.response_nonce in st.pending:
                before, version = st.pending.pop(req.response_nonce)
                if req.HasField("error_detail") and req.error_detail.code != 0:
                    st.have, st.nacked, st.error = before, version, req.error_detail.message
                else:
                    st.acked = version
            return node
        if req.type_url in NAMED:
            st.names = frozenset(req.resource_names)
        if req.response_nonce and req.response_nonce != st.sent_nonce:
            return node  # an answer to an older response
        if req.type_url in NAMED and st.names != st.sent_names and not req.HasField("error_detail"):
            st.sent_version = None  # it asks for other names: answer again
        if req.response_nonce:
            if req.HasField("error_detail") and req.error_detail.code != 0:
                st.nacked, st.error = st.sent_version, req.error_detail.message
            else:
                st.acked = req.version_info
        elif req.version_info and req.version_info == (self.snapshot.version if self.snapshot else None):
            # A sidecar that reconnects (to this replica or another) with the current version.
            st.sent_version = st.acked = req.version_info
            st.sent_names = st.names
        return node

    def _ready(self, node: Node, type_url: str, version: str) -> bool:
        """Listeners wait for the clusters of the same snapshot."""
        if type_url != LDS:
            return True
        cds = node.types[CDS]
        return not cds.subscribed or cds.acked == version

    def _due(self, node: Node, flavour: str):
        snap = self.snapshot
        if snap is None:
            return
        for type_url in ORDER:
            st = node.types[type_url]
            if not st.subscribed or not self._ready(node, type_url, snap.version) or st.nacked == snap.version:
                continue
            wanted = snap.of(node.service, type_url)
            if type_url in NAMED and st.names is not None:
                wanted = {n: v for n, v in wanted.items() if n in st.names}
            if flavour == "sotw":
                if st.sent_version == snap.version:
                    continue
                resp = discovery_pb2.DiscoveryResponse(version_info=snap.version, type_url=type_url,
                                                       nonce=self._next_nonce())
                for name in sorted(wanted):
                    resp.resources.add(type_url=type_url, value=wanted[name])
                st.sent_version, st.sent_nonce, st.sent_names = snap.version, resp.nonce, st.names
            else:
                versions = {name: _digest(data) for name, data in wanted.items()}
                changed = sorted(n for n, v in versions.items() if st.have.get(n) != v)
                removed = sorted(n for n in st.have if n not in wanted
                                 and (type_url not in NAMED or n in (st.names or ())))
                if not changed and not removed:
                    if st.acked != snap.version and not st.pending:
                        st.acked = snap.version  # nothing to send: the node already holds this snapshot
                    continue
                if st.pending:
                    continue  # one response in flight per type
                resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=snap.version, type_url=type_url,
                                                            nonce=self._next_nonce(), removed_resources=removed)
                for name in changed:
                    r = resp.resources.add(name=name, version=versions[name])
                    r.resource.CopyFrom(any_pb2.Any(type_url=type_url, value=wanted[name]))
                st.pending[resp.nonce] = (dict(st.have), snap.version)
                st.have = {n: versions[n] for n in wanted}
                st.sent_version, st.sent_nonce = snap.version, resp.nonce
            st.responses += 1
            st.bytes += resp.ByteSize()
            yield resp


@dataclass
class Tls:
    """Server certificate and key, and the CA that signs the sidecars' client certificates."""

    cert: bytes
    key: bytes
    client_ca: bytes


def start(server: XdsServer, address: str, tls: Tls | None = None, workers: int = 256) -> grpc.Server:
    """Serve on `address` (HOST:PORT); with `tls`, only clients with a certificate the CA signed."""
    from concurrent import futures

    g = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                    options=[("grpc.max_send_message_length", 64 << 20)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, g)
    if tls is None:
        port = g.add_insecure_port(address)
    else:
        creds = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                            require_client_auth=True)
        port = g.add_secure_port(address, creds)
    if not port:
        raise OSError(f"cannot listen on {address}")
    g.start()
    g.bound_port = port
    return g
