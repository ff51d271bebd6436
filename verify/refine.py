"""Rule-by-rule refinement: an engine's read-back decides like the program it was compiled from.

Every entry an engine emits names the policy rule it came from. That gives a
cheap, exact check that needs no solver when the engine kept the rules'
structure (which compilers of first-match tables do):

  1. both sides have the same default and the same ownership table;
  2. each rule's entries are contiguous in decision order on both sides, and
     the engine's rules come in the program's order (some may be missing);
  3. each rule's entries all allow or all deny, the same on both sides;
  4. a rule's entries in the engine cover no flow its entries in the program
     do not; every flow they lose ("left out": a whole rule, or part of one)
     is taken by an earlier rule of the program, or reaches, in the engine,
     a later entry or the default with the rule's verdict.

Why that suffices: take a flow and the first rule of the program that
matches it. If the engine's entries for that rule match it, no earlier rule
of the engine does (their flows are inside the program's earlier rules), so
both decide by that rule. If not, the flow is one the rule lost, and the
engine decides it further down with the same verdict. A flow no rule
matches gets the (same) default on both sides.

Unions are compared as boxes over per-field integer intervals: identities as
integers (one box per owner, with the addresses it owns), IPv4 and IPv6 on
one address line (one box per family), -1 for an absent port or ICMP field
(cut by protocol class). Every flow lies in the boxes of exactly the matches
that hold for it, so statements about boxes are statements about flows.

The check is sufficient, not necessary: when it fails (an engine merged
rules, restricted entries to a listener, or the comparison outgrew its work
bound) the caller compares the engine with the solver instead. It never
says "alike" when a flow is decided otherwise; tests/verify/test_refine.py checks
that against exhaustive enumeration.
"""

from __future__ import annotations

from bisect import bisect_right

from anyplane.ir import fields as F
from anyplane.ir.match import Absent, Exact, InSet, Match, Present, PrefixMatch, Range, Ternary, options
from anyplane.ir.flow import ICMP, ICMP6, TCP, UDP, Flow
from anyplane.ir.nodes import Entry, Program, decision_key, ordered
from anyplane.ir.space import Box, Intervals, box_apart, box_inside, box_meet, boxes_without, meet, merge, minus

from .index import Boxer, OverlapIndex, members

V6_BASE = 1 << 32
ADDRESSES = ((0, V6_BASE + (1 << 128) - 1),)
#: The dimensions of a box, and the whole domain of each integer field (-1: the field is absent).
INTEGER = {F.PROTO: (0, 255), F.SPORT: (-1, 65535), F.DPORT: (-1, 65535), F.ICMP_TYPE: (-1, 255),
           F.ICMP_CODE: (-1, 255)}
#: The most selective fields first: most pairs of boxes are told apart by the first dimension or two.
DIMENSIONS = (F.DST_IP, F.SRC_IP, F.DPORT, F.SPORT, F.PROTO, F.DST_ID, F.SRC_ID, F.ICMP_TYPE, F.ICMP_CODE)
#: Owners of one side of a match beyond which its boxes are not split per owner.
SPLIT_OWNERS = 16
#: Comparisons one check may make: a base, and so many per entry of the two programs.
BUDGET, WORK_PER_ENTRY = 100_000, 200


class NotComparable(Exception):
    """Some match cannot be written as boxes (HTTP fields, a non-prefix ternary)."""


V4, V6 = ((0, V6_BASE - 1),), ((V6_BASE, ADDRESSES[0][1]),)
NO_VALUE = ((-1, -1),)
DST_IP, SRC_IP, DPORT, SPORT, PROTO, DST_ID, SRC_ID, ICMP_TYPE, ICMP_CODE = range(len(DIMENSIONS))


