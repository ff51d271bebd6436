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
                               StrPrefix, exact_values, int_ranges, merge_ranges)

from .. import ast
from ..symbols import Symbols, resolve
from ..values import ICMP_TYPES, icmp_type_number, path_match
from .sets import Region, regions

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


def _region_pairs(region: Region, id_field: str, ip_field: str) -> Pairs:
    ids, prefixes = region
    pairs: Pairs = []
    if ids is not None:
        pairs.append((id_field, InSet(ids)))
    if prefixes is not None:
        pairs.append((ip_field, _any_of([PrefixMatch(p) for p in outermost(prefixes)])))
    return pairs


def _endpoint_alternatives(refs, excluded, symbols: Symbols, id_field: str, ip_field: str) -> list[Pairs]:
    if len(refs) == 1 and not excluded:  # the common case, without the set algebra of `regions`
        r = resolve(refs[0], symbols)
        if r.kind == "any":
            return [[]]
        if r.kind == "prefix":
            return [[(ip_field, PrefixMatch(r.prefix))]]
        if r.kind == "ids":
            return [[(id_field, InSet(tuple(sorted(r.identities))))]]
    return [_region_pairs(region, id_field, ip_field) for region in regions(refs, excluded, symbols)]


def _http_destinations(refs, excluded, symbols: Symbols) -> list[Pairs]:
    """Named destinations grouped by their http ports: dst.id and dport per group (checks make sure
    every destination is a name with http ports)."""
    out: list[Pairs] = []
    for ids, prefixes in regions(refs, excluded, symbols):
        groups: dict[tuple[int, ...], list[str]] = {}
        for ident in ids or ():
            groups.setdefault(symbols.decls[ident.split(".")[0]].http_ports, []).append(ident)
        for ports, group in sorted(groups.items()):
            pairs = _region_pairs((tuple(sorted(group)), prefixes), F.DST_ID, F.DST_IP)
            out.append(pairs + [(F.DPORT, port_match([(p, p) for p in ports]))])
    return out


def _l4_alternatives(l4: ast.L4 | None, has_l7: bool) -> list[Pairs]:
    if l4 is None:
        return [[(F.PROTO, Exact(TCP))] if has_l7 else []]
    if l4.kind in ("tcp", "udp"):
        pairs: Pairs = [(F.PROTO, Exact(TCP if l4.kind == "tcp" else UDP))]
        for name, ranges in ((F.DPORT, l4.ports), (F.SPORT, l4.sports)):
            if ranges:
                pairs.append((name, port_match([(r.lo.value, r.hi.value) for r in ranges])))
        return [pairs]
    if l4.kind in ("icmp", "icmp6"):
        if l4.kind == "icmp" and l4.icmp_type is None:
            return [[(F.PROTO, InSet((ICMP, ICMP6)))]]
        code = [(F.ICMP_CODE, Exact(l4.icmp_code.value))] if l4.icmp_code is not None else []
        return [[(F.PROTO, Exact(proto))] + ([(F.ICMP_TYPE, Exact(t))] if t is not None else []) + code
                for proto, t in icmp_messages(l4)]
    return [[(F.PROTO, Exact(l4.proto.value))]]


def icmp_messages(l4: ast.L4) -> list[tuple[int, int | None]]:
    """(protocol, type or None) pairs an `icmp`/`icmp6` clause matches: `icmp` is both families,
    `icmp type N` ICMP over IPv4 only, `icmp type NAME` that message in each family that has it,
    `icmp6 ...` ICMPv6 only."""
    t = l4.icmp_type
    if l4.kind == "icmp6":
        number = t.value if isinstance(t, ast.Num) else icmp_type_number("icmp6", t.text) if t else None
        return [(ICMP6, number)]
    if t is None:
        return [(ICMP, None), (ICMP6, None)]
    if isinstance(t, ast.Num):
        return [(ICMP, t.value)]
    v4, v6 = ICMP_TYPES[t.text]
    return [(proto, n) for proto, n in ((ICMP, v4), (ICMP6, v6)) if n is not None]


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


ANY = ast.EndpointRef("any", None, None, None, None)


