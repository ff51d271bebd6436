"""Patterns and edits for `anyplane query`: lower a query pattern, remove or add rules in memory.

    query 'office -> productpage http GET /'      ->  tuple[ir.Match, ...]
    --without FILE:LINE                           ->  the program without that rule's entries
    --with 'deny office -> productpage'           ->  the program with one more rule

Nothing is written to disk: the edited program exists only for the question.
"""

from __future__ import annotations

from dataclasses import replace

from anyplane.ir.match import Match
from anyplane.ir.nodes import Program, Table
from anyplane.ir.source import DiagnosticError

from .checks import Checker
from .lower.matches import lower_pattern
from .lower.rules import expand_rule
from .parser import parse_pattern, parse_rule
from .pipeline import Compiled, UsageError


def _check(compiled: Compiled, run, path: str) -> None:
    checker = Checker(compiled.symbols)
    run(checker)
    if checker.diags:
        raise DiagnosticError(checker.diags)


def query_pattern(compiled: Compiled, text: str, path: str = "<query>") -> tuple[Match, ...]:
    """Parse, check and lower a pattern in the policy's namespace."""
    pattern = parse_pattern(text, path)
    _check(compiled, lambda c: c.pattern(pattern), path)
    return lower_pattern(pattern, compiled.symbols)


def edit(compiled: Compiled, without: list[str] = (), with_rules: list[str] = ()) -> Program:
    """The program with the rules at `without` (FILE:LINE) removed and `with_rules` added."""
    program = compiled.program
    locs = {r.origin.loc for r in program.rules}
    missing = [w for w in without if w not in locs]
    if missing:  # a wrong command line, not a wrong policy
        raise UsageError("; ".join(f"--without {m}: no rule starts there (give FILE:LINE of a rule)" for m in missing))
    drop = {r.id for r in program.rules if r.origin.loc in set(without)}
    rules = [r for r in program.rules if r.id not in drop]
    entries = [e for e in program.acl.entries if e.rule not in drop]
    for n, text in enumerate(with_rules, start=1):
        path = f"<with:{n}>"
        rule = parse_rule(text, path)
        _check(compiled, lambda c: c.rule(rule), path)
        summary, new_entries = expand_rule(rule, f"w{n}", compiled.symbols)
        rules.append(summary)
        entries.extend(new_entries)
    return replace(program, rules=tuple(rules), acl=Table(program.acl.name, tuple(entries)))
