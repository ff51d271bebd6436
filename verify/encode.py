"""The IR's match semantics in Z3, exactly as `ir.interp` defines them.

    Flow      -> bit-vectors: v6 (family), src/dst (128 bits; IPv4 in the low 32),
                 proto, sport, dport, icmp type/code; http (bool) and one small
                 bit-vector per HTTP attribute (method, path class, host class,
                 one per header) over the finite `Domain`
    Match     -> a Bool term (a conjunction of field terms)
    src.id    -> ownership as a formula: in one of the identity's prefixes and
                 in none of that prefix's children in the endpoint trie
    decisions -> a first-match if-then-else chain over entries in decision order

Terms are cached per (program, entry), so a formula is built once and reused
across queries. Fields a flow does not have (ports of an ICMP flow, HTTP
attributes of a non-HTTP flow) are pinned to 0 so that models are canonical.
"""

from __future__ import annotations

import z3

from anyplane.ir import fields as F
from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.addr import WIDTH, Prefix
from anyplane.ir.flow import ICMP, ICMP6, IPV6_EXTENSION_HEADERS, TCP, UDP, Flow, Request
from anyplane.ir.match import (Absent, AnyOf, Exact, InSet, Match, Present, PrefixMatch, Range, StrExact,
                               StrPrefix, Ternary)
from anyplane.ir.nodes import Entry, Program, decision_key
from anyplane.ir.interp import sidecar_scope
from anyplane.ir.owners import ownership

from .domain import Domain

CLASS_BITS = 16
CODE_BITS = 32

# Term builders on Z3's C API. The z3 module's And/Or/Not/If check and coerce
# their arguments, which costs ~30 us a call; policies need millions of calls.
# Every result is wrapped at once (wrapping takes a reference), as z3 does.
# Each Encoder owns a Z3 context, so answers do not depend on what else the
# process asked before (Z3's choices depend on its context's history).


def mk_and(terms, ctx: z3.Context) -> z3.BoolRef:
    """Conjunction (True when empty)."""
    terms = list(terms)
    if len(terms) == 1:
        return terms[0]
    arr = (z3.Ast * len(terms))(*[t.as_ast() for t in terms])
    return z3.BoolRef(z3.Z3_mk_and(ctx.ref(), len(terms), arr), ctx)


def mk_or(terms, ctx: z3.Context) -> z3.BoolRef:
    """Disjunction (False when empty)."""
    terms = list(terms)
    if len(terms) == 1:
        return terms[0]
    arr = (z3.Ast * len(terms))(*[t.as_ast() for t in terms])
    return z3.BoolRef(z3.Z3_mk_or(ctx.ref(), len(terms), arr), ctx)


def mk_not(term) -> z3.BoolRef:
    """Negation."""
    return z3.BoolRef(z3.Z3_mk_not(term.ctx.ref(), term.as_ast()), term.ctx)


def mk_ite(cond, then, other):
    """If-then-else of two terms of the same sort."""
    return type(then)(z3.Z3_mk_ite(cond.ctx.ref(), cond.as_ast(), then.as_ast(), other.as_ast()), cond.ctx)


class Unsupported(Exception):
    """The IR holds a construct this encoding does not cover (a bug to fix, never silently dropped)."""


class Ownership:
    """Longest-prefix ownership of one program as formulas, built lazily per identity."""

    def __init__(self, program: Program, enc: "Encoder"):
        self.enc = enc
        owners = ownership(program)
        self.children = owners.children
        self.by_identity = owners.prefixes
        self.cache: dict[tuple[str, str], z3.BoolRef] = {}

    def owned(self, side: str, identity: str) -> z3.BoolRef:
        """`side` ("src" or "dst") address belongs to `identity`."""
        key = (side, identity)
        if key not in self.cache:
            terms = []
            for p in self.by_identity.get(identity, ()):
                inside = self.enc.in_prefix(side, p)
                kids = [self.enc.in_prefix(side, c) for c in self.children[p]]
                terms.append(mk_and([inside, mk_not(mk_or(kids, self.enc.ctx))], self.enc.ctx) if kids else inside)
            self.cache[key] = mk_or(terms, self.enc.ctx)
        return self.cache[key]

    def owner_prefixes(self, identity: str) -> list[Prefix]:
        """The declared prefixes of an identity (a superset of what it owns)."""
        return self.by_identity.get(identity, [])


