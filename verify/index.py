"""An overlap index: which entries can match a flow that another match (or pattern) matches.

Asking the solver about every pair of rules is quadratic. Instead each match
gets a *box*: an over-approximation of the flows it matches, per field
(source and destination prefixes, protocols, port ranges). Two matches whose
boxes are disjoint can never match the same flow, so every question is
asked about the entries whose boxes overlap. Every field is a line of
ranges (a prefix is the range of its addresses), and the boxes meeting a
range are found as bit masks over positions (`_Intervals`):

    lo <= b and not hi < a:  two binary searches in the boxes sorted by lo
                             and by hi, each a prefix of cumulative masks

Identity matches are boxed by the identity's declared prefixes (a superset of
the addresses it owns), so the index never misses an overlap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.addr import Prefix
from anyplane.ir.flow import IPV6_EXTENSION_HEADERS, TCP, UDP
from anyplane.ir.match import InSet, Match, PrefixMatch, exact_values, int_ranges, options
from anyplane.ir.nodes import Program
from anyplane.ir.owners import ownership
from anyplane.ir.space import Intervals, meets, merge

ALL = None


@dataclass(frozen=True)
class Box:
    """Per-field over-approximation of a match; ALL (None) means unconstrained."""

    src: tuple[Prefix, ...] | None
    dst: tuple[Prefix, ...] | None
    proto: frozenset[int] | None
    sport: Intervals | None  # sets of ranges: sorted and merged (ir/space.py)
    dport: Intervals | None


def _prefixes_overlap(a: tuple[Prefix, ...] | None, b: tuple[Prefix, ...] | None) -> bool:
    if a is None or b is None:
        return True
    return any(p.overlaps(q) for p in a for q in b)


def _ranges_overlap(a, b) -> bool:
    return a is None or b is None or meets(a, b)


def overlaps(a: Box, b: Box) -> bool:
    """Whether two boxes can share a flow."""
    if a.proto is not None and b.proto is not None and not (a.proto & b.proto):
        return False
    return (_ranges_overlap(a.dport, b.dport) and _ranges_overlap(a.sport, b.sport)
            and _prefixes_overlap(a.dst, b.dst) and _prefixes_overlap(a.src, b.src))


def surely_meet(a: Box, b: Box) -> bool:
    """For the boxes of two exact matches (`Boxer.exact`) whose fields pairwise meet: True when some flow
    surely lies in both (one address family for every prefix, and a protocol that carries the ports
    they constrain); False when unsure."""
    families = set()
    for prefixes in (a.src, a.dst, b.src, b.dst):
        if prefixes is not None:
            if len(prefixes) != 1:
                return False
            families.add(prefixes[0].family)
    if len(families) > 1:
        return False
    protos = a.proto if b.proto is None else b.proto if a.proto is None else a.proto & b.proto
    if protos is None:
        return True
    if any(r is not None for r in (a.sport, a.dport, b.sport, b.dport)):
        return bool(protos & {TCP, UDP})
    return bool(protos - set(IPV6_EXTENSION_HEADERS)) if families == {6} else bool(protos)


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
        return None if out is None else merge(out)

    @staticmethod
    def exact(m: Match) -> bool:
        """Whether the box of a match is the match itself: a flow inside the box matches it (addresses
        as prefixes, protocols as values, ports as ranges, and no other field)."""
        for name, fm in m.fields:
            if name in (F.SRC_IP, F.DST_IP):
                if not all(isinstance(o, PrefixMatch) for o in options(fm)):
                    return False
            elif name == F.PROTO:
                if exact_values(fm) is None:
                    return False
            elif name in (F.SPORT, F.DPORT):
                if int_ranges(fm) is None:
                    return False
            else:
                return False
        return True

    def box(self, m: Match) -> Box:
        """The box of a match."""
        return Box(self._addresses(m, F.SRC_ID, F.SRC_IP), self._addresses(m, F.DST_ID, F.DST_IP),
                   self._ints(m.get(F.PROTO)), self._ranges(m.get(F.SPORT)), self._ranges(m.get(F.DPORT)))


STRIDE = 16  # items between two cumulative masks of an _Intervals order
POINT_TABLE_BITS = 1 << 28  # the largest table of elementary intervals' masks an _Intervals keeps (32 MiB)


def _cumulative(items: list[int]) -> list[int]:
    """The bit mask of the first k*STRIDE items of an order, for every k (set in a byte array, read as
    an integer once per stride: setting bits of a growing integer one by one costs its length each)."""
    cum = [0]
    bits = bytearray(max(items, default=0) // 8 + 1)
    for k, item in enumerate(items, 1):
        bits[item >> 3] |= 1 << (item & 7)
        if k % STRIDE == 0:
            cum.append(int.from_bytes(bits, "little"))
    return cum


def _upto(cum: list[int], items: list[int], k: int) -> int:
    """The bit mask of the first k items of an order."""
    q = k // STRIDE
    out = cum[q]
    for item in items[q * STRIDE:k]:
        out |= 1 << item
    return out


def members(mask: int) -> list[int]:
    """The positions of a bit mask's set bits, ascending."""
    if not mask:
        return []
    text = bin(mask)[:1:-1]  # bit 0 first
    out, i, find = [], text.find("1"), text.find
    while i >= 0:
        out.append(i)
        i = find("1", i + 1)
    return out