def lower_pattern(p: ast.Pattern, symbols: Symbols, others: bool = False) -> tuple[Match, ...]:
    """The alternatives (a disjunction of conjunctive matches) a pattern denotes; with `others`, those of
    every source but the pattern's (`assert only`): `any except SRC`, plus what SRC itself excepts."""
    if others:
        src_alts = _endpoint_alternatives((ANY,), p.src, symbols, F.SRC_ID, F.SRC_IP)
        if p.src_except:
            src_alts += _endpoint_alternatives(p.src_except, (), symbols, F.SRC_ID, F.SRC_IP)
    else:
        src_alts = _endpoint_alternatives(p.src, p.src_except, symbols, F.SRC_ID, F.SRC_IP)
    if p.l7 is not None and p.l4 is None:
        dst_alts = _http_destinations(p.dst, p.dst_except, symbols)
    else:
        dst_alts = _endpoint_alternatives(p.dst, p.dst_except, symbols, F.DST_ID, F.DST_IP)
    l7 = l7_pairs(p.l7) if p.l7 is not None else []
    sides = list(product(src_alts, dst_alts))
    if symbols.principals and not others:
        sides = [s for src, dst in sides for s in peer_alternatives(src, dst, symbols.principals, symbols.modes)]
    out = []
    for (src, dst), l4 in product(sides, _l4_alternatives(p.l4, p.l7 is not None)):
        pairs = [(k, v) for k, v in src + dst + l4 + l7 if v is not None]
        if any(k == F.SRC_PEER and isinstance(v, InSet) for k, v in pairs):
            out += at_sidecars(pairs, symbols)
        else:
            out.append(Match.of(pairs))
    return tuple(out)


def sidecar_ports(names, symbols: Symbols) -> dict[tuple[int, ...], list[str]]:
    """Workloads grouped by the TCP ports their sidecars listen on (the ports they declare)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        node = symbols.decls[name].node
        ports = tuple(sorted({n for c in node.ports if c.protocol.text != "udp" for n in c.numbers}))
        if ports:
            groups.setdefault(ports, []).append(name)
    return groups


def at_sidecars(pairs: Pairs, symbols: Symbols) -> list[Match]:
    """A certificate alternative narrowed to what a sidecar sees: TCP to a port its workload declares
    (one match per group of destinations with the same ports; none when nothing is left)."""
    fields = dict(pairs)
    proto = fields.get(F.PROTO)
    if proto is not None and TCP not in (exact_values(proto) or ()):
        return []
    fields[F.PROTO] = Exact(TCP)
    wanted = int_ranges(fields[F.DPORT]) if F.DPORT in fields else [(0, 65535)]
    out = []
    for ports, names in sorted(sidecar_ports(fields[F.DST_ID].values, symbols).items()):
        kept = [(n, n) for n in ports if any(lo <= n <= hi for lo, hi in wanted)]
        if kept:
            fields[F.DST_ID], fields[F.DPORT] = InSet(tuple(sorted(names))), port_match(kept)
            out.append(Match.of([(k, v) for k, v in fields.items() if v is not None]))
    return out


def peer_alternatives(src: Pairs, dst: Pairs, principals: dict[str, str], modes: dict[str, str]
                      ) -> list[tuple[Pairs, Pairs]]:
    """Under mutual TLS, a source that names workloads is their certificates where the destination's
    sidecar asks for one, and their addresses on connections without a certificate:

        allow web, legacy -> api      (web a workload, legacy a service with addresses)
        ->  src.peer in {spiffe://cluster.local/ns/shop/sa/web}            dst.id in {api}
            src.id in {web}    src.peer absent                              dst.id in {api}
            src.id in {legacy}                                              dst.id in {api}

    Only a workload's sidecar asks for certificates (unless the workload says `mtls off`), so the first
    alternative keeps the destination's such workloads (all of them when the destination is addresses
    or `any`)."""
    ids = dict(src).get(F.SRC_ID)
    mesh = [i for i in ids.values if i in principals] if isinstance(ids, InSet) else []
    if not mesh:
        return [(src, dst)]
    rest = [(k, v) for k, v in src if k != F.SRC_ID]
    out: list[tuple[Pairs, Pairs]] = []
    to = dict(dst).get(F.DST_ID)
    targets = sorted(modes) if to is None else [i for i in to.values if i in modes] \
        if isinstance(to, InSet) else []
    if not targets:  # no sidecar of the destination asks for a certificate: addresses alone
        return [(src, dst)]
    peers = InSet(tuple(sorted({principals[i] for i in mesh})))
    toward = [(k, v) for k, v in dst if k != F.DST_ID] + [(F.DST_ID, InSet(tuple(targets)))]
    out.append((rest + [(F.SRC_PEER, peers)], toward))
    out.append((rest + [(F.SRC_ID, InSet(tuple(mesh))), (F.SRC_PEER, Absent())], dst))
    others = [i for i in ids.values if i not in principals]
    if others:
        out.append((rest + [(F.SRC_ID, InSet(tuple(others)))], dst))
    return out
