"""Semantic diff of two versions of a policy: which flows change decision, and who decides.

    region    flows that match an entry present in only one version (every
              other flow meets the same entries in the same order in both);
              the whole flow space when endpoints or the default changed
    question  old decision != new decision, or both allow and the route differs
    classes   each answer is blocked by the pair (old deciding entry, new
              deciding entry) and asked again, until no new class appears

Rate limits compare by their parameters (rate, period, burst), routes by
their actions; the result states Zelkova's relation between the allowed sets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import z3

from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.describe import describe
from anyplane.ir.interp import evaluate
from anyplane.ir.nodes import Entry, Program
from anyplane.ir.printer import format_connections

from .classes import ClassFlows, say
from .context import Analysis
from .domain import Domain
from .encode import Encoder, mk_and, mk_or
from .reach import prefer
from .result import Sat, Unknown, Unsat, VerificationBug

MAX_CLASSES = 64


def action_key(action) -> tuple:
    """What an action decides, without which rule it came from."""
    if isinstance(action, Deny):
        return ("deny",)
    if isinstance(action, RateLimit):
        return ("rate", action.count, action.per_s, action.burst)
    return ("allow",)


def _entry_key(e: Entry) -> tuple:
    return (e.priority, e.match, action_key(e.action))


@dataclass
class DiffClass:
    """One class of flows whose decision changed, with a witness and the deciding rules."""

    witness: object
    old_rule: str | None
    new_rule: str | None
    what: str = ""
    old: str = ""
    new: str = ""
    #: The class in words: its flows (verify/classes.py, `exact`), or, where they cannot be written as
    #: boxes, the deciding rule's flows (`ir.describe`) and `whole`: whether every one of them changed
    #: this way (else only part of them did: rules above decide the rest).
    described: dict = field(default_factory=dict)
    #: Its flows as (boxes, the Boxes that wrote them), when they could be written so.
    flows: tuple | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """`{"witness", "old_rule", "new_rule", "class"}` (+ what changed for `changed`)."""
        out = {"witness": self.witness.to_json(), "old_rule": self.old_rule, "new_rule": self.new_rule,
               "class": self.described}
        if self.what:
            out.update(what=self.what, old=self.old, new=self.new)
        return out


@dataclass
class DiffReport:
    """Newly allowed, newly denied and changed classes, and the relation between versions."""

    newly_allowed: list[DiffClass] = field(default_factory=list)
    newly_denied: list[DiffClass] = field(default_factory=list)
    changed: list[DiffClass] = field(default_factory=list)
    truncated: bool = False
    unknown: str | None = None
    connections: tuple[str, str] | None = None  # (old, new) connection settings, when they differ

    @property
    def relation(self) -> str:
        """Zelkova's comparison of the allowed sets (replies count: a policy that becomes stateless
        denies the replies it allowed)."""
        more, less = bool(self.newly_allowed), bool(self.newly_denied)
        if self.connections is not None:
            was, now = (c != "connections stateless" for c in self.connections)
            more, less = more or (now and not was), less or (was and not now)
        if more and less:
            return "incomparable"
        if more:
            return "more-permissive"
        if less:
            return "less-permissive"
        return "equivalent"

    def to_json(self) -> dict:
        """The documented JSON shape."""
        return {"relation": self.relation, "identical": not self.differs,
                "newly_allowed": [c.to_json() for c in self.newly_allowed],
                "newly_denied": [c.to_json() for c in self.newly_denied],
                "changed": [c.to_json() for c in self.changed], "truncated": self.truncated,
                "unknown": self.unknown,
                "connections": None if self.connections is None else dict(zip(("old", "new"), self.connections))}

    @property
    def differs(self) -> bool:
        """Whether the versions decide some flow differently or treat connections differently."""
        return bool(self.newly_allowed or self.newly_denied or self.changed or self.connections)


class _Codes:
    """Small integers for decisions and routes, shared by both versions."""

    def __init__(self):
        self.table: dict[tuple, int] = {("deny",): 0}

    def code(self, key: tuple) -> int:
        return self.table.setdefault(key, len(self.table))


def _same_endpoints(old: Program, new: Program) -> bool:
    ends = lambda p: sorted((r.prefix, r.identity) for r in p.endpoints)  # noqa: E731
    return ends(old) == ends(new) and old.default == new.default


def _route_key(e: Entry | None) -> tuple:
    if e is None:
        return ("no-route",)
    a = e.action
    return ("route", a.split, a.timeout_ms, a.retry)


def _describe(decision) -> tuple[str, str]:
    rate = decision.rate
    route = decision.route
    rate_text = f"rate {rate.count}/{rate.per_s}s burst {rate.burst}" if rate else "no rate limit"
    if route is None:
        return rate_text, "no route"
    a = route.action
    split = ", ".join(f"{b.version} {b.weight}%" for b in a.split) or "whole service"
    return rate_text, f"{split}; timeout {a.timeout_ms}ms; retry {a.retry.attempts if a.retry else 0}"


def diff(old: Program, new: Program, limit: int = MAX_CLASSES) -> DiffReport:
    """The decision differences between two programs."""
    enc = Encoder(Domain.of([old, new]))
    a_old, a_new = Analysis(old, encoder=enc), Analysis(new, encoder=enc)
    old_keys, new_keys = Counter(map(_entry_key, old.acl.entries)), Counter(map(_entry_key, new.acl.entries))
    gone = [e for e in old.acl.entries if old_keys[_entry_key(e)] > new_keys[_entry_key(e)]]
    added = [e for e in new.acl.entries if new_keys[_entry_key(e)] > old_keys[_entry_key(e)]]
    routes_differ = [(e.priority, e.match, _route_key(e)) for e in old.routes.entries] != \
        [(e.priority, e.match, _route_key(e)) for e in new.routes.entries]

    if _same_endpoints(old, new) and not routes_differ:
        region = mk_or([a_old.term(e.match) for e in gone] + [a_new.term(e.match) for e in added], enc.ctx) \
            if gone or added else enc.false
        rel_old = a_old.relevant([e.match for e in gone + added])
        rel_new = a_new.relevant([e.match for e in gone + added])
    else:
        region = enc.true
        rel_old, rel_new = list(range(len(a_old.ordered))), list(range(len(a_new.ordered)))
    report = DiffReport()
    if old.connections != new.connections:
        report.connections = (format_connections(old.connections), format_connections(new.connections))
    if not (gone or added or routes_differ or not _same_endpoints(old, new)):
        return report

    codes = _Codes()
    code = lambda program: (lambda e: codes.code(action_key(e.action) if e else (program.default,)))  # noqa: E731
    old_code, new_code = a_old.code_term(rel_old, code(old)), a_new.code_term(rel_new, code(new))
    old_sel, new_sel = a_old.selector(rel_old), a_new.selector(rel_new)
    question = [region, old_code != new_code]
    if routes_differ:
        r_old, r_new = _route_term(a_old, codes), _route_term(a_new, codes)
        question = [region, z3.Or(old_code != new_code,
                                  z3.And(old_code != 0, new_code != 0, enc.http, r_old != r_new))]
    blocked: list[z3.BoolRef] = []
    class_flows = ClassFlows(old, new)
    while True:
        if len(report.newly_allowed) + len(report.newly_denied) + len(report.changed) >= limit:
            report.truncated = True
            break
        out = a_old.solve(*question, *blocked)
        if isinstance(out, Unknown):
            report.unknown = out.reason
            break
        if isinstance(out, Unsat):
            break
        model = out.model
        so = model.eval(old_sel, model_completion=True).as_long()
        sn = model.eval(new_sel, model_completion=True).as_long()
        pin = [old_sel == so, new_sel == sn]
        # A witness between two addresses (a pod's traffic to itself is no example of a change).
        f = enc.flow(prefer(a_old, question + blocked + pin, model, first=(enc.src != enc.dst,)))
        d_old, d_new = evaluate(old, f), evaluate(new, f)
        cls = _classify(report, f, d_old, d_new)
        # A route's change is not the deciding entries' alone: its class is said by the rule.
        flows = class_flows.of(d_old.entry, d_new.entry) if cls.what != "route" else None
        cls.flows = flows if flows is not None and flows[0] else None
        cls.described = say(new, *cls.flows) if cls.flows is not None else {}
        if not cls.described:  # HTTP conditions, or a class the boxes cannot hold: the deciding rule's flows
            cls.described = _in_words(new if d_new.entry is not None else old, d_new.entry or d_old.entry,
                                       a_new if d_new.entry is not None else a_old,
                                       lambda m: isinstance(a_old.solve(m, z3.Not(z3.And(region, *pin))), Unsat))
        blocked.append(z3.Not(mk_and(pin + ([_route_pin(a_old, a_new, model, codes)] if routes_differ else []), enc.ctx)))
    return report


def changed_without(a: Analysis, entries: list[Entry]):
    """A flow the program decides otherwise once these acl entries are taken out, None when every flow
    is decided alike, or "unknown" when the solver gives up. Asked in the program's own Analysis: the
    decision over the entries that can match where they are, against the same decision less them (no
    second program is encoded, so one Analysis answers for many subsets). The witness is re-evaluated
    in the interpreter, with and without the entries."""
    gone = {id(e) for e in entries}
    if not gone:
        return None
    matches = [e.match for e in entries]
    decided = lambda d: action_key(d.entry.action) if d.entry is not None else (d.verdict,)  # noqa: E731
    # A few flows of the entries first: one the interpreter decides otherwise without them settles it.
    without = frozenset(gone)
    for m in matches[:4]:
        for f in a.gen.inside(m, tries=2):
            if decided(evaluate(a.program, f)) != decided(evaluate(a.program, f, without=without)):
                return f
    rel = a.relevant(matches)
    codes = _Codes()
    code = lambda e: codes.code(action_key(e.action) if e else (a.program.default,))  # noqa: E731
    question = [a.region(matches), a.code_term(rel, code) != a.code_term([i for i in rel if id(a.ordered[i])
                                                                          not in gone], code)]
    out = a.solve(*question)
    if not isinstance(out, Sat):
        return None if isinstance(out, Unsat) else "unknown"
    f = a.enc.flow(out.model)  # a yes or no is asked: the flow is for the interpreter, not for reading
    if decided(evaluate(a.program, f)) == decided(evaluate(a.program, f, without=without)):
        raise VerificationBug(f"{f.text} is decided alike with and without the entries taken out")
    return f


def _route_term(a: Analysis, codes: _Codes) -> z3.ExprRef:
    routes = sorted(a.program.routes.entries, key=lambda e: -e.priority)
    term = a.enc.bv(codes.code(_route_key(None)), 32)
    for e in reversed(routes):
        term = z3.If(a.term(e.match), a.enc.bv(codes.code(_route_key(e)), 32), term)
    return term


def _route_pin(a_old: Analysis, a_new: Analysis, model, codes: _Codes) -> z3.BoolRef:
    r_old, r_new = _route_term(a_old, codes), _route_term(a_new, codes)
    return z3.And(r_old == model.eval(r_old, model_completion=True), r_new == model.eval(r_new, model_completion=True))


def _in_words(program: Program, entry: Entry | None, a: Analysis, whole) -> dict:
    """The class as the deciding entry's flows in words (the non-default side, the new one first)."""
    out = describe(program, entry.match if entry is not None else None)
    out["whole"] = whole(a.term(entry.match) if entry is not None else a.enc.true)
    return out


def _classify(report: DiffReport, f, d_old, d_new) -> DiffClass:
    cls = DiffClass(f, d_old.rule, d_new.rule)
    if d_old.verdict == "deny" and d_new.verdict == "allow":
        report.newly_allowed.append(cls)
        return cls
    if d_old.verdict == "allow" and d_new.verdict == "deny":
        report.newly_denied.append(cls)
        return cls
    (rate_o, route_o), (rate_n, route_n) = _describe(d_old), _describe(d_new)
    if d_old.verdict == "allow" and rate_o != rate_n:
        cls.what, cls.old, cls.new = "rate", rate_o, rate_n
    elif d_old.verdict == "allow" and route_o != route_n:
        cls.what, cls.old, cls.new = "route", route_o, route_n
    else:
        raise VerificationBug(f"diff witness {f.text} gets the same decision from both versions "
                              f"({d_old.verdict}) in the interpreter")
    report.changed.append(cls)
    return cls
