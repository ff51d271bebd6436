"""`anyplane verify`: every finding of a program, in a stable order.

    findings = asserts + anomalies (dead, redundant, conflicts) + routes
"""

from __future__ import annotations

from dataclasses import dataclass

from anyplane.ir.nodes import Program

from .checks import AnomalyChecker
from .context import Analysis
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
        """No error-level finding."""
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict:
        """`{"ok": bool, "findings": [...]}`."""
        return {"ok": self.ok, "findings": [f.to_json() for f in self.findings]}


def verify(program: Program, fail_on: frozenset[str] = DEFAULT_FAIL_ON, progress=None,
           timeout_ms: int | None = None) -> Report:
    """Check asserts, rules and routes of a program."""
    a = Analysis(program, **({"timeout_ms": timeout_ms} if timeout_ms else {}))
    checker = AnomalyChecker(a, progress)
    findings = check_asserts(a) + checker.run() + check_routes(a)
    findings = with_severities(findings, fail_on)
    findings.sort(key=lambda f: (f.span or ("",), f.kind))
    return Report(tuple(findings), checker.solver_calls)
