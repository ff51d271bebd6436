"""The field catalogue: every header field a match may test, with its width and layer.

Layers say which engine can see a field: L3/L4 fields are visible to every
engine (switch, kernel, sidecar); L7 fields only to the sidecar: the HTTP request, and
`src.peer`, the identity a client proved with its certificate under mutual TLS. `src.id` and
`dst.id` are derived fields (metadata in P4 terms): the identity that owns the
address under longest-prefix ownership, resolved by the endpoint table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Field:
    """A matchable field: name, width in bits (None for strings) and layer."""

    name: str
    width: int | None
    layer: str
    doc: str


SRC_IP = "src.ip"
DST_IP = "dst.ip"
SRC_ID = "src.id"
DST_ID = "dst.id"
PROTO = "proto"
SPORT = "sport"
DPORT = "dport"
ICMP_TYPE = "icmp.type"
ICMP_CODE = "icmp.code"
SRC_PEER = "src.peer"
HTTP = "http"
HTTP_METHOD = "http.method"
HTTP_PATH = "http.path"
HTTP_HOST = "http.host"
HEADER_PREFIX = "http.header."

_CATALOGUE = (
    Field(SRC_ID, 16, "L3", "identity owning the source address (longest prefix)"),
    Field(SRC_IP, 128, "L3", "source address (32 bits for IPv4, 128 for IPv6)"),
    Field(DST_ID, 16, "L3", "identity owning the destination address (longest prefix)"),
    Field(DST_IP, 128, "L3", "destination address (32 bits for IPv4, 128 for IPv6)"),
    Field(PROTO, 8, "L3", "IP protocol number (next header for IPv6)"),
    Field(SPORT, 16, "L4", "TCP/UDP source port"),
    Field(DPORT, 16, "L4", "TCP/UDP destination port"),
    Field(ICMP_TYPE, 8, "L4", "ICMP or ICMPv6 type"),
    Field(ICMP_CODE, 8, "L4", "ICMP or ICMPv6 code"),
    Field(SRC_PEER, None, "L7", "SPIFFE ID of the client certificate the destination's sidecar verified (mTLS)"),
    Field(HTTP, 1, "L7", "the flow carries an HTTP request"),
    Field(HTTP_METHOD, None, "L7", "HTTP request method"),
    Field(HTTP_PATH, None, "L7", "HTTP request path, without the query string"),
    Field(HTTP_HOST, None, "L7", "HTTP authority (Host header)"),
)

FIELDS: dict[str, Field] = {f.name: f for f in _CATALOGUE}

#: Order used when printing a match, so that dumps read like a packet header.
FIELD_ORDER = {f.name: i for i, f in enumerate(_CATALOGUE)}


def header_field(name: str) -> str:
    """The field name for an HTTP header (names are lower case)."""
    return HEADER_PREFIX + name.lower()


def lookup(name: str) -> Field:
    """The catalogue entry of a field, including `http.header.<name>` fields."""
    found = FIELDS.get(name)
    if found is not None:
        return found
    if name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX):
        return Field(name, None, "L7", f"HTTP header {name[len(HEADER_PREFIX):]!r}")
    raise KeyError(f"unknown field {name!r}")


def layer(name: str) -> str:
    """`L3`, `L4` or `L7`."""
    return lookup(name).layer


def sort_key(name: str) -> tuple[int, str]:
    """Catalogue order first, then header fields by name."""
    rank = FIELD_ORDER.get(name)
    return (rank, "") if rank is not None else (len(FIELD_ORDER), name)
