"""What the verifier says: solver outcomes and findings.

    Proved                       the property holds for every flow
    Counterexample(flow, rules)  a concrete flow, re-evaluated by the interpreter
    Unknown(reason)              the solver gave up: never counted as a pass

A `Finding` is one line of `anyplane verify` output: a kind, a severity, the
policy location, a message, an optional witness and related locations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anyplane.ir.flow import Flow
from anyplane.ir.source import Span

KINDS = ("dead", "redundant", "conflict", "rate-conflict", "assertion-failed", "route-unreachable",
         "unused-version", "unknown")
DEFAULT_FAIL_ON = frozenset({"dead", "rate-conflict", "assertion-failed", "unknown"})
DEFAULT_SEVERITY = {"dead": "error", "redundant": "warning", "conflict": "info", "rate-conflict": "error",
                    "assertion-failed": "error", "route-unreachable": "warning", "unused-version": "warning",
                    "unknown": "error"}


class VerificationBug(Exception):
    """A witness that the reference interpreter does not confirm: a bug in anyplane, never a finding."""


@dataclass(frozen=True)
class Proved:
    """The property holds for every flow."""


@dataclass(frozen=True)
class Counterexample:
    """A flow that shows the property failing, and the rules involved (their origins)."""

    flow: Flow
    rules: tuple[Span, ...] = ()


@dataclass(frozen=True)
class Unknown:
    """The solver could not decide (timeout or resource limit)."""

    reason: str


@dataclass(frozen=True)
class Finding:
    """One verification finding."""

    kind: str
    severity: str
    span: Span | None
    message: str
    witness: Flow | None = None
    related: tuple[Span, ...] = field(default=())

    def to_json(self) -> dict:
        """The JSON shape documented for `anyplane verify --format json`."""
        return {"kind": self.kind, "severity": self.severity,
                "location": str(self.span) if self.span else None, "message": self.message,
                "witness": self.witness.to_json() if self.witness else None,
                "related": [s.loc for s in self.related]}


def with_severities(findings: list[Finding], fail_on: frozenset[str]) -> list[Finding]:
    """Errors are exactly the kinds in `fail_on`; other kinds keep their default, at most a warning."""
    out = []
    for f in findings:
        if f.kind in fail_on:
            sev = "error"
        else:
            sev = DEFAULT_SEVERITY[f.kind] if DEFAULT_SEVERITY[f.kind] != "error" else "warning"
        out.append(Finding(f.kind, sev, f.span, f.message, f.witness, f.related))
    return out
