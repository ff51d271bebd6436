"""Concrete witnesses without the solver: a flow inside every one of a few matches.

For matches built from boxes (prefixes, ranges, sets, identities, HTTP
literals), a flow in their intersection can be picked field by field: the
more specific of two nested prefixes, the overlap of two port ranges, a
value both sets contain, an address the identity really owns. The result is
checked with the interpreter's own `match_holds`; when picking fails (None),
callers ask the solver instead. Picks favour readable values: an address
just past the network address, the lowest port of a range, GET.
"""

from __future__ import annotations

from anyplane.ir import fields as F
from anyplane.ir.addr import WIDTH, Prefix
from anyplane.ir.flow import HTTP_METHODS, ICMP, ICMP6, TCP, UDP, Flow, Request
from anyplane.ir.interp import match_holds
from anyplane.ir.match import (Absent, Exact, InSet, Match, PrefixMatch, Present, Range, StrExact, StrPrefix,
                             exact_values, options)
from anyplane.ir.space import meet, merge

from .context import Analysis


def _values(fms, universe):
    """Values of `universe` allowed by every Exact/InSet match (None: some match is of another kind)."""
    allowed = list(universe)
    for fm in fms:
        ok = set()
        for o in options(fm):
            if isinstance(o, Exact):
                ok.add(o.value)
            elif isinstance(o, InSet):
                ok.update(o.values)
            elif isinstance(o, Range):
                ok.update(v for v in allowed if o.lo <= v <= o.hi)
            else:
                return None
        allowed = [v for v in allowed if v in ok]
    return allowed


def _port(fms) -> int | None:
    lo, hi = 0, 65535
    choices = [(0, 65535)]
    for fm in fms:
        ranges = [(o.lo, o.hi) for o in options(fm) if isinstance(o, Range)]
        if len(ranges) != len(options(fm)):
            return None
        choices = [(max(a, c), min(b, d)) for a, b in choices for c, d in ranges if max(a, c) <= min(b, d)]
        if not choices:
            return None
    lo, hi = min(choices)
    return lo


def _address(a: Analysis, ids: set[str] | None, prefixes: list[Prefix], family: int | None):
    """An address inside every prefix, owned by one of `ids` if given."""
    def inside(fam, addr):
        return all(p.contains(fam, addr) for p in prefixes)
    if ids is not None:
        for ident in sorted(ids):
            for fam, addr in sorted(a.gen.owned.get(ident, ()), key=lambda fa: (fa[1] & 0xFF in (0, 255), fa[1])):
                if (family is None or fam == family) and inside(fam, addr):
                    return fam, addr
        return None
    if prefixes:
        longest = max(prefixes, key=lambda p: p.length)
        if family is not None and longest.family != family:
            return None
        addr = longest.first + 1 if longest.length < WIDTH[longest.family] - 1 else longest.first
        return (longest.family, addr) if inside(longest.family, addr) else None
    fam = family or 4
    return fam, (0x0A000001 if fam == 4 else (0xFD00 << 112) | 1)


def _side(a: Analysis, matches: list[Match], id_field: str, ip_field: str):
    ids = None
    prefixes: list[Prefix] = []
    for m in matches:
        fm = m.get(id_field)
        if fm is not None:
            mine = set(fm.values) if isinstance(fm, InSet) else None
            if mine is None:
                return "fail"
            ids = mine if ids is None else ids & mine
        fm = m.get(ip_field)
        if fm is not None:
            opts = options(fm)
            if len(opts) != 1 or not isinstance(opts[0], PrefixMatch):
                return "fail"
            prefixes.append(opts[0].prefix)
    return ids, prefixes


def _request(a: Analysis, matches: list[Match]) -> Request | None:
    methods = _values([m.get(F.HTTP_METHOD) for m in matches if m.get(F.HTTP_METHOD)], HTTP_METHODS)
    if not methods:
        return None
    method = "GET" if "GET" in methods else methods[0]
    dom = a.domain.paths
    allowed = ((0, len(dom.classes) - 1),)
    for m in matches:
        if m.get(F.HTTP_PATH) is not None:
            allowed = meet(allowed, merge(dom.ranges(m.get(F.HTTP_PATH))))
    if not allowed:
        return None
    paths = [dom.witnesses[lo] for lo, _ in allowed]
    headers = {}
    host = None
    for m in matches:
        for name, fm in m.fields:
            if name == F.HTTP_HOST and isinstance(fm, StrExact):
                host = fm.value
            elif name.startswith(F.HEADER_PREFIX):
                h = name[len(F.HEADER_PREFIX):]
                if isinstance(fm, StrExact):
                    headers[h] = fm.value
                elif isinstance(fm, Present):
                    headers.setdefault(h, "1")
    for m in matches:  # an Absent test wins over nothing but must not clash with a value
        for name, fm in m.fields:
            if name.startswith(F.HEADER_PREFIX) and isinstance(fm, Absent) and name[len(F.HEADER_PREFIX):] in headers:
                return None
    return Request(method, min(paths, key=len), host, tuple(sorted(headers.items())))


