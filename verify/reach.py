"""Reachability: asserts, `anyplane query`, and the rules that block a flow.

    reachable P   some flow matching P is allowed: a witness, its deciding rule
    otherwise     the rules (and/or the default) that decide the flows of P

Witnesses are made readable the way Batfish picks preferred flows: after the
solver finds any witness, preferences are added one at a time and kept when
they stay satisfiable (the named endpoint's representative address, the
pattern's own values, well-known ports, source port 49152, GET, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dataclass_replace

import z3

from anyplane.ir.actions import Deny
from anyplane.ir.conn import as_reply, reverse, reverse_matches
from anyplane.ir.interp import match_holds
from anyplane.ir.match import Match, int_ranges
from anyplane.ir.nodes import Assert, Entry
from anyplane.ir.owners import described
from anyplane.ir.project import project_l4
from anyplane.ir.source import Span

from .context import Analysis
from .concrete import escape, intersection, polish
from .result import Finding, Sat, Unknown, VerificationBug

WELL_KNOWN_PORTS = (80, 443, 8080, 22, 53, 3306, 5432, 6379, 9090)
MAX_BLOCKERS = 8


@dataclass(frozen=True)
class Reachability:
    """The answer to "is some flow of the pattern allowed?"."""

    reachable: bool | None
    witness: object = None
    rule: Span | None = None
    blockers: tuple[Span, ...] = ()
    default_blocks: bool = False
    reason: str | None = None
    owners: tuple[str | None, str | None] = (None, None)  # who owns the witness's source and destination
    reply: "Reachability | None" = None  # not reachable as new connections: whether replies get through
    answer: object = None  # in `reply`: the reply (its `witness` is the connection's opening packet)
    rule_id: str | None = None  # the deciding rule (positions may be shared: imported rules)


    def to_json(self) -> dict:
        """`{"reachable", "witness", "rule", "blocked_by"}` (witness in pattern syntax under "flow", with
        `src_owner` and `dst_owner`)."""
        witness = None
        if self.witness is not None:
            witness = dict(self.witness.to_json(), src_owner=self.owners[0], dst_owner=self.owners[1])
        out = {"reachable": self.reachable,
               "witness": witness,
               "rule": self.rule.loc if self.rule else None}
        if self.reachable is False:
            out["blocked_by"] = [s.loc for s in self.blockers] + (["default"] if self.default_blocks else [])
        if self.reachable is None:
            out["unknown"] = self.reason
        if self.reply is not None:
            out["as_reply"] = self.reply.reply_json()
        return out

    def reply_json(self) -> dict:
        """The answer for the replies: `{"reachable", "witness" (a reply), "connection" (the opening it
        answers), "rule" (the rule that allows the opening)}`."""
        r = {"reachable": self.reachable, "witness": None, "connection": None,
             "rule": self.rule.loc if self.rule else None}
        if self.witness is not None:
            r["witness"] = self.answer.to_json()
            r["connection"] = dict(self.witness.to_json(), src_owner=self.owners[0], dst_owner=self.owners[1])
        if self.reachable is None:
            r["unknown"] = self.reason
        return r


def prefer(a: Analysis, base: list, model: z3.ModelRef, first: tuple = ()) -> z3.ModelRef:
    """Refine a model towards a readable witness, keeping each preference that stays satisfiable
    (`first`: the caller's own, asked before the others)."""
    enc = a.enc
    f = enc.flow(model)
    prefs: list[z3.BoolRef] = [z3.Not(enc.fragment), *first, z3.Not(enc.http)]
    src_id, dst_id = a.ids(f)
    for ident, var in ((src_id, enc.src), (dst_id, enc.dst)):
        owned = a.gen.owned.get(ident, []) if ident else []
        for fam, addr in owned[:2]:
            prefs.append(z3.And(enc.v6 == (fam == 6), var == addr))
        prefs.append(z3.Extract(7, 0, var) != 0)
    ports = [p.number for p in a.program.identity(dst_id).ports] if dst_id is not None else []
    prefs.append(z3.Or([enc.dport == p for p in ports + list(WELL_KNOWN_PORTS)]))
    prefs.append(enc.sport == 49152)
    prefs += [enc.icmp_type == z3.If(enc.v6, enc.bv(128, 8), enc.bv(8, 8)), enc.icmp_code == 0]
    prefs.append(enc.method == a.domain.methods.index("GET"))
    prefs.append(enc.host == 0)
    prefs += [var == 0 for var in enc.headers.values()]
    prefs.append(z3.Or([enc.path == i for i, (kind, _) in enumerate(a.domain.paths.classes) if kind == "eq"]))
    s = a.solver
    s.push()
    try:
        s.add(*base)
        best = model
        for p in prefs:
            s.push()
            s.add(p)
            if s.check() == z3.sat:
                best = s.model()
                s.pop()
                s.add(p)
            else:
                s.pop()
        return best
    finally:
        s.pop()


def _concrete_witness(a: Analysis, pattern: tuple[Match, ...]):
    """Look for an allowed flow of the pattern without the solver (None when not found)."""
    deny_default = a.program.default == "deny"

    def blockers(ms):
        if not ms:
            return [-1] if deny_default else []
        return [] if a.ordered[ms[0]].action.verdict == "allow" else [ms[0]]

    for m in pattern:
        box = a.boxer.box(m)
        starts = a.gen.inside(m, tries=3)
        allows = [c for c in a.index.candidates(box) if a.ordered[c].action.verdict == "allow"][:8]
        starts += [f for f in (intersection(a, [m, a.ordered[c].match]) for c in allows) if f is not None]
        for start in starts:
            w = escape(a, m, box, start, blockers)
            if w is not None:
                return polish(a, w, lambda f: match_holds(m, f, *a.ids(f)) and not blockers(a.matching(f)))
    return None


def reachability(a: Analysis, pattern: tuple[Match, ...], blockers: bool = True) -> Reachability:
    """Whether some flow of the pattern is allowed, with a witness or (unless `blockers` is False, for
    callers that only ask yes or no) the blocking rules."""
    w = _concrete_witness(a, pattern)
    if w is not None:
        d = a.confirm(w, lambda d: d.verdict == "allow", "get allowed")
        _check_in_pattern(a, w, pattern)
        return Reachability(True, w, d.entry.origin if d.entry else None, owners=a.ids(w),
                            rule_id=d.entry.rule if d.entry else None)
    positions = a.relevant(pattern)
    region = a.region(pattern)
    base = [region, a.allowed_term(positions)]
    result = a.solve(*base)
    if isinstance(result, Unknown):
        return Reachability(None, reason=result.reason)
    if isinstance(result, Sat):
        f = a.enc.flow(prefer(a, base, result.model))
        d = a.confirm(f, lambda d: d.verdict == "allow", "get allowed")
        _check_in_pattern(a, f, pattern)
        return Reachability(True, f, d.entry.origin if d.entry else None, owners=a.ids(f),
                            rule_id=d.entry.rule if d.entry else None)
    if not blockers:
        return Reachability(False)
    return _blockers(a, pattern, positions, region)


def reply_reachability(program, pattern: tuple[Match, ...]) -> Reachability | None:
    """Under a stateful policy, whether some packet of the pattern passes as the reply of an allowed
    connection: the reachability of the openings those replies answer (witness: an opening). None
    when the policy is stateless or no reply can fall in the pattern (HTTP requests, ICMP errors)."""
    if not program.connections.stateful:
        return None
    openings = reverse_matches(pattern)
    if not openings:
        return None
    # The openings are judged below L7, as the engines that keep connections judge them (ir.conn.as_reply).
    a = Analysis(project_l4(program), extra=list(openings))
    r = reachability(a, openings)
    if r.witness is not None:
        inside = [f for f in _replies(pattern, reverse(r.witness))
                  if any(match_holds(m, f, *a.ids(f)) for m in pattern)]
        if not inside:
            raise VerificationBug(f"the reply to {r.witness.text} is outside the pattern it answers")
        reply = inside[0]
        if as_reply(program, reply) is None:
            raise VerificationBug(f"{reply.text} does not pass as the reply the proof says it is")
        r = dataclass_replace(r, answer=reply)
    return r


def _replies(pattern: tuple[Match, ...], reply) -> list:
    """The reply, and for an echo reply the same with each ICMP code a match of the pattern admits
    first (any code answers the request)."""
    out = [reply]
    if reply.is_icmp:
        for m in pattern:
            codes = m.get("icmp.code")
            ranges = int_ranges(codes) if codes is not None else None
            if ranges:
                out.append(dataclass_replace(reply, icmp_code=ranges[0][0]))
    return out


def _check_in_pattern(a: Analysis, f, pattern) -> None:
    src_id, dst_id = a.ids(f)
    if not any(match_holds(m, f, src_id, dst_id) for m in pattern):
        raise VerificationBug(f"witness {f.text} is outside the pattern it answers")


def _blockers(a: Analysis, pattern, positions: list[int], region) -> Reachability:
    """Enumerate the distinct deciders of the pattern's flows (all denies or the default)."""
    sel = a.selector(positions)
    seen: list[int] = []
    blockers: list[Entry] = []
    default = False
    while len(seen) < MAX_BLOCKERS:
        result = a.solve(region, *[sel != s for s in seen])
        if not isinstance(result, Sat):
            break
        f = a.enc.flow(result.model)
        d = a.confirm(f, lambda d: d.verdict == "deny", "get denied")
        k = result.model.eval(sel, model_completion=True).as_long()
        seen.append(k)
        if d.entry is None:
            default = True
        elif isinstance(d.entry.action, Deny):
            blockers.append(d.entry)
    spans = tuple(sorted({e.origin for e in blockers}))
    return Reachability(False, blockers=spans, default_blocks=default)


def check_asserts(a: Analysis) -> list[Finding]:
    """An `assertion-failed` finding for every assert that does not hold."""
    out = []
    for asrt in a.program.asserts:
        r = reachability(a, asrt.pattern)
        if r.reachable is None:
            out.append(Finding("unknown", "error", asrt.origin, f"the solver could not decide this assertion ({r.reason})"))
        elif asrt.reachable and not r.reachable:
            out.append(Finding("assertion-failed", "error", asrt.origin, _blocked_message(asrt, r),
                               related=r.blockers))
        elif not asrt.reachable and r.reachable:
            by = r.rule.loc if r.rule else "the default"
            said = (f"'only {asrt.text}' does not hold: another source reaches the destination"
                    if asrt.only else f"'{asrt.text}' is reachable")
            out.append(Finding("assertion-failed", "error", asrt.origin,
                               f"{said}: {described(a.program, r.witness)} is allowed by {by}",
                               witness=r.witness, related=(r.rule,) if r.rule else ()))
    return out


def _blocked_message(asrt: Assert, r: Reachability) -> str:
    parts = [s.loc for s in r.blockers] + (["the default (deny)"] if r.default_blocks else [])
    return f"'{asrt.text}' is not reachable: no flow of it is allowed; blocked by {', '.join(parts) or 'nothing'}"
