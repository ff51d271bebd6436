"""An overlap index: which entries can match a flow that another match (or pattern) matches.

Asking the solver about every pair of rules is quadratic. Instead each match
gets a *box*: an over-approximation of the flows it matches, per field
(source and destination prefixes, protocols, port ranges). Two matches whose
boxes are disjoint can never match the same flow, so every question is
asked about the entries whose boxes overlap, found by prefix lookups:

    ancestors of a prefix:   one dict lookup per prefix length in use
    descendants of a prefix: a binary search in the sorted prefixes

Identity matches are boxed by the identity's declared prefixes (a superset of
the addresses it owns), so the index never misses an overlap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.addr import WIDTH, Prefix
from anyplane.ir.match import InSet, Match, PrefixMatch, exact_values, int_ranges, options
from anyplane.ir.nodes import Program
from anyplane.ir.owners import ownership

ALL = None


@dataclass(frozen=True)
class Box:
    """Per-field over-approximation of a match; ALL (None) means unconstrained."""

    src: tuple[Prefix, ...] | None
    dst: tuple[Prefix, ...] | None
    proto: frozenset[int] | None
    sport: tuple[tuple[int, int], ...] | None
    dport: tuple[tuple[int, int], ...] | None


#: When the candidates times the query's prefixes are fewer, `candidates` tests the second address
#: dimension box by box instead of looking it up.
FILTER_DIRECTLY = 512


def _prefixes_overlap(a: tuple[Prefix, ...] | None, b: tuple[Prefix, ...] | None) -> bool:
    if a is None or b is None:
        return True
    return any(p.covers(q) or q.covers(p) for p in a for q in b)


def _spans(prefixes: tuple[Prefix, ...] | None) -> tuple[tuple[int, int, int], ...] | None:
    """Prefixes as (family, first, last) integers (None: every address)."""
    return None if prefixes is None else tuple((p.family, p.first, p.last) for p in prefixes)


def _spans_meet(a, b) -> bool:
    return any(fa == fb and la <= hb and lb <= ha for fa, la, ha in a for fb, lb, hb in b)


def _ranges_overlap(a, b) -> bool:
    if a is None or b is None:
        return True
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _specificity(prefixes: tuple[Prefix, ...] | None) -> int:
    """How selective an address constraint is: its shortest prefix length (-1 for none)."""
    return -1 if prefixes is None else min((p.length for p in prefixes), default=129)


def overlaps(a: Box, b: Box) -> bool:
    """Whether two boxes can share a flow."""
    if a.proto is not None and b.proto is not None and not (a.proto & b.proto):
        return False
    return (_ranges_overlap(a.dport, b.dport) and _ranges_overlap(a.sport, b.sport)
            and _prefixes_overlap(a.dst, b.dst) and _prefixes_overlap(a.src, b.src))


class Boxer:
    """Builds boxes for the matches of one program (identity prefixes come from its endpoints)."""

    def __init__(self, program: Program):
        self.identity_prefixes: dict[str, tuple[Prefix, ...]] = ownership(program).prefixes

    def _addresses(self, m: Match, id_field: str, ip_field: str) -> tuple[Prefix, ...] | None:
        ids, ips = m.get(id_field), m.get(ip_field)
        out = None
        if ids is not None:
            out = tuple(p for o in options(ids) for v in (o.values if isinstance(o, InSet) else (o.value,))
                        for p in self.identity_prefixes.get(v, ()))
        if ips is not None:
            mine = tuple(o.prefix for o in options(ips) if isinstance(o, PrefixMatch))
            if out is None:
                out = mine
            else:  # both constrained: keep the more specific side of each overlapping pair
                out = tuple(p if p.length >= q.length else q for p in out for q in mine if p.covers(q) or q.covers(p))
        return out

    @staticmethod
    def _ints(fm) -> frozenset[int] | None:
        return None if fm is None else exact_values(fm)

    @staticmethod
    def _ranges(fm) -> tuple[tuple[int, int], ...] | None:
        out = None if fm is None else int_ranges(fm)
        return None if out is None else tuple(out)

    def box(self, m: Match) -> Box:
        """The box of a match."""
        return Box(self._addresses(m, F.SRC_ID, F.SRC_IP), self._addresses(m, F.DST_ID, F.DST_IP),
                   self._ints(m.get(F.PROTO)), self._ranges(m.get(F.SPORT)), self._ranges(m.get(F.DPORT)))


class _PrefixDimension:
    """Finds the items whose prefixes overlap a query prefix."""

    def __init__(self):
        self.everywhere: list[int] = []
        self.by_length: dict[tuple[int, int], dict[int, list[int]]] = {}
        self.sorted: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}

    def add(self, item: int, prefixes: tuple[Prefix, ...] | None) -> None:
        if prefixes is None:
            self.everywhere.append(item)
            return
        for p in prefixes:
            self.by_length.setdefault((p.family, p.length), {}).setdefault(p.value, []).append(item)
            self.sorted[p.family].append((p.value, p.length, item))

    def freeze(self) -> None:
        for fam in self.sorted:
            self.sorted[fam].sort()
        self.lengths = {fam: sorted(length for f, length in self.by_length if f == fam) for fam in (4, 6)}
        self.keys = {fam: [v for v, _, _ in self.sorted[fam]] for fam in (4, 6)}

    def query(self, prefixes: tuple[Prefix, ...] | None, out: set[int]) -> None:
        out.update(self.everywhere)
        if prefixes is None:
            for fam in (4, 6):
                out.update(i for _, _, i in self.sorted[fam])
            return
        for q in prefixes:
            width = WIDTH[q.family]
            for length in self.lengths[q.family]:
                if length > q.length:
                    break
                key = q.value >> (width - length) << (width - length) if length else 0
                out.update(self.by_length[(q.family, length)].get(key, ()))
            keys = self.keys[q.family]
            lo, hi = bisect_left(keys, q.first), bisect_right(keys, q.last)
            out.update(i for _, length, i in self.sorted[q.family][lo:hi] if length >= q.length)


    def containing(self, family: int, address: int, out: set[int]) -> None:
        """Items whose prefixes contain one address."""
        out.update(self.everywhere)
        width = WIDTH[family]
        for length in self.lengths[family]:
            key = address >> (width - length) << (width - length) if length else 0
            out.update(self.by_length[(family, length)].get(key, ()))


class OverlapIndex:
    """Boxes of a list of matches, queried by box or by point.

    The address dimensions are looked up in prefix indexes and intersected (a
    wildcard dimension is not looked up: it filters nothing); protocols and
    ports are then checked per candidate.
    """

    def __init__(self, boxes: list[Box]):
        self.boxes = boxes
        self.src, self.dst = _PrefixDimension(), _PrefixDimension()
        for i, b in enumerate(boxes):
            self.src.add(i, b.src)
            self.dst.add(i, b.dst)
        self.src.freeze()
        self.dst.freeze()
        # Each box's prefixes as integer spans: two prefixes overlap when their spans meet.
        self.spans = {"src": [_spans(b.src) for b in boxes], "dst": [_spans(b.dst) for b in boxes]}

    def candidates(self, box: Box) -> list[int]:
        """Indices of boxes that overlap `box`, ascending."""
        found: set[int] | None = None
        for dim, prefixes, side in ((self.dst, box.dst, "dst"), (self.src, box.src, "src")):
            if prefixes is None:
                continue
            if found is not None and len(found) * len(prefixes) < FILTER_DIRECTLY:
                # Few candidates left: test them, rather than list every box a wide prefix holds.
                spans = self.spans[side]
                query = _spans(prefixes)
                if len(query) == 1:
                    (qf, qlo, qhi), = query
                    found = {i for i in found if spans[i] is None
                             or any(f == qf and lo <= qhi and qlo <= hi for f, lo, hi in spans[i])}
                else:
                    found = {i for i in found if spans[i] is None or _spans_meet(query, spans[i])}
                continue
            mine: set[int] = set()
            dim.query(prefixes, mine)
            found = mine if found is None else found & mine
        if found is None:
            found = set(range(len(self.boxes)))
        proto, sport, dport = box.proto, box.sport, box.dport
        boxes = self.boxes
        if proto is not None:
            found = [i for i in found if boxes[i].proto is None or not proto.isdisjoint(boxes[i].proto)]
        for ranges, side in ((dport, "dport"), (sport, "sport")):
            if ranges is None:
                continue
            if len(ranges) == 1:  # the common case, inline
                (qlo, qhi), = ranges
                found = [i for i in found if (r := getattr(boxes[i], side)) is None
                         or any(lo <= qhi and qlo <= hi for lo, hi in r)]
            else:
                found = [i for i in found if (r := getattr(boxes[i], side)) is None or _ranges_overlap(ranges, r)]
        out = sorted(found)
        return out

    def at(self, family: int, src: int, dst: int, proto: int, sport: int | None, dport: int | None) -> list[int]:
        """Indices of boxes that contain one flow's header, ascending (a superset of the matching entries)."""
        by_dst: set[int] = set()
        self.dst.containing(family, dst, by_dst)
        if not by_dst:
            return []
        by_src: set[int] = set()
        self.src.containing(family, src, by_src)
        out = []
        for i in by_dst & by_src:
            b = self.boxes[i]
            if b.proto is not None and proto not in b.proto:
                continue
            if b.dport is not None and (dport is None or not any(lo <= dport <= hi for lo, hi in b.dport)):
                continue
            if b.sport is not None and (sport is None or not any(lo <= sport <= hi for lo, hi in b.sport)):
                continue
            out.append(i)
        out.sort()
        return out