def intersection(a: Analysis, matches: list[Match]) -> Flow | None:
    """A readable flow matched by every match, or None when none is found this way."""
    src_side = _side(a, matches, F.SRC_ID, F.SRC_IP)
    dst_side = _side(a, matches, F.DST_ID, F.DST_IP)
    if src_side == "fail" or dst_side == "fail":
        return None
    wants_http = any(m.get(F.HTTP) is not None for m in matches)
    protos = _values([m.get(F.PROTO) for m in matches if m.get(F.PROTO)], range(256))
    if protos is None:
        return None
    ported = any(m.get(F.SPORT) or m.get(F.DPORT) for m in matches)
    icmp = any(m.get(F.ICMP_TYPE) or m.get(F.ICMP_CODE) for m in matches)
    for family in (4, 6):
        src = _address(a, *src_side, family)
        dst = _address(a, *dst_side, family)
        if src is None or dst is None:
            continue
        for proto in [p for p in (TCP, UDP, ICMP, ICMP6) if p in protos] + [p for p in protos if p not in (6, 17, 1, 58)][:1]:
            if wants_http and proto != TCP or ported and proto not in (TCP, UDP):
                continue
            if icmp and (proto, family) not in ((ICMP, 4), (ICMP6, 6)):
                continue
            if proto in (TCP, UDP):
                dport = _port([m.get(F.DPORT) for m in matches if m.get(F.DPORT)])
                sport = _port([m.get(F.SPORT) for m in matches if m.get(F.SPORT)])
                if dport is None or sport is None:
                    continue
                http = _request(a, matches) if wants_http else None
                if wants_http and http is None:
                    continue
                f = Flow(family, src[1], dst[1], proto, 49152 if sport == 0 and not any(
                    m.get(F.SPORT) for m in matches) else sport, dport, http=http)
            elif (proto, family) in ((ICMP, 4), (ICMP6, 6)):
                types = _values([m.get(F.ICMP_TYPE) for m in matches if m.get(F.ICMP_TYPE)], range(256))
                codes = _values([m.get(F.ICMP_CODE) for m in matches if m.get(F.ICMP_CODE)], range(256))
                if not types or not codes:
                    continue
                default_type = 8 if family == 4 else 128
                f = Flow(family, src[1], dst[1], proto, icmp_type=default_type if default_type in types else types[0],
                         icmp_code=codes[0])
            else:
                f = Flow(family, src[1], dst[1], proto)
            ids = a.ids(f)
            if all(match_holds(m, f, *ids) for m in matches):
                return f
    return None


def _field_covers(xf, ef) -> bool:
    """Whether every value `ef` admits is admitted by `xf` (conservative: False when unsure)."""
    xs, es = options(xf), options(ef)
    if isinstance(xf, Present):
        return not any(isinstance(o, Absent) for o in es)
    return all(any(_option_covers(x, e) for x in xs) for e in es)


def _option_covers(x, e) -> bool:
    if isinstance(x, (Exact, InSet)) and isinstance(e, (Exact, InSet)):
        xv = set(x.values) if isinstance(x, InSet) else {x.value}
        ev = set(e.values) if isinstance(e, InSet) else {e.value}
        return ev <= xv
    if isinstance(x, Range):
        if isinstance(e, Range):
            return x.lo <= e.lo and e.hi <= x.hi
        if isinstance(e, (Exact, InSet)):
            return all(x.lo <= v <= x.hi for v in (e.values if isinstance(e, InSet) else (e.value,)))
        return False
    if isinstance(x, PrefixMatch) and isinstance(e, PrefixMatch):
        return x.prefix.covers(e.prefix)
    if isinstance(x, StrExact) and isinstance(e, StrExact):
        return x.value == e.value
    if isinstance(x, StrPrefix) and isinstance(e, (StrExact, StrPrefix)):
        return e.value.startswith(x.value)
    return x == e


