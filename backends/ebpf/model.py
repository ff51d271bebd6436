"""The XDP classifier's tables, computed from the IR's L4 projection.

    IR (projected acl, decision order) ->
      address classes per side   LPM prefix -> class id (owner, CIDRs containing it)
      16-bit field classes       port / ICMP type+code -> class id (0 = field absent)
      bit vectors                per field value class: which entries accept it, cut into blocks
                                 of 4,096 entries; equal blocks stored once (a pool)
      actions                    per entry: verdict, rule (counter), rate bucket

A packet's decision is the first entry (lowest bit) set in the AND of its
fields' bit vectors: entries are numbered in decision order, so the lowest
set bit is the entry that decides, whatever the number of entries. A row
(one class of one field) is a summary (bit b: block b is not empty) and one
block id per block; a block is a summary word (bit k: word k is not zero) and
its 64 words. The AND visits only the blocks every row marks, and in them only
the words every block marks.

Blocks make the memory grow with what the entries of each block tell apart,
not with classes x entries: 100k ClassBench rules have about 99k source
classes, and one row per class of 100k bits would be 1.2 GB; restricted to
4,096 entries, most classes' blocks are the same few contents.
The policy is data: changing it rewrites maps, never the program.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.flow import Flow
from anyplane.ir.match import InSet, Ternary, int_ranges, merge_ranges, options
from anyplane.ir.nodes import Entry, Program, ordered
from anyplane.ir.project import project_l4

from ..base import Unsupported
from ..classes import AddressClasses, address_classes

MIN_CAPACITY = 64
WORD = 64
BLOCK_BITS = WORD * WORD  # entries per block: one summary word marks its non-zero words
VERDICT_DENY, VERDICT_ALLOW = 0, 1
NO_BUCKET = 0xFFFFFFFF


def capacity_for(n: int) -> int:
    """Bit-vector width for n entries: a power of two, at least 64 (the program is built for it)."""
    cap = MIN_CAPACITY
    while cap < n:
        cap *= 2
    return cap


@dataclass(frozen=True)
class FieldClasses:
    """Classes of a 16-bit field: 0 = the packet has no such field; k >= 1 covers [starts[k-1], starts[k])."""

    starts: tuple[int, ...]

    def classify(self, value: int | None) -> int:
        """The class of a value (None: field absent)."""
        if value is None:
            return 0
        return bisect_right(self.starts, value)

    @property
    def count(self) -> int:
        """Number of classes including "absent"."""
        return len(self.starts) + 1


def _field_ranges(fm, name: str) -> list[tuple[int, int]]:
    out = int_ranges(fm)
    if out is None:
        raise Unsupported(f"{name} {type(fm).__name__} match")
    return out


def _icmp_ranges(e: Entry) -> list[tuple[int, int]] | None:
    """ICMP type/code constraint as ranges over type << 8 | code (None: unconstrained)."""
    t, c = e.match.get(F.ICMP_TYPE), e.match.get(F.ICMP_CODE)
    if t is None and c is None:
        return None
    types = [v for lo, hi in _field_ranges(t, F.ICMP_TYPE) for v in range(lo, hi + 1)] if t is not None else None
    codes = [v for lo, hi in _field_ranges(c, F.ICMP_CODE) for v in range(lo, hi + 1)] if c is not None else None
    if codes is None:
        return [(ty << 8, ty << 8 | 255) for ty in types]
    return [(ty << 8 | co, ty << 8 | co) for ty in (types if types is not None else range(256)) for co in codes]


def field_classes(ranges_per_entry: list[list[tuple[int, int]] | None]) -> FieldClasses:
    """Elementary intervals of [0, 65535] cut at every range boundary."""
    cuts = {0}
    for ranges in ranges_per_entry:
        for lo, hi in ranges or ():
            cuts.add(lo)
            if hi < 65535:
                cuts.add(hi + 1)
    return FieldClasses(tuple(sorted(cuts)))


@dataclass
class Model:
    """Every table of the classifier for one program."""

    entries: list[Entry]
    capacity: int
    default_verdict: int
    src: AddressClasses
    dst: AddressClasses
    sport: FieldClasses
    dport: FieldClasses
    icmp: FieldClasses
    bits: Blocks
    actions: list[tuple[int, int, int]]
    rules: list[str]
    buckets: list[RateLimit]
    l4: "L4Classes | None" = None  # protocol, ports and ICMP as one field (None: four fields)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields whose rows a packet ANDs, in the program's order."""
        return ("src", "dst", "l4") if self.l4 is not None else ("src", "dst", "proto", "sport", "dport", "icmp")

    # -- the reference evaluation of the tables (what the C program computes) ---------------
    def decide(self, f: Flow) -> tuple[int, int | None]:
        """(verdict, deciding entry or None) exactly as the XDP program computes it."""
        rows = {
            "src": self.src.lookup(f.family, f.src),
            "dst": self.dst.lookup(f.family, f.dst),
            "proto": f.proto,
            "sport": self.sport.classify(f.sport),
            "dport": self.dport.classify(f.dport),
            "icmp": self.icmp.classify(f.icmp_type << 8 | f.icmp_code if f.icmp_type is not None else None),
        }
        if self.l4 is not None:
            rows = {"src": rows["src"], "dst": rows["dst"],
                    "l4": self.l4.classify(rows["proto"], rows["sport"], rows["dport"], rows["icmp"])}
        bit = self.bits.first(rows)
        if bit is None or bit >= len(self.entries):
            return self.default_verdict, None
        return self.actions[bit][0], bit


