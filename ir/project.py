"""The L4 projection: what an engine below L7 (kernel, switch) enforces.

    allow/rate-limit with HTTP conditions  ->  allow of the same L3/L4 match
    deny with HTTP conditions              ->  (dropped)
    L3/L4 entries                          ->  unchanged

The projection is never stricter than the policy: every request the policy
allows travels on a flow the projection allows (docs/language.md proves it).
Request rate limits are not packet rates, so they are not projected.
"""

from __future__ import annotations

from dataclasses import replace

from .actions import Allow, Deny
from .memo import per_program
from .nodes import Entry, Program, Rule, Table

ENFORCED = "enforced"
PROJECTED = "l4-projection"
SIDECAR_ONLY = "sidecar-only"


def project_entry(entry: Entry) -> Entry | None:
    """The L4 projection of one acl entry (None when it is not applied below L7)."""
    if entry.layer != "L7":
        return entry
    if isinstance(entry.action, Deny):
        return None
    return replace(entry, match=entry.match.without_layer("L7"), action=Allow())


@per_program(keep=32)
def project_l4(program: Program) -> Program:
    """The program an L3/L4 engine enforces: projected acl, no routes (once per program)."""
    entries = tuple(p for p in map(project_entry, program.acl.entries) if p is not None)
    return replace(program, acl=Table(program.acl.name, entries), routes=Table(program.routes.name, ()))


@per_program
def _l7_kinds(program: Program) -> dict[str, frozenset]:
    kinds: dict[str, set] = {}
    for e in program.acl.entries:
        for name, _ in e.match.fields:
            if name == "src.peer":
                kinds.setdefault(e.rule, set()).add("client certificate")
            elif name.startswith("http"):
                kinds.setdefault(e.rule, set()).add("HTTP")
    return {k: frozenset(v) for k, v in kinds.items()}


def l7_conditions(program: Program, rule_id: str) -> str:
    """What a rule asks that only the sidecar sees: "HTTP", "client certificate", or both."""
    kinds = _l7_kinds(program).get(rule_id, frozenset({"HTTP"}))
    return " and ".join(k for k in ("HTTP", "client certificate") if k in kinds) or "HTTP"


def enforcement(rule: Rule) -> str:
    """How an L3/L4 engine treats a rule: enforced, as its L4 projection, or not at all."""
    if rule.layer != "L7":
        return ENFORCED
    return SIDECAR_ONLY if rule.action == "deny" else PROJECTED
