"""Reference semantics: `evaluate(program, flow) -> Decision`.

This module is the oracle every engine and the verifier are tested against,
so it is written to be obviously right rather than fast: linear scans, one
definition per match kind, no indexes.

1. Each address belongs to the identity of the longest endpoint prefix that
   contains it (or to nobody).
2. Among the acl entries whose match holds, the one with the lowest
   `decision_key` decides: highest priority, then deny before rate limit
   before allow. With no matching entry, the program's default decides.
3. A request the sidecar refuses (`Request.refused`: not in the normal form of
   `ir.http`) is denied before any entry is consulted.
4. An allowed HTTP request is routed by the highest-priority matching route
   of its destination; circuit-breaking limits of the destination service apply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import fields as F
from .actions import CircuitBreaker, RateLimit
from .flow import Flow
from .match import (Absent, AnyOf, Exact, FieldMatch, InSet, Match, Present, PrefixMatch, Range,
                    StrExact, StrPrefix, Ternary)
from .memo import per_program
from .nodes import Entry, Program, decision_key


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy does with one flow."""

    verdict: str
    entry: Entry | None
    src_id: str | None
    dst_id: str | None
    route: Entry | None = None
    limits: CircuitBreaker | None = None
    refused: str | None = None  # why the sidecar answers 400 before any rule is consulted

    @property
    def rule(self) -> str | None:
        """`FILE:LINE` of the deciding rule, or None when the default decided."""
        return self.entry.origin.loc if self.entry else None

    @property
    def rate(self) -> RateLimit | None:
        """The deciding rule's rate limit, if any."""
        action = self.entry.action if self.entry else None
        return action if isinstance(action, RateLimit) else None


@per_program(keep=32)
def _owners(endpoints) -> dict:
    """Owners already looked up, per endpoint table (a program and the narrowed copies of it that
    engines make share one)."""
    return {}


def owner(program: Program, family: int, address: int) -> str | None:
    """The identity owning an address: the longest endpoint prefix containing it."""
    known = _owners(program.endpoints)
    key = (family, address)
    if key in known:
        return known[key]
    if len(known) > 100_000:
        known.clear()
    known[key] = _owner(program, family, address)
    return known[key]


def _owner(program: Program, family: int, address: int) -> str | None:
    width = 32 if family == 4 else 128
    for length, rows in _by_length(program.endpoints).get(family, ()):
        hit = rows.get(address >> (width - length))
        if hit is not None:
            return hit
    return None


@per_program(keep=32)
def _by_length(endpoints) -> dict:
    """The endpoint table as a longest-prefix-match index: per family, the prefix lengths in use, longest
    first, each with {network bits: identity} (two declarations of one prefix are an error)."""
    out: dict = {}
    for row in endpoints:
        p = row.prefix
        out.setdefault(p.family, {}).setdefault(p.length, {})[p.value >> (p.width - p.length)] = row.identity
    return {family: sorted(lengths.items(), reverse=True) for family, lengths in out.items()}


def field_matches(fm: FieldMatch, value) -> bool:
    """Whether a field value satisfies a field match (None means the field is absent)."""
    if isinstance(fm, Absent):
        return value is None
    if isinstance(fm, AnyOf):
        return any(field_matches(option, value) for option in fm.options)
    if value is None:
        return False
    if isinstance(fm, Present):
        return True
    if isinstance(fm, Exact) or isinstance(fm, StrExact):
        return value == fm.value
    if isinstance(fm, InSet):
        return value in fm.values
    if isinstance(fm, PrefixMatch):
        family, address = value
        return fm.prefix.contains(family, address)
    if isinstance(fm, Range):
        return fm.lo <= value <= fm.hi
    if isinstance(fm, Ternary):
        return value & fm.mask == fm.value
    if isinstance(fm, StrPrefix):
        return value.startswith(fm.value)
    raise TypeError(f"unknown match kind {type(fm).__name__}")


def match_holds(match: Match, flow: Flow, src_id: str | None, dst_id: str | None) -> bool:
    """Whether every field match of `match` holds for the flow."""
    for name, fm in match.fields:
        if name == F.SRC_ID:
            value = src_id
        elif name == F.DST_ID:
            value = dst_id
        else:
            value = flow.value(name)
        if not field_matches(fm, value):
            return False
    return True