class Encoder:
    """Flow variables and term builders shared by every program in one question."""

    def __init__(self, domain: Domain):
        self.domain = domain
        self.ctx = ctx = z3.Context()
        bv = lambda name, bits: z3.BitVec(name, bits, ctx)  # noqa: E731
        self.true, self.false = z3.BoolVal(True, ctx), z3.BoolVal(False, ctx)
        self.v6 = z3.Bool("v6", ctx)
        self.src, self.dst = bv("src", 128), bv("dst", 128)
        self.proto = bv("proto", 8)
        self.sport, self.dport = bv("sport", 16), bv("dport", 16)
        self.icmp_type, self.icmp_code = bv("icmp_type", 8), bv("icmp_code", 8)
        self.http = z3.Bool("http", ctx)
        self.method = bv("method", CLASS_BITS)
        self.path = bv("path", CLASS_BITS)
        self.host = bv("host", CLASS_BITS)
        self.headers = {h: bv(f"header:{h}", CLASS_BITS) for h in domain.headers}
        self.peer = bv("peer", CLASS_BITS)
        #: a non-first fragment: no transport header, so no ports and no ICMP type (ir/flow.py), as the
        #: interpreter, the kernel and the switch see it
        self.fragment = z3.Bool("fragment", ctx)
        self._buckets: dict[str, int] = {}
        self.has_ports = z3.And(z3.Or(self.proto == TCP, self.proto == UDP), z3.Not(self.fragment))
        self.is_icmp = z3.And(z3.Or(z3.And(z3.Not(self.v6), self.proto == ICMP), z3.And(self.v6, self.proto == ICMP6)),
                              z3.Not(self.fragment))
        self._ownership: dict[int, tuple[Program, Ownership]] = {}
        self._match_cache: dict[int, tuple[object, z3.BoolRef]] = {}
        self._prefix_cache: dict[tuple[str, Prefix], z3.BoolRef] = {}
        self._family_terms: dict[int, z3.BoolRef] = {}
        self._top_bits: dict[tuple[str, int, int], z3.BitVecRef] = {}
        self._not_cache: dict[int, tuple[object, z3.BoolRef]] = {}
        self._field_cache: dict[tuple, z3.BoolRef] = {}
        self._seen: dict[tuple, z3.BoolRef] = {}  # per program under mtls: its sidecars verify the certificate
        self.wellformed = self._wellformed()

    # -- the flow space ---------------------------------------------------------------
    def _wellformed(self) -> z3.BoolRef:
        d = self.domain
        high_zero = lambda a: z3.Extract(127, 32, a) == 0  # noqa: E731
        l7 = [z3.ULT(self.method, len(d.methods)), z3.ULT(self.path, len(d.paths.classes)),
              z3.ULT(self.host, d.hosts.size)]
        l7 += [z3.ULT(v, d.headers[h].size) for h, v in self.headers.items()]
        blank = [self.method == 0, self.path == 0, self.host == 0] + [v == 0 for v in self.headers.values()]
        return z3.And(
            z3.ULT(self.peer, d.peers.size), z3.Implies(self.peer != 0, z3.And(self.proto == TCP, z3.Not(self.fragment))),
            z3.Implies(z3.Not(self.v6), z3.And(high_zero(self.src), high_zero(self.dst))),
            z3.Implies(self.v6, z3.And([self.proto != h for h in IPV6_EXTENSION_HEADERS])),
            z3.Implies(self.http, z3.And(self.proto == TCP, z3.Not(self.fragment))),
            z3.Implies(z3.Not(self.has_ports), z3.And(self.sport == 0, self.dport == 0)),
            z3.Implies(z3.Not(self.is_icmp), z3.And(self.icmp_type == 0, self.icmp_code == 0)),
            z3.If(self.http, z3.And(l7), z3.And(blank)),
        )

    def address(self, side: str) -> z3.BitVecRef:
        """The source or destination address variable."""
        return self.src if side == "src" else self.dst

    def in_prefix(self, side: str, p: Prefix) -> z3.BoolRef:
        """The address lies inside the prefix (family included); cached per side and prefix."""
        key = (side, p)
        hit = self._prefix_cache.get(key)
        if hit is None:
            hit = self._prefix_cache[key] = self._in_prefix(side, p)
        return hit

    def _in_prefix(self, side: str, p: Prefix) -> z3.BoolRef:
        # Through the C API, with the family test and the address's top bits shared: policies with
        # thousands of prefixes spend most of their encoding here.
        fam = self._family_terms.get(p.family)
        if fam is None:
            fam = self._family_terms[p.family] = self.v6 if p.family == 6 else mk_not(self.v6)
        if p.length == 0:
            return fam
        width = WIDTH[p.family]
        key = (side, width, p.length)
        bits = self._top_bits.get(key)
        if bits is None:
            bits = self._top_bits[key] = z3.Extract(width - 1, width - p.length, self.address(side))
        ref = self.ctx.ref()
        value = z3.Z3_mk_numeral(ref, str(p.value >> (width - p.length)), bits.sort().ast)
        eq = z3.Z3_mk_eq(ref, bits.as_ast(), value)
        return z3.BoolRef(z3.Z3_mk_and(ref, 2, (z3.Ast * 2)(fam.as_ast(), eq)), self.ctx)

    def ownership(self, program: Program) -> Ownership:
        """The (cached) ownership formulas of a program's endpoint table (programs rewritten from one
        another share theirs)."""
        hit = self._ownership.get(id(program.endpoints))
        if hit is None:
            hit = self._ownership[id(program.endpoints)] = (program.endpoints, Ownership(program, self))
        return hit[1]

    # -- matches ----------------------------------------------------------------------
    def match(self, program: Program, m: Match) -> z3.BoolRef:
        """The term for a match (cached by object identity)."""
        hit = self._match_cache.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        term = mk_and([self.field(program, name, fm) for name, fm in m.fields], self.ctx) if m.fields else self.true
        self._match_cache[id(m)] = (m, term)
        return term

    def negated(self, program: Program, m: Match) -> z3.BoolRef:
        """The negation of a match's term (cached too: checks negate the same entries over and over)."""
        hit = self._not_cache.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        term = mk_not(self.match(program, m))
        self._not_cache[id(m)] = (m, term)
        return term

    def entry(self, program: Program, e: Entry) -> z3.BoolRef:
        """The term for an entry's match."""
        return self.match(program, e.match)

    def field(self, program: Program, name: str, fm) -> z3.BoolRef:
        """The term for one field match, including the field's presence (cached: entries share most of
        their field matches; identity matches per ownership table)."""
        key = (name, fm, id(program.endpoints) if name in (F.SRC_ID, F.DST_ID) else
               (id(program.endpoints), id(program.identities)) if name == F.SRC_PEER else None)
        hit = self._field_cache.get(key)
        if hit is None:
            hit = self._field_cache[key] = self._field(program, name, fm)
        return hit

    def _field(self, program: Program, name: str, fm) -> z3.BoolRef:
        if isinstance(fm, AnyOf):
            return mk_or([self.field(program, name, o) for o in fm.options], self.ctx)
        if name in (F.SRC_ID, F.DST_ID):
            side = "src" if name == F.SRC_ID else "dst"
            if not isinstance(fm, InSet):
                raise Unsupported(f"{name} supports set matches only, not {type(fm).__name__}")
            own = self.ownership(program)
            return mk_or([own.owned(side, i) for i in fm.values], self.ctx)
        if name in (F.SRC_IP, F.DST_IP):
            if not isinstance(fm, PrefixMatch):
                raise Unsupported(f"{name} supports prefix matches only, not {type(fm).__name__}")
            return self.in_prefix("src" if name == F.SRC_IP else "dst", fm.prefix)
        if name == F.PROTO:
            return self._int(self.proto, fm, name)
        if name in (F.SPORT, F.DPORT):
            if isinstance(fm, Absent):  # a flow without ports (not TCP or UDP, or a later fragment)
                return z3.Not(self.has_ports)
            return z3.And(self.has_ports, self._int(self.sport if name == F.SPORT else self.dport, fm, name))
        if name in (F.ICMP_TYPE, F.ICMP_CODE):
            if isinstance(fm, Absent):
                return z3.Not(self.is_icmp)
            return z3.And(self.is_icmp, self._int(self.icmp_type if name == F.ICMP_TYPE else self.icmp_code, fm, name))
        if name == F.SRC_PEER:
            return self._peer(program, fm)
        return self._l7(name, fm)

    def _int(self, var, fm, name: str) -> z3.BoolRef:
        if isinstance(fm, Exact):
            return var == fm.value
        if isinstance(fm, InSet):
            return z3.Or([var == v for v in fm.values])
        if isinstance(fm, Range):
            if fm.lo == fm.hi:
                return var == fm.lo
            return z3.And(z3.ULE(fm.lo, var), z3.ULE(var, fm.hi))
        if isinstance(fm, Ternary):
            return var & fm.mask == fm.value
        if isinstance(fm, Present):
            return self.true
        if isinstance(fm, Absent):
            return self.false
        raise Unsupported(f"{name} does not support {type(fm).__name__}")

    def seen(self, program: Program) -> z3.BoolRef:
        """Whether a workload's sidecar verifies the flow's client certificate: TCP to a port it declares,
        under mtls (ir/interp.as_seen). Elsewhere the certificate counts as absent."""
        key = (id(program.endpoints), id(program.identities))
        hit = self._seen.get(key)
        if hit is None:
            own = self.ownership(program)
            terms = [z3.And(own.owned("dst", ident), z3.Or([self.dport == p for p in sorted(ports)]))
                     for ident, ports in sorted(sidecar_scope(program).items()) if ports]
            hit = self._seen[key] = z3.And(self.proto == TCP, self.has_ports, mk_or(terms, self.ctx)) if terms else self.false
        return hit

    def _peer(self, program: Program, fm) -> z3.BoolRef:
        d, seen = self.domain, self.seen(program)
        if isinstance(fm, InSet):
            return z3.And(seen, z3.Or([self.peer == d.peers.exact(v) for v in fm.values]))
        if isinstance(fm, Absent):
            return z3.Or(z3.Not(seen), self.peer == 0)
        if isinstance(fm, Present):
            return z3.And(seen, self.peer != 0)
        raise Unsupported(f"{F.SRC_PEER} does not support {type(fm).__name__}")

    def _l7(self, name: str, fm) -> z3.BoolRef:
        d = self.domain
        if name == F.HTTP:
            if isinstance(fm, Present):
                return self.http
            if isinstance(fm, Absent):
                return z3.Not(self.http)
        elif name == F.HTTP_METHOD:
            if isinstance(fm, (InSet, Exact)):
                values = fm.values if isinstance(fm, InSet) else (fm.value,)
                return z3.And(self.http, z3.Or([self.method == d.methods.index(v) for v in values if v in d.methods]))
        elif name == F.HTTP_PATH:
            if isinstance(fm, StrExact):
                return z3.And(self.http, z3.Or([self.path == i for i in d.paths.exact(fm.value)]))
            if isinstance(fm, StrPrefix):
                r = d.paths.prefix_range(fm.value)
                if r is None:
                    return self.false
                return z3.And(self.http, z3.ULE(r[0], self.path), z3.ULE(self.path, r[1]))
            if isinstance(fm, Present):
                return self.http
        elif name == F.HTTP_HOST or name.startswith(F.HEADER_PREFIX):
            var, dom = (self.host, d.hosts) if name == F.HTTP_HOST else \
                (self.headers[name[len(F.HEADER_PREFIX):]], d.headers[name[len(F.HEADER_PREFIX):]])
            if isinstance(fm, StrExact):
                return z3.And(self.http, var == dom.exact(fm.value))
            if isinstance(fm, Present):
                return z3.And(self.http, var != 0)
            if isinstance(fm, Absent):
                return z3.Or(z3.Not(self.http), var == 0)
        raise Unsupported(f"{name} does not support {type(fm).__name__}")

    # -- decisions ----------------------------------------------------------------------
    @staticmethod
    def ordered(entries) -> list[Entry]:
        """Entries in the order in which they decide."""
        return sorted(entries, key=decision_key)

    def first_match(self, program: Program, entries: list[Entry], tail: z3.ExprRef, value) -> z3.ExprRef:
        """If-then-else chain: value(e) of the first matching entry, else `tail`."""
        term = tail
        for e in reversed(entries):
            term = mk_ite(self.entry(program, e), value(e), term)
        return term

    # -- flows <-> models ------------------------------------------------------------------
    def flow(self, model: z3.ModelRef) -> Flow:
        """The concrete flow of a model."""
        val = lambda v: model.eval(v, model_completion=True).as_long()  # noqa: E731
        v6 = z3.is_true(model.eval(self.v6, model_completion=True))
        family = 6 if v6 else 4
        mask = (1 << WIDTH[family]) - 1
        src, dst, proto = val(self.src) & mask, val(self.dst) & mask, val(self.proto)
        if z3.is_true(model.eval(self.fragment, model_completion=True)):
            return Flow(family, src, dst, proto, fragment=True)
        if proto in (TCP, UDP):
            http = None
            if proto == TCP and z3.is_true(model.eval(self.http, model_completion=True)):
                http = self.request(val)
            return Flow(family, src, dst, proto, val(self.sport), val(self.dport), http=http,
                        peer=self._peer_of(model, val))
        if (proto, family) in ((ICMP, 4), (ICMP6, 6)):
            return Flow(family, src, dst, proto, icmp_type=val(self.icmp_type), icmp_code=val(self.icmp_code))
        return Flow(family, src, dst, proto)

    def _peer_of(self, model: z3.ModelRef, val) -> str | None:
        """The model's client certificate, where a sidecar of a program encoded here verifies it (elsewhere
        it is nobody's business: the flow is the same without it)."""
        peer = self.domain.peers.witness(val(self.peer))
        if peer is None:
            return None
        for term in self._seen.values():
            if z3.is_true(model.eval(term, model_completion=True)):
                return peer
        return None

    def request(self, val) -> Request:
        """The HTTP request of a model, from class witnesses."""
        d = self.domain
        headers = []
        for h, var in self.headers.items():
            value = d.headers[h].witness(val(var))
            if value is not None:
                headers.append((h, value))
        return Request(d.methods[val(self.method)], d.paths.witnesses[val(self.path)],
                       d.hosts.witness(val(self.host)), tuple(sorted(headers)))

    def pin(self, flow: Flow) -> z3.BoolRef:
        """A term that holds exactly for this flow's equivalence class."""
        d = self.domain
        terms = [self.v6 == (flow.family == 6), self.src == flow.src, self.dst == flow.dst,
                 self.proto == flow.proto, self.fragment == flow.fragment, self.http == (flow.http is not None),
                 self.peer == d.peers.classify(flow.peer)]
        if flow.sport is not None:
            terms += [self.sport == flow.sport, self.dport == flow.dport]
        if flow.icmp_type is not None:
            terms += [self.icmp_type == flow.icmp_type, self.icmp_code == flow.icmp_code]
        if flow.http is not None:
            r = flow.http
            terms += [self.method == d.methods.index(r.method), self.path == d.paths.classify(r.path),
                      self.host == d.hosts.classify(r.host)]
            terms += [var == d.headers[h].classify(r.header(h)) for h, var in self.headers.items()]
        return z3.And(terms)


    # -- action codes -----------------------------------------------------------------------
    def action_code(self, e: Entry | None, default: str) -> int:
        """Deny 0, allow 1, a rate limit 2 + a number for its bucket: equal codes, equal decisions."""
        if e is None:
            return 0 if default == "deny" else 1
        if isinstance(e.action, Deny):
            return 0
        if isinstance(e.action, RateLimit):
            return 2 + self._buckets.setdefault(e.action.bucket, len(self._buckets))
        return 1

    def bv(self, value: int, bits: int) -> z3.BitVecRef:
        """A bit-vector constant in this encoder's context."""
        return z3.BitVecVal(value, bits, self.ctx)

    def int(self, value: int) -> z3.IntNumRef:
        """An integer constant in this encoder's context."""
        return z3.IntVal(value, self.ctx)
