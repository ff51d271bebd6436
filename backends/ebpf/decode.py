"""What the classifier's maps decide, decoded from their bytes into IR: the kernel's read-back.

The composition proof compares this program with the policy, so the proof covers the bytes a push
writes into the maps (or, read from the kernel with `Classifier.image`, what the maps hold), not the
entries the tables were built from. The decoding follows the lookups of templates/xdp.c.j2 and shares
nothing with the builder (model.py, addr4.py, loader.tables):

    addresses   the IPv4 trie of arrays (addr4) and the IPv6 LPM trie give each address class its
                addresses, per side
    fields      the 16-bit class arrays (cls) give each port class its ports, each ICMP class its
                type << 8 | code values; the combined field's tables (l4t) give each of its classes the
                (protocol, source port class, destination port or ICMP class) it is looked up from
    rows        a row's blocks as the program reads them: a block counts where the row's summary marks
                it, a word where the block's summary marks it
    entries     entry i holds, on each field, for the classes whose rows have bit i; the packets it
                takes are those whose every field's class is among them (the AND of the rows)

Each entry becomes IR entries over addresses (or identities, where an entry's addresses are exactly
some identities' addresses), protocols, ports and ICMP types, in the entries' order, with the verdict,
rule and rate bucket of its action. Tables the builder never writes (a class without a row, a pointer
past the trie, an entry whose combined field is not a product of its parts, a bit past the last entry
that some packet can reach) are a DecodeError: the read-back fails rather than proving something the
kernel does not do.
"""

from __future__ import annotations

import json
import struct
from array import array
from bisect import bisect_right
from dataclasses import replace
from fractions import Fraction
from itertools import groupby

from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny, RateLimit
from anyplane.ir.addr import Prefix
from anyplane.ir.match import Absent, AnyOf, InSet, Match, PrefixMatch, Range
from anyplane.ir.lpm import lpm_ranges
from anyplane.ir.nodes import Entry, Program, Table
from anyplane.ir.pairspace import bit_positions as _bits
from anyplane.ir.source import Span
from anyplane.ir.space import merge, to_prefixes

from ..base import EngineError
from .addr4 import CHUNK, LEVEL1, POINTER, STRIDE
from .loader import META
from .model import BLOCK_BITS, NO_BUCKET, VERDICT_ALLOW, VERDICT_DENY, WORD, top_words

WIDTH = {4: 32, 6: 128}


class DecodeError(EngineError):
    """The maps hold something the classifier's builder never writes (the message says what)."""


def decode(program: Program, image: dict[str, bytes], addr6: list[tuple[bytes, int]]) -> Program:
    """The program the maps' contents decide (`image`: the regions of one generation, as
    `loader.Tables.image()` gives them, with `meta`; `addr6`: the IPv6 trie's keys and classes).
    `program` gives what the maps do not hold: identities and their addresses, rule origins."""
    return _Decoder(program, image, addr6).program()


