"""Concrete flows and HTTP requests: the inputs of the reference interpreter.

A flow is one packet's worth of header fields (or one HTTP request with the
connection it travels on). `Flow.text` renders it in the policy's pattern
syntax, so a flow printed by any command can be pasted into
`anyplane explain --flow`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from . import fields as F
from . import http
from .addr import WIDTH, format_address

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
PORT_PROTOCOLS = (TCP, UDP)
IPV6_EXTENSION_HEADERS = (0, 43, 44, 60)  # hop-by-hop, routing, fragment, destination options
ICMP_PROTOCOLS = (ICMP, ICMP6)
PROTOCOL_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMP6: "icmp"}
#: The methods a rule may name (CONNECT opens a tunnel, which the sidecar does not forward).
SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]{1,255}(/[A-Za-z0-9._-]+)+")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH")


def is_spiffe_id(text: str) -> bool:
    """`spiffe://TRUST_DOMAIN/PATH`: a trust domain of lower-case letters, digits, '.', '-' and '_', and
    a non-empty path of segments of letters, digits, '.', '-' and '_' (the SPIFFE ID standard)."""
    return SPIFFE_ID.fullmatch(text) is not None


def quote(text: str) -> str:
    """A policy-syntax string literal (JSON escaping is a subset of ours)."""
    return json.dumps(text)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the sidecar sees it: method, path (normal form, no query string), host
    (normalised) and headers (lower-case names).

    `refused` names why the sidecar answers 400 before any rule is consulted; such a request
    keeps its path and host as sent, for display. `sent` is the request target as written when
    it differs from the normal form (display only).
    """

    method: str
    path: str
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    refused: str | None = None
    sent: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        names = [n for n, _ in self.headers]
        if names != sorted(set(names)) or any(n != n.lower() for n in names):
            raise ValueError("request headers must have distinct lower-case names, sorted")
        if self.refused is not None:
            return
        if not http.is_canonical(self.path):
            raise ValueError(f"request path {self.path!r} is not in normal form")
        if self.host is not None and http.host_problem(self.host) is not None:
            raise ValueError(f"request host {self.host!r} is not normalised")
        http.check_method(self.method)

    @classmethod
    def sent_as(cls, method: str, target: str, host: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> "Request":
        """The request the sidecar sees for what a client sent (refused when it answers 400):
        header names in lower case and values without surrounding blanks, as HTTP reads them."""
        headers = tuple(sorted((name.lower(), value.strip(" \t")) for name, value in headers))
        try:
            http.check_method(method)
            t = http.parse_target(target)
            authority = t.authority if t.authority is not None else host
            normal_host = http.normalise_host(authority) if authority is not None else None
        except http.Rejected as exc:
            return cls(method, target, host, headers, refused=str(exc))
        return cls(method, t.canonical, normal_host, headers, sent=target if t.canonical != target else None)

    def header(self, name: str) -> str | None:
        """Value of a header, or None when absent."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Flow:
    """A concrete flow: addresses, protocol, ports or ICMP type/code, optional HTTP request."""

    family: int
    src: int
    dst: int
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    http: Request | None = None
    fragment: bool = False
    peer: str | None = None

    def __post_init__(self) -> None:
        if self.family not in WIDTH:
            raise ValueError("family must be 4 or 6")
        limit = 1 << WIDTH[self.family]
        if not (0 <= self.src < limit and 0 <= self.dst < limit):
            raise ValueError("address out of range for its family")
        if not 0 <= self.proto <= 255:
            raise ValueError("protocol out of range")
        if self.family == 6 and self.proto in IPV6_EXTENSION_HEADERS:
            raise ValueError(f"IPv6 next header {self.proto} is an extension header, not a protocol")
        has_ports = self.proto in PORT_PROTOCOLS and not self.fragment
        if has_ports != (self.sport is not None and self.dport is not None):
            raise ValueError("TCP and UDP flows (not their non-first fragments), and only they, carry both ports")
        for p in (self.sport, self.dport):
            if p is not None and not 0 <= p <= 65535:
                raise ValueError("port out of range")
        if self.is_icmp != (self.icmp_type is not None and self.icmp_code is not None):
            raise ValueError("ICMP (IPv4) and ICMPv6 (IPv6) flows, and only they, carry a type and a code")
        if self.http is not None and (self.proto != TCP or self.fragment):
            raise ValueError("HTTP requests travel over TCP")
        if self.peer is not None and (self.proto != TCP or self.fragment or not is_spiffe_id(self.peer)):
            raise ValueError("a peer is the SPIFFE ID of a TLS client certificate, on a TCP connection")

    @property
    def is_icmp(self) -> bool:
        """ICMP over IPv4 or ICMPv6 over IPv6 (first fragments): the flows that carry a type and a code."""
        return (self.proto, self.family) in ((ICMP, 4), (ICMP6, 6)) and not self.fragment

    def value(self, field: str):
        """The flow's value of a header field (None when the flow has no such field).

        `src.id` and `dst.id` are not header fields: the interpreter resolves them.
        """
        if field == F.SRC_IP:
            return (self.family, self.src)
        if field == F.DST_IP:
            return (self.family, self.dst)
        simple = {F.PROTO: self.proto, F.SPORT: self.sport, F.DPORT: self.dport,
                  F.ICMP_TYPE: self.icmp_type, F.ICMP_CODE: self.icmp_code}
        if field in simple:
            return simple[field]
        if field == F.SRC_PEER:
            return self.peer
        if field == F.HTTP:
            return True if self.http is not None else None
        if self.http is None:
            return None
        if field == F.HTTP_METHOD:
            return self.http.method
        if field == F.HTTP_PATH:
            return self.http.path
        if field == F.HTTP_HOST:
            return self.http.host
        if field.startswith(F.HEADER_PREFIX):
            return self.http.header(field[len(F.HEADER_PREFIX):])
        raise KeyError(f"unknown field {field!r}")

    def without_http(self) -> "Flow":
        """The same flow as seen below L7 (what a kernel or switch sees: no request, no certificate)."""
        if self.http is None and self.peer is None:
            return self
        return Flow(self.family, self.src, self.dst, self.proto, self.sport, self.dport,
                    self.icmp_type, self.icmp_code, None, self.fragment)

    @property
    def text(self) -> str:
        """The flow in pattern syntax, e.g. `10.0.1.1 -> 10.0.2.1 tcp 9080 sport 49152`."""
        parts = [format_address(self.family, self.src), "->", format_address(self.family, self.dst)]
        if self.sport is not None:
            parts += [PROTOCOL_NAMES[self.proto], str(self.dport), "sport", str(self.sport)]
        elif self.is_icmp:
            kind = "icmp6" if self.proto == ICMP6 else "icmp"
            parts += [kind, "type", str(self.icmp_type), "code", str(self.icmp_code)]
        else:
            parts += ["proto", str(self.proto)] + (["fragment"] if self.fragment else [])
        if self.peer is not None:
            parts += ["peer", quote(self.peer)]
        if self.http is not None:
            parts += ["http", self.http.method, self.http.sent or self.http.path]
            if self.http.host is not None:
                parts += ["host", quote(self.http.host)]
            for name, value in self.http.headers:
                parts += ["header", quote(name), "=", quote(value)]
        return " ".join(parts)

    def to_json(self) -> dict:
        """Structured fields beside the pattern-syntax text."""
        out = {"flow": self.text, "family": self.family, "fragment": self.fragment,
               "src": format_address(self.family, self.src),
               "dst": format_address(self.family, self.dst), "proto": self.proto}
        if self.sport is not None:
            out.update(sport=self.sport, dport=self.dport)
        if self.icmp_type is not None:
            out.update(icmp_type=self.icmp_type, icmp_code=self.icmp_code)
        if self.peer is not None:
            out["peer"] = self.peer
        if self.http is not None:
            out["http"] = {"method": self.http.method, "path": self.http.path,
                           "host": self.http.host, "headers": dict(self.http.headers)}
            if self.http.sent is not None:
                out["http"]["sent"] = self.http.sent
            if self.http.refused is not None:
                out["http"]["refused"] = self.http.refused
        return out