def _protocols(family: int):
    """Per family, the protocol classes that decide which fields a flow carries: (protocols, ports may
    be present, ICMP fields may be present)."""
    icmp = ICMP if family == 4 else ICMP6
    return (((TCP, TCP), (UDP, UDP)), True, False), (((icmp, icmp),), False, True), \
        (minus(((0, 255),), merge([(TCP, TCP), (UDP, UDP), (icmp, icmp)])), False, False)


class Boxes:
    """Writes matches as boxes, with identity names coded over the names both programs know.

    A match becomes one box per address family and protocol class, each cut to the flows that can
    exist: the addresses its identities own, one family on both sides, no ports unless TCP or UDP, no
    ICMP fields unless ICMP of the family. The boxes hold exactly the match's flows, so two matches
    whose boxes differ only in impossible combinations of values still compare equal.
    """

    def __init__(self, names, endpoints):
        self.code = {name: k + 1 for k, name in enumerate(sorted(names))}
        self.ids = ((0, len(self.code)),)
        owned: dict[int, list] = {}
        for row in endpoints:
            base = 0 if row.prefix.family == 4 else V6_BASE
            owned.setdefault(self.code[row.identity], []).append((base + row.prefix.first, base + row.prefix.last))
        self.owned = {k: merge(v) for k, v in owned.items()}
        self.unowned = minus(ADDRESSES, merge([span for spans in self.owned.values() for span in spans]))

    def feasible(self, boxes: list[Box]) -> list[Box]:
        """The boxes without flows that cannot exist: an address with an owner other than the box's
        identities on that side. What is left of a match once another's flows are taken away names
        identities and addresses apart (all owners but one, all of a prefix), so it may hold only such
        flows. NotComparable when a side names too many owners to cut."""
        out = []
        for b in boxes:
            sides = []
            for id_dim, ip_dim in ((DST_ID, DST_IP), (SRC_ID, SRC_IP)):
                ids, ips = b[id_dim], b[ip_dim]
                if ids == self.ids:
                    sides.append([(ids, ips)])  # every owner, and none: every address
                    continue
                codes = [c for lo, hi in ids for c in range(lo, hi + 1)]
                if len(codes) > SPLIT_OWNERS:
                    raise NotComparable("owners")
                cut = [(((c, c),), meet(ips, self.owned.get(c, ()) if c else self.unowned)) for c in codes]
                sides.append([(i, a) for i, a in cut if a])
            for (dst_ids, dst_ip), (src_ids, src_ip) in ((d, s) for d in sides[0] for s in sides[1]):
                c = list(b)
                c[DST_ID], c[DST_IP], c[SRC_ID], c[SRC_IP] = dst_ids, dst_ip, src_ids, src_ip
                out.append(tuple(c))
        return out

    def boxes(self, m: Match) -> list[Box]:
        """The boxes of a match (NotComparable for HTTP fields)."""
        box = self._box(m)
        # One box per owner: a flow's owner and its address go together.
        sides = []
        for id_dim, ip_dim in ((DST_ID, DST_IP), (SRC_ID, SRC_IP)):
            ids = box[id_dim]
            codes = [c for lo, hi in ids for c in range(lo, hi + 1)]
            if ids == self.ids or ids[0][0] == 0 or len(codes) > SPLIT_OWNERS:
                sides.append([(ids, box[ip_dim])])
            else:
                sides.append([(((c, c),), meet(box[ip_dim], self.owned.get(c, ()))) for c in codes])
        out = []
        for (dst_ids, dst_ip), (src_ids, src_ip) in ((d, s) for d in sides[0] for s in sides[1]):
            b = list(box)
            b[DST_ID], b[DST_IP], b[SRC_ID], b[SRC_IP] = dst_ids, dst_ip, src_ids, src_ip
            out += self._possible(b)
        return out

    @staticmethod
    def _possible(b: list) -> list[Box]:
        """The box cut to one family and protocol class at a time, without impossible field values."""
        out = []
        for family, part in ((4, V4), (6, V6)):
            dst, src = meet(b[DST_IP], part), meet(b[SRC_IP], part)
            if not dst or not src:
                continue
            for protos, ports, icmp in _protocols(family):
                c = list(b)
                c[DST_IP], c[SRC_IP], c[PROTO] = dst, src, meet(b[PROTO], protos)
                if not ports:
                    c[DPORT], c[SPORT] = meet(c[DPORT], NO_VALUE), meet(c[SPORT], NO_VALUE)
                if not icmp:
                    c[ICMP_TYPE], c[ICMP_CODE] = meet(c[ICMP_TYPE], NO_VALUE), meet(c[ICMP_CODE], NO_VALUE)
                if all(c):
                    out.append(tuple(c))
        return out

    def _address(self, fm) -> Intervals:
        spans = []
        for o in options(fm):
            if not isinstance(o, PrefixMatch):
                raise NotComparable(type(o).__name__)
            base = 0 if o.prefix.family == 4 else V6_BASE
            spans.append((base + o.prefix.first, base + o.prefix.last))
        return merge(spans)

    def _identity(self, fm) -> Intervals:
        spans = []
        for o in options(fm):
            values = o.values if isinstance(o, InSet) else (o.value,) if isinstance(o, Exact) else None
            if values is None or any(v not in self.code for v in values):
                raise NotComparable(type(o).__name__)
            spans += [(self.code[v], self.code[v]) for v in values]
        return merge(spans)

    @staticmethod
    def _integer(fm, name: str) -> Intervals:
        top = INTEGER[name][1]
        spans = []
        for o in options(fm):
            if isinstance(o, Exact):
                spans.append((o.value, o.value))
            elif isinstance(o, InSet):
                spans += [(v, v) for v in o.values]
            elif isinstance(o, Range):
                spans.append((o.lo, o.hi))
            elif isinstance(o, Present):
                spans.append((0, top))
            elif isinstance(o, Absent):
                spans.append((-1, -1))
            elif isinstance(o, Ternary):
                free = ~o.mask & top
                if free & (free + 1) or o.value & free:
                    raise NotComparable("a ternary that is not a prefix")
                spans.append((o.value, o.value | free))
            else:
                raise NotComparable(type(o).__name__)
        return merge(spans)

    def _box(self, m: Match) -> Box:
        out = []
        for name in DIMENSIONS:
            fm = m.get(name)
            if fm is None:
                out.append(self.ids if name in (F.SRC_ID, F.DST_ID) else
                           ADDRESSES if name in (F.SRC_IP, F.DST_IP) else (INTEGER[name],))
            elif name in (F.SRC_ID, F.DST_ID):
                out.append(self._identity(fm))
            elif name in (F.SRC_IP, F.DST_IP):
                out.append(self._address(fm))
            else:
                out.append(self._integer(fm, name))
        if len(m.fields) != sum(1 for name in DIMENSIONS if m.get(name) is not None):
            raise NotComparable("an entry matches HTTP fields, which the boxes do not model")
        return tuple(out)