def covers(a: Analysis, x: Match, e: Match) -> bool:
    """Whether every flow `e` matches is matched by `x` (a sufficient, syntactic test)."""
    for name, xf in x.fields:
        ef = e.get(name)
        if ef is not None:
            if not _field_covers(xf, ef):
                return False
            continue
        # x tests an address, e names identities: fine when their declared prefixes all lie inside.
        partner = {F.SRC_IP: F.SRC_ID, F.DST_IP: F.DST_ID}.get(name)
        ids = e.get(partner) if partner else None
        if not isinstance(ids, InSet):
            return False
        declared = [p for i in ids.values for p in a.boxer.identity_prefixes.get(i, ())]
        prefixes = [o.prefix for o in options(xf) if isinstance(o, PrefixMatch)]
        if not declared or not all(any(q.covers(p) for q in prefixes) for p in declared):
            return False
    return True


MAX_STEPS = 40


def _rebuild(p: Flow, **changes) -> Flow | None:
    fields = dict(family=p.family, src=p.src, dst=p.dst, proto=p.proto, sport=p.sport, dport=p.dport,
                  icmp_type=p.icmp_type, icmp_code=p.icmp_code, http=p.http)
    fields.update(changes)
    proto, family = fields["proto"], fields["family"]
    if proto in (TCP, UDP):
        fields["sport"] = 49152 if fields["sport"] is None else fields["sport"]
        fields["dport"] = 80 if fields["dport"] is None else fields["dport"]
    else:
        fields["sport"] = fields["dport"] = None
    if (proto, family) in ((ICMP, 4), (ICMP6, 6)):
        fields["icmp_type"] = 8 if fields["icmp_type"] is None else fields["icmp_type"]
        fields["icmp_code"] = 0 if fields["icmp_code"] is None else fields["icmp_code"]
    else:
        fields["icmp_type"] = fields["icmp_code"] = None
    if proto != TCP:
        fields["http"] = None
    try:
        return Flow(**fields)
    except ValueError:
        return None


