"""Placement: which engine on a flow's path enforces each rule, from the engines' capability data
and their compile reports.

With `--prefer early` (the only preference so far) a rule goes to the first engine on the path that
enforces it exactly; an allow with HTTP conditions is admitted as its L4 projection by the engines
before the sidecar and refined there. A rule that no engine on the path can enforce is an error at
its source location.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyplane.backends.base import ENFORCED, NOT_ENFORCED, PROJECTED, Output
from anyplane.ir.nodes import Program

PLACES = ("fabric", "kernel", "sidecar")
#: Test hook: leave every entry of this rule (FILE:LINE) out of what the engines emit, so that
#: the composition proof has a broken placement to catch.
DROP_FOR_TESTS: str | None = None


@dataclass(frozen=True)
class Placement:
    """One rule: where it is enforced, and what every engine on the path does with it."""

    location: str
    text: str
    placed: str | None
    statuses: dict[str, str]
    why: str

    def to_json(self) -> dict:
        """One row of placement.json."""
        return {"rule": self.location, "text": self.text, "placed": self.placed, "engines": self.statuses,
                "why": self.why}


def parse_path(text: str) -> list[str]:
    """`fabric,kernel,sidecar` (any order or subset) as a list; ValueError on anything else."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PLACES]
    if bad or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"--path takes a comma-separated subset of {', '.join(PLACES)}, each once")
    return parts


def place(program: Program, path: list[str], reports: dict[str, Output]) -> list[Placement]:
    """A placement row per rule; `reports` maps each place on the path to its engine's output."""
    by_place = {p: {r.location: r for r in reports[p].report} for p in path}
    rows = []
    for rule in program.rules:
        loc = rule.origin.loc
        statuses = {p: by_place[p][loc].status for p in path}
        exact = [p for p in path if statuses[p] == ENFORCED]
        projected = [p for p in path if statuses[p] == PROJECTED]
        if exact:
            placed = exact[0]
            why = "first engine on the path that enforces it as written"
            if projected and path.index(projected[0]) < path.index(placed):
                why += f"; {', '.join(projected)} admit its L4 projection before"
        elif projected:
            placed, why = None, "only its L4 projection is enforced on this path: add the sidecar"
        else:
            placed, why = None, "no engine on this path can enforce it"
        rows.append(Placement(loc, rule.text, placed, statuses, why))
    return rows


def text(rows: list[Placement], path: list[str]) -> str:
    """The placement report as text."""
    width = max((len(r.location) for r in rows), default=10)
    lines = [f"# placement on the path {' -> '.join(path)}", "",
             f"{'rule':<{width}}  {'placed':<8} " + " ".join(f"{p:<14}" for p in path)]
    for r in rows:
        lines.append(f"{r.location:<{width}}  {r.placed or '-':<8} "
                     + " ".join(f"{r.statuses[p]:<14}" for p in path) + f"  {r.why}")
    return "\n".join(lines) + "\n"


__all__ = ["place", "parse_path", "text", "Placement", "PLACES", "NOT_ENFORCED"]


def prove_path(program: Program, path: list[str], deployment=None, range_match: bool = True):
    """The composition proof for a path: each engine's emitted decisions, read back as IR, together
    against the policy (translation validation of `compile -t all`)."""
    from anyplane.backends.ebpf import engine as kernel
    from anyplane.backends.envoy import engine as sidecar
    from anyplane.backends.p4 import engine as fabric
    from anyplane.backends.p4.pipeline import Features
    from anyplane.verify.compose import prove

    drop = DROP_FOR_TESTS
    lifted = {}
    for where in path:
        if where == "fabric":
            lifted[where] = fabric.lifted(program, Features(range_match=range_match, acl_size=1 << 30), drop)
        elif where == "kernel":
            lifted[where] = kernel.lifted(program, drop)
        else:
            lifted[where] = sidecar.lifted(program, deployment, drop)
    return prove(program, lifted)
