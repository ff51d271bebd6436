"""The aggregated discovery service (ADS) that serves a fleet of sidecars their snapshot.

    server = XdsServer(Limits())
    running = start(server, "127.0.0.1:18000", tls=None)   # grpc.aio on a thread of its own
    server.publish(snap)                                    # from any thread (backends/envoy/xds.py)
    server.status()                                         # every node: sent, ACKed, NACKed and why

Both flavours of envoy.service.discovery.v3:
- state of the world (StreamAggregatedResources): a type's response carries all of a node's
  resources of that type, versioned by the snapshot (the policy's digest);
- incremental (DeltaAggregatedResources): only the resources whose content changed, and the names
  of those removed; a resource's version is the hash of its content.

A node is chosen by `node.cluster` (the service whose sidecar it is; `node.id` tells sidecars of one
service apart). Per node and type the server keeps the version and nonce it sent, the version the
node ACKed, and the last NACK (Envoy's message, cut to `Limits.message` characters). A NACKed
version is never resent: the node keeps its last good configuration until the next snapshot.
Clusters go before listeners: a node gets a snapshot's listeners only once it has ACKed that
snapshot's clusters. A sidecar that reconnects (to this replica or another) with the current
version is sent nothing new.

No stream holds a thread: the server is asynchronous (grpc.aio) on one event loop. What a client can
take is bounded (`Limits`): streams in all and per peer address, streams per connection (HTTP/2),
the time a stream may stay silent before it names its node, and how long a node that left is
remembered. With TLS the client's certificate names the service it may ask for (a DNS name or a
SPIFFE ID `spiffe://DOMAIN/ns/NS/sa/SERVICE` among its subject alternative names), or a bootstrap
token in the stream's `authorization: Bearer` header does (known tokens, each for one SPIFFE ID;
TLS only); a node that claims another service is refused; without TLS any client that reaches the
port can read every service's configuration (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from .config import PING_FLOOR_S
from .sds import SDS
from .xds import CDS, LDS, NAMED, ORDER, SHORT, Snapshot, digest

#: Every type served: secrets first (listeners and clusters that use them wait for them in Envoy anyway).
TYPES = (SDS,) + ORDER
ASKED = NAMED + (SDS,)  # types a node asks for by name
NAMES = {**SHORT, SDS: "secrets"}


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them, can hold of the server."""

    streams: int = 20_000          # open streams in all
    per_peer: int = 256            # open streams from one peer address
    per_connection: int = 16       # concurrent streams on one HTTP/2 connection (Envoy opens one)
    hello_s: float = 10.0          # a stream that names no node within this is closed
    forget_s: float = 300.0        # a node that left is shown as disconnected this long, then forgotten
    remembered: int = 1_000        # at most this many nodes that left are remembered
    message: int = 1_024           # a NACK's message is kept to this many characters
    ping_floor_s: float = PING_FLOOR_S  # a peer that pings faster while sent nothing is sent away


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
    """One sidecar's stream: who it is, and per resource type what it was sent and answered."""

    id: str
    service: str
    flavour: str
    peer: str
    connected: bool = True
    since: float = field(default_factory=time.time)
    left: float | None = None
    duplicate: bool = False  # another stream already claimed this node id
    types: dict = field(default_factory=lambda: {t: TypeState() for t in TYPES})
    #: the SPIFFE IDs of the stream's client certificate: the only keys it may be given
    spiffe: frozenset = frozenset()

    def to_json(self, current: str | None) -> dict:
        """The node as `status` shows it."""
        return {"id": self.id, "service": self.service, "flavour": self.flavour, "peer": self.peer,
                "connected": self.connected, "duplicate": self.duplicate,
                "types": {NAMES[t]: {"sent": s.sent_version, "acked": s.acked, "nacked": s.nacked,
                                     "error": s.error, "responses": s.responses, "bytes": s.bytes}
                          for t, s in self.types.items() if s.subscribed},
                # Current: every configuration type ACKed at the published version, and its secrets (whose
                # versions are the node's own) ACKed as last sent.
                "current": current is not None and any(s.subscribed for s in self.types.values())
                and all((s.acked == s.sent_version is not None) if t == SDS else s.acked == current
                        for t, s in self.types.items() if s.subscribed)}