class _Intervals:
    """Items with integer ranges on one line, asked which items meet some ranges or hold a point.

    An item with one range [lo, hi] meets [a, b] when lo <= b and not hi < a. Sorted by lo (or by
    hi), the items meeting either condition are a prefix of that order, kept as cumulative bit masks
    every STRIDE items: a question costs two binary searches and a few operations on masks. The ranges
    of items with several are records of their own, asked the same way (bits over records), and the
    records met name their items; items without ranges are everywhere.
    """

    def __init__(self, ranges: list):
        self.everywhere = 0
        self.several: list[tuple[int, tuple[tuple[int, int], ...]]] = []
        single = []
        for item, rs in enumerate(ranges):
            if rs is None:
                self.everywhere |= 1 << item
            elif len(rs) == 1:
                single.append((rs[0][0], rs[0][1], item))
            elif rs:
                self.several.append((item, tuple(rs)))
        self._single = single
        self._points = None
        by_lo = sorted(single)
        by_hi = sorted(single, key=lambda t: (t[1], t[2]))
        self.los, self.lo_items = [t[0] for t in by_lo], [t[2] for t in by_lo]
        self.his, self.hi_items = [t[1] for t in by_hi], [t[2] for t in by_hi]
        self.lo_cum, self.hi_cum = _cumulative(self.lo_items), _cumulative(self.hi_items)
        records = [(lo, hi, item) for item, rs in self.several for lo, hi in rs]
        self.record_item = [item for _, _, item in records]
        by_lo = sorted((lo, hi, k) for k, (lo, hi, _) in enumerate(records))
        by_hi = sorted(((lo, hi, k) for k, (lo, hi, _) in enumerate(records)), key=lambda t: (t[1], t[2]))
        self.r_los, self.r_lo_items = [t[0] for t in by_lo], [t[2] for t in by_lo]
        self.r_his, self.r_hi_items = [t[1] for t in by_hi], [t[2] for t in by_hi]
        self.r_lo_cum, self.r_hi_cum = _cumulative(self.r_lo_items), _cumulative(self.r_hi_items)
        self._memo: dict = {}

    def _meeting(self, ranges) -> int:
        hit = self.everywhere
        query = merge(ranges)  # sorted and apart: a box's range meets at most the last one before its end
        for a, b in query:
            started = _upto(self.lo_cum, self.lo_items, bisect_right(self.los, b))
            ended = _upto(self.hi_cum, self.hi_items, bisect_left(self.his, a))
            hit |= started & ~ended
        if self.several:
            met = 0
            for a, b in query:
                started = _upto(self.r_lo_cum, self.r_lo_items, bisect_right(self.r_los, b))
                ended = _upto(self.r_hi_cum, self.r_hi_items, bisect_left(self.r_his, a))
                met |= started & ~ended
            item = self.record_item
            for k in members(met):
                hit |= 1 << item[k]
        return hit

    def meeting(self, ranges: tuple[tuple[int, int], ...]) -> int:
        """Items whose ranges meet any of these ranges (remembered: boxes repeat)."""
        hit = self._memo.get(ranges)
        if hit is None:
            if len(self._memo) >= 1 << 15:
                self._memo.clear()
            hit = self._memo[ranges] = self._meeting(ranges)
        return hit

    def holding(self, point: int) -> int:
        """Items whose ranges hold the point: one binary search in the elementary intervals' masks, where
        they fit in POINT_TABLE_BITS (made on the first question), else as a range of one point."""
        if self._points is None:
            self._points = self._point_table()
        if not self._points:
            return self._meeting(((point, point),))
        bounds, masks = self._points
        k = bisect_right(bounds, point) - 1
        return self.everywhere | (masks[k] if k >= 0 else 0)

    def _point_table(self):
        """(the elementary intervals' first values, the items holding each), or () when too large."""
        ranges = [(item, ((lo, hi),)) for lo, hi, item in self._single] + self.several
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}
        for item, rs in ranges:
            for lo, hi in merge(rs):
                starts[lo] = starts.get(lo, 0) | 1 << item
                ends[hi + 1] = ends.get(hi + 1, 0) | 1 << item
        bounds = sorted(set(starts) | set(ends))
        if len(bounds) * max(1, len(ranges)) > POINT_TABLE_BITS:
            return ()
        masks, held = [], 0
        for b in bounds:
            held = (held & ~ends.get(b, 0)) | starts.get(b, 0)
            masks.append(held)
        return bounds, masks


