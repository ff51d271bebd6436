"""The composition proof: the engines on a path, together, decide exactly what the policy decides.

A flow or request is allowed iff every engine on its path allows it. Each
engine's decisions come as an IR program read back from what it emitted;
Z3 looks for a flow where the policy's verdict and the conjunction of the
engines' verdicts differ. None: proved. One: a compiler bug, reported with
the flow, every engine's verdict and deciding rule, re-checked in the
interpreter before it is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from anyplane.ir.interp import evaluate
from anyplane.ir.nodes import Program

from .context import Analysis
from .domain import Domain
from .encode import Encoder, mk_and
from .reach import prefer
from .result import VerificationBug


@dataclass
class Composition:
    """The outcome: proved, a counterexample, or unknown (a solver timeout)."""

    proved: bool
    seconds: float
    counterexample: dict | None = None
    unknown: str | None = None
    engines: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The outcome as JSON."""
        return {"proved": self.proved, "seconds": round(self.seconds, 3), "engines": self.engines,
                "counterexample": self.counterexample, "unknown": self.unknown}


def prove(policy: Program, engines: dict[str, Program], timeout_ms: int = 60_000) -> Composition:
    """Prove that AND(engine allows) == policy allows for every flow and request."""
    started = time.perf_counter()
    enc = Encoder(Domain.of([policy, *engines.values()]))
    a_policy = Analysis(policy, encoder=enc, timeout_ms=timeout_ms)
    analyses = {name: Analysis(p, encoder=enc, timeout_ms=timeout_ms) for name, p in engines.items()}
    policy_allows = a_policy.allowed_term(list(range(len(a_policy.ordered))))
    together = mk_and([a.allowed_term(list(range(len(a.ordered)))) for a in analyses.values()], enc.ctx)
    question = [policy_allows != together]
    result, model = a_policy.solve(*question)
    names = list(engines)
    if result == "unknown":
        return Composition(False, time.perf_counter() - started, unknown=a_policy.unknown().reason, engines=names)
    if result == "unsat":
        return Composition(True, time.perf_counter() - started, engines=names)
    flow = enc.flow(prefer(a_policy, question, model))
    want = evaluate(policy, flow)
    got = {name: evaluate(p, flow) for name, p in engines.items()}
    together_verdict = "allow" if all(d.verdict == "allow" for d in got.values()) else "deny"
    if together_verdict == want.verdict:
        raise VerificationBug(f"the solver's counterexample {flow.text} does not re-evaluate as claimed")
    cex = {"flow": flow.text, "policy": {"verdict": want.verdict, "rule": want.rule},
           "engines": {name: {"verdict": d.verdict, "rule": d.rule} for name, d in got.items()},
           "together": together_verdict}
    return Composition(False, time.perf_counter() - started, counterexample=cex, engines=names)
