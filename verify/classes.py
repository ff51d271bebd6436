"""The flows of a diff class, as boxes, and in words: what changed, not the rule that decides it.

A diff class is the flows the old version decides by one entry (or its default) and the new version by
another (verify/diff.py); every one of them changed the same way. Its flows are, exactly,

    the old entry's boxes less those of the old entries before it   (or, for the default: none of them)
    met with the same of the new entry

written with verify/refine.py's boxes (identities as integers, both address families on one line, -1
for an absent port or ICMP field, cut to the flows that can exist). They are then said per box: the
identities or addresses at each end, the protocols, the ports or ICMP types:

    frontend_app-web -> backend_api tcp port 9090

Classes over HTTP conditions are not boxes (NotComparable): their description stays the deciding rule's.
"""

from __future__ import annotations

from anyplane.ir.flow import ICMP, ICMP6, PROTOCOL_NAMES, TCP, UDP
from anyplane.ir.nodes import Entry, Program
from anyplane.ir.space import Box, box_apart, box_meet, meet, merge, to_prefixes

from anyplane.ir.addr import Prefix

from .refine import (ADDRESSES, BUDGET, DPORT, DST_ID, DST_IP, ICMP_CODE, ICMP_TYPE, INTEGER, PROTO, SPORT, SRC_ID,
                     SRC_IP, V4, V6, V6_BASE, Boxes, DIMENSIONS, NotComparable, Side, Work, without)

#: Boxes a class is said with, at most (the rest are counted).
SHOWN = 4


class ClassFlows:
    """The flows of a diff's classes, as boxes: one per pair of versions, its boxes and overlap indexes
    built once for all the classes."""

    def __init__(self, old: Program, new: Program):
        self.old, self.new = old, new
        self.comparable = {(r.prefix, r.identity) for r in old.endpoints} == \
            {(r.prefix, r.identity) for r in new.endpoints}
        self._sides = None

    def sides(self):
        if self._sides is None:
            names = {r.identity for r in self.old.endpoints} | {i.name for i in self.old.identities} | \
                {i.name for i in self.new.identities}
            boxes = Boxes(names, self.old.endpoints)
            self._sides = boxes, [Side(self.old, boxes), Side(self.new, boxes)]
        return self._sides

    def of(self, e_old: Entry | None, e_new: Entry | None):
        """(the boxes of the flows old decides by e_old and new by e_new, the Boxes that wrote them), or
        None when they cannot be written as boxes within the work bound (HTTP conditions, other ownership
        tables, both sides by their default)."""
        if (e_old is None and e_new is None) or not self.comparable:
            return None
        budget = Work(BUDGET)
        try:
            boxes, sides = self.sides()
            entries = [e_old, e_new]
            first = 0 if e_old is not None else 1
            flows = _decided_by(sides[first], entries[first], budget)
            other, e = sides[1 - first], entries[1 - first]
            if e is not None:
                mine = _decided_by(other, e, budget)
                budget.spend(len(flows) * len(mine))
                flows = [box_meet(p, q) for p in flows for q in mine if not box_apart(p, q)]
            else:  # the other version's default: no entry of it takes them
                holes = [b for j in other.near([entries[first]], 0, len(other.ordered)) for b in other.boxes(j)]
                flows = without(flows, holes, budget)
            return boxes.feasible(flows), boxes
        except NotComparable:
            return None


def holds(flows: list[Box], boxes: Boxes, program: Program, flow) -> bool:
    """Whether a flow lies in a class's boxes (the flow's owners by `program`'s endpoints)."""
    from anyplane.ir.interp import owner

    base = 0 if flow.family == 4 else V6_BASE
    ids = [boxes.code.get(owner(program, flow.family, a), 0) if owner(program, flow.family, a) else 0
           for a in (flow.dst, flow.src)]
    point = [base + flow.dst, base + flow.src, _or_absent(flow.dport), _or_absent(flow.sport), flow.proto, ids[0],
             ids[1], _or_absent(flow.icmp_type), _or_absent(flow.icmp_code)]
    return any(all(any(lo <= v <= hi for lo, hi in b[d]) for d, v in enumerate(point)) for b in flows)


def _or_absent(v):
    return -1 if v is None else v


def _decided_by(side: Side, e: Entry, budget: Work) -> list[Box]:
    """The flows an entry decides: its boxes less those of the entries before it."""
    at = next((k for k, x in enumerate(side.ordered) if x is e), None)
    if at is None:
        raise NotComparable("an entry of neither version")
    holes = [b for j in side.near([e], 0, at) for b in side.boxes(j)]
    return without(side.boxes(at), holes, budget)


