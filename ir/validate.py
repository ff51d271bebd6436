"""Whole-program invariants. A violation is a compiler bug, not a user error.

`validate(program)` returns the list of problems; `check(program)` raises.
"""

from __future__ import annotations

from . import fields as F
from .actions import Allow, Deny, RateLimit, Route
from .match import AnyOf, InSet, Match, PrefixMatch
from .nodes import Program


def _identity_names(fm) -> set[str]:
    if isinstance(fm, InSet):
        return set(fm.values)
    return set()


def _check_match(m: Match, names: set[str], where: str, problems: list[str]) -> None:
    for field, fm in m.fields:
        if field in (F.SRC_ID, F.DST_ID):
            unknown = _identity_names(fm) - names
            if not isinstance(fm, InSet) or unknown:
                problems.append(f"{where}: {field} must be an InSet of known identities ({sorted(unknown)})")
        if field in (F.SRC_IP, F.DST_IP):
            options = fm.options if isinstance(fm, AnyOf) else (fm,)
            if not all(isinstance(o, PrefixMatch) for o in options):
                problems.append(f"{where}: {field} must match prefixes")


def validate(program: Program) -> list[str]:
    """Every broken invariant, as text."""
    problems: list[str] = []
    names = [i.name for i in program.identities]
    ids = [i.id for i in program.identities]
    if len(set(names)) != len(names):
        problems.append("identity names are not unique")
    if len(set(ids)) != len(ids) or 0 in ids:
        problems.append("identity ids must be unique and non-zero")
    known = set(names)
    prefixes = [row.prefix for row in program.endpoints]
    if len(set(prefixes)) != len(prefixes):
        problems.append("an endpoint prefix is owned twice")
    for row in program.endpoints:
        if row.identity not in known:
            problems.append(f"endpoint {row.prefix} owned by unknown identity {row.identity}")
    rule_ids = {r.id for r in program.rules}
    for e in program.acl.entries:
        where = f"acl entry of {e.rule}"
        if e.rule not in rule_ids:
            problems.append(f"{where}: unknown rule")
        if not isinstance(e.action, (Allow, Deny, RateLimit)):
            problems.append(f"{where}: acl action must be allow, deny or rate-limit")
        _check_match(e.match, known, where, problems)
    priorities = [e.priority for e in program.routes.entries]
    if len(set(priorities)) != len(priorities):
        problems.append("route priorities must be unique")
    for e in program.routes.entries:
        where = f"route entry of {e.rule}"
        if not isinstance(e.action, Route):
            problems.append(f"{where}: action must be a route")
            continue
        for b in e.action.split:
            if b.identity not in known:
                problems.append(f"{where}: unknown backend {b.identity}")
        _check_match(e.match, known, where, problems)
    for a in program.asserts:
        for m in a.pattern:
            _check_match(m, known, f"assert at {a.origin}", problems)
    return problems


def check(program: Program) -> Program:
    """Raise AssertionError listing the broken invariants, else return the program."""
    problems = validate(program)
    if problems:
        raise AssertionError("invalid IR:\n  " + "\n  ".join(problems))
    return program
