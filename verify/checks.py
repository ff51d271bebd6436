"""Anomaly findings: dead, redundant and conflicting rules; routes never taken; unused versions.

    dead        a rule whose intent is lost: every flow it matches is taken by rules of
                higher precedence, and some of them decide differently (an error)
    redundant   removing the rule changes no decision: rules of higher precedence
                take its flows and decide them alike, or the next rule (or the
                default) decides the same way everywhere it decides (a warning)
    conflict    an allow and a deny overlap and priority settles it (info)
    rate-conflict  overlapping allows at the same priority disagree on the rate (error)

Line order carries no meaning, so findings must not depend on it: each entry is
judged as if it came first among the entries of equal precedence (which decide
alike), so only entries of strictly higher precedence can take its flows.

Each entry is first tried on a few concrete flows inside its match, checked
against only the entries its box overlaps; the solver is asked only when the
flows do not settle the question. Rules lowered into several entries are
judged as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import z3


from anyplane.ir.actions import Deny, RateLimit
from anyplane.ir.nodes import Entry, precedence, TOP_PRIORITY
from anyplane.ir.pairspace import bit_positions
from anyplane.ir.space import box_apart

from .context import Analysis
from .index import members, surely_meet
from .refine import BUDGET, Boxes, NotComparable, Work, flow_in, fragments_only, without
from .concrete import covers, disjoint, escape, intersection
from .reach import prefer
from .result import Finding, Sat, Unknown, Unsat, VerificationBug

MAX_CONFLICT_PAIRS = 20_000
#: Comparisons of boxes one liveness question may make before the solver answers it instead.
LIVENESS_WORK = 500


@dataclass
class _EntryFacts:
    live: bool | None = None
    witness: object = None
    covering: list[int] = field(default_factory=list)
    redundant: bool | None = None
    deciders: list[int] = field(default_factory=list)
    solver_proved: bool = False
    unknown: str | None = None
    fragments_only: bool = False  # live, but only for non-first fragments (no ports, no ICMP type)


def _rate(e: Entry):
    a = e.action
    return (a.count, a.per_s, a.burst) if isinstance(a, RateLimit) else None


class AnomalyChecker:
    """Runs the per-entry analysis over a whole program."""

    def __init__(self, analysis: Analysis, progress=None):
        self.a = analysis
        self._exact = None  # exact boxes of the program's matches (verify/refine.Boxes), made when asked
        self._entry_boxes: dict[int, object] = {}
        self.progress = progress or (lambda done, total: None)
        self.facts: list[_EntryFacts] = [_EntryFacts() for _ in analysis.ordered]
        self.rule_of = [e.rule for e in analysis.ordered]
        # The first position of each precedence: entries before first[i] outrank entry i.
        self.first = []
        for i, e in enumerate(analysis.ordered):
            same = i and precedence(analysis.ordered[i - 1]) == precedence(e)
            self.first.append(self.first[i - 1] if same else i)
        self.solver_calls = 0
        # Bit masks over positions: the entries of each rule, and those of each action code.
        self.rule_mask: dict[str, int] = {}
        self.code_mask: dict[int, int] = {}
        for i, e in enumerate(analysis.ordered):
            self.rule_mask[e.rule] = self.rule_mask.get(e.rule, 0) | 1 << i
            code = self.code(e)
            self.code_mask[code] = self.code_mask.get(code, 0) | 1 << i

    def code(self, e: Entry | None) -> int:
        return self.a.enc.action_code(e, self.a.program.default)

    def _outranks(self, c: int, i: int) -> bool:
        """Whether entry c takes flows before entry i whatever the line order: higher precedence."""
        return c < self.first[i]

    def _masks(self, i: int) -> tuple[int, int]:
        """Overlapping entries that outrank entry i, and the others of other rules (those that decide in
        its place when it is removed), as bit masks over positions."""
        cands = self.a.index.mask(self.a.boxes[i])
        above = (1 << self.first[i]) - 1
        return cands & above, cands & ~above & ~self.rule_mask[self.rule_of[i]]

    def _split(self, i: int) -> tuple[list[int], list[int]]:
        """`_masks` as positions in decision order."""
        earlier, later = self._masks(i)
        return members(earlier), members(later)

    def _differing(self, mask: int, code: int) -> int:
        """The entries of a mask whose action code is not `code`."""
        return mask & ~self.code_mask.get(code, 0)

    def _region(self, i: int) -> list:
        """Terms: entry i matches and no earlier entry does (entry i decides)."""
        a = self.a
        return [a.term(a.ordered[i].match)] + [a.outside(a.ordered[c].match) for c in self._split(i)[0]]

    def _solve(self, *terms):
        self.solver_calls += 1
        return self.a.solve(*terms)

    def analyse_entry(self, i: int) -> None:
        """Is entry i live (decides some flow), and does it matter (not redundant)?"""
        a, facts = self.a, self.facts[i]
        e = a.ordered[i]
        code = self.code(e)
        samples = a.gen.inside(e.match, tries=4, enough=2)
        if samples:
            cover = next((x for x in a.matching(samples[0])
                          if self._outranks(x, i) and covers(a, a.ordered[x].match, e.match)), None)
            if cover is not None:
                facts.live, facts.covering = False, [cover]
                return
        for start in samples[:2]:
            w = escape(a, e.match, a.boxes[i], start, lambda ms: [m for m in ms if self._outranks(m, i)])
            if w is not None:
                facts.live, facts.witness = True, w
                break
        if facts.live is None:
            self._decide_live(i)
            if not facts.live:
                return
        if self._same_after(i):  # sufficient, and cheaper than searching for a difference
            facts.redundant = True
            return
        if self._next_differs(i, facts.witness, code):
            facts.redundant = False
            return
        result = self._solve(*self._region(i), a.code_term(self._split(i)[1]) != code)
        if isinstance(result, Unknown):
            facts.unknown = result.reason
            return
        facts.redundant = isinstance(result, Unsat)
        facts.solver_proved = facts.redundant

    def _decide_live(self, i: int) -> None:
        """Decide whether entry i decides any flow, over exact boxes or else with the solver; record a
        witness or the covering rules."""
        a, facts, e = self.a, self.facts[i], self.a.ordered[i]
        left = self._left_by_boxes(i)
        if left == []:
            facts.live, facts.covering = False, self._covering(i)
            return
        if left:
            whole = [b for b in left if not fragments_only(b)]
            witness = flow_in((whole or left)[0])
            ms = a.matching(witness) if witness is not None else ()
            if i in ms and not any(self._outranks(m, i) for m in ms):
                facts.live, facts.witness = True, witness
                if not whole:
                    facts.fragments_only, facts.covering = True, self._covering(i, fragments=False)
                return
        # A packet with its ports or ICMP type first; a non-first fragment only if there is no such packet.
        result = self._solve(*self._region(i), z3.Not(a.enc.fragment))
        if isinstance(result, Unsat):
            result = self._solve(*self._region(i))
            if isinstance(result, Sat):
                facts.fragments_only, facts.covering = True, self._covering(i, fragments=False)
        if isinstance(result, Unknown):
            facts.unknown = result.reason
            return
        facts.live = isinstance(result, Sat)
        if not facts.live:
            facts.covering = self._covering(i)
            return
        facts.witness = a.enc.flow(result.model)
        # Decided by the entry, or by one of equal precedence (they decide alike; the interpreter reports
        # the one whose line comes first).
        a.confirm(facts.witness, lambda d: d.entry is not None and (
            d.entry.rule == e.rule or precedence(d.entry) == precedence(e)), f"get decided by {e.origin.loc}")

    def _exact_boxes(self):
        if self._exact is None:
            p = self.a.program
            self._exact = Boxes({r.identity for r in p.endpoints} | {x.name for x in p.identities}, p.endpoints)
        return self._exact

    def _left_by_boxes(self, i: int) -> list | None:
        """The flows of entry i that no entry of higher precedence takes, as exact boxes (verify/refine.py);
        None when a match is not boxes or the walk outgrows its bound (the solver answers)."""
        try:
            budget = Work(LIVENESS_WORK)
            holes = []
            for c in members(self._masks(i)[0]):
                budget.spend()
                holes += self._boxes_of(c)
            return self._exact_boxes().feasible(without(self._boxes_of(i), holes, budget))
        except NotComparable:
            return None

    def _boxes_of(self, i: int) -> list:
        """The exact boxes of entry i (remembered; NotComparable when its match is not boxes)."""
        hit = self._entry_boxes.get(i)
        if hit is None:
            try:
                hit = self._exact_boxes().boxes(self.a.ordered[i].match)
            except NotComparable as e:
                hit = e
            self._entry_boxes[i] = hit
        if isinstance(hit, NotComparable):
            raise hit
        return hit

    def _covering(self, i: int, fragments: bool = True) -> list[int]:
        """The rules that decide the flows of a dead entry (`fragments` False: its flows but non-first
        fragments): an unsat core when the entry has few overlapping predecessors, else the deciders of
        sample flows (Batfish's blocking lines)."""
        a, e = self.a, self.a.ordered[i]
        earlier = self._split(i)[0]
        if len(earlier) <= 64:
            tracked = {str(c): a.outside(a.ordered[c].match) for c in earlier}
            base = [a.term(e.match)] + ([] if fragments else [z3.Not(a.enc.fragment)])
            return [int(n) for n in a.core(base, tracked)]
        found = []
        for f in a.gen.inside(e.match, tries=24):
            first = next((m for m in a.matching(f) if self._outranks(m, i)), None)
            if first is not None and first not in found:
                found.append(first)
        return found or earlier[:1]

    def _next_differs(self, i: int, witness, code: int) -> bool:
        """Search concretely for a flow entry i decides whose next decider (without i's rule) differs."""
        a, rule = self.a, self.rule_of[i]

        def nxt(ms):
            return next((m for m in ms if not self._outranks(m, i) and m != i and self.rule_of[m] != rule), None)

        def blockers(ms):
            earlier = [m for m in ms if self._outranks(m, i)]
            if earlier:
                return earlier
            k = nxt(ms)
            if k is None:
                return [] if self.code(None) != code else [i]
            return [] if self.code(a.ordered[k]) != code else [k]
        e = a.ordered[i]
        if escape(a, e.match, a.boxes[i], witness, blockers) is not None:
            return True
        # Aim at later entries that decide differently: start inside both, then escape.
        tried = 0
        for c in bit_positions(self._differing(self._masks(i)[1], code)):
            start = intersection(a, [e.match, a.ordered[c].match])
            if start is not None and escape(a, e.match, a.boxes[i], start, blockers) is not None:
                return True
            tried += 1
            if tried >= 8:
                break
        return False

    def _same_after(self, i: int) -> bool:
        """Sufficient for redundancy: every later entry up to one that covers entry i decides like it
        (or, when none covers it, every later entry and the default do). Records who decides instead."""
        a, facts = self.a, self.facts[i]
        code = self.code(a.ordered[i])
        later = self._masks(i)[1]
        differs = self._differing(later, code)
        first_differing = differs & -differs
        alike = later & (first_differing - 1) if differs else later
        for c in bit_positions(alike):
            if covers(a, a.ordered[c].match, a.ordered[i].match):
                facts.deciders = [c]
                return True
        if differs or self.code(None) != code:
            return False
        facts.deciders = self._sampled_deciders(i)
        return True

    def _sampled_deciders(self, i: int) -> list[int]:
        """Entries that decide, in place of entry i, sample flows that entry i decides."""
        a, rule, found = self.a, self.rule_of[i], []
        samples = a.gen.inside(a.ordered[i].match, tries=12)
        if self.facts[i].witness is not None:
            samples.insert(0, self.facts[i].witness)
        for f in samples:
            ms = a.matching(f)
            if any(self._outranks(m, i) for m in ms):
                continue
            nxt = next((m for m in ms if not self._outranks(m, i) and m != i and self.rule_of[m] != rule), None)
            if nxt is not None and nxt not in found:
                found.append(nxt)
        return found[:3]

    def run(self) -> list[Finding]:
        """Analyse every entry, then judge rules as wholes."""
        total = len(self.a.ordered)
        for i in range(total):
            self.analyse_entry(i)
            self.progress(i + 1, total)
        return self._rule_findings() + self._conflicts()

    # -- findings per rule --------------------------------------------------------------
    def _rule_findings(self) -> list[Finding]:
        a = self.a
        by_rule: dict[str, list[int]] = {}
        for i, e in enumerate(a.ordered):
            by_rule.setdefault(e.rule, []).append(i)
        out = []
        for rule in a.program.rules:
            positions = by_rule.get(rule.id, [])
            facts = [self.facts[i] for i in positions]
            if any(f.unknown for f in facts):
                out.append(Finding("unknown", "error", rule.origin,
                                   f"the solver could not decide whether this rule matters ({facts[0].unknown})"))
                continue
            if facts and all(f.live is False for f in facts):
                covering = sorted({a.ordered[c].origin for f in facts for c in f.covering})
                names = ", ".join(s.loc for s in covering) or "the rules before it"
                same = [self._taken_alike(i) for i in positions]
                if any(v is None for v in same):
                    out.append(Finding("unknown", "error", rule.origin,
                                       "the solver could not decide how the rules above this one decide its flows"))
                elif all(same):
                    out.append(Finding("redundant", "warning", rule.origin,
                                       f"removing this rule changes no decision: {names} take every flow it "
                                       f"matches and decide it the same way", related=tuple(covering)))
                else:
                    out.append(Finding("dead", "error", rule.origin,
                                       f"this rule never decides a flow: {names} take every flow it matches, "
                                       f"and not the way it says", related=tuple(covering)))
                continue
            live = [f for f in facts if f.live]
            if live and all(f.redundant for f in live):
                out.append(self._redundant(rule, positions))
                continue
            if live and all(f.fragments_only for f in live):
                covering = sorted({a.ordered[c].origin for f in facts for c in f.covering})
                names = ", ".join(s.loc for s in covering) or "the rules before it"
                out.append(Finding("fragments-only", "warning", rule.origin,
                                   f"this rule decides only non-first fragments (packets that carry no ports or "
                                   f"ICMP type): {names} take every other packet it matches",
                                   witness=live[0].witness, related=tuple(covering)))
        return out

    def _taken_alike(self, i: int) -> bool | None:
        """For an entry whose flows all go to entries that outrank it: whether those decide every one of
        them as the entry would (None: the solver gave up)."""
        a, code = self.a, self.code(self.a.ordered[i])
        if not self._differing(self._masks(i)[0], code):
            return True
        earlier = self._split(i)[0]
        # A sample flow taken by an entry that decides otherwise settles it without the solver.
        for f in a.gen.inside(a.ordered[i].match, tries=8):
            taker = next((m for m in a.matching(f) if self._outranks(m, i)), None)
            if taker is not None and self.code(a.ordered[taker]) != code:
                return False
        alike = self._taken_alike_by_boxes(i, earlier, code)
        if alike is not None:
            return alike
        result = self._solve(a.term(a.ordered[i].match), a.code_term(earlier) != code)
        if isinstance(result, Unknown):
            return None
        return isinstance(result, Unsat)

    def _taken_alike_by_boxes(self, i: int, earlier: list[int], code) -> bool | None:
        """The same question over exact boxes (verify/refine.py), without the solver: walk the entries
        that outrank entry i in decision order, taking from its flows what each one matches; an entry
        that decides otherwise and still meets what is left decides some of its flows otherwise. None
        when a match is not boxes (HTTP fields) or the walk outgrows its bound: the solver answers."""
        a = self.a
        try:
            left = self._boxes_of(i)
            budget = Work(BUDGET)
            for c in earlier:
                taken = self._boxes_of(c)
                if self.code(a.ordered[c]) != code:
                    if any(not box_apart(p, h) for p in left for h in taken):
                        return False
                    continue
                left = self._exact_boxes().feasible(without(left, taken, budget))
                if not left:
                    return True
        except NotComparable:
            return None
        return None  # flows no earlier entry takes: not for this question

    def _redundant(self, rule, positions: list[int]) -> Finding:
        a = self.a
        live = [i for i in positions if self.facts[i].live]
        for i in live:
            if self.facts[i].solver_proved:
                self.facts[i].deciders = self._sampled_deciders(i) or self._deciders(i)
        deciders = sorted({a.ordered[c].origin for i in live for c in self.facts[i].deciders})
        if not deciders and all(self.facts[i].solver_proved or not self._masks(i)[1] for i in live):
            msg = f"this rule only repeats the default ({a.program.default}): removing it changes no decision"
        elif deciders:
            names = ", ".join(s.loc for s in deciders)
            msg = f"removing this rule changes no decision: {names} (and the default) decide the same way"
        else:
            msg = "removing this rule changes no decision: later rules and the default decide the same way"
        return Finding("redundant", "warning", rule.origin, msg, related=tuple(deciders))

    def _deciders(self, i: int) -> list[int]:
        """Later entries that decide some flow entry i decides (a few, found by the solver)."""
        a = self.a
        later = self._split(i)[1]
        found: list[int] = []
        while len(found) < 3 and later:
            region = self._region(i) + [a.outside(a.ordered[c].match) for c in found]
            result = self._solve(*region, a.region([a.ordered[c].match for c in later]))
            if not isinstance(result, Sat):
                break
            c = a.first(later, a.enc.flow(result.model))
            if c is None or c in found:
                break
            found.append(c)
        return found

    # -- conflicts -------------------------------------------------------------------------
    def _conflicts(self) -> list[Finding]:
        a = self.a
        overridden: dict[str, dict] = {}
        rate: list[Finding] = []
        pairs = 0
        denies = sum(1 << i for i, e in enumerate(a.ordered) if isinstance(e.action, Deny))
        allows_at: dict[int, int] = {}  # allows by priority: those can clash on rates
        for i, e in enumerate(a.ordered):
            if not isinstance(e.action, Deny):
                allows_at[e.priority] = allows_at.get(e.priority, 0) | 1 << i
        for i, e in enumerate(a.ordered):
            if not self.facts[i].live:
                continue
            opposite_side = (a.index.all & ~denies) if isinstance(e.action, Deny) else denies
            if not isinstance(e.action, Deny):
                opposite_side |= allows_at.get(e.priority, 0)
            earlier = self._masks(i)[0] & opposite_side & ~self.rule_mask[e.rule]
            for c in bit_positions(earlier):
                x = a.ordered[c]
                opposite = isinstance(x.action, Deny) != isinstance(e.action, Deny)
                rate_clash = (not opposite and not isinstance(x.action, Deny) and x.priority == e.priority
                              and _rate(x) != _rate(e))
                if not (opposite or rate_clash):
                    continue
                if pairs >= MAX_CONFLICT_PAIRS:
                    break
                pairs += 1
                slot = overridden.get(e.rule)
                if (not rate_clash and slot is not None and a.exact >> c & a.exact >> i & 1
                        and surely_meet(a.boxes[c], a.boxes[i])):
                    slot["winners"].setdefault(x.origin, x)  # the rule's witness is found: an overlap will do
                    continue
                if disjoint(x.match, e.match):
                    continue
                f = intersection(a, [x.match, e.match])
                if f is None:
                    overlap = [a.term(x.match), a.term(e.match)]
                    result = self._solve(*overlap)
                    if not isinstance(result, Sat):
                        continue
                    f = a.enc.flow(prefer(a, overlap, result.model))
                ids = a.ids(f)
                if not (a.holds(c, f, ids) and a.holds(i, f, ids)):
                    raise VerificationBug(f"overlap witness {f.text} does not match both rules")
                if rate_clash:
                    rate.append(Finding("rate-conflict", "error", e.origin,
                                        f"overlaps {x.origin.loc} at the same priority ({e.priority}) with a "
                                        f"different rate limit; the slower one wins, which is probably not meant",
                                        witness=f, related=(x.origin,)))
                else:
                    slot = overridden.setdefault(e.rule, {"entry": e, "winners": {}, "witness": f})
                    slot["winners"].setdefault(x.origin, x)
        out = []
        for rule_id, slot in overridden.items():
            e, winners = slot["entry"], slot["winners"]
            verb = "deny" if isinstance(e.action, Deny) else "allow"
            detail = ", ".join(f"{s.loc} ({'deny' if isinstance(w.action, Deny) else 'allow'}, "
                               + ("before every rule: connections without a client certificate)"
                                  if w.priority == TOP_PRIORITY else f"priority {w.priority})")
                               for s, w in sorted(winners.items()))
            out.append(Finding("conflict", "info", e.origin,
                               f"this {verb} (priority {e.priority}) overlaps {detail}, which take precedence "
                               f"where they overlap", witness=slot["witness"], related=tuple(sorted(winners))))
        return out + rate