def _sans(auth_context: dict) -> list[str] | None:
    """A TLS client certificate's subject alternative names; None on a connection without TLS."""
    if b"ssl" not in auth_context.get("transport_security_type", []):
        return None
    return [raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            for raw in auth_context.get("x509_subject_alternative_name", [])]


def identities(auth_context: dict) -> set[str] | None:
    """The services a client certificate may ask for: its DNS names, and the service account of a SPIFFE
    ID (`spiffe://DOMAIN/ns/NS/sa/NAME`); None on a connection without TLS."""
    sans = _sans(auth_context)
    if sans is None:
        return None
    out = set()
    for name in sans:
        if name.startswith("spiffe://"):
            parts = name.split("/")
            if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa":
                out.add(parts[6])
        elif "://" not in name and "@" not in name:
            out.add(name)
    return out


def spiffe_ids(auth_context: dict) -> frozenset[str]:
    """The SPIFFE IDs among a TLS client certificate's URI SANs (none without TLS)."""
    return frozenset(n for n in _sans(auth_context) or () if n.startswith("spiffe://"))


def _bearer(metadata) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header of a stream, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def _token_identity(tokens: dict[str, str], token: str) -> str | None:
    """The SPIFFE ID a bootstrap token proves (compared in constant time with every known token)."""
    import hmac

    found = None
    for known, spiffe in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = spiffe
    return found


