"""expand_rules: allow/deny rules -> prioritised acl entries.

    allow reviews -> ratings http GET /ratings/* rate 100/s burst 20   (rule r3)
    ->  [0] r3 rate-limit 100/1s burst 20 bucket r3 :: src.id in {...} dst.id in {...} ...

Each rule gives one entry per alternative of its pattern; all entries of a
rule share its priority, origin and (for rate limits) one token bucket.
"""

from __future__ import annotations

from anyplane.ir.actions import Allow, Deny, RateLimit
from anyplane.ir.match import Match
from anyplane.ir.nodes import Entry, Rule

from .. import ast
from ..fmt import format_rule
from ..symbols import Symbols
from ..values import parse_rate_unit
from .matches import lower_pattern


def rule_action(r: ast.Rule, rule_id: str):
    """The acl action of a rule."""
    if r.verdict.text == "deny":
        return Deny()
    if r.rate is None:
        return Allow()
    rate = r.rate
    burst = rate.burst.value if rate.burst is not None else rate.count
    return RateLimit(rate.count, parse_rate_unit(rate.unit), burst, rule_id)


def expand_rule(r: ast.Rule, rule_id: str, symbols: Symbols, accepts: tuple[str, ...] = ()
                ) -> tuple[Rule, tuple[Entry, ...]]:
    """One rule -> its summary and its acl entries."""
    action = rule_action(r, rule_id)
    matches = lower_pattern(r.pattern, symbols)
    entries = tuple(Entry(r.priority, m, action, r.span, rule_id) for m in matches)
    layer = max((m.layer for m in matches), default=Match().layer)
    return Rule(rule_id, r.span, r.verdict.text, layer, r.priority, format_rule(r), accepts), entries


def expand_rules(rules: list[ast.Rule], symbols: Symbols, accepts: dict | None = None
                 ) -> tuple[tuple[Rule, ...], tuple[Entry, ...]]:
    """Every rule, numbered r1.. in policy order, and the acl entries in that order; `accepts` maps a
    rule's span to the finding kinds its author accepts (`# anyplane: allow ...`)."""
    summaries, entries = [], []
    accepts = accepts or {}
    for n, r in enumerate(rules, start=1):
        summary, es = expand_rule(r, f"r{n}", symbols, accepts.get(r.span, ()))
        summaries.append(summary)
        entries.extend(es)
    return tuple(summaries), tuple(entries)
