"""What the verifier says: solver outcomes and findings.

What the solver answers a question (a conjunction of terms over one flow), `Analysis.solve`:

    Sat(model)                   some flow satisfies it: the model of one (made a concrete flow and
                                 re-evaluated by the interpreter before anyone sees it)
    Unsat()                      no flow satisfies it
    Unknown(reason)              the solver gave up: never counted as a pass

A `Finding` is one line of `anyplane verify` output: a kind, a severity, the
policy location, a message, an optional witness and related locations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from anyplane.ir.findings import DEFAULT_FAIL_ON, DEFAULT_SEVERITY, KINDS
from anyplane.ir.flow import Flow
from anyplane.ir.source import Span

__all__ = ["KINDS", "DEFAULT_FAIL_ON", "DEFAULT_SEVERITY", "Finding", "Sat", "Unsat", "UNSAT", "Unknown", "Outcome",
           "VerificationBug", "with_severities"]


class VerificationBug(Exception):
    """A witness that the reference interpreter does not confirm: a bug in anyplane, never a finding."""


@dataclass(frozen=True)
class Sat:
    """Some flow satisfies the question: the solver's model of one (a z3 model)."""

    model: object


@dataclass(frozen=True)
class Unsat:
    """No flow satisfies the question."""


@dataclass(frozen=True)
class Unknown:
    """The solver could not decide (timeout or resource limit)."""

    reason: str


Outcome = Sat | Unsat | Unknown
UNSAT = Unsat()


@dataclass(frozen=True)
class Finding:
    """One verification finding."""

    kind: str
    severity: str
    span: Span | None
    message: str
    witness: Flow | None = None
    related: tuple[Span, ...] = field(default=())
    suppressed: bool = False  # the rule says `# anyplane: allow KIND`: reported, never failing
    owners: tuple[str | None, str | None] = (None, None)  # who owns the witness's source and destination

    def to_json(self) -> dict:
        """The JSON shape documented for `anyplane verify --format json`."""
        witness = None
        if self.witness is not None:
            witness = dict(self.witness.to_json(), src_owner=self.owners[0], dst_owner=self.owners[1])
        return {"kind": self.kind, "severity": self.severity,
                "location": str(self.span) if self.span else None, "message": self.message,
                "witness": witness,
                "related": [s.loc for s in self.related], "suppressed": self.suppressed}


def with_severities(findings: list[Finding], fail_on: frozenset[str]) -> list[Finding]:
    """Errors are exactly the kinds in `fail_on`; other kinds keep their default, at most a warning."""
    out = []
    for f in findings:
        if f.kind in fail_on:
            sev = "error"
        else:
            sev = DEFAULT_SEVERITY[f.kind] if DEFAULT_SEVERITY[f.kind] != "error" else "warning"
        out.append(replace(f, severity=sev))
    return out