def flow_in(box: Box) -> Flow | None:
    """A flow inside a box of `Boxes.boxes` (its lowest corner, past the network address where it can,
    with its ports or ICMP type where the box has flows that carry them; a non-first fragment where a
    TCP, UDP or ICMP box has only flows without them; None when that corner is no flow)."""
    def pick(dim):
        lo, hi = box[dim][0]
        return lo + 1 if lo < hi else lo

    def value(dim):
        lo, hi = box[dim][0]
        v = lo if lo >= 0 else 0 if hi >= 0 else -1
        return None if v < 0 else v  # -1: the field is absent
    dst, src = pick(DST_IP), pick(SRC_IP)
    base = 0 if dst < V6_BASE else V6_BASE
    family, proto = (4 if base == 0 else 6), box[PROTO][0][0]
    sport, dport, icmp_type, icmp_code = value(SPORT), value(DPORT), value(ICMP_TYPE), value(ICMP_CODE)
    fragment = (proto in (TCP, UDP) and dport is None) or ((proto, family) in ((ICMP, 4), (ICMP6, 6)) and icmp_type is None)
    try:
        if fragment:
            return Flow(family, src - base, dst - base, proto, fragment=True)
        return Flow(family, src - base, dst - base, proto, sport, dport, icmp_type=icmp_type, icmp_code=icmp_code)
    except ValueError:
        return None


