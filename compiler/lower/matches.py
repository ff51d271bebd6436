"""lower_pattern: a pattern (`SRC -> DST [l4] [l7]`) -> alternatives of ir.Match.

    allow office, 10.9.0.0/16 -> productpage http GET /a, /b/*
    ->  src.id in {office} dst.id in {productpage} proto = 6 dport = 9080 http present
          http.method in {GET} http.path any(= "/a" | prefix "/b/")
        src.ip in 10.9.0.0/16  (same destination and L7 part)

A `Match` is a conjunction; names and addresses in one endpoint list become
separate alternatives. An HTTP part with no L4 part implies TCP and the
destination's http ports (grouped when destinations have different ports).
"""

from __future__ import annotations

from itertools import product

from anyplane.ir import fields as F
from anyplane.ir.addr import outermost
from anyplane.ir.flow import ICMP, ICMP6, TCP, UDP
from anyplane.ir.match import (Absent, AnyOf, Exact, InSet, Match, Present, PrefixMatch, Range, StrExact,
                               StrPrefix, merge_ranges)

from .. import ast
from ..symbols import Symbols, resolve
from ..values import path_match

Pairs = list[tuple[str, object]]


def port_match(ranges: list[tuple[int, int]]):
    """Ranges -> Range or AnyOf(Range...); None when they cover every port."""
    merged = merge_ranges(ranges)
    if merged == [(0, 65535)]:
        return None
    options = tuple(Range(lo, hi) for lo, hi in merged)
    return options[0] if len(options) == 1 else AnyOf(options)


def _any_of(options: list):
    options = tuple(options)
    return options[0] if len(options) == 1 else AnyOf(options)


def _endpoint_alternatives(refs, symbols: Symbols, id_field: str, ip_field: str) -> list[Pairs]:
    if len(refs) == 1:  # the common case, without the set algebra below
        r = resolve(refs[0], symbols)
        if r.kind == "any":
            return [[]]
        if r.kind == "prefix":
            return [[(ip_field, PrefixMatch(r.prefix))]]
        return [[(id_field, InSet(tuple(sorted(r.identities))))]]
    resolved = [resolve(r, symbols) for r in refs]
    if any(r.kind == "any" for r in resolved):
        return [[]]
    ids = sorted({i for r in resolved for i in r.identities})
    prefixes = outermost(r.prefix for r in resolved if r.kind == "prefix")
    alts: list[Pairs] = []
    if ids:
        alts.append([(id_field, InSet(tuple(ids)))])
    if prefixes:
        alts.append([(ip_field, _any_of([PrefixMatch(p) for p in prefixes]))])
    return alts


def _http_destinations(refs, symbols: Symbols) -> list[Pairs]:
    """Named destinations grouped by their http ports: dst.id and dport per group."""
    groups: dict[tuple[int, ...], set[str]] = {}
    for ref in refs:
        r = resolve(ref, symbols)
        groups.setdefault(r.decl.http_ports, set()).update(r.identities)
    return [[(F.DST_ID, InSet(tuple(sorted(ids)))), (F.DPORT, port_match([(p, p) for p in ports]))]
            for ports, ids in sorted(groups.items())]


def _l4_pairs(l4: ast.L4 | None, has_l7: bool) -> Pairs:
    if l4 is None:
        return [(F.PROTO, Exact(TCP))] if has_l7 else []
    if l4.kind in ("tcp", "udp"):
        pairs: Pairs = [(F.PROTO, Exact(TCP if l4.kind == "tcp" else UDP))]
        for name, ranges in ((F.DPORT, l4.ports), (F.SPORT, l4.sports)):
            if ranges:
                pairs.append((name, port_match([(r.lo.value, r.hi.value) for r in ranges])))
        return pairs
    if l4.kind == "icmp":
        pairs = [(F.PROTO, InSet((ICMP, ICMP6)))]
        if l4.icmp_type is not None:
            pairs.append((F.ICMP_TYPE, Exact(l4.icmp_type.value)))
        if l4.icmp_code is not None:
            pairs.append((F.ICMP_CODE, Exact(l4.icmp_code.value)))
        return pairs
    return [(F.PROTO, Exact(l4.proto.value))]


def l7_pairs(l7: ast.L7) -> Pairs:
    """The HTTP part as field matches (shared by rules, asserts and routes)."""
    pairs: Pairs = [(F.HTTP, Present())]
    if l7.methods and not l7.any_method:
        pairs.append((F.HTTP_METHOD, InSet(tuple(sorted({m.text for m in l7.methods})))))
    if l7.paths:
        options = []
        for p in l7.paths:
            kind, body = path_match(p.text)
            options.append(StrExact(body) if kind == "exact" else StrPrefix(body))
        pairs.append((F.HTTP_PATH, _any_of(sorted(set(options), key=lambda o: (type(o).__name__, o.value)))))
    if l7.host is not None:
        pairs.append((F.HTTP_HOST, StrExact(l7.host.value)))
    for h in l7.headers:
        test = {"present": Present(), "absent": Absent()}.get(h.test) or StrExact(h.value.value)
        pairs.append((F.header_field(h.name.value), test))
    return pairs


def lower_pattern(p: ast.Pattern, symbols: Symbols) -> tuple[Match, ...]:
    """The alternatives (a disjunction of conjunctive matches) a pattern denotes."""
    src_alts = _endpoint_alternatives(p.src, symbols, F.SRC_ID, F.SRC_IP)
    if p.l7 is not None and p.l4 is None:
        dst_alts = _http_destinations(p.dst, symbols)
    else:
        dst_alts = _endpoint_alternatives(p.dst, symbols, F.DST_ID, F.DST_IP)
    rest = _l4_pairs(p.l4, p.l7 is not None) + (l7_pairs(p.l7) if p.l7 is not None else [])
    out = []
    for src, dst in product(src_alts, dst_alts):
        pairs = [(k, v) for k, v in src + dst + rest if v is not None]
        out.append(Match.of(pairs))
    return tuple(out)