@per_program(keep=32)
def _in_decision_order(table) -> dict:
    """The table's entries in decision order; per destination identity (filled on first use) those of
    them that can match a flow to it."""
    return {"all": tuple(sorted(table.entries, key=decision_key))}


def _candidates(program: Program, dst_id: str | None) -> tuple[Entry, ...]:
    """The entries, in decision order, that can match a flow to `dst_id`: every one but those whose
    `dst.id` set leaves it out, or whose `dst.ip` is one address that another identity owns."""
    lists = _in_decision_order(program.acl)
    ends, by_id, general, named = lists.get("to", (None, None, None, None))
    if ends is not program.endpoints:  # who owns an address is the endpoints' to say
        general, named = [], {}
        for k, e in enumerate(lists["all"]):
            targets = _destinations(program, e.match)
            if targets is None:
                general.append(k)
            for t in targets or ():
                named.setdefault(t, []).append(k)
        ends, by_id = program.endpoints, {}
        lists["to"] = (ends, by_id, general, named)
    hit = by_id.get(dst_id)
    if hit is None:
        every = lists["all"]
        hit = by_id[dst_id] = tuple(every[k] for k in sorted(general + named.get(dst_id, [])))
    return hit


def _destinations(program: Program, m: Match) -> tuple | None:
    """The destination identities an entry can match flows to, when it says (None: any)."""
    ids = m.get(F.DST_ID)
    ips = m.get(F.DST_IP)
    out = None
    if isinstance(ids, InSet):
        out = set(ids.values)
    if isinstance(ips, PrefixMatch) and ips.prefix.length == ips.prefix.width:
        one = {owner(program, ips.prefix.family, ips.prefix.value)}
        out = one if out is None else out & one
    return None if out is None else tuple(out)


@per_program
def sidecar_scope(program: Program) -> dict[str, frozenset[int]]:
    """Under mutual TLS: each workload whose sidecar asks for certificates, and the TCP ports it does so on
    (the ports the workload declares)."""
    return {i.name: frozenset(p.number for p in i.ports if p.protocol != "udp")
            for i in program.identities if i.mtls is not None}


def as_seen(program: Program, flow: Flow, dst_id: str | None) -> Flow:
    """The flow as the policy sees it: a client certificate counts only where a workload's sidecar asks
    for one (TCP to a port of a workload under mtls); anywhere else nobody verifies it."""
    if flow.peer is None or flow.dport in sidecar_scope(program).get(dst_id, ()):
        return flow
    return replace(flow, peer=None)


def evaluate(program: Program, flow: Flow, without: frozenset = frozenset()) -> Decision:
    """Decide one flow: verdict, deciding entry, route and limits. `without`: ids of acl entries to
    pass over, as if the program did not have them (what a rule adds is asked so)."""
    src_id = owner(program, flow.family, flow.src)
    dst_id = owner(program, flow.family, flow.dst)
    flow = as_seen(program, flow, dst_id)
    if flow.http is not None and flow.http.refused is not None:
        return Decision("deny", None, src_id, dst_id, refused=flow.http.refused)

    # The deciding entry is the matching one with the least decision key (the first in the table of
    # those tied): the first to match in that order, which a stable sort keeps. Entries that name other
    # destination identities, or one address of another, are passed over unread (they would not match).
    entry = next((e for e in _candidates(program, dst_id)
                  if match_holds(e.match, flow, src_id, dst_id) and id(e) not in without), None)
    verdict = entry.action.verdict if entry else program.default
    if verdict != "allow":
        return Decision(verdict, entry, src_id, dst_id)

    route = None
    if flow.http is not None:
        routes = [e for e in program.routes.entries if match_holds(e.match, flow, src_id, dst_id)]
        route = max(routes, key=lambda e: e.priority) if routes else None

    limits = None
    if dst_id is not None:
        service = program.identity(dst_id).service
        limits = next((lim.breaker for lim in program.limits if lim.service == service), None)
    return Decision(verdict, entry, src_id, dst_id, route, limits)