class _Decoder:
    def __init__(self, program: Program, image: dict[str, bytes], addr6: list[tuple[bytes, int]]):
        self.source = program
        meta = image["meta"]
        if len(meta) != META.size:
            raise DecodeError(f"the meta region holds {len(meta)} bytes, not {META.size}")
        m = META.unpack(meta)
        self.bases = m[0:6]
        self.default_verdict, self.capacity, self.n = m[6], m[7], m[8]
        self.stateful, self.timeouts = m[10], m[12:18]
        self.second_at, self.sports, self.xs, self.dports = m[18:22]
        self.combined = self.second_at != 0
        if self.capacity <= 0 or self.capacity & (self.capacity - 1) or self.n > self.capacity:
            raise DecodeError(f"capacity {self.capacity} for {self.n} entries")
        self.image, self.addr6 = image, addr6
        self.buckets: dict[int, str] = {}  # a kernel bucket -> the policy's bucket it is
        self.owners: _Owners | None = None
        self.address_sides: set | None = None
        self.unnamed = False  # the counters' labels are unknown: rules are named by their slots

    # -- the rows ------------------------------------------------------------------------------
    def _rows(self) -> list[list[int]]:
        """Every row's blocks (ints of `span` bits), as the program reads them."""
        span = min(self.capacity, BLOCK_BITS)
        count = self.capacity // span
        words = span // WORD
        top_n = top_words(count)
        blk = self.image.get("blk", b"")
        pooled = len(blk) > 0
        size = 8 * top_n + 8 * count + (4 * (count + (count & 1)) if pooled else 8 * count * words)
        data = self.image["row"]
        if len(data) % size:
            raise DecodeError(f"the row region's {len(data)} bytes are not whole rows of {size}")
        pool = [int.from_bytes(blk[k:k + 8 * words], "little") for k in range(0, len(blk), 8 * words)]
        word_mask = [(1 << WORD) - 1 << (WORD * k) for k in range(words)]
        rows = []
        for at in range(0, len(data), size):
            top = int.from_bytes(data[at:at + 8 * top_n], "little")
            sums = array("Q", data[at + 8 * top_n:at + 8 * top_n + 8 * count])
            tail = data[at + 8 * top_n + 8 * count:at + size]
            ids = array("I", tail[:4 * count]) if pooled else None
            blocks = []
            for b in range(count):
                if not top >> b & 1 or not sums[b]:
                    blocks.append(0)
                    continue
                if pooled:
                    if ids[b] >= len(pool):
                        raise DecodeError(f"a row names block {ids[b]} of a pool of {len(pool)}")
                    content = pool[ids[b]]
                else:
                    content = int.from_bytes(tail[8 * words * b:8 * words * (b + 1)], "little")
                s = sums[b] & (1 << words) - 1
                if s != (1 << words) - 1:
                    mask = 0
                    for k in _bits(s):
                        mask |= word_mask[k]
                    content &= mask
                blocks.append(content)
            rows.append(blocks)
        self.span = span
        return rows

    def _fields(self, total: int) -> dict[str, tuple[int, int]]:
        """Field -> (first row, rows), from the bases in meta."""
        names = ("src", "dst", "l4") if self.combined else ("src", "dst", "proto", "sport", "dport", "icmp")
        bases = self.bases[:3] if self.combined else self.bases
        order = sorted(zip(bases, names))
        out = {}
        for k, (base, name) in enumerate(order):
            end = order[k + 1][0] if k + 1 < len(order) else total
            if not base <= end <= total:
                raise DecodeError(f"the {name} rows start at {base}, past the region's {total} rows")
            out[name] = (base, end - base)
        return out

    # -- classes -------------------------------------------------------------------------------
    def _addresses(self) -> list[dict[int, list[tuple[int, int, int]]]]:
        """Per side and family: (lo, hi, class) spans in address order, covering every address."""
        sides: list[dict[int, list]] = [{4: [], 6: []}, {4: [], 6: []}]
        table = array("I", self.image["addr4"])
        if len(table) < 2 * LEVEL1:
            raise DecodeError("the IPv4 address table is shorter than its first level")
        chunks = (len(table) - 2 * LEVEL1) // CHUNK

        def emit(out, lo, hi, cls):
            if out and out[-1][2] == cls:
                out[-1] = (out[-1][0], hi, cls)
            else:
                out.append((lo, hi, cls))

        def walk(out, value, lo, bits):
            if not value & POINTER:
                emit(out, lo, lo + (1 << bits) - 1, value)
                return
            index = value & ~POINTER
            if bits == 0 or index >= chunks:
                raise DecodeError(f"an IPv4 table entry points {'below the last level' if bits == 0 else 'past'}"
                                  " the table")
            base = 2 * LEVEL1 + index * CHUNK
            below = bits - STRIDE
            for k in range(CHUNK):
                walk(out, table[base + k], lo + (k << below), below)

        for side in (0, 1):
            first, out = side * LEVEL1, sides[side][4]
            at = 0
            for value, run in groupby(table[first:first + LEVEL1]):
                n = sum(1 for _ in run)
                if value & POINTER:
                    for k in range(n):
                        walk(out, value, (at + k) << 16, 16)
                else:
                    emit(out, at << 16, ((at + n) << 16) - 1, value)
                at += n
        by_side: list[list] = [[], []]
        for key, cls in self.addr6:
            if len(key) != 21:
                raise DecodeError("an IPv6 trie key is not 21 bytes")
            (bits,) = struct.unpack("=I", key[:4])
            side, value = key[4], int.from_bytes(key[5:], "big")
            if bits < 8 or bits > 136 or side not in (0, 1):
                raise DecodeError(f"an IPv6 trie key of {bits} bits for side {side}")
            length = bits - 8
            lo = value >> (128 - length) << (128 - length) if length else 0
            by_side[side].append((lo, lo + (1 << (128 - length)) - 1, cls))
        for side in (0, 1):
            sides[side][6] = lpm_ranges(by_side[side], 128, 0)
        return sides

    def _swept(self, rows, base: int, spans: dict[int, list], count: int) -> dict[int, dict[int, list]]:
        """Entry -> family -> its address ranges on one side. Walking the spans in address order, the
        entries whose bit differs between one span's row and the next start or stop there (the XOR of
        the two): the work is the spans times the blocks, plus the ranges written."""
        out: dict[int, dict[int, list]] = {}
        for family, line in spans.items():
            for lo, hi, cls in line:
                if cls >= count:
                    raise DecodeError(f"address class {cls} has no row ({count} rows)")
            top = (1 << WIDTH[family]) - 1
            for b in range(self.capacity // self.span):
                first, prev, start = b * self.span, 0, {}
                for lo, hi, cls in line:
                    cur = rows[base + cls][b]
                    x = prev ^ cur
                    if x:
                        for bit in _bits(x):
                            if cur >> bit & 1:
                                start[bit] = lo
                            else:
                                out.setdefault(first + bit, {}).setdefault(family, []).append((start.pop(bit), lo - 1))
                        prev = cur
                for bit, at in start.items():
                    out.setdefault(first + bit, {}).setdefault(family, []).append((at, top))
        return out

    def _values(self) -> list[dict[int, list]]:
        """Per 16-bit field (source port, destination port, ICMP): class -> value ranges (class 0 is
        the field absent, which no value maps to)."""
        cls = array("I", self.image["cls"])
        if len(cls) != 3 * 65536:
            raise DecodeError("the field class table is not 3 x 65536 entries")
        out = []
        for k in range(3):
            classes: dict[int, list] = {0: []}
            at = 0
            for value, run in groupby(cls[k * 65536:(k + 1) * 65536]):
                n = sum(1 for _ in run)
                classes.setdefault(value, []).append((at, at + n - 1))
                at += n
            out.append(classes)
        return out

    # -- the program ---------------------------------------------------------------------------
    def program(self) -> Program:
        rows = self._rows()
        fields = self._fields(len(rows))
        addresses = self._addresses()
        values = self._values()
        dims: dict[str, dict[int, object]] = {}
        if self.combined:
            dims["l4"] = self._l4(values)
        else:
            dims["proto"] = {p: p for p in range(256)}
            dims["sport"], dims["dport"], dims["icmp"] = values
        # side -> entry -> family -> the addresses whose rows hold it
        ranges = [self._swept(rows, fields[side][0], addresses[k], fields[side][1]) for k, side in enumerate(("src", "dst"))]
        held = {}  # field -> entry -> the classes (reached by some packet) whose rows hold it
        for name, classes in dims.items():
            base, count = fields[name]
            for c in classes:
                if c >= count:
                    raise DecodeError(f"{name} class {c} has no row ({count} rows)")
            held[name] = self._holding(rows, base, classes)
        actions = self._actions()
        origins = {}
        for e in self.source.acl.entries:
            origins.setdefault(e.rule, e.origin)
        for r in self.source.rules:
            origins.setdefault(r.id, r.origin)
        rule_of = self._rule_ids()
        out: list[tuple[Match, object, str]] = []
        for i in range(self.capacity):
            sets = [ranges[0].get(i), ranges[1].get(i)] + [held[name].get(i, ()) for name in dims]
            if any(not s for s in sets):
                continue
            if i >= self.n:
                raise DecodeError(f"entry {i} past the last ({self.n}) holds for some packet")
            verdict, slot, bucket = actions[i]
            rule = rule_of(slot)
            action = self._action(verdict, bucket, rule)
            parts = [self._side(F.SRC_ID, F.SRC_IP, sets[0], rule), self._side(F.DST_ID, F.DST_IP, sets[1], rule)]
            base_fields = {**parts[0], **parts[1]}
            l4s = self._l4_matches(dims, sets[2:]) if self.combined else self._split_matches(dims, sets[2:])
            for l4 in l4s:
                out.append((Match.of({**base_fields, **l4}), action, rule))
        n = len(out)
        entries = tuple(Entry(n - k, m, a, origins.get(rule) or _origin(rule, self.source.default_origin), rule)
                        for k, (m, a, rule) in enumerate(out))
        self._check_connections()
        return replace(self.source, default="allow" if self.default_verdict == VERDICT_ALLOW else "deny",
                       acl=Table("kernel", entries), routes=Table("routes", ()))

    def _holding(self, rows, base: int, classes) -> dict[int, list[int]]:
        """Entry -> the classes whose rows hold its bit (rows with one content share the walk)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for c in classes:
            for b, content in enumerate(rows[base + c]):
                if content:
                    groups.setdefault((b, content), []).append(c)
        out: dict[int, list[int]] = {}
        for (b, content), cs in groups.items():
            first = b * self.span
            for bit in _bits(content):
                out.setdefault(first + bit, []).extend(cs)
        return out

    def _actions(self) -> list[tuple[int, int, int]]:
        act = self.image["act"]
        if len(act) != 16 * self.n:
            raise DecodeError(f"the action region holds {len(act)} bytes for {self.n} entries")
        out = [struct.unpack_from("=IIII", act, 16 * k)[:3] for k in range(self.n)]
        return out + [(VERDICT_DENY, 0, NO_BUCKET)] * (self.capacity - self.n)

    def _rule_ids(self):
        """slot -> rule id, from the counters' labels; without them (not kept on this host) each entry's
        rule is its slot, and a rate is held to any rate the policy says."""
        if "labels" not in self.image:
            self.unnamed = True
            return lambda slot: f"kernel slot {slot}"
        labels = json.loads(self.image["labels"] or b"[]")
        by_label: dict[str, str] = {}
        for r in self.source.rules:
            by_label.setdefault(f"{r.origin.loc} {r.text}", r.id)

        def rule_of(slot: int) -> str:
            if slot >= len(labels):
                raise DecodeError(f"an action counts at slot {slot} of {len(labels)} rules")
            return by_label.get(labels[slot], labels[slot])
        return rule_of

    def _action(self, verdict: int, bucket: int, rule: str):
        if verdict == VERDICT_DENY:
            if bucket != NO_BUCKET:
                raise DecodeError("a deny takes a token")
            return Deny()
        if verdict != VERDICT_ALLOW:
            raise DecodeError(f"verdict {verdict}")
        if bucket == NO_BUCKET:
            return Allow()
        tb = self.image["tb"]
        if 40 * bucket + 40 > len(tb):
            raise DecodeError(f"bucket {bucket} of {len(tb) // 40}")
        _, _, count, period, burst = struct.unpack_from("=QQQQQ", tb, 40 * bucket)
        if not count or not period:
            raise DecodeError(f"bucket {bucket} refills {count}/{period}")
        rate = Fraction(count * 10**6, period)
        for e in self.source.acl.entries:
            a = e.action
            if (e.rule == rule or self.unnamed) and isinstance(a, RateLimit) and a.per_second == rate \
                    and a.burst == burst:
                if self.buckets.setdefault(bucket, a.bucket) != a.bucket:
                    raise DecodeError(f"bucket {bucket} is shared by rate limits the policy keeps apart")
                return a
        # The proof compares verdicts, and a rate limit's is allow: a rate the rule does not say is
        # reported here.
        said = sorted({f"{a.count}/{a.per_s}s burst {a.burst}" for e in self.source.acl.entries
                       if e.rule == rule and isinstance((a := e.action), RateLimit)})
        raise DecodeError(f"bucket {bucket} meters {rate} a second, burst {burst}, where rule {rule} says "
                          f"{', '.join(said) or 'no rate'}")

    def _check_connections(self) -> None:
        c = self.source.connections
        want = (int(c.stateful), (c.tcp_s, c.tcp_opening_s, c.tcp_closing_s, c.udp_s, c.icmp_s, c.other_s))
        if (self.stateful, tuple(self.timeouts)) != want:
            raise DecodeError("the tables' connection state or timeouts are not the policy's")

    # -- one entry's matches --------------------------------------------------------------------
    def _side(self, id_field: str, ip_field: str, ranges: dict[int, list], rule: str) -> dict:
        """The match of one side: nothing (every address), identities (exactly their addresses), or
        prefixes. Addresses that are exactly some identities' are written as those identities unless
        the rule's own entries name that side by address: the same flows either way, said as the
        policy says them (the proof's rule-by-rule check compares like with like)."""
        ranges = {f: tuple(ranges.get(f, ())) for f in (4, 6)}
        if all(ranges[f] == ((0, (1 << WIDTH[f]) - 1),) for f in (4, 6)):
            return {}
        if self.owners is None:
            self.owners = _Owners(self.source)
        ids = None if (rule, ip_field) in self._by_address() else self.owners.exactly(ranges)
        if ids is not None:
            return {id_field: InSet(tuple(sorted(ids)))}
        prefixes = [PrefixMatch(Prefix(f, v, n)) for f in (4, 6) for lo, hi in ranges[f]
                    for v, n in to_prefixes(WIDTH[f], lo, hi)]
        return {ip_field: prefixes[0] if len(prefixes) == 1 else AnyOf(tuple(prefixes))}

    def _by_address(self) -> set[tuple[str, str]]:
        """(rule, address field) where the policy's entries of the rule match that side by address."""
        if self.address_sides is None:
            self.address_sides = {(e.rule, name) for e in self.source.acl.entries for name, _ in e.match.fields
                                  if name in (F.SRC_IP, F.DST_IP)}
        return self.address_sides

    def _split_matches(self, dims, sets) -> list[dict]:
        """Four fields: protocols, source and destination port classes, ICMP classes."""
        protos, sports, dports, icmps = (set(s) for s in sets)
        base = {}
        if len(protos) < 256:
            base[F.PROTO] = InSet(tuple(sorted(protos)))
        for name, field, held in (("sport", F.SPORT, sports), ("dport", F.DPORT, dports)):
            fm = _port_match(dims[name], held)
            if fm is not None:
                base[field] = fm
        return [{**base, **extra} for extra in _icmp_matches(dims["icmp"], icmps)]

    def _l4(self, values) -> dict[int, tuple]:
        """The combined field's classes: class -> (protocol classes, source port classes, x values, tuples),
        each set a bit mask; x is a destination port class (1 .. dports-1) or dports + an ICMP class."""
        t = array("I", self.image["l4t"])
        sports, xs, dports = self.sports, self.xs, self.dports
        if len(t) < self.second_at or self.second_at < 256 or not sports or xs < dports or not dports:
            raise DecodeError("the combined field's tables do not fit their strides")
        sport_classes = sorted(values[0])
        xvalues = sorted(c for c in values[1] if c) + [dports + c for c in sorted(values[2])]
        self.l4_protos: dict[int, list[int]] = {}
        for p in range(256):
            self.l4_protos.setdefault(t[p], []).append(p)
        self.l4_values = values
        ones: dict[int, tuple[int, int, int]] = {}  # first class -> (protocol classes, sport classes, pairs)
        for pc in self.l4_protos:
            for s in sport_classes:
                k = 256 + pc * sports + s
                if s >= sports or k >= self.second_at:
                    raise DecodeError("a protocol and source port class fall past the first table")
                one = t[k]
                a, b, n = ones.get(one, (0, 0, 0))
                ones[one] = (a | 1 << pc, b | 1 << s, n + 1)
        classes: dict[int, list] = {}
        for one, (pcs, ss, pairs) in ones.items():
            if pcs.bit_count() * ss.bit_count() != pairs:
                raise DecodeError("a first class of the combined field is not a product")
            for x in xvalues:
                k = self.second_at + one * xs + x
                if x >= xs or k >= len(t):
                    raise DecodeError("a first class and destination port class fall past the second table")
                got = classes.setdefault(t[k], [0, 0, 0, 0])
                got[0] |= pcs
                got[1] |= ss
                got[2] |= 1 << x
                got[3] += pairs
        return {c: tuple(v) for c, v in classes.items()}

    def _l4_matches(self, dims, sets) -> list[dict]:
        """The combined field: the tuples an entry holds for must be a product of protocols, source port
        classes and destination port (or ICMP) classes."""
        classes = dims["l4"]
        held = set(sets[0])
        if len(held) == len(classes):
            return [{}]
        pcs = ss = xs = 0
        tuples = 0
        for c in held:
            a, b, x, n = classes[c]
            pcs, ss, xs, tuples = pcs | a, ss | b, xs | x, tuples + n
        if pcs.bit_count() * ss.bit_count() * xs.bit_count() != tuples:
            raise DecodeError("an entry's protocols and ports are not a product of their classes")
        sport_classes, dport_classes, icmp_classes = self.l4_values
        protos = tuple(sorted(p for pc in _bits(pcs) for p in self.l4_protos[pc]))
        base = {} if len(protos) == 256 else {F.PROTO: InSet(protos)}
        sports = set(_bits(ss))
        fm = _port_match(sport_classes, sports)
        if fm is not None:
            base[F.SPORT] = fm
        dports = {x for x in _bits(xs) if x < self.dports}
        icmps = {x - self.dports for x in _bits(xs) if x >= self.dports}
        every_dport = {c for c in dport_classes if c}
        if dports == every_dport and icmps == set(icmp_classes):
            return [base]
        out = []
        if dports:
            out.append({**base, F.DPORT: _port_match(dport_classes, dports, present=True)})
        if icmps:
            out += [{**base, F.DPORT: Absent(), **extra} for extra in _icmp_matches(icmp_classes, icmps)]
        return out


def _port_match(classes: dict[int, list], held: set[int], present: bool = False):
    """A port field's match for the classes held (class 0: no port); None when it holds for every class.
    `present`: only packets with ports are in question."""
    if not present and held >= set(classes):
        return None
    ranges = merge(r for c in held if c for r in classes[c])
    options = ([Absent()] if 0 in held and not present else []) + [Range(lo, hi) for lo, hi in ranges]
    if not options:
        return Absent()
    return options[0] if len(options) == 1 else AnyOf(tuple(options))


def _icmp_matches(classes: dict[int, list], held: set[int]) -> list[dict]:
    """ICMP classes as matches on type and code (class 0: not ICMP); one per piece."""
    if held >= set(classes):
        return [{}]
    out = []
    if 0 in held:
        out.append({F.ICMP_TYPE: Absent()})
    for lo, hi in merge(r for c in held if c for r in classes[c]):
        for t_lo, t_hi, c_lo, c_hi in _icmp_boxes(lo, hi):
            m = {F.ICMP_TYPE: Range(t_lo, t_hi)}
            if (c_lo, c_hi) != (0, 255):
                m[F.ICMP_CODE] = Range(c_lo, c_hi)
            out.append(m)
    return out


def _icmp_boxes(lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """type << 8 | code values lo..hi as (types, codes) boxes."""
    out = []
    if lo & 0xFF:
        end = min(hi, lo | 0xFF)
        out.append((lo >> 8, lo >> 8, lo & 0xFF, end & 0xFF))
        lo = end + 1
    if lo > hi:
        return out
    if (hi & 0xFF) != 0xFF:
        tail = (hi >> 8, hi >> 8, 0, hi & 0xFF)
        hi = (hi & ~0xFF) - 1
    else:
        tail = None
    if lo <= hi:
        out.append((lo >> 8, hi >> 8, 0, 255))
    if tail is not None:
        out.append(tail)
    return out


def _origin(label: str, fallback: Span | None) -> Span | None:
    """Where a rule the policy does not have was written, from its counter's label ("FILE:LINE text")."""
    where = label.split(" ", 1)[0]
    path, _, line = where.rpartition(":")
    return Span(path, int(line), 1, int(line), 1) if path and line.isdigit() else fallback


def _inside(ranges, lo: int, hi: int) -> bool:
    """Whether [lo, hi] lies in one of the (merged) ranges."""
    k = bisect_right(ranges, (lo, float("inf"))) - 1
    return k >= 0 and ranges[k][0] <= lo and hi <= ranges[k][1]


class _Owners:
    """Each identity's addresses (longest-prefix ownership), to write an entry's addresses as the
    identities they are exactly."""

    def __init__(self, program: Program):
        by_family: dict[int, list] = {4: [], 6: []}
        for row in program.endpoints:
            p = row.prefix
            by_family[p.family].append((p.first, p.last, row.identity))
        self.owned: dict[str, dict[int, list]] = {}
        self.spans: dict[int, list[tuple[int, int, str]]] = {}
        self.starts: dict[int, list[int]] = {}
        self.declared: dict[str, list] = {}  # identity -> (family, first, last) of its endpoint rows
        for row in program.endpoints:
            self.declared.setdefault(row.identity, []).append((row.prefix.family, row.prefix.first, row.prefix.last))
        for family, prefixes in by_family.items():
            spans = [s for s in lpm_ranges(prefixes, WIDTH[family], None) if s[2] is not None]
            self.spans[family], self.starts[family] = spans, [s[0] for s in spans]
            for lo, hi, who in spans:
                self.owned.setdefault(who, {}).setdefault(family, []).append((lo, hi))

    def exactly(self, ranges: dict[int, tuple]) -> frozenset[str] | None:
        """The identities whose addresses together are exactly `ranges` (None: no such set)."""
        met: set[str] = set()
        for family, rs in ranges.items():
            spans, starts = self.spans[family], self.starts[family]
            for lo, hi in rs:
                k = max(0, bisect_right(starts, lo) - 1)
                while k < len(spans) and spans[k][0] <= hi:
                    if spans[k][1] >= lo:
                        met.add(spans[k][2])
                    k += 1
        if not met:
            return None
        theirs = {f: merge(r for who in met for r in self.owned[who].get(f, ())) for f in (4, 6)}
        mine = {f: tuple(ranges.get(f, ())) for f in (4, 6)}
        if theirs != mine:
            return None
        # Identities whose addresses all belong to others (a service wholly split into versions) own
        # nothing: naming them adds no flow, and says it as the policy does.
        for who, rows in self.declared.items():
            if who not in self.owned and all(_inside(mine[f], lo, hi) for f, lo, hi in rows):
                met.add(who)
        return frozenset(met)
