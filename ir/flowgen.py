"""Random flows biased to the edges of a policy, for differential tests.

Uniformly random flows almost never hit a /32, the last port of a range or
an HTTP rule's path. `FlowGen` draws most flows *aimed* at one table entry:
it picks an entry (acl, route or assert pattern) and builds a flow inside
its match from boundary values (first and last address of a prefix, an
address owned by a named identity, first and last port of a range, an exact
path or a prefix plus a suffix), then often pushes one field just outside
(the address after the prefix, the port after the range, the path without
its last character). The rest are random flows over boundary values.
IPv4 and IPv6 both appear when the policy mentions both.
"""

from __future__ import annotations

import random

from . import fields as F
from . import http
from .addr import WIDTH, Prefix
from .flow import HTTP_METHODS, ICMP, ICMP6, IPV6_EXTENSION_HEADERS, TCP, UDP, Flow, Request
from .match import (Absent, Exact, InSet, Match, PrefixMatch, Present, Range, StrExact, StrPrefix, Ternary,
                    options)
from .nodes import Program
from .owners import edges as _edges, outside as _outside, owned_addresses, ownership


class FlowGen:
    """Edge-biased flow generator for one program (deterministic for a seed)."""

    def __init__(self, program: Program, seed: int = 0, http_share: float = 0.5, aimed_share: float = 0.75):
        self.rng = random.Random(seed)
        self.http_share = http_share
        self.aimed_share = aimed_share
        self.matches: list[Match] = [e.match for e in program.acl.entries]
        self.matches += [e.match for e in program.routes.entries]
        self.matches += [m for a in program.asserts for m in a.pattern]
        self.addresses: dict[int, set[int]] = {4: set(), 6: set()}
        self.ports: set[int] = {0, 1, 80, 443, 1023, 1024, 49152, 65535}
        self.protos: set[int] = {TCP, UDP, ICMP, ICMP6, 0, 47, 255}
        self.icmp: set[int] = {0, 3, 8, 128, 129, 255}
        self.methods: set[str] = {"GET", "POST"}
        self.paths: set[str] = {"/", "/x"}
        self.hosts: set[str] = {"example.com"}
        self.headers: dict[str, set[str]] = {}
        #: client certificates under mutual TLS: the workloads' SPIFFE IDs and one no workload holds
        self.peer_pool = sorted({i.principal for i in program.identities if i.principal is not None})
        if program.mtls is not None:
            self.peer_pool.append(f"spiffe://{program.mtls.trust_domain}/ns/elsewhere/sa/stranger")
        self.owned = owned_addresses(program)
        self._table = ownership(program).table
        for row in program.endpoints:
            self._collect_prefix(row.prefix)
        for m in self.matches:
            for name, fm in m.fields:
                for o in options(fm):
                    self._collect(name, o)
        for ident in program.identities:
            self.ports.update(p.number for p in ident.ports)
        if not self.addresses[4] and not self.addresses[6]:
            self._collect_prefix(Prefix(4, 0, 0))
        self.families = [f for f in (4, 6) if self.addresses[f]]
        self.pool = {f: sorted(self.addresses[f]) for f in (4, 6)}
        self.port_pool = sorted(self.ports)
        self.path_pool, self.method_pool, self.host_pool = sorted(self.paths), sorted(self.methods), sorted(self.hosts)
        self.header_pools = {name: sorted(values) for name, values in sorted(self.headers.items())}
        self.proto_pool = sorted(self.protos)

    # -- collecting boundary values ------------------------------------------------
    def _collect_prefix(self, p: Prefix) -> None:
        self.addresses[p.family].update(_edges(p) + _outside(p))

    def _collect(self, name: str, o) -> None:
        if isinstance(o, PrefixMatch):
            self._collect_prefix(o.prefix)
        elif name in (F.SPORT, F.DPORT) and isinstance(o, Range):
            self.ports.update(v for v in (o.lo, o.hi, o.lo - 1, o.hi + 1) if 0 <= v <= 65535)
        elif name == F.PROTO and isinstance(o, (Exact, InSet)):
            self.protos.update(o.values if isinstance(o, InSet) else (o.value,))
        elif name == F.PROTO and isinstance(o, Ternary):
            self.protos.update((o.value, o.value | (~o.mask & 0xFF)))
        elif name in (F.ICMP_TYPE, F.ICMP_CODE) and isinstance(o, Exact):
            self.icmp.update(v for v in (o.value, o.value + 1) if v <= 255)
        elif name == F.HTTP_METHOD and isinstance(o, InSet):
            self.methods.update(o.values)
        elif name == F.HTTP_PATH and isinstance(o, StrExact):
            self.paths.update((o.value, o.value.rstrip("/") + "/", o.value + "x", o.value[:-1] or "/"))
        elif name == F.HTTP_PATH and isinstance(o, StrPrefix):
            self.paths.update((o.value, o.value + "x", o.value + "a/b", o.value[:-1] or "/"))
        elif name == F.HTTP_HOST and isinstance(o, StrExact):
            near = "x" + o.value  # a different host that still has the normal form ("x[::1]" has not)
            self.hosts.update((o.value, near if http.host_problem(near) is None else "x.example"))
        elif name.startswith(F.HEADER_PREFIX):
            values = self.headers.setdefault(name[len(F.HEADER_PREFIX):], {"1"})
            if isinstance(o, StrExact):
                values.update((o.value, o.value + "x"))

    # -- drawing values --------------------------------------------------------------
    def _random_address(self, family: int) -> int:
        if self.rng.random() < 0.85 and self.pool[family]:
            return self.rng.choice(self.pool[family])
        return self.rng.getrandbits(WIDTH[family])

    def _address_in(self, fm, family: int | None, miss: bool) -> tuple[int, int] | None:
        """An address satisfying an address or identity match (or just missing it)."""
        rng = self.rng
        if isinstance(fm, InSet):
            choices = [a for ident in fm.values for a in self.owned.get(ident, ())
                       if family is None or a[0] == family]
            return rng.choice(choices) if choices else None
        prefixes = [o.prefix for o in options(fm) if isinstance(o, PrefixMatch)
                    and (family is None or o.prefix.family == family)]
        if not prefixes:
            return None
        p = rng.choice(prefixes)
        pool = (_outside(p) or _edges(p)) if miss else _edges(p) + [p.first | rng.getrandbits(p.width - p.length)]
        return p.family, rng.choice(pool)

    def _port_in(self, fm, miss: bool) -> int:
        if fm is None:
            return self.rng.choice(self.port_pool)
        r = self.rng.choice([o for o in options(fm) if isinstance(o, Range)])
        if miss:
            return self.rng.choice([v for v in (r.lo - 1, r.hi + 1) if 0 <= v <= 65535] or [r.lo])
        return self.rng.choice((r.lo, r.hi, self.rng.randint(r.lo, r.hi)))

    def _string_in(self, fm, pool: list[str]) -> str:
        o = self.rng.choice(options(fm))
        if isinstance(o, StrExact):
            return o.value
        if isinstance(o, StrPrefix):
            return o.value + self.rng.choice(("", "x", "a/b", "1"))
        return self.rng.choice(pool)

    def _request(self, m: Match | None = None) -> Request:
        rng = self.rng
        get = (lambda name: m.get(name)) if m is not None else (lambda name: None)
        methods = get(F.HTTP_METHOD)
        method = rng.choice(methods.values) if isinstance(methods, InSet) else rng.choice(
            self.method_pool if rng.random() < 0.9 else HTTP_METHODS)
        path = self._string_in(get(F.HTTP_PATH), self.path_pool) if get(F.HTTP_PATH) else rng.choice(self.path_pool)
        host_m = get(F.HTTP_HOST)
        host = self._string_in(host_m, self.host_pool) if host_m else (
            rng.choice(self.host_pool) if rng.random() < 0.3 else None)
        headers = {}
        for name, values in self.header_pools.items():
            hm = get(F.header_field(name))
            if isinstance(hm, Absent) or (hm is None and rng.random() < 0.5):
                continue
            headers[name] = hm.value if isinstance(hm, StrExact) else rng.choice(values)
        return Request(method, path, host, tuple(sorted(headers.items())))

    # -- flows -------------------------------------------------------------------------
    def random_flow(self) -> Flow:
        """A flow over boundary values, not aimed at any entry."""
        rng = self.rng
        family = rng.choice(self.families)
        src, dst = self._random_address(family), self._random_address(family)
        proto = rng.choice(self.proto_pool) if rng.random() < 0.9 else rng.randrange(256)
        if family == 6 and proto in IPV6_EXTENSION_HEADERS:
            proto = UDP
        return self._finish(family, src, dst, proto, None, None, None)

    def aimed_flow(self, m: Match) -> Flow | None:
        """A flow inside `m`, or (often) with one field just outside it."""
        miss = self.rng.choice([None, None, F.SRC_IP, F.DST_IP, F.DPORT, F.SPORT, F.PROTO, F.HTTP_PATH])
        return self._aimed(m, miss)

    def _aimed(self, m: Match, miss: str | None) -> Flow | None:
        rng = self.rng
        family = None
        ends = {}
        for side, id_field, ip_field in (("src", F.SRC_ID, F.SRC_IP), ("dst", F.DST_ID, F.DST_IP)):
            fm = m.get(ip_field) or m.get(id_field)
            if fm is None:
                continue
            hit = self._address_in(fm, family, miss == ip_field)
            if hit is None:
                return None
            family = hit[0]
            ends[side] = hit[1]
        family = family or rng.choice(self.families)
        src = ends.get("src", self._random_address(family))
        dst = ends.get("dst", self._random_address(family))
        pm = m.get(F.PROTO)
        if pm is None or miss == F.PROTO:
            proto = rng.choice(self.proto_pool)
        else:
            proto = rng.choice(pm.values) if isinstance(pm, InSet) else pm.value if isinstance(pm, Exact) \
                else rng.choice(self.proto_pool)
        if family == 6 and proto in IPV6_EXTENSION_HEADERS:
            if pm is not None and miss != F.PROTO:
                return None  # no IPv6 packet carries this protocol
            proto = UDP
        return self._finish(family, src, dst, proto, m, miss, m.get(F.HTTP))

    def _finish(self, family, src, dst, proto, m, miss, wants_http) -> Flow:
        rng = self.rng
        get = (lambda name: m.get(name)) if m is not None else (lambda name: None)
        if proto in (TCP, UDP):
            dport = self._port_in(get(F.DPORT), miss == F.DPORT)
            sport = self._port_in(get(F.SPORT), miss == F.SPORT)
            http = None
            if proto == TCP and (isinstance(wants_http, Present) or rng.random() < self.http_share):
                http = self._request(m)
                if miss == F.HTTP_PATH and http.path != "/":
                    http = Request(http.method, http.path[:-1] or "/", http.host, http.headers)
            peer = self._peer(get(F.SRC_PEER)) if proto == TCP and self.peer_pool else None
            return Flow(family, src, dst, proto, sport, dport, http=http, peer=peer)
        if (proto, family) in ((ICMP, 4), (ICMP6, 6)):
            pool = sorted(self.icmp)
            tm, cm = get(F.ICMP_TYPE), get(F.ICMP_CODE)
            icmp_type = tm.value if isinstance(tm, Exact) and rng.random() < 0.8 else rng.choice(pool)
            icmp_code = cm.value if isinstance(cm, Exact) and rng.random() < 0.8 else rng.choice(pool)
            return Flow(family, src, dst, proto, icmp_type=icmp_type, icmp_code=icmp_code)
        return Flow(family, src, dst, proto)

    def _peer(self, fm) -> str | None:
        """A client certificate: one the match names (or none, as it asks), else often none at all."""
        rng = self.rng
        if isinstance(fm, Absent):
            return None
        if isinstance(fm, InSet) and rng.random() < 0.9:
            return rng.choice(fm.values)
        return None if rng.random() < 0.4 else rng.choice(self.peer_pool)

    def flow(self) -> Flow:
        """One flow: usually aimed at a random entry, otherwise random over boundaries."""
        if self.matches and self.rng.random() < self.aimed_share:
            for _ in range(4):
                f = self.aimed_flow(self.rng.choice(self.matches))
                if f is not None:
                    return f
        return self.random_flow()

    def inside(self, m: Match, tries: int = 6, enough: int | None = None) -> list[Flow]:
        """Distinct flows that satisfy `m` (as many as found in `tries` attempts, at most `enough`)."""
        from .interp import match_holds

        table = self._table
        out: list[Flow] = []
        for _ in range(tries):
            f = self._aimed(m, miss=None)
            if f is None or f in out:
                continue
            if match_holds(m, f, table.lookup(f.family, f.src), table.lookup(f.family, f.dst)):
                out.append(f)
                if len(out) == enough:
                    break
        return out

    def flows(self, n: int) -> list[Flow]:
        """`n` flows."""
        return [self.flow() for _ in range(n)]
