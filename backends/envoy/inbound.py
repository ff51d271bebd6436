"""Inbound enforcement: the policy's decision list as Envoy RBAC matchers, one per listener.

    entries toward this service on this port, in decision order
      -> source-address classes (longest prefix over the atoms, an IP trie in Envoy)
      -> per class: the entries that accept it, first match wins
      -> action: ALLOW / DENY named after the deciding rule (FILE:LINE)

Envoy's unified matcher gives first-match lists and an IP trie whose
"exclusive" ranges select only the most specific prefix: exactly
longest-prefix ownership. So the sidecar evaluates the policy's own
semantics (priority, deny before allow, default) per request, and a request
costs one trie lookup plus the few entries of its source class, however
many rules the policy has.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.addr import Prefix
from anyplane.ir.match import Absent, Exact, InSet, Match, Present, Range, StrExact, options
from anyplane.ir.memo import per_program
from anyplane.ir.nodes import Entry, Program, ordered as in_order
from anyplane.ir.owners import ownership

from ..base import Unsupported
from ..classes import AddressClasses, address_classes
from .normal import TYPE, authority, path_with_query

TCP = 6
ACTION = TYPE + "envoy.config.rbac.v3.Action"
SRC_INPUT = {"name": "direct_source_ip",
             "typed_config": {"@type": TYPE + "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput"}}
DST_INPUT = {"name": "destination_ip",
             "typed_config": {"@type": TYPE + "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput"}}
SPORT_INPUT = {"name": "source_port",
               "typed_config": {"@type": TYPE + "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput"}}
DPORT_INPUT = {"name": "destination_port",
               "typed_config": {"@type": TYPE + "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"}}


PEER_INPUT = {"name": "uri_san",
              "typed_config": {"@type": TYPE + "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput"}}


def header_input(name: str) -> dict:
    """Matcher input for one request header (pseudo-headers included)."""
    return {"name": f"header:{name}",
            "typed_config": {"@type": TYPE + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": name}}


def _predicate(inp: dict, string_match: dict) -> dict:
    return {"single_predicate": {"input": inp, "value_match": string_match}}


def _or(preds: list[dict]) -> dict:
    return preds[0] if len(preds) == 1 else {"or_matcher": {"predicate": preds}}


def _and(preds: list[dict]) -> dict:
    return preds[0] if len(preds) == 1 else {"and_matcher": {"predicate": preds}}


ANY_VALUE = {"safe_regex": {"google_re2": {}, "regex": ".*"}}  # any value, as long as the input has one
ALWAYS = _predicate(DPORT_INPUT, ANY_VALUE)  # every connection has a destination port


def _digits_range(lo: str, hi: str) -> list[str]:
    """Regexes for all numbers with the digits of lo..hi (same length)."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + r for r in _digits_range(lo[1:], hi[1:])]
    out = []
    rest = len(lo) - 1
    out += [lo[0] + r for r in _digits_range(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        out.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" * rest)
    out += [hi[0] + r for r in _digits_range("0" * rest, hi[1:])]
    return out


def port_regex(lo: int, hi: int) -> str:
    """A regex matching exactly the decimal numbers lo..hi."""
    parts = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(hi, 10 ** digits - 1)
        if a <= b:
            parts += _digits_range(str(a), str(b))
    return "^(" + "|".join(parts) + ")$"


def field_predicates(m: Match, skip: set[str]) -> list[dict]:
    """Predicates for every constrained field of a match except those in `skip`."""
    out = []
    for name, fm in m.fields:
        if name in skip:
            continue
        if name == F.SPORT:
            out.append(_or([_predicate(SPORT_INPUT, {"safe_regex": {"google_re2": {}, "regex": port_regex(o.lo, o.hi)}})
                            for o in options(fm) if isinstance(o, Range)]))
        elif name == F.HTTP_METHOD:
            values = fm.values if isinstance(fm, InSet) else (fm.value,)
            out.append(_or([_predicate(header_input(":method"), {"exact": v}) for v in values]))
        elif name == F.HTTP_PATH:
            preds = []
            for o in options(fm):
                preds.append(_predicate(header_input(":path"), path_with_query(o.value, isinstance(o, StrExact))))
            out.append(_or(preds))
        elif name == F.HTTP_HOST:
            out.append(_predicate(header_input(":authority"), authority(fm.value, port_suffix=False)))
        elif name.startswith(F.HEADER_PREFIX):
            header = header_input(name[len(F.HEADER_PREFIX):])
            if isinstance(fm, StrExact):
                out.append(_predicate(header, {"exact": fm.value}))
            elif isinstance(fm, Present):
                out.append(_predicate(header, ANY_VALUE))
            elif isinstance(fm, Absent):
                out.append({"not_matcher": _predicate(header, ANY_VALUE)})
            else:
                raise Unsupported(f"{name} {type(fm).__name__}")
        elif name == F.SRC_PEER:
            if isinstance(fm, InSet):
                out.append(_or([_predicate(PEER_INPUT, {"exact": v}) for v in fm.values]))
            elif not isinstance(fm, Absent):  # absent: only the chain without TLS holds such entries
                raise Unsupported(f"{name} {type(fm).__name__}")
        elif name != F.HTTP:
            raise Unsupported(f"{name} is not matched by the sidecar")
    return out


def action(name: str, allow: bool) -> dict:
    """An RBAC action named after the deciding rule."""
    return {"action": {"name": "rbac", "typed_config": {"@type": ACTION, "name": name,
                                                        "action": "ALLOW" if allow else "DENY"}}}


@dataclass
class Listener:
    """What one inbound listener enforces."""

    port: int
    http: bool
    entries: list[Entry]
    names: dict[int, str]
    default_allow: bool

    def over(self, tls: bool) -> "Listener":
        """The entries that can hold on connections with a client certificate (`tls`) or without: a
        workload's sidecar under mutual TLS has a filter chain for each."""
        keep = [e for e in self.entries
                if not isinstance(e.match.get(F.SRC_PEER), Absent if tls else InSet)]
        return Listener(self.port, self.http, keep, self.names, self.default_allow)

    @property
    def rate_limited(self) -> dict[str, RateLimit]:
        """Rule name -> rate limit, for the rate-limited allows this listener decides (HTTP only)."""
        return {self.names[id(e)]: e.action for e in self.entries
                if isinstance(e.action, RateLimit) and self.http}


def _admits(fm, value: int) -> bool:
    if fm is None:
        return True
    for o in options(fm):
        if isinstance(o, Exact) and o.value == value:
            return True
        if isinstance(o, InSet) and value in o.values:
            return True
        if isinstance(o, Range) and o.lo <= value <= o.hi:
            return True
    return False


def meets(m: Match, id_field: str, ip_field: str, identities: set[str], prefixes: list[Prefix]) -> bool:
    """Whether one side (source or destination) of a match can be an address of these identities."""
    ids, ips = m.get(id_field), m.get(ip_field)
    if ids is not None and not (set(ids.values) & identities):
        return False
    if ips is not None and not any(o.prefix.covers(p) or p.covers(o.prefix)
                                   for o in options(ips) for p in prefixes):
        return False
    return True


@per_program
def _by_destination(program: Program) -> tuple[list[Entry], dict[str, list[int]], list[int]]:
    """The acl in decision order, positions per destination identity, and positions with no identity
    (computed once per program: every listener of every service asks)."""
    ordered = in_order(program.acl)
    by_id: dict[str, list[int]] = {}
    anywhere: list[int] = []
    for k, e in enumerate(ordered):
        ids = e.match.get(F.DST_ID)
        if ids is None:
            anywhere.append(k)
        else:
            for v in ids.values:
                by_id.setdefault(v, []).append(k)
    return ordered, by_id, anywhere


def listener_plan(program: Program, service: str, port: int, http: bool, names: dict[int, str]) -> Listener:
    """The entries one inbound listener decides with, in decision order."""
    identities = set(program.service_identities(service))
    owned = ownership(program).prefixes
    prefixes = [p for i in identities for p in owned.get(i, ())]
    ordered, by_id, anywhere = _by_destination(program)
    positions = set(anywhere)
    for v in identities:
        positions.update(by_id.get(v, ()))
    entries = []
    for e in (ordered[k] for k in sorted(positions)):
        m = e.match
        if not (meets(m, F.DST_ID, F.DST_IP, identities, prefixes) and _admits(m.get(F.PROTO), TCP) and _admits(m.get(F.DPORT), port)):
            continue
        if m.get(F.ICMP_TYPE) is not None or m.get(F.ICMP_CODE) is not None:
            continue
        if not http and any(n.startswith(F.HTTP) for n, _ in m.fields):
            continue  # HTTP conditions never hold on a plain TCP listener
        entries.append(e)
    return Listener(port, http, entries, names, program.default == "allow")


class _Sides:
    """Whether an entry accepts an address class on one side; each entry's prefixes become a set once
    (an entry with thousands of addresses meets thousands of classes)."""

    def __init__(self):
        self.sets: dict[tuple[int, str], frozenset[Prefix]] = {}

    def accepts(self, e: Entry, side_id: str, side_ip: str, owner: str | None, member: frozenset[Prefix]) -> bool:
        """Whether `e` admits the class (owner, member prefixes) on the side named by its fields."""
        ids, ips = e.match.get(side_id), e.match.get(side_ip)
        if ids is not None and owner not in ids.values:
            return False
        if ips is None:
            return True
        key = (id(e), side_ip)
        if key not in self.sets:
            self.sets[key] = frozenset(o.prefix for o in options(ips))
        return not member.isdisjoint(self.sets[key])


def _ranges(prefixes: list[Prefix]) -> list[dict]:
    return [{"address_prefix": str(p).split("/")[0], "prefix_len": p.length} for p in prefixes]


def _trie(inp: dict, classes: AddressClasses, branch) -> dict:
    """An IP trie over the class atoms (exclusive ranges: the most specific wins) with a default branch."""
    by_class: dict[int, list[Prefix]] = {}
    for p, cls in classes.prefixes:
        by_class.setdefault(cls, []).append(p)
    atoms = {p for p, _ in classes.prefixes}
    by_class.setdefault(0, [])
    by_class[0] += [p for p in (Prefix(4, 0, 0), Prefix(6, 0, 0)) if p not in atoms]
    matchers = []
    for cls in sorted(by_class):
        if by_class[cls]:
            matchers.append({"ranges": _ranges(sorted(by_class[cls])), "exclusive": True, "on_match": branch(cls)})
    return {"matcher_tree": {"input": inp, "custom_match": {
        "name": "ip", "typed_config": {"@type": TYPE + "xds.type.matcher.v3.IPMatcher", "range_matchers": matchers}}}}


def rbac_matcher(program: Program, listener: Listener, service: str) -> dict:
    """The RBAC matcher of one listener: a source trie, then per class a first-match list."""
    entries = listener.entries
    default = action("default", listener.default_allow)
    src = address_classes(program, entries, "src", telling=True)
    identities = set(program.service_identities(service))
    # Destination classes, only when entries can tell this service's own addresses apart.
    dst_entries = [e for e in entries if e.match.get(F.DST_IP) is not None
                   or (e.match.get(F.DST_ID) is not None and not identities <= set(e.match.get(F.DST_ID).values))]
    dst = address_classes(program, entries, "dst", telling=True) if dst_entries else None

    sides = _Sides()
    # Index the entries by what can select them, so each class looks only at its candidates.
    position = {id(e): k for k, e in enumerate(entries)}
    by_owner: dict[str, list[Entry]] = {}
    by_prefix: dict[Prefix, list[Entry]] = {}
    unconstrained: list[Entry] = []
    for e in entries:
        ids, ips = e.match.get(F.SRC_ID), e.match.get(F.SRC_IP)
        if ids is not None:
            for v in ids.values:
                by_owner.setdefault(v, []).append(e)
        elif ips is not None:
            for o in options(ips):
                by_prefix.setdefault(o.prefix, []).append(e)
        else:
            unconstrained.append(e)

    def _candidates(key) -> list[Entry]:
        owner, member = key
        found = {id(e): e for e in unconstrained}
        found.update((id(e), e) for e in by_owner.get(owner, ()))
        for p in member:
            found.update((id(e), e) for e in by_prefix.get(p, ()))
        return sorted(found.values(), key=lambda e: position[id(e)])

    # Classes no entry tells apart share one branch (a listener's entries name few of the policy's atoms).
    src = src.merged(lambda key: tuple(position[id(e)] for e in _candidates(key)
                                       if sides.accepts(e, F.SRC_ID, F.SRC_IP, *key)))
    if dst is not None:
        dst = dst.merged(lambda key: tuple(k for k, e in enumerate(entries) if sides.accepts(e, F.DST_ID, F.DST_IP, *key)))
    rendered: dict[int, dict] = {}

    def render(e: Entry) -> dict:
        if id(e) not in rendered:
            preds = field_predicates(e.match, {F.SRC_ID, F.SRC_IP, F.DST_ID, F.DST_IP, F.PROTO, F.DPORT})
            rendered[id(e)] = {"predicate": _and(preds) if preds else ALWAYS,
                               "on_match": action(listener.names[id(e)], not isinstance(e.action, Deny))}
        return rendered[id(e)]

    def items(owner, member, dst_key):
        out = []
        for e in _candidates((owner, member)):
            if not sides.accepts(e, F.SRC_ID, F.SRC_IP, owner, member):
                continue
            if dst_key is not None and not sides.accepts(e, F.DST_ID, F.DST_IP, *dst_key):
                continue
            out.append(render(e))
        return out

    def decision(owner, member, dst_key=None) -> dict:
        found = items(owner, member, dst_key)
        if not found:
            return default
        return {"matcher": {"matcher_list": {"matchers": found}, "on_no_match": default}}

    def src_branch(cls: int) -> dict:
        owner, member = src.keys[cls]
        if dst is None:
            return decision(owner, member)
        return {"matcher": dict(_trie(DST_INPUT, dst, lambda d: decision(owner, member, dst.keys[d])),
                                on_no_match=decision(owner, member, dst.keys[0]))}

    return dict(_trie(SRC_INPUT, src, src_branch), on_no_match=src_branch(0))


@per_program
def rule_names(program: Program) -> dict[int, str]:
    """Entry object id -> the name Envoy reports for it: FILE:LINE of its rule (made unique)."""
    by_rule: dict[str, str] = {}
    used: dict[str, int] = {}
    for r in program.rules:
        name = r.origin.loc
        used[name] = used.get(name, 0) + 1
        by_rule[r.id] = name if used[name] == 1 else f"{name}#{used[name]}"
    return {id(e): by_rule[e.rule] for e in program.acl.entries}
