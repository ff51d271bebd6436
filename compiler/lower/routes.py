"""order_routes: routes -> route entries ranked by Gateway API HTTPRoute precedence.

    route reviews http /reviews/* header "x-canary" = "true" { to v3 }
    route reviews http /reviews/* { to v1 80%, v2 20% }
    ->  [2] route reviews -> v3 100% :: dst.id in {reviews, ...} http present http.path prefix "/reviews/" ...
        [1] route reviews -> v1 80%, v2 20% :: ...

Precedence, most specific first (Gateway API, HTTPRoute "rules" ordering):
an exact path beats a prefix; a longer prefix beats a shorter one; a method
match beats none; more header (and host) matches beat fewer; the remaining
tie goes to the route written first. Priorities are unique, highest first.
Also lower_limits: limits blocks -> circuit breakers.
"""

from __future__ import annotations

from anyplane.ir import fields as F
from anyplane.ir.actions import Backend, CircuitBreaker, Outlier, Retry, Route
from anyplane.ir.match import InSet, Match, StrExact, StrPrefix
from anyplane.ir.nodes import Entry, Limits

from .. import ast
from ..symbols import Symbols
from ..values import parse_duration_ms, path_match
from .matches import l7_pairs


def route_action(r: ast.Route) -> Route:
    """The route action: weighted split, timeout, retry."""
    split, timeout, retry = (), None, None
    for item in r.items:
        if isinstance(item, ast.RouteTo):
            split = tuple(Backend(b.version.text, f"{r.service.text}.{b.version.text}",
                                 b.weight.value if b.weight is not None else 100) for b in item.backends)
        elif isinstance(item, ast.RouteTimeout):
            timeout = parse_duration_ms(item.duration.text)
        else:
            per_try = parse_duration_ms(item.per_try.text) if item.per_try is not None else None
            retry = Retry(item.attempts.value, tuple(c.text for c in item.conditions), per_try)
    return Route(r.service.text, split, timeout, retry)


def precedence(r: ast.Route, path: ast.Word | None) -> tuple:
    """Sort key: lower sorts first and wins."""
    kind, body = path_match(path.text) if path is not None else ("prefix", "/")
    has_method = bool(r.l7.methods) and not r.l7.any_method
    matches = len(r.l7.headers) + (r.l7.host is not None)
    return (kind != "exact", -len(body) if kind == "prefix" else 0, not has_method, -matches, r.span)


def order_routes(routes: list[ast.Route], symbols: Symbols) -> tuple[Entry, ...]:
    """Route entries, one per route path, with unique priorities in precedence order."""
    ranked = []
    for n, r in enumerate(routes, start=1):
        ids = symbols.decls[r.service.text].identities
        action = route_action(r)
        base = [(k, v) for k, v in l7_pairs(r.l7) if k != F.HTTP_PATH] + [(F.DST_ID, InSet(tuple(sorted(ids))))]
        for path in r.l7.paths or (None,):
            pairs = list(base)
            if path is not None:
                kind, body = path_match(path.text)
                pairs.append((F.HTTP_PATH, StrExact(body) if kind == "exact" else StrPrefix(body)))
            ranked.append((precedence(r, path), Match.of(pairs), action, r.span, f"route{n}"))
    ranked.sort(key=lambda t: t[0])
    total = len(ranked)
    return tuple(Entry(total - i, m, a, span, rid) for i, (_, m, a, span, rid) in enumerate(ranked))


def lower_limits(blocks: list[ast.Limits]) -> tuple[Limits, ...]:
    """Circuit breakers per service, sorted by service name."""
    out = []
    for b in blocks:
        values = {item.key.text: item.value.value for item in b.items if isinstance(item, ast.LimitValue)}
        eject = next((i for i in b.items if isinstance(i, ast.LimitEject)), None)
        outlier = (Outlier(eject.consecutive.value, eject.condition.text, parse_duration_ms(eject.duration.text))
                   if eject else None)
        breaker = CircuitBreaker(values.get("max-connections"), values.get("max-pending"),
                                 values.get("max-requests"), values.get("max-retries"), outlier)
        out.append(Limits(b.service.text, breaker, b.span))
    return tuple(sorted(out, key=lambda lim: lim.service))