def _host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1` (the address a limit per peer counts)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The aggregated discovery service over one published snapshot at a time."""

    def __init__(self, limits: Limits = Limits(), secrets=None):
        self.limits = limits
        self.secrets = secrets  # backends/envoy/sds.Secrets: the SVIDs served (None: no SDS)
        self.tokens: dict[str, str] = {}  # bootstrap token -> the SPIFFE ID it proves (over TLS only)
        self.snapshot: Snapshot | None = None
        self.nodes: dict[str, Node] = {}
        self.published: list[tuple[float, str]] = []
        self.refused: dict[str, int] = {}  # why -> how many streams were refused or closed for it
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wakes: set[asyncio.Event] = set()
        self._per_peer: dict[str, int] = {}
        self._open = 0
        self._lock = threading.Lock()
        self._nonce = 0

    # -- publishing (any thread) ----------------------------------------------------------------
    def publish(self, snap: Snapshot) -> None:
        """Make `snap` the snapshot every node is brought to."""
        with self._lock:
            if self.snapshot is not None and self.snapshot.version == snap.version:
                return
            self.snapshot = snap
            self.published = (self.published + [(time.time(), snap.version)])[-100:]
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake_all)

    def secrets_changed(self) -> None:
        """Certificates were re-issued (any thread): bring every node its new ones."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    def status(self) -> dict:
        """The version served, every node the server remembers, and its streams and limits."""
        with self._lock:
            self._forget(time.time())
            current = self.snapshot.version if self.snapshot else None
            nodes = sorted(self.nodes.values(), key=lambda n: n.id)
            return {"version": current, "nodes": [n.to_json(current) for n in nodes],
                    "streams": {"open": self._open, "peers": len(self._per_peer), "refused": dict(self.refused)},
                    "limits": self.limits.__dict__}

    def _forget(self, now: float) -> None:
        """Drop nodes that left long enough ago, and the oldest beyond what is remembered (under the lock)."""
        gone = sorted((n.left, k) for k, n in self.nodes.items() if not n.connected)  # oldest first
        excess = len(gone) - self.limits.remembered
        for i, (left, key) in enumerate(gone):
            if i < excess or now - left > self.limits.forget_s:
                del self.nodes[key]

    def _count(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def _next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    # -- the two flavours ------------------------------------------------------------------------
    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        async for resp in self._serve(request_iterator, context, "sotw"):
            yield resp

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        async for resp in self._serve(request_iterator, context, "delta"):
            yield resp

    async def _serve(self, requests, context, flavour: str):
        peer = context.peer()
        host = _host(peer)
        if self._open >= self.limits.streams or self._per_peer.get(host, 0) >= self.limits.per_peer:
            self._count("too many streams")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many xDS streams (from this address)")
        self._open += 1
        self._per_peer[host] = self._per_peer.get(host, 0) + 1
        auth = context.auth_context()
        allowed, spiffe = identities(auth), spiffe_ids(auth)
        token = _bearer(context.invocation_metadata()) if self.tokens else None
        if token is not None:
            proved = _token_identity(self.tokens, token)
            if proved is None or b"ssl" not in auth.get("transport_security_type", []):
                self._count("unknown bootstrap token")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown bootstrap token")
            spiffe = spiffe | {proved}
            allowed = (allowed or set()) | {proved.rsplit("/", 1)[-1]}
        wake = asyncio.Event()
        self._wakes.add(wake)
        node: Node | None = None
        stream = requests.__aiter__()
        reading = asyncio.ensure_future(stream.__anext__())
        waiting = asyncio.ensure_future(wake.wait())
        try:
            while True:
                timeout = self.limits.hello_s if node is None else None
                done, _ = await asyncio.wait({reading, waiting}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    self._count("named no node in time")
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"no request naming a node within {self.limits.hello_s:g}s")
                if reading in done:
                    try:
                        req = reading.result()
                    except (StopAsyncIteration, asyncio.CancelledError):
                        break
                    if node is None:
                        if not req.node.cluster:
                            self._count("no node.cluster")
                            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                                "the first request names no node.cluster (the sidecar's service)")
                        if allowed is not None and req.node.cluster not in allowed:
                            self._count("certificate names another service")
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                                f"this client's certificate does not name service "
                                                f"'{req.node.cluster[:100]}'")
                        node = self._join(req, flavour, peer)
                        node.spiffe = spiffe
                    self._request(node, req, flavour)
                    reading = asyncio.ensure_future(stream.__anext__())
                if waiting in done:
                    wake.clear()
                    waiting = asyncio.ensure_future(wake.wait())
                if node is not None:
                    for resp in self._due(node, flavour):
                        yield resp
        finally:
            for task in (reading, waiting):
                task.cancel()
            self._wakes.discard(wake)
            self._open -= 1
            self._per_peer[host] -= 1
            if not self._per_peer[host]:
                del self._per_peer[host]
            if node is not None:
                with self._lock:
                    node.connected, node.left = False, time.time()
                    self._forget(node.left)

    def _join(self, req, flavour: str, peer: str) -> Node:
        """The node of a new stream; a node id that another open stream holds is kept apart, so that no
        client can rewrite what status says of a running sidecar."""
        node_id = (req.node.id or peer)[:253]
        with self._lock:
            key, duplicate = node_id, False
            if key in self.nodes and self.nodes[key].connected:
                key, duplicate = f"{node_id} (again, from {peer})", True
            node = Node(node_id, req.node.cluster[:253], flavour, peer, duplicate=duplicate)
            self.nodes[key] = node
            self._forget(time.time())
        return node

    def _request(self, node: Node, req, flavour: str) -> None:
        if req.type_url not in node.types:
            return  # a type this server does not serve: answered with nothing
        st = node.types[req.type_url]
        st.subscribed = True
        error = req.error_detail.message[:self.limits.message] if req.HasField("error_detail") else None
        if flavour == "delta":
            if req.type_url in ASKED:
                st.names = (st.names or frozenset()) | set(req.resource_names_subscribe)
                st.names = st.names - set(req.resource_names_unsubscribe)
            if not req.response_nonce:
                st.have = dict(req.initial_resource_versions)
            elif req.response_nonce in st.pending:
                before, version = st.pending.pop(req.response_nonce)
                if req.HasField("error_detail") and req.error_detail.code != 0:
                    st.have, st.nacked, st.error = before, version, error
                else:
                    st.acked = version
            return
        if req.type_url in ASKED:
            st.names = frozenset(req.resource_names)
        if req.response_nonce and req.response_nonce != st.sent_nonce:
            return  # an answer to an older response
        if req.type_url in ASKED and st.names != st.sent_names and not req.HasField("error_detail"):
            st.sent_version = None  # it asks for other names: answer again
        if req.response_nonce:
            if req.HasField("error_detail") and req.error_detail.code != 0:
                st.nacked, st.error = st.sent_version, error
            else:
                st.acked = req.version_info
        elif req.version_info and req.version_info == (self.snapshot.version if self.snapshot else None):
            # A sidecar that reconnects (to this replica or another) with the current version.
            st.sent_version = st.acked = req.version_info
            st.sent_names = st.names

    def _secrets(self, node: Node, st: TypeState) -> tuple[str, dict[str, bytes]]:
        """A node's secrets: the trust bundle, and its service's SVID only when its own xDS client
        certificate carries that SPIFFE ID (what the node claims is never enough)."""
        version, wanted = self.secrets.of(node.service)
        principal = self.secrets.principal(node.service)
        if principal is not None and principal not in node.spiffe:
            wanted = {n: v for n, v in wanted.items() if n != principal}
            version += "-no-key"
            if st.names is None or principal in st.names:
                st.error = (f"no key for {principal[:200]}: the client certificate of this xDS stream does not "
                            "carry that SPIFFE ID")
                if not st.responses:
                    self._count("key asked without its identity")
        return version, wanted

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
        for type_url in TYPES:
            st = node.types[type_url]
            if type_url == SDS:
                if not st.subscribed or self.secrets is None:
                    continue
                version, wanted = self._secrets(node, st)
            else:
                version, wanted = snap.version, snap.of(node.service, type_url)
            if not st.subscribed or not self._ready(node, type_url, snap.version) or st.nacked == version:
                continue
            if type_url in ASKED and st.names is not None:
                wanted = {n: v for n, v in wanted.items() if n in st.names}
            if flavour == "sotw":
                if st.sent_version == version:
                    continue
                resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                                       nonce=self._next_nonce())
                for name in sorted(wanted):
                    resp.resources.add(type_url=type_url, value=wanted[name])
                st.sent_version, st.sent_nonce, st.sent_names = version, resp.nonce, st.names
            else:
                versions = {name: digest(data) for name, data in wanted.items()}
                changed = sorted(n for n, v in versions.items() if st.have.get(n) != v)
                removed = sorted(n for n in st.have if n not in wanted
                                 and (type_url not in ASKED or n in (st.names or ())))
                if not changed and not removed:
                    if st.acked != version and not st.pending:
                        st.acked = version  # nothing to send: the node already holds this snapshot
                    continue
                if st.pending:
                    continue  # one response in flight per type
                resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url,
                                                            nonce=self._next_nonce(), removed_resources=removed)
                for name in changed:
                    r = resp.resources.add(name=name, version=versions[name])
                    r.resource.CopyFrom(any_pb2.Any(type_url=type_url, value=wanted[name]))
                st.pending[resp.nonce] = (dict(st.have), version)
                st.have = {n: versions[n] for n in wanted}
                st.sent_version, st.sent_nonce = version, resp.nonce
            st.responses += 1
            st.bytes += resp.ByteSize()
            yield resp


@dataclass
class Tls:
    """Server certificate and key, and the CA that signs the sidecars' client certificates (None: clients
    need none, and prove who they are with a bootstrap token)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


class Running:
    """A started server: its event loop runs on a thread of its own until `stop`."""

    def __init__(self, server: XdsServer, address: str, tls: Tls | None):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="anyplane-xds", daemon=True)
        self.thread.start()
        try:
            self.bound_port = asyncio.run_coroutine_threadsafe(self._start(address, tls), self.loop).result(30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        server.loop = self.loop

    async def _start(self, address: str, tls: Tls | None) -> int:
        limits = self.server.limits
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.max_concurrent_streams", limits.per_connection),
            # Dead peers are found and their streams closed: a ping every minute, 20 s to answer.
            ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", int(limits.ping_floor_s * 1000))])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.server, self.grpc)
        if tls is None:
            port = self.grpc.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                                require_client_auth=tls.client_ca is not None)
            port = self.grpc.add_secure_port(address, creds)
        if not port:
            raise OSError(f"cannot listen on {address}")
        await self.grpc.start()
        return port

    def stop(self, grace: float = 0) -> None:
        """Close every stream and the port, and end the loop's thread."""
        if not self.loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.grpc.stop(grace), self.loop).result(grace + 30)
        finally:
            self.server.loop = None
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


def start(server: XdsServer, address: str, tls: Tls | None = None) -> Running:
    """Serve on `address` (HOST:PORT); with `tls`, only clients with a certificate the CA signed, each
    for the services its certificate names."""
    return Running(server, address, tls)