def _moves(a: Analysis, ebox, emtch: Match, xbox, xmatch: Match, p: Flow):
    """Flows next to p that leave the blocking entry's box along one dimension."""
    top = (1 << WIDTH[p.family]) - 1
    for side, mine, theirs in (("src", ebox.src, xbox.src), ("dst", ebox.dst, xbox.dst)):
        addr = p.src if side == "src" else p.dst
        for q in theirs or ():
            if not q.contains(p.family, addr):
                continue
            for new in (q.last + 1, q.first - 1):
                if 0 <= new <= top and (mine is None or any(m.contains(p.family, new) for m in mine)):
                    yield _rebuild(p, **{side: new})
    for name, mine, theirs, value in (("dport", ebox.dport, xbox.dport, p.dport),
                                      ("sport", ebox.sport, xbox.sport, p.sport)):
        if value is None or theirs is None:
            continue
        for lo, hi in theirs:
            if lo <= value <= hi:
                for new in (hi + 1, lo - 1):
                    if 0 <= new <= 65535 and (mine is None or any(a_ <= new <= b_ for a_, b_ in mine)):
                        yield _rebuild(p, **{name: new})
    if xbox.proto is not None:
        for proto in sorted((ebox.proto or {TCP, UDP, ICMP, ICMP6, 47}) - xbox.proto):
            yield _rebuild(p, proto=proto)
    if p.http is not None and xmatch.get(F.HTTP) is not None:
        yield _rebuild(p, http=None)
        r = p.http
        for method in HTTP_METHODS:
            if method != r.method:
                yield _rebuild(p, http=Request(method, r.path, r.host, r.headers))
        dom = a.domain.paths
        mine = dom.ranges(emtch.get(F.HTTP_PATH)) if emtch.get(F.HTTP_PATH) is not None else [(0, len(dom.classes) - 1)]
        theirs = dom.ranges(xmatch.get(F.HTTP_PATH)) if xmatch.get(F.HTTP_PATH) is not None else []
        tried = 0
        for lo, hi in mine:
            for k in (lo, hi, lo + 1, (lo + hi) // 2):
                if lo <= k <= hi and not any(u <= k <= v for u, v in theirs) and dom.witnesses[k] != r.path:
                    tried += 1
                    yield _rebuild(p, http=Request(r.method, dom.witnesses[k], r.host, r.headers))
            if tried > 8:
                break


def escape(a: Analysis, stay: Match, stay_box, start: Flow, blockers) -> Flow | None:
    """A flow inside `stay` that `blockers(matching positions)` leaves empty, or None.

    A greedy walk: from `start`, step just outside the first blocking entry's box
    along one dimension, staying inside `stay`, until nothing blocks.
    """
    p, seen = start, {start}
    for _ in range(MAX_STEPS):
        blocking = blockers(a.matching(p))
        if not blocking:
            return p
        x = blocking[0]
        if x < 0:  # blocked by the default, not by an entry one could step out of
            return None
        step = None
        for q in _moves(a, stay_box, stay, a.boxes[x], a.ordered[x].match, p):
            if q is not None and q not in seen and match_holds(stay, q, *a.ids(q)):
                step = q
                break
        if step is None:
            return None
        seen.add(step)
        p = step
    return None


def _strings_disjoint(xf, ef) -> bool:
    for x in options(xf):
        for e in options(ef):
            xs, es = x.value if hasattr(x, "value") else None, e.value if hasattr(e, "value") else None
            if xs is None or es is None:
                return False
            if isinstance(x, StrExact) and isinstance(e, StrExact) and xs != es:
                continue
            if isinstance(x, StrPrefix) and isinstance(e, StrExact) and not es.startswith(xs):
                continue
            if isinstance(e, StrPrefix) and isinstance(x, StrExact) and not xs.startswith(es):
                continue
            if isinstance(x, StrPrefix) and isinstance(e, StrPrefix) and not (xs.startswith(es) or es.startswith(xs)):
                continue
            return False
    return True



def disjoint(x: Match, e: Match) -> bool:
    """Whether no flow can match both (a sufficient, syntactic test: False when unsure).

    Different identities never share an address (an address has one owner), so
    disjoint identity sets are disjoint matches, like disjoint protocols or methods.
    """
    for name, xf in x.fields:
        ef = e.get(name)
        if ef is None:
            continue
        xv, ev = exact_values(xf), exact_values(ef)
        if xv is not None and ev is not None:
            if not xv & ev:
                return True
        elif name in (F.SPORT, F.DPORT):
            xr = [(o.lo, o.hi) for o in options(xf) if isinstance(o, Range)]
            er = [(o.lo, o.hi) for o in options(ef) if isinstance(o, Range)]
            if len(xr) == len(options(xf)) and len(er) == len(options(ef)) and \
                    not any(a <= d and c <= b for a, b in xr for c, d in er):
                return True
        elif name == F.HTTP_PATH or name == F.HTTP_HOST or name.startswith(F.HEADER_PREFIX):
            if isinstance(xf, Absent) != isinstance(ef, Absent):
                if not isinstance(xf, Absent) and not isinstance(ef, Absent):
                    continue
                if isinstance(xf, (StrExact, Present)) or isinstance(ef, (StrExact, Present)):
                    return True
            elif not isinstance(xf, (Absent, Present)) and not isinstance(ef, (Absent, Present)) \
                    and _strings_disjoint(xf, ef):
                return True
    return False


def polish(a: Analysis, f: Flow, keep) -> Flow:
    """Make a witness more readable, one tweak at a time, keeping tweaks for which `keep(flow)` holds."""
    tweaks = []
    src_id, dst_id = a.ids(f)
    for side, ident in (("src", src_id), ("dst", dst_id)):
        for fam, addr in a.gen.owned.get(ident, [])[:1] if ident else ():
            if fam == f.family:
                tweaks.append({side: addr})
    if f.http is not None:
        tweaks.append(dict(http=None))
        if f.http.method != "GET":
            tweaks.append(dict(http=Request("GET", f.http.path, f.http.host, f.http.headers)))
    if f.sport is not None:
        tweaks.append(dict(sport=49152))
        ports = [p.number for p in a.program.identity(dst_id).ports] if dst_id else []
        tweaks += [dict(dport=p) for p in ports + [80, 443] if p != f.dport]
    if f.icmp_type is not None:
        tweaks.append(dict(icmp_type=8 if f.family == 4 else 128, icmp_code=0))
    for t in tweaks:
        candidate = _rebuild(f, **t)
        if candidate is not None and keep(candidate):
            f = candidate
    return f