class Blocks:
    """Every field's bit vectors, cut into blocks of entries; equal blocks are stored once.

    A row (one class of one field) is a list of block ids, one per block of `span` entries; a block
    id names its content in `pool` (an int of `span` bits, bit k = entry block * span + k). Id 0 is
    the empty block. Rows of one class differ from rows of another only in the blocks holding the
    entries that tell the classes apart, so the pool grows with the entries and what each block of
    them distinguishes, not with classes x entries."""

    def __init__(self, capacity: int):
        self.span = min(capacity, BLOCK_BITS)
        self.count = capacity // self.span
        self.pool: list[int] = [0]
        self._ids: dict[int, int] = {0: 0}
        self._sums: list[int] = [0]  # per pool id: its summary
        self.rows: dict[str, array] = {}  # field -> block ids, row-major (row * count + block)

    def intern(self, content: int) -> int:
        """The id of a block's content (a new id for content not seen before)."""
        got = self._ids.get(content)
        if got is None:
            got = self._ids[content] = len(self.pool)
            self.pool.append(content)
            self._sums.append(self.summary(content))
        return got

    def row_count(self, field: str) -> int:
        return len(self.rows[field]) // self.count

    def block(self, field: str, row: int, block: int) -> int:
        """The content of one block of one row."""
        return self.pool[self.rows[field][row * self.count + block]]

    def first(self, rows: dict[str, int]) -> int | None:
        """The lowest entry whose bit is set in every field's row (None: no entry)."""
        for b in range(self.count):
            x = -1
            for field, row in rows.items():
                x &= self.block(field, row, b)
                if not x:
                    break
            if x:
                return b * self.span + (x & -x).bit_length() - 1
        return None

    def row_value(self, field: str, row: int, pooled: bool = True) -> bytes:
        """A row as the map holds it (struct row): its summary words (bit b: block b is not empty), each
        block's summary (bit k: word k of the block is not zero), then the block ids (`pooled`) or the
        blocks' words. With the blocks' summaries in the row, the AND of six rows' summaries picks the
        words to read before any block is loaded."""
        ids = self.rows[field][row * self.count:(row + 1) * self.count]
        top = 0
        for b, i in enumerate(ids):
            if i:
                top |= 1 << b
        sums = array("Q", map(self._sums.__getitem__, ids))
        head = top.to_bytes(8 * top_words(self.count), "little") + sums.tobytes()
        if not pooled:
            return head + b"".join(self.block_value(self.pool[i]) for i in ids)
        return head + array("I", ids.tolist() + [0] * (self.count & 1)).tobytes()

    def summary(self, content: int) -> int:
        """Bit k set when 64-bit word k of a block is not zero."""
        out = 0
        for k, w in enumerate(array("Q", content.to_bytes(self.span // 8, "little"))):
            if w:
                out |= 1 << k
        return out

    def block_value(self, content: int) -> bytes:
        """A block as the map holds it (struct block): its words."""
        return content.to_bytes(self.span // 8, "little")


def top_words(blocks: int) -> int:
    """Summary words of a row: one bit per block."""
    return max(1, -(-blocks // WORD))


def _blocked(blocks: Blocks, rows: int, span_masks) -> array:
    """Block ids for `rows` rows. `span_masks(b)` gives block b's rows: (the content of every row not
    listed, {row: content})."""
    n = blocks.count
    out = array("I", bytes(4 * rows * n))
    for b in range(n):
        default, special = span_masks(b)
        d = blocks.intern(default)
        if d:
            out[b::n] = array("I", [d]) * rows
        for row, content in special.items():
            out[row * n + b] = blocks.intern(content)
    return out


def _address_rows(entries, side, classes: AddressClasses, blocks: Blocks) -> array:
    """Row of a class = wildcard entries | entries naming its owner | entries naming a CIDR containing it.
    Per block, only the classes that the block's entries tell apart get a row of their own."""
    id_field, ip_field = (F.SRC_ID, F.SRC_IP) if side == "src" else (F.DST_ID, F.DST_IP)
    span = blocks.span
    per_block = [(0, {}, {}) for _ in range(blocks.count)]  # wild, by owner, by CIDR (bits local to the block)
    for i, e in enumerate(entries):
        ids, ips = e.match.get(id_field), e.match.get(ip_field)
        if ids is not None and ips is not None:
            raise Unsupported(f"{side} matched by both identity and address")
        b, bit = divmod(i, span)
        wild, by_owner, by_cidr = per_block[b]
        if ids is None and ips is None:
            per_block[b] = (wild | 1 << bit, by_owner, by_cidr)
        for ident in (ids.values if isinstance(ids, InSet) else ()) if ids is not None else ():
            by_owner[ident] = by_owner.get(ident, 0) | 1 << bit
        for o in options(ips) if ips is not None else ():
            by_cidr[o.prefix] = by_cidr.get(o.prefix, 0) | 1 << bit
    with_cidr: dict = {}
    with_owner: dict = {}
    for k, (owner, member) in enumerate(classes.keys):
        with_owner.setdefault(owner, []).append(k)
        for c in member:
            with_cidr.setdefault(c, []).append(k)

    def span_masks(b):
        wild, by_owner, by_cidr = per_block[b]
        told = set()
        for c in by_cidr:
            told.update(with_cidr.get(c, ()))
        for o in by_owner:
            told.update(with_owner.get(o, ()))
        special = {}
        for k in told:
            owner, member = classes.keys[k]
            bits = wild | by_owner.get(owner, 0)
            for c in member:
                bits |= by_cidr.get(c, 0)
            special[k] = bits
        return wild, special
    return _blocked(blocks, len(classes.keys), span_masks)


def _swept_rows(count: int, intervals_per_entry, blocks: Blocks) -> array:
    """Rows of a field whose classes are numbered 0..count-1 and each entry holds a set of class
    intervals (None: every class). Per block, one sweep over the classes: an entry's bit is toggled where
    each of its (disjoint) intervals starts and after it ends, so the running XOR is the row."""
    span = blocks.span
    wilds = [0] * blocks.count
    toggles: list[dict[int, int]] = [{} for _ in range(blocks.count)]
    for i, intervals in enumerate(intervals_per_entry):
        b, bit = divmod(i, span)
        if intervals is None:
            wilds[b] |= 1 << bit
            continue
        t = toggles[b]
        for lo, hi in intervals:
            t[lo] = t.get(lo, 0) ^ 1 << bit
            t[hi + 1] = t.get(hi + 1, 0) ^ 1 << bit

    def span_masks(b):
        wild, t = wilds[b], toggles[b]
        if not t:
            return wild, {}
        special, run = {}, 0
        marks = sorted(k for k in t if k < count)
        for n, k in enumerate(marks):
            run ^= t[k]
            end = marks[n + 1] if n + 1 < len(marks) else count
            if run:
                for row in range(k, end):
                    special[row] = wild | run
        return wild, special
    return _blocked(blocks, count, span_masks)


def _class_intervals(classes: FieldClasses, ranges) -> list[tuple[int, int]] | None:
    """A field's value ranges as intervals of its classes (merged: disjoint)."""
    if ranges is None:
        return None
    starts = classes.starts
    return merge_ranges((bisect_right(starts, lo), bisect_right(starts, hi)) for lo, hi in ranges)


def _proto_intervals(e: Entry) -> list[tuple[int, int]] | None:
    fm = e.match.get(F.PROTO)
    if fm is None:
        return None
    values: list[tuple[int, int]] = []
    for o in options(fm):
        if isinstance(o, Ternary):
            values += [(v, v) for v in range(256) if v & o.mask == o.value]
        else:
            values += _field_ranges(o, F.PROTO)
    return merge_ranges(values)


L4_BUDGET = 1 << 18  # table entries (and rows ANDed) the combined field may take; beyond, four fields


@dataclass(frozen=True)
class L4Classes:
    """Protocol, source port, destination port and ICMP as one field, in two steps of table lookups (the
    recursive flow classification idea): a protocol's class (equal rows) and the source port class give a
    first class; it and the destination port class (or, for a packet without ports, the ICMP class) give
    the field's class, whose row is the AND of the four rows. A packet then ANDs three rows, not six."""

    proto: tuple[int, ...]  # protocol -> its class (256 values)
    first: tuple[int, ...]  # proto class * sports + sport class -> first class
    second: tuple[int, ...]  # first class * (dports + icmps) + dport class, or + dports + ICMP class -> class
    sports: int
    dports: int
    icmps: int

    def classify(self, proto: int, sport: int, dport: int, icmp: int) -> int:
        """The combined class (sport, dport, icmp: their field classes, 0 = absent)."""
        one = self.first[self.proto[proto & 0xFF] * self.sports + sport]
        return self.second[one * (self.dports + self.icmps) + (dport if dport else self.dports + icmp)]

    @property
    def size(self) -> int:
        """Entries of the three tables."""
        return 256 + len(self.first) + len(self.second)


def _combined(bits: Blocks) -> tuple[L4Classes, array] | None:
    """The four port and protocol fields' rows as one field (None when its tables would pass L4_BUDGET)."""
    n = bits.count
    pool, intern = bits.pool, bits.intern

    def row(field, k):
        return tuple(bits.rows[field][k * n:(k + 1) * n])

    def anded(a, b):
        return tuple(x if x == y else intern(pool[x] & pool[y]) for x, y in zip(a, b))

    classes: dict = {}
    proto = tuple(classes.setdefault(row("proto", v), len(classes)) for v in range(256))
    protos = list(classes)
    sports, dports, icmps = (bits.row_count(f) for f in ("sport", "dport", "icmp"))
    if len(protos) * sports + len(protos) * sports * (dports + icmps) > 4 * L4_BUDGET:
        return None
    ones: dict = {}
    first = tuple(ones.setdefault(anded(p, row("sport", k)), len(ones)) for p in protos for k in range(sports))
    if len(first) + len(ones) * (dports + icmps) > L4_BUDGET:
        return None
    seconds: dict = {}
    lasts = [row("dport", d) for d in range(dports)]
    icmp_rows = [row("icmp", i) for i in range(icmps)]
    no_port, no_icmp = lasts[0], icmp_rows[0]
    second = []
    for one in ones:
        with_icmp_absent = anded(one, no_icmp)
        for d in range(dports):
            second.append(seconds.setdefault(anded(with_icmp_absent, lasts[d]), len(seconds)))
        with_no_port = anded(one, no_port)
        for i in range(icmps):
            second.append(seconds.setdefault(anded(with_no_port, icmp_rows[i]), len(seconds)))
    rows = array("I", [b for r in seconds for b in r])
    return L4Classes(proto, first, tuple(second), sports, dports, icmps), rows


def supported(e: Entry) -> str | None:
    """Why this engine cannot hold an entry (None when it can)."""
    for name, _ in e.match.fields:
        if F.lookup(name).layer == "L7":
            return f"{name} is not visible below L7"
    return None


def build(program: Program, capacity: int | None = None, combine: bool = True) -> Model:
    """The classifier tables for a program's L4 projection (`combine`: protocol, ports and ICMP as one
    field where its tables stay within L4_BUDGET)."""
    projected = project_l4(program)
    entries = list(ordered(projected.acl))
    for e in entries:
        why = supported(e)
        if why:
            raise Unsupported(why)
    width = capacity or capacity_for(len(entries))
    if len(entries) > width:
        raise ValueError(f"{len(entries)} entries exceed the program's capacity of {width}")
    src = address_classes(projected, entries, "src")
    dst = address_classes(projected, entries, "dst")
    sport_r = [_field_ranges(e.match.get(F.SPORT), F.SPORT) if e.match.get(F.SPORT) else None for e in entries]
    dport_r = [_field_ranges(e.match.get(F.DPORT), F.DPORT) if e.match.get(F.DPORT) else None for e in entries]
    icmp_r = [_icmp_ranges(e) for e in entries]
    sport, dport, icmp = field_classes(sport_r), field_classes(dport_r), field_classes(icmp_r)
    bits = Blocks(width)
    bits.rows["src"] = _address_rows(entries, "src", src, bits)
    bits.rows["dst"] = _address_rows(entries, "dst", dst, bits)
    bits.rows["proto"] = _swept_rows(256, [_proto_intervals(e) for e in entries], bits)
    for name, classes, ranges in (("sport", sport, sport_r), ("dport", dport, dport_r), ("icmp", icmp, icmp_r)):
        bits.rows[name] = _swept_rows(classes.count, [_class_intervals(classes, r) for r in ranges], bits)
    combined = _combined(bits) if combine else None
    l4 = None
    if combined is not None:
        l4, bits.rows["l4"] = combined
        for name in ("proto", "sport", "dport", "icmp"):
            del bits.rows[name]
    rules: list[str] = []  # counter slots, in order of first use; the default counts at slot `capacity`
    rule_index: dict[str, int] = {}
    for e in entries:
        if e.rule not in rule_index:
            rule_index[e.rule] = len(rules)
            rules.append(e.rule)
    buckets: list[RateLimit] = []
    bucket_index: dict[str, int] = {}
    actions = []
    for e in entries:
        verdict = VERDICT_DENY if isinstance(e.action, Deny) else VERDICT_ALLOW
        bucket = NO_BUCKET
        if isinstance(e.action, RateLimit):
            if e.action.bucket not in bucket_index:
                bucket_index[e.action.bucket] = len(buckets)
                buckets.append(e.action)
            bucket = bucket_index[e.action.bucket]
        actions.append((verdict, rule_index[e.rule], bucket))
    default = VERDICT_ALLOW if program.default == "allow" else VERDICT_DENY
    return Model(entries, width, default, src, dst, sport, dport, icmp, bits, actions, rules, buckets, l4)
