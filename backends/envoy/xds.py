"""What the xDS control plane serves: every sidecar's resources, as protobuf messages, per snapshot.

    snap = snapshot(built, version)   # {service: (listeners, clusters)} -> Snapshot, the policy's digest
    snap.of("reviews", LDS)           # resource name -> serialized Listener

Listeners, routes, clusters and endpoints: each static cluster's endpoints go as an EDS resource and
each HTTP connection manager's route table as an RDS one (asked for by name), so an endpoint or a
route changes without its cluster or listener. The snapshot is a function of the policy alone, so
replicas serving the same policy send the same versions. backends/envoy/ads.py serves it.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import dataclass

from google.protobuf import descriptor_pool, json_format

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

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
    msg = _MESSAGES[type_url]()
    try:
        fill(msg, resource)  # loads the modules of the types it meets
    except _Unhandled:  # a shape the direct path leaves to json_format (none that anyplane writes)
        for name in _types_in(resource):
            _import_type(name)
        msg = _MESSAGES[type_url]()
        json_format.ParseDict(resource, msg)
    data = msg.SerializeToString(deterministic=True)
    if len(_PACKED) >= _PACKED_MAX:
        _PACKED.clear()
    _PACKED[key] = data
    return data


class _Unhandled(Exception):
    """A value the direct conversion does not cover."""


_WRAPPERS = frozenset(f"google.protobuf.{n}Value" for n in ("Bool", "Int32", "UInt32", "Int64", "UInt64", "Float",
                                                               "Double", "String", "Bytes"))
_CLASSES: dict[str, type] = {}


def _class(full_name: str):
    cls = _CLASSES.get(full_name)
    if cls is None:
        from google.protobuf import message_factory

        _import_type(full_name)
        cls = _CLASSES[full_name] = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(full_name))
    return cls


def fill(msg, value, seen: dict | None = None) -> None:
    """Set a message from Envoy's JSON form (proto field names, `@type` in Any, durations as "1.5s",
    enums by name), directly on the message: json_format.ParseDict gives the same message at several
    times the cost, which dominated publishing a large policy. A dict that occurs several times in the
    resource (a rule's matcher under every source class that reaches it) is converted once and copied
    (`seen`: id -> (dict, message))."""
    if seen is None:
        seen = {}
    desc = msg.DESCRIPTOR
    name = desc.full_name
    if name == "google.protobuf.Any":
        type_url = value["@type"]
        inner = _class(type_url.rsplit("/", 1)[-1])()
        body = {k: v for k, v in value.items() if k != "@type"}
        if inner.DESCRIPTOR.full_name in _WRAPPERS or inner.DESCRIPTOR.full_name == "google.protobuf.Duration":
            body = body["value"]
        fill(inner, body, seen)
        msg.type_url, msg.value = type_url, inner.SerializeToString(deterministic=True)
        return
    if name == "google.protobuf.Duration":
        msg.FromJsonString(value)
        return
    if name in _WRAPPERS:
        msg.value = value
        return
    if name.startswith("google.protobuf.") and name != "google.protobuf.Empty":
        json_format.ParseDict(value, msg)  # Struct, Value and the like
        return
    if not isinstance(value, dict):
        raise _Unhandled(name)
    fields = desc.fields_by_name
    for key, v in value.items():
        f = fields.get(key)
        if f is None:
            raise _Unhandled(f"{name}.{key}")
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target = getattr(msg, key)
            vf = f.message_type.fields_by_name["value"]
            for mk, mv in v.items():
                if vf.message_type is not None:
                    fill(target[mk], mv, seen)
                else:
                    target[mk] = mv
        elif f.is_repeated:
            target = getattr(msg, key)
            if f.message_type is not None:
                for item in v:
                    _sub(target.add(), item, seen)
            else:
                target.extend(_scalar(f, item) for item in v)
        elif f.message_type is not None:
            sub = getattr(msg, key)
            sub.SetInParent()
            _sub(sub, v, seen)
        else:
            setattr(msg, key, _scalar(f, v))


def _sub(sub, v, seen: dict) -> None:
    hit = seen.get(id(v)) if isinstance(v, dict) else None
    if hit is not None and hit[0] is v:
        sub.CopyFrom(hit[1])
        return
    fill(sub, v, seen)
    if isinstance(v, dict) and len(v) > 1:
        seen[id(v)] = (v, sub)


def _scalar(f, v):
    if f.enum_type is not None and isinstance(v, str):
        return f.enum_type.values_by_name[v].number
    if f.type == f.TYPE_BYTES and isinstance(v, str):
        import base64

        return base64.b64decode(v)
    if f.type in (f.TYPE_INT64, f.TYPE_UINT64, f.TYPE_SINT64, f.TYPE_FIXED64, f.TYPE_SFIXED64) and isinstance(v, str):
        return int(v)
    if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT) and isinstance(v, int):
        return float(v)
    return v


def digest(data: bytes) -> str:
    """A resource's version in the incremental flavour: the hash of its content."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """What every service's sidecars should run: service -> type URL -> resource name -> message bytes."""

    version: str
    resources: dict

    def of(self, service: str, type_url: str) -> dict[str, bytes]:
        """One service's resources of one type: name -> serialized message."""
        return self.resources.get(service, {}).get(type_url, {})


def split(listeners: list[dict], clusters: list[dict]) -> dict:
    """A sidecar's resources by type: each static cluster's endpoints become an EDS resource, each
    HTTP connection manager's inline route table an RDS one (so an endpoint or a route can change
    without its cluster or listener). The inputs stay as they are: what changes is copied on the way
    (the rest is shared, as the messages made from it are)."""
    out = {CDS: {}, EDS: {}, LDS: {}, RDS: {}}
    for c in clusters:
        if c.get("type", "STATIC") == "STATIC" and "load_assignment" in c:
            c = dict(c)
            cla = dict(c.pop("load_assignment"), cluster_name=c["name"])
            c["type"] = "EDS"
            c["eds_cluster_config"] = {"eds_config": dict(_ADS, ads={})}
            out[EDS][c["name"]] = cla
        out[CDS][c["name"]] = c
    for listener in listeners:
        if "filter_chains" in listener:
            chains = []
            for chain in listener["filter_chains"]:
                filters = []
                for f in chain.get("filters", []):
                    tc = f.get("typed_config") or {}
                    if f.get("name") == HCM and "route_config" in tc:
                        tc = dict(tc)
                        rc = dict(tc.pop("route_config"))
                        rc.setdefault("name", f"{listener['name']}|routes")
                        tc["rds"] = {"config_source": dict(_ADS, ads={}), "route_config_name": rc["name"]}
                        out[RDS][rc["name"]] = rc
                        f = dict(f, typed_config=tc)
                    filters.append(f)
                chains.append(dict(chain, filters=filters) if "filters" in chain else chain)
            listener = dict(listener, filter_chains=chains)
        out[LDS][listener["name"]] = listener
    return out


def snapshot(built: dict, version: str) -> Snapshot:
    """From `{service: (listeners, clusters)}` (backends/envoy/engine.build)."""
    out = {}
    for svc, (listeners, clusters) in built.items():
        out[svc] = {t: {name: pack(t, r) for name, r in rs.items()} for t, rs in split(listeners, clusters).items()}
    return Snapshot(version, out)
