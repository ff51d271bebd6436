"""Table entries for a program's L4 projection, and their P4Runtime encoding.

    endpoint tables  one LPM entry per endpoint prefix -> the identity's id
    acl              per policy entry, in decision order: the product of its
                     options (identities, prefixes, protocols, port ranges),
                     minimised, with distinct priorities (higher wins)
    default          the policy's default as the acl's default action
    meters           one per packet-rate-limited rule

Minimisation: port ranges of one rule are merged, sibling prefixes of one
rule are merged, and an entry that an earlier (higher-priority) entry with
the same address and protocol keys fully covers is dropped: it can never
match. `--no-range` turns each port range into its minimal prefix cover.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny, RateLimit
from anyplane.ir.conn import swapped
from anyplane.ir.addr import Prefix, outermost
from anyplane.ir.match import Exact, InSet, Match, PrefixMatch, exact_values, int_ranges, merge_ranges, options
from anyplane.ir.nodes import Entry, Program, ordered
from anyplane.ir.project import project_l4

from ..base import Unsupported
from .pipeline import ENDPOINT_TABLES, ID_BITS, Features, Names
from .proto import p4runtime_pb2

FAMILY = {4: 1, 6: 2}
ICMP_FOR = {4: 1, 6: 58}
PORT_PROTOS = (6, 17)


def meter_rate(rl: RateLimit) -> int:
    """The meter's committed rate in packets per second (P4Runtime carries whole numbers), within 10% of
    the rule's rate; raises Unsupported when no whole number is that close."""
    rate = rl.per_second
    pps = round(rate)
    if pps < 1 or abs(pps - rate) > rate / 10:
        raise Unsupported(f"the switch's meters count whole packets per second: {rl.count} per {rl.per_s}s "
                          f"({float(rate):.3g}/s) is not within 10% of one")
    return pps


@dataclass
class P4Entry:
    """One table entry: key {field: (kind, a, b)}, action, params, priority, source rule."""

    table: str
    key: dict[str, tuple]
    action: str
    params: tuple[tuple[str, int], ...] = ()
    priority: int = 0
    rule: str = ""
    location: str = ""


@dataclass
class Entries:
    """Everything written to the target for one policy."""

    endpoints: list[P4Entry] = field(default_factory=list)
    acl: list[P4Entry] = field(default_factory=list)
    default: str = "acl_deny"
    meters: list[tuple[int, int, int, str]] = field(default_factory=list)  # (index, rate/s, burst, location)
    per_rule: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    #: Rules whose values (a rate) the switch cannot hold: an error where the switch alone enforces them.
    unrepresentable: dict[str, str] = field(default_factory=dict)
    naive: int = 0
    ids: dict[str, int] = field(default_factory=dict)  # identity -> the id the endpoint tables set
    #: Under a stateful policy: reflexive entries (location -> how many) letting established TCP
    #: segments (ACK or RST set) shaped like the replies of the rule's connections pass.
    replies: dict[str, int] = field(default_factory=dict)


