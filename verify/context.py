"""The state every verification question shares: one program, encoded once.

    Analysis(program)
      .domain    finite abstraction of HTTP strings
      .enc       Z3 flow variables and cached match terms
      .ordered   acl entries in decision order (index = position)
      .index     overlap index over their boxes
      .solver    a solver holding only the well-formedness of flows; every
                 question pushes its own terms and pops them again

Questions ask only about the entries whose boxes overlap the region of
interest: outside its box an entry matches nothing, so leaving it out of a
first-match chain changes no decision inside the region.
"""

from __future__ import annotations

import z3

from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate, match_holds
from anyplane.ir import fields as F
from anyplane.ir.addr import Prefix
from anyplane.ir.match import Match, PrefixMatch
from anyplane.ir.nodes import Entry, Program, ordered
from anyplane.ir.owners import ownership

from .domain import Domain
from .encode import Encoder, mk_and, mk_or
from .index import Boxer, OverlapIndex, members
from .result import UNSAT, Outcome, Sat, Unknown, VerificationBug

DEFAULT_TIMEOUT_MS = 20_000


class Analysis:
    """One program, encoded once and queried many times."""

    def __init__(self, program: Program, extra: list[Match] = (), timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 encoder: Encoder | None = None):
        self.program = program
        self.domain = encoder.domain if encoder else Domain.of([program], list(extra))
        self.enc = encoder or Encoder(self.domain)
        self.ordered: list[Entry] = list(ordered(program.acl))
        self.boxer = Boxer(program)
        self.boxes = [self.boxer.box(e.match) for e in self.ordered]
        self.index = OverlapIndex(self.boxes)
        # Entries whose boxes are their matches: a flow the index places in one matches it.
        self.exact = sum(1 << i for i, e in enumerate(self.ordered) if Boxer.exact(e.match))
        self.lpm = ownership(program).table
        self.default_code = self.enc.action_code(None, program.default)
        self.solver = z3.Solver(ctx=self.enc.ctx)
        self.solver.set("timeout", timeout_ms)
        self.solver.add(self.enc.wellformed)
        self._gen: FlowGen | None = None
        self._matching: dict[Flow, list[int]] = {}
        self._relevant: dict[Match, tuple[int, ...]] = {}
        self._outside_dst: dict = {}

    # -- regions ------------------------------------------------------------------------
    def term(self, m: Match) -> z3.BoolRef:
        """The term of a match of this program."""
        return self.enc.match(self.program, m)

    def outside(self, m: Match) -> z3.BoolRef:
        """The negated term of a match of this program."""
        return self.enc.negated(self.program, m)

    def region(self, matches) -> z3.BoolRef:
        """A disjunction of matches."""
        return mk_or([self.term(m) for m in matches], self.enc.ctx) if matches else self.enc.false

    def relevant(self, matches) -> list[int]:
        """Positions of the acl entries that can match some flow in the region, ascending (remembered
        for regions of one match: a proof asks the same scopes again and again)."""
        if len(matches) == 1:
            hit = self._relevant.get(matches[0])
            if hit is not None:
                return list(hit)
        out: set[int] = set()
        for m in matches:
            out.update(self.index.candidates(self.boxer.box(m)))
        found = sorted(out)
        if len(matches) == 1:
            if len(self._relevant) >= 4096:
                self._relevant.clear()
            self._relevant[matches[0]] = tuple(found)
        return found

    def outside_dst(self, p: Prefix) -> z3.BoolRef:
        """The term of a destination outside a prefix (remembered per prefix)."""
        hit = self._outside_dst.get(p)
        if hit is None:
            hit = self._outside_dst[p] = self.outside(Match.of({F.DST_IP: PrefixMatch(p)}))
        return hit

    def code_term(self, positions: list[int], code=None) -> z3.ExprRef:
        """The decision's action code over the given entries (first match, else the default)."""
        code = code or (lambda e: self.enc.action_code(e, self.program.default))
        consts: dict[int, z3.BitVecRef] = {}

        def const(e):
            k = code(e)
            if k not in consts:
                consts[k] = self.enc.bv(k, 32)
            return consts[k]
        return self.enc.first_match(self.program, [self.ordered[i] for i in positions], const(None), const)

    def allowed_term(self, positions: list[int]) -> z3.BoolRef:
        """The decision over these entries is an allow (plain or rate-limited)."""
        return self.code_term(positions) != 0

    def selector(self, positions: list[int]) -> z3.ExprRef:
        """Position of the deciding entry among these (or -1 for the default)."""
        return self.enc.first_match(self.program, [self.ordered[i] for i in positions], self.enc.int(-1),
                                    lambda e: self.enc.int(self.position[id(e)]))

    @property
    def position(self) -> dict[int, int]:
        """Entry object id -> position."""
        if not hasattr(self, "_position"):
            self._position = {id(e): i for i, e in enumerate(self.ordered)}
        return self._position

    # -- solving ------------------------------------------------------------------------
    def solve(self, *terms) -> Outcome:
        """Whether some flow satisfies every term: `Sat(model)`, `Unsat()` or `Unknown(reason)`."""
        s = self.solver
        s.push()
        try:
            # One conjunction through the C API: Solver.add casts every argument, which
            # dominates the cost of checks over thousands of negated entries.
            z3.Z3_solver_assert(s.ctx.ref(), s.solver, mk_and(terms, self.enc.ctx).as_ast() if terms else self.enc.true.as_ast())
            result = s.check()
            if result == z3.sat:
                return Sat(s.model())
            return UNSAT if result == z3.unsat else Unknown(s.reason_unknown() or "unknown")
        finally:
            s.pop()

    def core(self, base: list, tracked: dict[str, z3.BoolRef]) -> list[str]:
        """Names of a subset of `tracked` constraints that, with `base`, is unsatisfiable."""
        s = z3.Solver(ctx=self.enc.ctx)
        s.set("timeout", DEFAULT_TIMEOUT_MS)
        s.add(self.enc.wellformed, *base)
        literals = {}
        for name, term in tracked.items():
            lit = z3.Bool(f"track:{name}", self.enc.ctx)
            literals[lit.get_id()] = name
            s.add(z3.Implies(lit, term))
        if s.check([z3.Bool(f"track:{n}", self.enc.ctx) for n in tracked]) != z3.unsat:
            return list(tracked)
        return sorted(literals[c.get_id()] for c in s.unsat_core())

    # -- concrete flows ---------------------------------------------------------------------
    @property
    def gen(self) -> FlowGen:
        """An edge-biased flow generator for this program (built on first use)."""
        if self._gen is None:
            self._gen = FlowGen(self.program, seed=0)
        return self._gen

    def ids(self, f: Flow) -> tuple[str | None, str | None]:
        """Owners of the flow's addresses."""
        return self.lpm.lookup(f.family, f.src), self.lpm.lookup(f.family, f.dst)

    def holds(self, position: int, f: Flow, ids=None) -> bool:
        """Whether the entry at `position` matches the flow."""
        src_id, dst_id = ids or self.ids(f)
        return match_holds(self.ordered[position].match, f, src_id, dst_id)

    def matching(self, f: Flow) -> list[int]:
        """Positions of every acl entry that matches the flow, in decision order (via the index; each
        flow once: the concrete searches come back to the same flows from many entries)."""
        hit = self._matching.get(f)
        if hit is None:
            inside = self.index.at_mask(f.family, f.src, f.dst, f.proto, f.sport, f.dport)
            held = inside & self.exact
            if inside & ~self.exact:
                ids = self.ids(f)
                for i in members(inside & ~self.exact):
                    if self.holds(i, f, ids):
                        held |= 1 << i
            hit = members(held)
            if len(self._matching) >= 1 << 16:
                self._matching.clear()
            self._matching[f] = hit
        return hit

    def first(self, positions: list[int], f: Flow) -> int | None:
        """The first of these entries that matches the flow."""
        ids = self.ids(f)
        return next((i for i in positions if self.holds(i, f, ids)), None)

    def confirm(self, f: Flow, claim, what: str):
        """Re-evaluate a witness in the reference interpreter; a disagreement is a bug."""
        decision = evaluate(self.program, f)
        if not claim(decision):
            raise VerificationBug(f"witness {f.text} does not {what} in the interpreter "
                                  f"(it says {decision.verdict} by {decision.rule or 'the default'})")
        return decision
