"""Concrete flows from the pattern syntax, for `explain --flow` and `replay --flows`.

    productpage -> reviews http GET /reviews/1
    ->  Flow(10.0.1.1 -> 10.0.2.1 tcp 9080 sport 49152 http GET /reviews/1)

A name stands for a representative address it owns (the lowest address that
is not a network address, where possible); `name.version` likewise. The
defaults filled in are: source port 49152, ICMP echo request (type 8, or 128
for ICMPv6, code 0), and the destination's http port for `http` without a port.
"""

from __future__ import annotations

from anyplane.ir.addr import WIDTH, Prefix
from anyplane.ir.flow import ICMP, ICMP6, IPV6_EXTENSION_HEADERS, TCP, UDP, Flow, Request, is_spiffe_id
from anyplane.ir.owners import READABLE, ownership
from anyplane.ir.nodes import Program
from anyplane.ir.source import DiagnosticError, Span, error

from . import ast
from .parser import parse_pattern
from .symbols import ResolveError, Symbols, resolve
from .values import check_header_name, check_header_value, check_method, icmp_type_number

DEFAULT_SPORT = 49152


def _fail(span: Span, code: str, message: str):
    raise DiagnosticError([error(span, code, message)])


def representative(program: Program, identities: tuple[str, ...], prefixes: list[Prefix], family: int | None):
    """A readable address owned by one of `identities`, from `prefixes` (or None).

    Each prefix is tried in order: a documentation address (very broad prefixes),
    the address after the network address, the network address, the last
    addresses, then the gaps around more specific prefixes nested inside.
    """
    table = ownership(program).table
    inner = list(ownership(program).owner_of)
    for p in prefixes:
        if family is not None and p.family != family:
            continue
        candidates = [a for a in READABLE[p.family] if p.contains(p.family, a)] if p.length < 8 else []
        candidates += [p.first + 1, p.first, p.last - 1, p.last]
        candidates += [a for q in inner if p.covers(q) and q != p for a in (q.last + 1, q.first - 1)]
        for a in candidates:
            if p.contains(p.family, a) and table.lookup(p.family, a) in identities:
                return p.family, a
    return None


def _address(ref: ast.EndpointRef, symbols: Symbols, program: Program, family: int | None):
    if ref.kind == "any":
        _fail(ref.span, "not-concrete", "a flow needs a concrete endpoint: a name, name.version or an address")
    try:
        r = resolve(ref, symbols)
    except ResolveError as exc:
        _fail(ref.span, exc.code, exc.message)
    if r.kind == "prefix":
        if r.prefix.length != WIDTH[r.prefix.family]:
            _fail(ref.span, "not-concrete", f"'{ref.text}' is a network, not one address")
        if family is not None and r.prefix.family != family:
            _fail(ref.span, "family-mismatch", "source and destination are of different address families")
        return r.prefix.family, r.prefix.value
    if r.kind == "set":
        what = "a group" if ref.kind == "name" else "every address inside the declaration"
        _fail(ref.span, "not-concrete", f"'{ref.text}' is {what}: a flow needs one name or address")
    decl = r.decl
    prefixes = list(p for p, _ in decl.prefixes) if ref.kind == "name" else []
    for v in sorted(decl.version_prefixes):
        if f"{decl.name}.{v}" in r.identities:
            prefixes += [p for p, _ in decl.version_prefixes[v]]
    for fam in ([family] if family else [4, 6]):
        found = representative(program, r.identities, prefixes, fam)
        if found:
            return found
    _fail(ref.span, "no-address", f"'{ref.text}' owns no {'IPv%d ' % family if family else ''}address "
                                  "(more specific declarations claim all of it)")


def _single(refs, what: str, span: Span) -> ast.EndpointRef:
    if len(refs) != 1:
        _fail(span, "not-concrete", f"a flow has exactly one {what}")
    return refs[0]


def _icmp_type(l4: ast.L4, family: int) -> int:
    t = l4.icmp_type
    if t is None:
        return 8 if family == 4 else 128  # an echo request
    if isinstance(t, ast.Num):
        return t.value
    try:
        return icmp_type_number("icmp" if family == 4 else "icmp6", t.text)
    except ValueError as exc:
        _fail(t.span, "bad-number", str(exc))


def _one_port(ranges, what: str, span: Span) -> int | None:
    if not ranges:
        return None
    if len(ranges) != 1 or ranges[0].lo.value != ranges[0].hi.value:
        _fail(ranges[0].span if ranges else span, "not-concrete", f"a flow has one {what}, not a list or range")
    value = ranges[0].lo.value
    if not 0 <= value <= 65535:
        _fail(ranges[0].span, "bad-port", f"{what} {value} is out of range 0-65535")
    return value


def _request(l7: ast.L7) -> Request:
    if l7.any_method or len(l7.methods) != 1:
        _fail(l7.span, "not-concrete", "an HTTP flow has exactly one method (e.g. http GET /path)")
    if len(l7.paths) != 1:
        _fail(l7.span, "not-concrete", "an HTTP flow has exactly one path")
    method, path = l7.methods[0], l7.paths[0]
    try:
        check_method(method.text)
    except ValueError as exc:
        _fail(method.span, "bad-method", str(exc))
    if path.text.endswith("/*"):
        _fail(path.span, "not-concrete", "an HTTP flow has one concrete path, not a prefix")
    headers: dict[str, ast.HeaderTest] = {}
    for h in l7.headers:
        if h.test != "equals":
            _fail(h.span, "not-concrete", 'give the header a value: header "name" = "value"')
        if h.name.value in headers:
            _fail(h.span, "duplicate-clause", f"header '{h.name.value}' is given twice: a flow has one value "
                                              "per header (Envoy would see the values joined by ',')")
        try:
            check_header_name(h.name.value)
            check_header_value(h.value.value)
        except ValueError as exc:
            _fail(h.span, "bad-header", str(exc))
        headers[h.name.value] = h
    values = tuple(sorted((name, h.value.value) for name, h in headers.items()))
    # The path and host are taken as a client would send them: the sidecar normalises them (or refuses).
    return Request.sent_as(method.text, path.text, l7.host.value if l7.host is not None else None, values)