def say(program: Program, flows: list[Box], boxes: Boxes) -> dict:
    """The class in words: {"src", "dst", "protocols", "ports", "icmp", "text"} of its first pair of ends,
    and `text` for all of them (joined by "; ", those past SHOWN counted). Boxes of one pair of ends that
    hold every port and ICMP value of their protocols are said as their protocols together ("any
    protocol" when that is all of them)."""
    names = {code: name for name, code in boxes.code.items()}
    selectors = {i.name: i.selector for i in program.identities if i.selector is not None}
    groups: dict[tuple[str, str], list[Box]] = {}
    for b in _merged(flows) if len(flows) <= MERGE_UP_TO else flows:
        key = (_end(b[SRC_ID], b[SRC_IP], names, boxes, selectors), _end(b[DST_ID], b[DST_IP], names, boxes, selectors))
        groups.setdefault(key, []).append(b)
    parts, first = [], None
    for (src, dst), bs in groups.items():
        if all(_l4_whole(b) for b in bs):
            l4s = [_l4(((0, 0),) * PROTO + (merge(r for b in bs for r in b[PROTO]),), whole=True)]
        else:
            l4s = [_l4(b) for b in bs]
        for l4 in l4s:
            said = dict(src=src, dst=dst, **l4)
            said["text"] = f"{src} -> {dst} {l4['l4']}"
            first = first or said
            if said["text"] not in parts:
                parts.append(said["text"])
    if first is None:
        return {}
    text = "; ".join(parts[:SHOWN]) + (f"; and {len(parts) - SHOWN} more" if len(parts) > SHOWN else "")
    out = dict(first, text=text, whole=True, exact=True)
    out.pop("l4", None)
    return out


#: Boxes joined where they differ in one dimension, up to this many (beyond, said as they are).
MERGE_UP_TO = 64


def _l4_whole(b: Box) -> bool:
    """Whether a box holds every port and ICMP value its protocols can carry."""
    return all(b[d] in ((INTEGER[DIMENSIONS[d]],), ((-1, -1),)) for d in (DPORT, SPORT, ICMP_TYPE, ICMP_CODE))


def _merged(flows: list[Box]) -> list[Box]:
    """Boxes that differ in one dimension only, joined (what `without` cut apart)."""
    out = list(dict.fromkeys(flows))
    changed = True
    while changed and len(out) > 1:
        changed = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                differ = [d for d in range(len(a)) if a[d] != b[d]]
                if len(differ) == 1:
                    d = differ[0]
                    joined = list(a)
                    joined[d] = merge(a[d] + b[d])
                    out[i] = tuple(joined)
                    del out[j]
                    changed = True
                    break
            if changed:
                break
    return out


def _end(ids, ips, names: dict, boxes: Boxes, selectors: dict) -> str:
    """One end of a box: its identities (a workload as the pods its selector takes), with the addresses
    it holds where they are not all of theirs in its family; else its addresses."""
    if ids != boxes.ids:
        codes = [c for lo, hi in ids for c in range(lo, hi + 1)]
        if codes == [0]:  # addresses no identity owns
            return "any address of no identity" if tuple(ips) == tuple(boxes.unowned) else _addresses(ips)
        owned = merge(r for c in codes for r in (boxes.owned.get(c, ()) if c else boxes.unowned))
        families = merge(span for part in (V4, V6) if meet(ips, part) for span in part)
        who = ", ".join(_named(names.get(c), selectors) for c in codes)
        return who if tuple(ips) == tuple(meet(owned, families)) else f"{who} in {_addresses(ips)}"
    if tuple(ips) == ADDRESSES:
        return "any"
    return _addresses(ips)


def _named(name: str | None, selectors: dict) -> str:
    if name is None:
        return "addresses of no identity"
    return f"{name} (pods of {selectors[name].text()})" if name in selectors else name


def _addresses(ips) -> str:
    out = []
    for lo, hi in ips:
        for family, base, width in ((4, 0, 32), (6, V6_BASE, 128)):
            top = base + (1 << width) - 1
            a, b = max(lo, base), min(hi, top)
            if a <= b:
                out += [str(Prefix(family, v, n)) for v, n in to_prefixes(width, a - base, b - base)]
    return ", ".join(out[:6]) + (", ..." if len(out) > 6 else "")


def _ranges(spans) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans if hi >= 0)


def _l4(b: Box, whole: bool = False) -> dict:
    """A box's protocols, ports and ICMP types in words (`whole`: the box is its protocols alone)."""
    protos = [p for lo, hi in b[PROTO] for p in range(lo, hi + 1)]
    named = {**PROTOCOL_NAMES, ICMP6: "icmp6"}
    protocols = "any protocol" if b[PROTO] == ((0, 255),) else ", ".join(named.get(p, f"proto {p}") for p in protos) \
        if len(protos) <= 8 else f"protocols {_ranges(b[PROTO])}"
    if whole:
        return {"protocols": protocols, "ports": "any port", "icmp": None,
                "l4": protocols + (", any port" if set(protos) & {TCP, UDP} else "")}
    whole = lambda dim: b[dim] == (INTEGER[DIMENSIONS[dim]],)  # noqa: E731
    ports = None
    if set(protos) & {TCP, UDP} and not whole(DPORT):
        ports = f"port {_ranges(b[DPORT])}"
        if not whole(SPORT):
            ports += f" from port {_ranges(b[SPORT])}"
    icmp = None
    if set(protos) & {ICMP, ICMP6} and not whole(ICMP_TYPE):
        icmp = f"type {_ranges(b[ICMP_TYPE])}" + ("" if whole(ICMP_CODE) else f" code {_ranges(b[ICMP_CODE])}")
    l4 = protocols + (f" {ports}" if ports else f" {icmp}" if icmp else
                      ", any port" if set(protos) & {TCP, UDP} else "")
    return {"protocols": protocols, "ports": ports or ("any port" if icmp is None else None), "icmp": icmp, "l4": l4}