def canonical(value: int) -> bytes:
    """P4Runtime's canonical bytestring: the shortest big-endian encoding (one byte for 0)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def prefix_cover(lo: int, hi: int, width: int) -> list[tuple[int, int]]:
    """The minimal set of (value, mask) prefixes covering [lo, hi]."""
    out = []
    full = (1 << width) - 1
    while lo <= hi:
        size = lo & -lo if lo else 1 << width
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, full ^ (size - 1)))
        lo += size
    return out


def merge_prefixes(prefixes: list[Prefix]) -> list[Prefix]:
    """Prefixes with covered ones dropped and sibling pairs merged, until nothing changes."""
    current = set(prefixes)
    while True:
        kept = set(outermost(current))
        merged = set(kept)
        for p in kept:
            if p.length == 0 or p not in merged:
                continue
            width = 32 if p.family == 4 else 128
            bit = 1 << (width - p.length)
            sibling = Prefix(p.family, p.value ^ bit, p.length)
            if sibling in merged:
                merged -= {p, sibling}
                merged.add(Prefix(p.family, p.value & ~bit, p.length - 1))
        if merged == current:
            return sorted(current, key=lambda q: (q.family, q.value, q.length))
        current = merged


def _values(fm, what: str) -> list[int]:
    out = exact_values(fm)
    if out is None:
        raise Unsupported(f"{what} match '{type(fm).__name__}'")
    return sorted(out)


def _ranges(fm, what: str) -> list[tuple[int, int]]:
    out = int_ranges(fm)
    if out is None:
        raise Unsupported(f"{what} match '{type(fm).__name__}'")
    return merge_ranges(out)


def _side(e: Entry, side: str, ids: dict[str, int]) -> list[dict]:
    """Key fragments for one side: identities and/or prefixes (each a family)."""
    id_field, ip_field = (F.SRC_ID, F.SRC_IP) if side == "src" else (F.DST_ID, F.DST_IP)
    out: list[dict] = [{}]
    idm, ipm = e.match.get(id_field), e.match.get(ip_field)
    if idm is not None:
        values = []
        for o in options(idm):
            if not isinstance(o, InSet):
                raise Unsupported(f"{id_field} match '{type(o).__name__}'")
            values.extend(ids.get(v, 0) if v is not None else 0 for v in o.values)
        out = [{f"meta.{side}_id": ("ternary", v, (1 << ID_BITS) - 1)} for v in sorted(set(values))]
    if ipm is not None:
        prefixes = []
        for o in options(ipm):
            if not isinstance(o, PrefixMatch):
                raise Unsupported(f"{ip_field} match '{type(o).__name__}'")
            prefixes.append(o.prefix)
        frags = []
        for p in merge_prefixes(prefixes):
            width = 32 if p.family == 4 else 128
            frag = {"meta.family": ("ternary", FAMILY[p.family], 3)}
            if p.length:
                mask = ((1 << p.length) - 1) << (width - p.length)
                frag[f"meta.{side}_{'v4' if p.family == 4 else 'v6'}"] = ("ternary", p.value, mask)
            frags.append(frag)
        out = [dict(a, **b) for a in out for b in frags]
    return out


def _combine(parts: list[dict]) -> dict | None:
    """Merge key fragments; None when two fragments disagree (e.g. IPv4 source, IPv6 destination)."""
    key: dict = {}
    for part in parts:
        for name, m in part.items():
            if name in key and key[name] != m:
                return None
            key[name] = m
    return key


def acl_options(e: Entry, ids: dict[str, int], features: Features) -> tuple[list[dict], int]:
    """The acl keys for one projected entry, and the naive (unminimised prefix expansion) count."""
    for name, _ in e.match.fields:
        if F.lookup(name).layer == "L7":
            raise Unsupported(f"{name} is not visible below L7")
    m = e.match
    protos = _values(m.get(F.PROTO), "proto") if m.get(F.PROTO) is not None else None
    sports = _ranges(m.get(F.SPORT), "sport") if m.get(F.SPORT) is not None else None
    dports = _ranges(m.get(F.DPORT), "dport") if m.get(F.DPORT) is not None else None
    types = _values(m.get(F.ICMP_TYPE), "icmp.type") if m.get(F.ICMP_TYPE) is not None else None
    codes = _values(m.get(F.ICMP_CODE), "icmp.code") if m.get(F.ICMP_CODE) is not None else None
    l4: list[dict] = [{}]
    if sports is not None or dports is not None:
        # Ports exist only on TCP and UDP first fragments.
        l4 = [{"meta.ip_proto": ("ternary", p, 255), "meta.l4_valid": ("ternary", 1, 1)}
              for p in (protos if protos is not None else PORT_PROTOS) if p in PORT_PROTOS]
    elif types is not None or codes is not None:
        pairs = [(fam, p) for fam, p in ICMP_FOR.items() if protos is None or p in protos]
        l4 = [{"meta.family": ("ternary", FAMILY[fam], 3), "meta.ip_proto": ("ternary", p, 255),
               "meta.l4_valid": ("ternary", 1, 1)} for fam, p in pairs]
    elif protos is not None:
        l4 = [{"meta.ip_proto": ("ternary", p, 255)} for p in protos]

    def port_opts(ranges, name):
        if ranges is None or ranges == [(0, 65535)]:
            return [{}], 1
        naive = sum(len(prefix_cover(lo, hi, 16)) for lo, hi in ranges)
        if features.range_match:
            return [{name: ("range", lo, hi)} for lo, hi in ranges], naive
        return [{name: ("ternary", v, mk)} for lo, hi in ranges for v, mk in prefix_cover(lo, hi, 16)], naive

    sp, naive_s = port_opts(sports, "meta.sport")
    dp, naive_d = port_opts(dports, "meta.dport")
    ty = [{"meta.icmp_type": ("ternary", t, 255)} for t in types] if types is not None else [{}]
    co = [{"meta.icmp_code": ("ternary", c, 255)} for c in codes] if codes is not None else [{}]
    src, dst = _side(e, "src", ids), _side(e, "dst", ids)
    keys = []
    for parts in itertools.product(src, dst, l4, sp, dp, ty, co):
        key = _combine(list(parts))
        if key is not None:
            keys.append(key)
    naive = len(src) * len(dst) * len(l4) * naive_s * naive_d * len(ty) * len(co)
    return keys, naive


def covers(a: dict, b: dict) -> bool:
    """Whether every packet matching key `b` also matches key `a`."""
    for name, (kind, x, y) in a.items():
        if name not in b:
            return False
        bk, bx, by = b[name]
        if kind == "range":
            lo, hi = (bx, by) if bk == "range" else (bx, bx | (~by & 0xFFFF))
            if not (x <= lo and hi <= y):
                return False
        else:
            if bk == "range":
                return False
            if (by & y) != y or (bx & y) != x:
                return False
    return True


PORT_KEYS = ("meta.sport", "meta.dport")


def _interval(m: tuple, bits: int = 16) -> tuple[int, int]:
    kind, a, b = m
    if kind == "range":
        return a, b
    return a & b, (a & b) | (~b & ((1 << bits) - 1))


def overlaps(a: dict, b: dict) -> bool:
    """Whether some packet can match both keys (True when the keys use different fields: conservative)."""
    for name, (kind, x, y) in a.items():
        other = b.get(name)
        if other is None:
            continue
        if kind == "ternary" and other[0] == "ternary":
            if (x ^ other[1]) & y & other[2]:
                return False
        else:
            lo, hi = _interval((kind, x, y))
            olo, ohi = _interval(other)
            if hi < olo or ohi < lo:
                return False
    return True


def _slash8(key: dict, name: str):
    m = key.get(name)
    if m is None or m[0] != "ternary" or m[2] < 0xFF000000:
        return None
    return m[1] >> 24


SCAN_LIMIT = 2000


def drop_downward_redundant(acl: list[P4Entry], default: str) -> list[P4Entry]:
    """Entries (highest priority first) without those whose removal changes no decision.

    Going from the lowest entry up, an entry is redundant when the first kept
    lower entry that overlaps it and acts differently does not exist (the
    default acts the same), or comes after a kept lower entry with the same
    action that covers it entirely. Candidates are found through an index on
    the first octet of the IPv4 source and destination prefixes.
    """
    kept: list[int] = []
    index: dict[tuple, list[int]] = {}
    by_src: dict[object, set] = {}
    by_dst: dict[object, set] = {}
    for i in range(len(acl) - 1, -1, -1):
        e = acl[i]
        s8, d8 = _slash8(e.key, "meta.src_v4"), _slash8(e.key, "meta.dst_v4")
        src_keys = {s8, None} if s8 is not None else set(by_src)
        dst_keys = {d8, None} if d8 is not None else set(by_dst)
        candidates = []
        for sk in src_keys:
            for bk in by_src.get(sk, ()):
                if bk[1] in dst_keys:
                    candidates.extend(index[bk])
        if len(candidates) > SCAN_LIMIT:
            # Bounded work: an entry with thousands of lower candidates is kept as it is.
            redundant, candidates = False, []
        else:
            candidates.sort()  # the nearest lower entry first
            redundant = default == e.action and not e.params
        for j in candidates:
            g = acl[j]
            if not overlaps(g.key, e.key):
                continue
            if (g.action, g.params) != (e.action, e.params):
                redundant = False
                break
            if covers(g.key, e.key):
                redundant = True
                break
        if redundant:
            continue
        kept.append(i)
        bk = (s8, d8)
        if bk not in index:
            index[bk] = []
            by_src.setdefault(s8, set()).add(bk)
            by_dst.setdefault(d8, set()).add(bk)
        index[bk].append(i)
    return [acl[i] for i in sorted(kept)]


ESTABLISHED = {"meta.tcp_established": ("ternary", 1, 1)}


def reflexive(e: Entry) -> Entry | None:
    """The replies of an allow's TCP connections, as an allow of their shape (ends and ports swapped,
    TCP); None when the allow admits no TCP."""
    m = e.match
    proto = m.get(F.PROTO)
    if m.get(F.ICMP_TYPE) is not None or m.get(F.ICMP_CODE) is not None:
        return None
    if proto is not None and 6 not in (exact_values(proto) or ()):
        return None
    fields = swapped(m)  # (a projected entry has no HTTP conditions)
    fields[F.PROTO] = Exact(6)
    return Entry(e.priority, Match.of(fields), Allow(), e.origin, e.rule)


def _replies(program: Program, rules: dict, ids: dict[str, int], features: Features, out: "Entries") -> list:
    """Reflexive entries for the allows of a stateful policy (above every other entry: a reply passes
    whatever the rules say of it as a new packet)."""
    acl = []
    for e in ordered(project_l4(program).acl):
        if isinstance(e.action, Deny):
            continue
        back = reflexive(e)
        if back is None:
            continue
        loc = rules[e.rule].origin.loc if e.rule in rules else e.origin.loc
        try:
            keys, _ = acl_options(back, ids, features)
        except Unsupported:
            continue
        for key in keys:
            acl.append(P4Entry("acl", {**key, **ESTABLISHED}, "acl_allow", rule=e.rule, location=loc))
            out.replies[loc] = out.replies.get(loc, 0) + 1
    return acl


def identity_ids(program: Program) -> dict[str, int]:
    """The number each identity is known by in the tables (1 up, by name)."""
    return {ident.name: k for k, ident in enumerate(sorted(program.identities, key=lambda i: i.name), start=1)}


def endpoint_entries(rows, ids: dict[str, int]) -> list[P4Entry]:
    """The endpoint tables (the switch's ipcache) for endpoint rows (prefix, identity): each prefix, per
    side, sets its identity's number."""
    out = []
    tables = {f"{side}_endpoint_{fam}": t for side in ("src", "dst") for fam in ("v4", "v6")
              for t in ENDPOINT_TABLES if t[0] == f"{side}_endpoint_{fam}"}
    for p, identity in rows:
        fam = "v4" if p.family == 4 else "v6"
        for side in ("src", "dst"):
            table, key_name, _, action = tables[f"{side}_endpoint_{fam}"]
            out.append(P4Entry(table, {key_name: ("lpm", p.value, p.length)}, action,
                               (("id", ids[identity]),), location=str(p)))
    return out


def build(program: Program, features: Features = Features()) -> Entries:
    """All entries for a program."""
    ids = identity_ids(program)
    if len(ids) >= 1 << ID_BITS:
        raise Unsupported(f"{len(ids)} identities: the ids are {ID_BITS} bits wide")
    out = Entries(default="acl_allow" if program.default == "allow" else "acl_deny", ids=ids)
    out.endpoints = endpoint_entries(((row.prefix, row.identity) for row in program.endpoints), ids)
    rules = {r.id: r for r in program.rules}
    buckets: dict[tuple, list[dict]] = {}
    meters: dict[str, int] = {}
    for e in ordered(project_l4(program).acl):
        loc = rules[e.rule].origin.loc if e.rule in rules else e.origin.loc
        try:
            keys, naive = acl_options(e, ids, features)
        except Unsupported as exc:
            out.unsupported[loc] = str(exc)
            continue
        out.naive += naive
        if isinstance(e.action, Deny):
            action, params = "acl_deny", ()
        elif isinstance(e.action, RateLimit):
            try:
                pps = meter_rate(e.action)
            except Unsupported as exc:
                out.unsupported[loc] = out.unrepresentable[loc] = str(exc)
                continue
            if loc not in meters:
                meters[loc] = len(meters)
                out.meters.append((meters[loc], pps, e.action.burst, loc))
            action, params = "acl_rate_limit", (("meter_index", meters[loc]),)
        else:
            action, params = "acl_allow", ()
        kept = 0
        for key in keys:
            bucket = tuple(sorted((k, v) for k, v in key.items() if k not in PORT_KEYS))
            earlier = buckets.setdefault(bucket, [])
            if any(covers(a, key) for a in earlier):
                continue  # a higher-priority entry takes every packet this one would
            earlier.append(key)
            out.acl.append(P4Entry("acl", key, action, params, rule=e.rule, location=loc))
            kept += 1
        out.per_rule[loc] = out.per_rule.get(loc, 0) + kept
    if len(meters) > features.meter_size:
        raise Unsupported(f"{len(meters)} rate-limited rules: the program has {features.meter_size} meters")
    out.acl = drop_downward_redundant(out.acl, out.default)
    if program.connections.stateful and (out.default == "acl_deny" or any(e.action != "acl_allow" for e in out.acl)):
        out.acl = _replies(program, rules, ids, features, out) + out.acl
    out.per_rule = {}
    for entry in out.acl:
        if "meta.tcp_established" not in entry.key:
            out.per_rule[entry.location] = out.per_rule.get(entry.location, 0) + 1
    total = len(out.acl)
    for k, entry in enumerate(out.acl):
        entry.priority = total - k  # distinct, non-zero, higher wins
    return out


def _fill_match(fm, mf_id: int, m: tuple) -> None:
    kind, a, b = m
    fm.field_id = mf_id
    if kind == "lpm":
        fm.lpm.value, fm.lpm.prefix_len = canonical(a), b
    elif kind == "ternary":
        fm.ternary.value, fm.ternary.mask = canonical(a & b), canonical(b)
    elif kind == "range":
        fm.range.low, fm.range.high = canonical(a), canonical(b)
    else:
        fm.exact.value = canonical(a)


def fill_table_entry(te: p4runtime_pb2.TableEntry, names: Names, e: P4Entry) -> None:
    """Fill a TableEntry in place (don't-care fields omitted, canonical bytes)."""
    table = names.table(e.table)
    te.table_id = table.preamble.id
    te.priority = e.priority
    for mf in table.match_fields:
        m = e.key.get(mf.name)
        if m is None or (m[0] == "lpm" and m[2] == 0):
            continue
        _fill_match(te.match.add(), mf.id, m)
    action = names.actions[e.action]
    te.action.action.action_id = action.preamble.id
    for p, (_, value) in zip(action.params, e.params):
        param = te.action.action.params.add()
        param.param_id, param.value = p.id, canonical(value)


def table_entry(names: Names, e: P4Entry) -> p4runtime_pb2.TableEntry:
    """The P4Runtime TableEntry of one entry."""
    te = p4runtime_pb2.TableEntry()
    fill_table_entry(te, names, e)
    return te


def add_updates(req: p4runtime_pb2.WriteRequest, names: Names, entries: Entries) -> list[str]:
    """Append the updates that load `entries` into an empty target; the source of each, in order."""
    sources = []
    meter = names.meter
    for index, rate, burst, loc in entries.meters:
        u = req.updates.add()
        u.type = p4runtime_pb2.Update.MODIFY
        me = u.entity.meter_entry
        me.meter_id = meter.preamble.id
        me.index.index = index
        me.config.cir, me.config.cburst, me.config.pir, me.config.pburst = rate, burst, rate, burst
        sources.append(loc)
    for e in entries.endpoints + entries.acl:
        u = req.updates.add()
        u.type = p4runtime_pb2.Update.INSERT
        fill_table_entry(u.entity.table_entry, names, e)
        sources.append(e.location)
    u = req.updates.add()
    u.type = p4runtime_pb2.Update.MODIFY
    te = u.entity.table_entry
    te.table_id = names.table("acl").preamble.id
    te.is_default_action = True
    te.action.action.action_id = names.action_id(entries.default)
    sources.append("default")
    return sources


__all__ = ["build", "Entries", "P4Entry", "add_updates", "table_entry", "prefix_cover",
           "merge_prefixes", "canonical", "Unsupported"]
