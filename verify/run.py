"""`anyplane verify`: every finding of a program, in a stable order.

    findings = asserts + anomalies (dead, redundant, conflicts) + routes + ownership
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from anyplane.ir.nodes import Program
from anyplane.ir.owners import ownership

from .checks import AnomalyChecker
from .context import Analysis
from .ownership import check_ownership, check_shared_identities
from .reach import check_asserts
from .result import DEFAULT_FAIL_ON, Finding, with_severities
from .routes import check_routes


@dataclass(frozen=True)
class Report:
    """All findings and whether the policy passes."""

    findings: tuple[Finding, ...]
    solver_calls: int

    @property
    def ok(self) -> bool:
        """No error-level finding that the policy does not accept on purpose."""
        return not any(f.severity == "error" and not f.suppressed for f in self.findings)

    def to_json(self) -> dict:
        """`{"ok": bool, "findings": [...]}`."""
        return {"ok": self.ok, "findings": [f.to_json() for f in self.findings]}


def _suppressed(findings: list[Finding], program: Program) -> list[Finding]:
    """Mark the findings on a rule whose author accepts their kind (`# anyplane: allow KIND`), and name
    the owners of each witness's addresses."""
    accepts = {r.origin: r.accepts for r in program.rules if r.accepts}
    o = ownership(program)
    out = []
    for f in findings:
        if f.kind in accepts.get(f.span, ()):
            f = replace(f, suppressed=True)
        if f.witness is not None:
            w = f.witness
            f = replace(f, owners=(o.owner(w.family, w.src), o.owner(w.family, w.dst)))
        out.append(f)
    return out


def verify(program: Program, fail_on: frozenset[str] = DEFAULT_FAIL_ON, progress=None,
           timeout_ms: int | None = None, rules: bool = True) -> Report:
    """Check asserts, rules and routes of a program. `rules=False` leaves out the rules' anomalies
    (dead, redundant, conflicting): for rules a translation wrote, whose own findings are asked
    otherwise."""
    a = Analysis(program, **({"timeout_ms": timeout_ms} if timeout_ms else {}))
    checker = AnomalyChecker(a, progress)
    findings = check_asserts(a) + (checker.run() if rules else []) + check_routes(a) + check_ownership(program) + \
        check_shared_identities(program)
    findings = _suppressed(with_severities(findings, fail_on), program)
    findings.sort(key=lambda f: (f.span or ("",), f.kind))
    return Report(tuple(findings), checker.solver_calls)