def fragments_only(box: Box) -> bool:
    """Whether every flow of a box is a non-first fragment (TCP or UDP without ports, ICMP without a type)."""
    protos = box[PROTO]
    ports = all(p in (TCP, UDP) for lo, hi in protos for p in range(lo, hi + 1)) and box[DPORT] == NO_VALUE
    icmp = all(lo == hi and lo in (ICMP, ICMP6) for lo, hi in protos) and box[ICMP_TYPE] == NO_VALUE
    return ports or icmp


def _as_product(boxes: list[Box]) -> Box | None:
    """One box equal to the union, when the boxes are every combination of per-field values."""
    distinct = set(boxes)
    if len(distinct) == 1:
        return boxes[0]
    per_field = [set(b[d] for b in distinct) for d in range(len(DIMENSIONS))]
    count = 1
    for values in per_field:
        count *= len(values)
    if count != len(distinct):
        return None
    return tuple(merge(span for v in values for span in v) for values in per_field)


class Work:
    """A bound on the comparisons one check may make: past it the check gives up (the caller then asks
    the solver), so a pathological policy costs a bounded detour, never an unbounded one."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise NotComparable("too much work to compare rule by rule")


def same_flows(a: list[Box], b: list[Box], budget: Work | None = None) -> bool:
    """Whether two unions of boxes hold the same points."""
    pa, pb = _as_product(a), _as_product(b)
    if pa is not None and pb is not None:
        return pa == pb
    budget = budget or Work(BUDGET)
    return not without(a, b, budget) and not without(b, a, budget)


def _groups(entries: list[Entry]) -> list[tuple[str, list[Entry]]] | None:
    """Entries in decision order, grouped by rule; None when a rule's entries are not contiguous."""
    out: list[tuple[str, list[Entry]]] = []
    seen = set()
    for e in sorted(entries, key=decision_key):
        if out and out[-1][0] == e.rule:
            out[-1][1].append(e)
            continue
        if e.rule in seen:
            return None
        seen.add(e.rule)
        out.append((e.rule, [e]))
    return out


def without(pieces: list[Box], holes, budget: Work) -> list[Box]:
    """The pieces minus every hole, within the budget."""
    return boxes_without(pieces, holes, budget.spend)


def _taken(pieces: list[Box], holes: list[Box], budget: Work) -> bool:
    """Whether the holes cover every piece."""
    budget.spend(len(holes) * len(pieces))
    near = [h for h in holes if _meets(pieces, h)]
    return not without(pieces, near, budget)


def _meets(pieces: list[Box], h: Box) -> bool:
    return any(not box_apart(p, h) for p in pieces)


class Side:
    """One program's entries in decision order: their boxes (built when first asked for), and an
    overlap index to find neighbours."""

    def __init__(self, program: Program, boxes: Boxes):
        self.ordered = list(ordered(program.acl))
        self._boxes, self._cache = boxes, {}
        self.boxer = Boxer(program)
        self.index = OverlapIndex([self.boxer.box(e.match) for e in self.ordered])

    def boxes(self, j: int) -> list[Box]:
        """The boxes of the entry at position j."""
        if j not in self._cache:
            self._cache[j] = self._boxes.boxes(self.ordered[j].match)
        return self._cache[j]

    def near(self, entries: list[Entry], lo: int, hi: int) -> list[int]:
        """Positions in [lo, hi) of entries that can share a flow with one of these, in order."""
        window = ((1 << hi) - 1) & ~((1 << lo) - 1) if hi > lo else 0
        found = 0
        for e in entries:
            found |= self.index.mask(self.boxer.box(e.match)) & window
        return members(found)


