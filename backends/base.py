"""What every backend shares: artifacts, the per-rule compile report, capability sets.

A backend never drops part of a policy silently: every rule gets a line in
its compile report saying whether the engine enforces it as written, as its
L4 projection, or not at all (and why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from anyplane.ir.nodes import Program

ENFORCED = "enforced"
PROJECTED = "l4-projection"
NOT_ENFORCED = "not-enforced"


@dataclass(frozen=True)
class Artifact:
    """One output file: a relative path and its content."""

    path: str
    data: str | bytes


@dataclass(frozen=True)
class RuleReport:
    """How one engine treats one policy rule."""

    rule: str
    location: str
    text: str
    status: str
    detail: str = ""
    entries: int = 0

    def to_json(self) -> dict:
        """One row of `report.json`."""
        return {"rule": self.location, "text": self.text, "status": self.status, "detail": self.detail,
                "entries": self.entries}


@dataclass
class Output:
    """What a backend emits for a program."""

    artifacts: list[Artifact] = field(default_factory=list)
    report: list[RuleReport] = field(default_factory=list)
    #: What the artifacts decide, read back as IR (for the composition proof); None when the engine
    #: offers no read-back of this output.
    read_back: Callable[[], Program] | None = None

    def report_text(self, engine: str) -> str:
        """The compile report as text."""
        lines = [f"# {engine}: how each rule is enforced", ""]
        width = max((len(r.location) for r in self.report), default=10)
        for r in self.report:
            detail = f"  ({r.detail})" if r.detail else ""
            lines.append(f"{r.location:<{width}}  {r.status:<14} {r.text}{detail}")
        counts = {}
        for r in self.report:
            counts[r.status] = counts.get(r.status, 0) + 1
        lines += ["", "summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Capability:
    """What an engine can match and do, and how much it holds: data the compiler places rules by."""

    engine: str
    place: str  # where it sits on a path: fabric, kernel or sidecar
    fields: tuple[str, ...]
    match_kinds: tuple[str, ...]
    families: tuple[int, ...]
    actions: tuple[str, ...]
    capacity: int | None
    protocols: str = "any"  # "any", or "tcp" for an engine that only sees TCP streams

    def to_json(self) -> dict:
        """The capability as a JSON object (placement reports carry it)."""
        return {"engine": self.engine, "place": self.place, "fields": list(self.fields),
                "match_kinds": list(self.match_kinds), "families": list(self.families),
                "actions": list(self.actions), "capacity": self.capacity, "protocols": self.protocols}


L4_FIELDS = ("src.ip", "dst.ip", "src.id", "dst.id", "proto", "sport", "dport", "icmp.type", "icmp.code")


def rule_rows(program: Program, classify) -> list[RuleReport]:
    """One report row per rule; `classify(rule) -> (status, detail, entries)`."""
    rows = []
    for r in program.rules:
        status, detail, entries = classify(r)
        rows.append(RuleReport(r.id, r.origin.loc, r.text, status, detail, entries))
    return rows
