"""expand_rules: allow/deny rules -> prioritised acl entries.

    allow reviews -> ratings http GET /ratings/* rate 100/s burst 20   (rule r3)
    ->  [0] r3 rate-limit 100/1s burst 20 bucket r3 :: src.id in {...} dst.id in {...} ...

Each rule gives one entry per alternative of its pattern; all entries of a
rule share its priority, origin and (for rate limits) one token bucket.
"""

from __future__ import annotations

from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny, RateLimit
from anyplane.ir.flow import TCP
from anyplane.ir.match import Absent, Exact, InSet, Match
from anyplane.ir.nodes import TOP_PRIORITY, Entry, Rule
from anyplane.ir.source import Span

from .. import ast
from ..fmt import format_rule
from ..symbols import Symbols
from ..values import parse_rate_unit
from .matches import lower_pattern, port_match, sidecar_ports


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


MTLS_RULE = "mtls"


def plaintext_refused(origin: Span, symbols: Symbols, text: str) -> tuple[Rule, tuple[Entry, ...]]:
    """`mtls strict`: a workload's sidecar refuses a TCP connection without a client certificate of the
    trust domain on every port it listens on, before any rule is consulted: a deny above every priority."""
    entries = []
    strict = sorted(n for n, mode in symbols.modes.items() if mode == "strict")
    for ports, names in sorted(sidecar_ports(strict, symbols).items()):
        match = Match.of([(F.SRC_PEER, Absent()), (F.DST_ID, InSet(tuple(names))), (F.PROTO, Exact(TCP)),
                          (F.DPORT, port_match([(n, n) for n in ports]))])
        entries.append(Entry(TOP_PRIORITY, match, Deny(), origin, MTLS_RULE))
    return Rule(MTLS_RULE, origin, "deny", "L7", TOP_PRIORITY, text), tuple(entries)
