"""Ownership findings: a name in a rule that does not cover addresses declared inside its prefixes.

    external internet  { address 0.0.0.0/0 }
    external partner-a { address 198.51.100.0/28 }
    allow internet -> lb tcp 443
    ->  ownership (at the rule naming internet that takes precedence): 'internet' does not include partner-a
        (198.51.100.0/28), declared inside its addresses; write 'internet.*' for every address inside it

An address belongs to its most specific declaration, so naming a wide network
leaves out everything declared inside it. That is the point for services carved
out of an external network (a workload is not "the internet"); it is a surprise
for another external (a partner inside the internet) or for anything declared
inside a service's addresses. Those are reported, as information.
"""

from __future__ import annotations

from anyplane.ir import fields as F
from anyplane.ir.match import InSet, options
from anyplane.ir.nodes import Program
from anyplane.ir.owners import ownership, surprising

from .result import Finding

MAX_NAMED = 4


def _nested(program: Program) -> dict[str, list[tuple[str, object]]]:
    """Identity -> the (identity, endpoint row) declared inside its prefixes that would surprise."""
    o = ownership(program)
    kinds = {i.name: i for i in program.identities}
    rows = {r.prefix: r for r in program.endpoints}
    out: dict[str, list[tuple[str, object]]] = {}
    for outer, owner_name in o.owner_of.items():
        stack = list(o.children[outer])
        while stack:
            p = stack.pop()
            inner = o.owner_of[p]
            if surprising(kinds[owner_name], kinds[inner]):
                out.setdefault(owner_name, []).append((inner, rows[p]))
            stack.extend(o.children[p])
    return out


def check_shared_identities(program: Program) -> list[Finding]:
    """Under mtls, a warning at each workload whose certificate another workload holds too (one namespace,
    one service account): a rule that names one as a source admits the others."""
    holders: dict[str, list] = {}
    for ident in program.identities:
        if ident.principal is not None:
            holders.setdefault(ident.principal, []).append(ident)
    out = []
    for principal, same in holders.items():
        for ident in same[1:]:
            out.append(Finding("shared-identity", "warning", ident.origin, (
                f"workloads '{same[0].name}' and '{ident.name}' hold one certificate ({principal}): a rule that "
                f"names one as a source admits the other; give each its own 'account'"),
                related=(same[0].origin,)))
    return out


def check_ownership(program: Program) -> list[Finding]:
    """One finding per identity named in rules whose prefixes hold surprising nested declarations, at the
    rule naming it that takes precedence (line order carries no meaning, so it does not choose)."""
    nested = _nested(program)
    if not nested:
        return []
    users: dict[str, list] = {}  # identity -> rules naming it without the nested ones
    lost_by: dict[str, dict[str, object]] = {}
    origin = {r.id: r for r in program.rules}
    for e in program.acl.entries:
        for field in (F.SRC_ID, F.DST_ID):
            fm = e.match.get(field)
            if fm is None:
                continue
            named = {v for o in options(fm) if isinstance(o, InSet) for v in o.values}
            for name in named:
                lost: dict[str, object] = {}
                for n, row in nested.get(name, ()):
                    if n not in named and (n not in lost or row.prefix < lost[n].prefix):
                        lost[n] = row
                if lost:
                    rules = users.setdefault(name, [])
                    if origin[e.rule] not in rules:
                        rules.append(origin[e.rule])
                    mine = lost_by.setdefault(name, {})
                    for n, row in lost.items():
                        if n not in mine or row.prefix < mine[n].prefix:
                            mine[n] = row
    out = []
    for name, rules in sorted(users.items()):
        # Line order carries no meaning, so it does not choose the rule.
        rules.sort(key=lambda r: (-r.priority, r.action != "deny", r.text, r.origin))
        lost = sorted(lost_by[name].items(), key=lambda t: t[1].prefix)
        shown = ", ".join(f"{n} ({row.prefix})" for n, row in lost[:MAX_NAMED])
        more = f" and {len(lost) - MAX_NAMED} more" if len(lost) > MAX_NAMED else ""
        where = f"named here and by {len(rules) - 1} more rule(s)" if len(rules) > 1 else "named here"
        them = "them" if len(lost) > 1 else lost[0][0]
        out.append(Finding(
            "ownership", "info", rules[0].origin,
            f"'{name}' ({where}) does not include {shown}{more}: each is declared inside its addresses, and an "
            f"address belongs to its most specific declaration. Write '{name}.*' for every address inside it, "
            f"or name {them} too",
            related=tuple(row.origin for _, row in lost[:MAX_NAMED])))
    return out
