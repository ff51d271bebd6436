"""Exhaustive flows for small policies: one representative flow per equivalence class.

Every IR match compares addresses with prefixes, ports with ranges, protocols
and ICMP numbers with values, and HTTP strings with literals. Splitting each
field at the boundaries the program mentions yields classes inside which
every match (hence every decision) is constant; one flow per combination of
classes therefore enumerates every behaviour of the policy. This is the
brute-force oracle the verifier's answers are compared with.
"""

from __future__ import annotations

from itertools import product

from anyplane.ir import fields as F
from anyplane.ir.addr import WIDTH
from anyplane.ir.flow import ICMP, ICMP6, IPV6_EXTENSION_HEADERS, TCP, UDP, Flow, Request
from anyplane.ir.match import AnyOf, Exact, InSet, PrefixMatch, Range
from anyplane.verify.domain import Domain


def _options(fm):
    return fm.options if isinstance(fm, AnyOf) else (fm,)


def _matches(programs, extra=()):
    out = list(extra)
    for p in programs:
        out += [e.match for e in p.acl.entries] + [e.match for e in p.routes.entries]
        out += [m for a in p.asserts for m in a.pattern]
    return out


def _address_classes(programs, extra, family: int) -> list[int]:
    cuts = {0}
    prefixes = [row.prefix for p in programs for row in p.endpoints]
    for m in _matches(programs, extra):
        for name in (F.SRC_IP, F.DST_IP):
            fm = m.get(name)
            if fm is not None:
                prefixes += [o.prefix for o in _options(fm) if isinstance(o, PrefixMatch)]
    top = 1 << WIDTH[family]
    for p in prefixes:
        if p.family == family:
            cuts.update(c for c in (p.first, p.last + 1) if c < top)
    return sorted(cuts)


def _port_classes(programs, extra, name: str) -> list[int]:
    cuts = {0}
    for m in _matches(programs, extra):
        fm = m.get(name)
        for o in _options(fm) if fm is not None else ():
            if isinstance(o, Range):
                cuts.update(c for c in (o.lo, o.hi + 1) if c <= 65535)
    return sorted(cuts)


def _values(programs, extra, name: str, other: int) -> list[int]:
    values = {other}
    for m in _matches(programs, extra):
        fm = m.get(name)
        for o in _options(fm) if fm is not None else ():
            if isinstance(o, Exact):
                values.add(o.value)
            elif isinstance(o, InSet):
                values.update(o.values)
    return sorted(values)


def _requests(domain: Domain, programs, extra) -> list[Request]:
    methods = [m for m in domain.methods if m in set(_str_values(programs, extra, F.HTTP_METHOD))] + ["PATCH"]
    header_choices = [[(h, v) for v in [None, *d.literals, d.other]] for h, d in domain.headers.items()]
    hosts = [None, *domain.hosts.literals, domain.hosts.other] if domain.hosts.literals else [None]
    out = []
    for method, path, host, headers in product(dict.fromkeys(methods), domain.paths.witnesses, hosts,
                                               product(*header_choices)):
        hs = tuple(sorted((h, v) for h, v in headers if v is not None))
        out.append(Request(method, path, host, hs))
    return out


def _str_values(programs, extra, name):
    out = []
    for m in _matches(programs, extra):
        fm = m.get(name)
        for o in _options(fm) if fm is not None else ():
            out += list(o.values) if isinstance(o, InSet) else [o.value] if isinstance(o, Exact) else []
    return out


def universe(programs, extra=()) -> list[Flow]:
    """One flow per class of behaviour, for every program given (they share the classes)."""
    domain = Domain.of(list(programs), list(extra))
    requests = _requests(domain, programs, extra)
    dports, sports = _port_classes(programs, extra, F.DPORT), _port_classes(programs, extra, F.SPORT)
    types = _values(programs, extra, F.ICMP_TYPE, 0)
    codes = _values(programs, extra, F.ICMP_CODE, 1)
    protos = sorted(set(_values(programs, extra, F.PROTO, 47)) | {TCP, UDP, ICMP, ICMP6})
    flows = []
    for family in (4, 6):
        addrs = _address_classes(programs, extra, family)
        for src, dst in product(addrs, addrs):
            for proto in protos:
                if family == 6 and proto in IPV6_EXTENSION_HEADERS:
                    continue
                if proto in (TCP, UDP):
                    for sport, dport in product(sports, dports):
                        flows.append(Flow(family, src, dst, proto, sport, dport))
                        if proto == TCP:
                            flows += [Flow(family, src, dst, proto, sport, dport, http=r) for r in requests]
                elif (proto, family) in ((ICMP, 4), (ICMP6, 6)):
                    flows += [Flow(family, src, dst, proto, icmp_type=t, icmp_code=c) for t, c in product(types, codes)]
                else:
                    flows.append(Flow(family, src, dst, proto))
    return flows