def refines(engine: Program, source: Program) -> tuple[Program | None, str]:
    """(source, "") when the engine decides every flow as `source` does, by the check above; otherwise
    (None, the first reason it could not be shown that way).

    A compiler may leave out entries (or whole rules) whose flows earlier entries take, or later ones
    decide alike. The flows a rule loses are checked to be exactly such flows: taken by an earlier
    rule of the source, or decided with the rule's verdict by the engine's next entries or default.
    """
    if engine.default != source.default:
        return None, "the defaults differ"
    if {(r.prefix, r.identity) for r in engine.endpoints} != {(r.prefix, r.identity) for r in source.endpoints}:
        return None, "the ownership tables differ"
    mine, theirs = _groups(list(engine.acl.entries)), _groups(list(source.acl.entries))
    if mine is None or theirs is None:
        return None, "a rule's entries are not contiguous"
    rank = {rule: k for k, (rule, _) in enumerate(theirs)}
    ranks = [rank.get(rule, -1) for rule, _ in mine]
    if -1 in ranks or ranks != sorted(ranks):
        return None, "the rules differ or come in another order"
    try:
        return _refines(engine, source, dict(mine), theirs, ranks)
    except NotComparable as exc:
        return None, str(exc)


def _refines(engine: Program, source: Program, mine: dict[str, list[Entry]], theirs, ranks: list[int]):
    boxes = Boxes({r.identity for r in source.endpoints} | {i.name for i in source.identities}, source.endpoints)
    src, eng = Side(source, boxes), Side(engine, boxes)
    eng_at = {id(e): k for k, e in enumerate(eng.ordered)}
    starts = [eng_at[id(mine[rule][0])] for rule in mine] + [len(eng.ordered)]
    src_pos, budget = 0, Work(BUDGET + WORK_PER_ENTRY * (len(src.ordered) + len(eng.ordered)))
    for k, (rule, wanted) in enumerate(theirs):
        ours, begin = mine.get(rule, []), src_pos
        src_pos += len(wanted)
        verdict = wanted[0].action.verdict
        if {e.action.verdict for e in ours + wanted} != {verdict}:
            return None, f"rule {rule}: the verdicts differ"
        if [e.match for e in ours] == [e.match for e in wanted]:
            continue
        want = [b for j in range(begin, src_pos) for b in src.boxes(j)]
        have = [b for e in ours for b in boxes.boxes(e.match)]
        if have and same_flows(have, want, budget):
            continue
        if without(have, want, budget):
            return None, f"rule {rule}: the entries cover other flows"
        lost = without(want, have, budget)
        # Flows of the rule that an earlier rule of the source takes never reach it in either program.
        before = [b for i in src.near(wanted, 0, begin) for b in src.boxes(i)]
        budget.spend(len(before) * len(lost))
        lost = [p for p in lost if not any(box_inside(p, h) for h in before)]
        # Walk down the engine's later entries: a piece inside an entry of the rule's verdict is done.
        # Where an entry deciding otherwise meets a piece, those flows must all be taken before: by an
        # earlier rule of the source or by an entry of the rule's verdict met so far.
        for j in eng.near(wanted, starts[bisect_right(ranks, k)], len(eng.ordered)):
            if not lost:
                break
            got = eng.boxes(j)
            budget.spend(len(lost) * len(got))
            met = [box_meet(p, h) for h in got for p in lost if not box_apart(p, h)]
            if not met:
                continue
            if eng.ordered[j].action.verdict == verdict:
                lost = [p for p in lost if not any(box_inside(p, h) for h in got)]
                before += got
            elif not _taken(met, before, budget):
                return None, (f"rule {rule}: flows it leaves out reach rule {eng.ordered[j].rule}, "
                              "which decides otherwise")
        if lost and engine.default != verdict and not _taken(lost, before, budget):
            return None, f"rule {rule}: flows it leaves out reach the default, which decides otherwise"
    return source, ""
