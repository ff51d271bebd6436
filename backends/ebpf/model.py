"""The XDP classifier's tables, computed from the IR's L4 projection.

    IR (projected acl, decision order) ->
      address classes per side   LPM prefix -> class id (owner, CIDRs containing it)
      16-bit field classes       port / ICMP type+code -> class id (0 = field absent)
      bit vectors                per field value class: which entries accept it
      actions                    per entry: verdict, rule (counter), rate bucket

A packet's decision is the first entry (lowest bit) set in the AND of its
fields' bit vectors: entries are numbered in decision order, so the lowest
set bit is the entry that decides, whatever the number of entries. Each bit
vector carries a summary (bit k set when 64-bit word k is non-zero) so the
AND visits only words that can hold a match. The policy is data: changing it
rewrites maps, never the program.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.flow import Flow
from anyplane.ir.match import InSet, Ternary, int_ranges, options
from anyplane.ir.nodes import Entry, Program, ordered
from anyplane.ir.project import project_l4

from ..base import Unsupported
from ..classes import AddressClasses, address_classes

MIN_CAPACITY = 64
WORD = 64
SUMMARY_SPAN = WORD * WORD  # entries covered by one summary word
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


class BitRows:
    """A bit matrix: one row per class, one bit per entry; rows start as the wildcard mask."""

    def __init__(self, rows: int, width: int, wildcard: int):
        self.width = width
        mask = wildcard.to_bytes(width // 8, "little")
        self.rows = [bytearray(mask) for _ in range(rows)]

    def set(self, row: int, bit: int) -> None:
        self.rows[row][bit >> 3] |= 1 << (bit & 7)

    def value(self, row: int) -> bytes:
        """The map value for a row: summary words, then the bit words (little-endian u64)."""
        words = self.rows[row]
        n_words = self.width // WORD
        summary = 0
        for k in range(n_words):
            if any(words[k * 8:(k + 1) * 8]):
                summary |= 1 << k
        n_summary = max(1, n_words // WORD)
        return summary.to_bytes(n_summary * 8, "little") + bytes(words)

    def test(self, row: int, bit: int) -> bool:
        return bool(self.rows[row][bit >> 3] >> (bit & 7) & 1)


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
    bits: dict[str, BitRows]
    actions: list[tuple[int, int, int]]
    rules: list[str]
    buckets: list[RateLimit]

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
        for bit in range(len(self.entries)):
            if all(self.bits[field].test(row, bit) for field, row in rows.items()):
                return self.actions[bit][0], bit
        return self.default_verdict, None


def _address_bits(program, entries, side, classes: AddressClasses, width) -> BitRows:
    """Row of a class = wildcard entries | entries naming its owner | entries naming a CIDR containing it."""
    id_field, ip_field = (F.SRC_ID, F.SRC_IP) if side == "src" else (F.DST_ID, F.DST_IP)
    wild, by_owner, by_cidr = 0, {}, {}
    for i, e in enumerate(entries):
        ids, ips = e.match.get(id_field), e.match.get(ip_field)
        if ids is not None and ips is not None:
            raise Unsupported(f"{side} matched by both identity and address")
        if ids is None and ips is None:
            wild |= 1 << i
        for ident in (ids.values if isinstance(ids, InSet) else ()) if ids is not None else ():
            by_owner[ident] = by_owner.get(ident, 0) | 1 << i
        for o in options(ips) if ips is not None else ():
            by_cidr[o.prefix] = by_cidr.get(o.prefix, 0) | 1 << i
    rows = BitRows(0, width, 0)
    for owner, member in classes.keys:
        bits = wild | by_owner.get(owner, 0)
        for c in member:
            bits |= by_cidr.get(c, 0)
        rows.rows.append(bytearray(bits.to_bytes(width // 8, "little")))
    return rows


def _range_bits(classes: FieldClasses, ranges_per_entry, width) -> BitRows:
    wild = sum(1 << i for i, r in enumerate(ranges_per_entry) if r is None)
    rows = BitRows(classes.count, width, wild)
    starts = classes.starts
    for i, ranges in enumerate(ranges_per_entry):
        for lo, hi in ranges or ():
            for k in range(bisect_right(starts, lo), bisect_right(starts, hi) + 1):
                rows.set(k, i)
    return rows


def _proto_bits(entries, width) -> BitRows:
    wild = sum(1 << i for i, e in enumerate(entries) if e.match.get(F.PROTO) is None)
    rows = BitRows(256, width, wild)
    for i, e in enumerate(entries):
        fm = e.match.get(F.PROTO)
        if fm is None:
            continue
        for o in options(fm):
            if isinstance(o, Ternary):
                values = [v for v in range(256) if v & o.mask == o.value]
            else:
                values = [v for lo, hi in _field_ranges(o, F.PROTO) for v in range(lo, hi + 1)]
            for v in values:
                rows.set(v, i)
    return rows


def supported(e: Entry) -> str | None:
    """Why this engine cannot hold an entry (None when it can)."""
    for name, _ in e.match.fields:
        if F.lookup(name).layer == "L7":
            return f"{name} is not visible below L7"
    return None


def build(program: Program, capacity: int | None = None) -> Model:
    """The classifier tables for a program's L4 projection."""
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
    bits = {
        "src": _address_bits(projected, entries, "src", src, width),
        "dst": _address_bits(projected, entries, "dst", dst, width),
        "proto": _proto_bits(entries, width),
        "sport": _range_bits(sport, sport_r, width),
        "dport": _range_bits(dport, dport_r, width),
        "icmp": _range_bits(icmp, icmp_r, width),
    }
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
    return Model(entries, width, default, src, dst, sport, dport, icmp, bits, actions, rules, buckets)