def _line(family: int, value: int) -> int:
    """An address as a point of one line holding both families apart."""
    return family << 129 | value


def _address_ranges(prefixes: tuple[Prefix, ...] | None):
    return None if prefixes is None else tuple((_line(p.family, p.first), _line(p.family, p.last)) for p in prefixes)


class OverlapIndex:
    """Boxes of a list of matches, queried by box or by point, as bit masks over their positions.

    Each field is an `_Intervals` line (addresses of both families on one line, protocols as points);
    a question intersects the masks of the constrained fields.
    """

    def __init__(self, boxes: list[Box]):
        self.boxes = boxes
        self.all = (1 << len(boxes)) - 1
        self.src = _Intervals([_address_ranges(b.src) for b in boxes])
        self.dst = _Intervals([_address_ranges(b.dst) for b in boxes])
        self.proto = _Intervals([None if b.proto is None else tuple((p, p) for p in sorted(b.proto))
                                 for b in boxes])
        self.sport = _Intervals([b.sport for b in boxes])
        self.dport = _Intervals([b.dport for b in boxes])

    def mask(self, box: Box) -> int:
        """The boxes that overlap `box`, as a bit mask over positions."""
        out = self.all
        if box.dst is not None:
            out &= self.dst.meeting(_address_ranges(box.dst))
        if box.src is not None and out:
            out &= self.src.meeting(_address_ranges(box.src))
        if box.proto is not None and out:
            out &= self.proto.meeting(tuple((p, p) for p in sorted(box.proto)))
        if box.dport is not None and out:
            out &= self.dport.meeting(tuple(box.dport))
        if box.sport is not None and out:
            out &= self.sport.meeting(tuple(box.sport))
        return out

    def candidates(self, box: Box) -> list[int]:
        """Indices of boxes that overlap `box`, ascending."""
        return members(self.mask(box))

    def at_mask(self, family: int, src: int, dst: int, proto: int, sport: int | None, dport: int | None) -> int:
        """The boxes that contain one flow's header, as a bit mask (a superset of the matching entries)."""
        out = self.dst.holding(_line(family, dst))
        if out:
            out &= self.src.holding(_line(family, src))
        if out:
            out &= self.proto.holding(proto)
        for line, port in ((self.dport, dport), (self.sport, sport)):
            if out:
                out &= line.everywhere if port is None else line.holding(port)
        return out

    def at(self, family: int, src: int, dst: int, proto: int, sport: int | None, dport: int | None) -> list[int]:
        """Indices of boxes that contain one flow's header, ascending (a superset of the matching entries)."""
        return members(self.at_mask(family, src, dst, proto, sport, dport))