def flow_from_pattern(p: ast.Pattern, symbols: Symbols, program: Program) -> Flow:
    """The concrete flow a pattern describes; raises DiagnosticError when it is not concrete."""
    for excluded in (p.src_except, p.dst_except):
        if excluded:
            _fail(excluded[0].span, "not-concrete", "a flow has one source and one destination: no 'except'")
    src_ref = _single(p.src, "source", p.span)
    dst_ref = _single(p.dst, "destination", p.span)
    family = None
    for ref in (src_ref, dst_ref):
        if ref.kind == "address":
            family = family or (6 if ":" in ref.address.text else 4)
    src_family, src = _address(src_ref, symbols, program, family)
    dst_family, dst = _address(dst_ref, symbols, program, src_family)
    request = _request(p.l7) if p.l7 is not None else None

    l4 = p.l4
    if l4 is None and request is None:
        _fail(p.span, "not-concrete", "a flow needs a protocol: tcp PORT, udp PORT, icmp, proto N or http ...")
    if l4 is None or l4.kind in ("tcp", "udp"):
        proto = TCP if l4 is None or l4.kind == "tcp" else UDP
        if request is not None and proto != TCP:
            _fail(l4.span, "http-needs-tcp", "HTTP runs over TCP")
        dport = _one_port(l4.ports if l4 else (), "destination port", p.span)
        if dport is None and request is not None and dst_ref.kind != "address":
            ports = resolve(dst_ref, symbols).decl.http_ports  # a name: sets failed above
            dport = ports[0] if ports else None
        if dport is None:
            _fail((l4 or p).span, "not-concrete", "a TCP or UDP flow needs a destination port")
        sport = _one_port(l4.sports if l4 else (), "source port", p.span)
        peer = _peer(p, src_ref, symbols, program, dst_family, dst) if proto == TCP else None
        return Flow(src_family, src, dst, proto, DEFAULT_SPORT if sport is None else sport, dport, http=request,
                    peer=peer)
    if p.peer is not None:
        _fail(p.peer.span, "peer-needs-tcp", "a client certificate travels on a TCP connection")
    if request is not None:
        _fail(l4.span, "http-needs-tcp", "HTTP runs over TCP")
    if l4.kind == "icmp6" and src_family == 4:
        _fail(l4.span, "family-mismatch", "'icmp6' is ICMPv6: the flow's addresses are IPv4 (write 'icmp')")
    if l4.kind == "icmp" and src_family == 6 and isinstance(l4.icmp_type, ast.Num):
        _fail(l4.span, "family-mismatch", f"'icmp type {l4.icmp_type.value}' is ICMP over IPv4: the flow's addresses "
                                          f"are IPv6 (write 'icmp6 type {l4.icmp_type.value}')")
    if l4.kind in ("icmp", "icmp6") or (l4.kind == "proto" and not l4.fragment
                                         and (l4.proto.value, src_family) in ((ICMP, 4), (ICMP6, 6))):
        proto = ICMP if src_family == 4 else ICMP6
        icmp_type = _icmp_type(l4, src_family)
        icmp_code = l4.icmp_code.value if l4.icmp_code is not None else 0
        if not (0 <= icmp_type <= 255 and 0 <= icmp_code <= 255):
            _fail(l4.span, "bad-number", "ICMP type and code are 0-255")
        return Flow(src_family, src, dst, proto, icmp_type=icmp_type, icmp_code=icmp_code)
    proto = l4.proto.value
    if not 0 <= proto <= 255:
        _fail(l4.proto.span, "bad-number", f"protocol {proto} is out of range 0-255")
    if src_family == 6 and proto in IPV6_EXTENSION_HEADERS:
        _fail(l4.proto.span, "bad-number", f"IPv6 next header {proto} is an extension header (hop-by-hop, routing, "
                                           "fragment or destination options): a packet carries a protocol after it")
    if l4.fragment:
        return Flow(src_family, src, dst, proto, fragment=True)
    if proto in (TCP, UDP):
        _fail(l4.span, "not-concrete", f"use '{'tcp' if proto == TCP else 'udp'} PORT' for a flow of protocol {proto}")
    return Flow(src_family, src, dst, proto)


def _peer(p: ast.Pattern, src_ref: ast.EndpointRef, symbols: Symbols, program: Program, family: int,
          dst: int) -> str | None:
    """The SPIFFE ID the flow's client proves: as written (`peer "spiffe://..."`, `peer plaintext`), else,
    under mutual TLS, a source workload's own toward a workload's sidecar (which asks for it)."""
    if isinstance(p.peer, ast.Str):
        if not is_spiffe_id(p.peer.value):
            _fail(p.peer.span, "bad-peer", "a peer is a SPIFFE ID: spiffe://TRUST_DOMAIN/PATH (e.g. "
                                           "spiffe://cluster.local/ns/shop/sa/web)")
        return p.peer.value
    if p.peer is not None or src_ref.kind != "name" or src_ref.name.text not in symbols.principals:
        return None
    if ownership(program).table.lookup(family, dst) not in program.mesh:
        return None
    return symbols.principals[src_ref.name.text]


def parse_flow(text: str, symbols: Symbols, program: Program, path: str = "<flow>") -> Flow:
    """Parse and concretise a flow written in pattern syntax."""
    return flow_from_pattern(parse_pattern(text, path), symbols, program)
