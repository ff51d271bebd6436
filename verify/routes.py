"""Route findings: routes no allowed request can take, versions that get no traffic.

    route-unreachable  no allowed request matches the route before a route of
                       higher precedence does
    unused-version     a version every route gives weight 0 (or leaves out),
                       while routes with a split catch every allowed request
"""

from __future__ import annotations

import z3

from anyplane.ir import fields as F
from anyplane.ir.match import InSet, Match

from .context import Analysis
from .result import Finding, Unknown, Unsat


def _service_of(e) -> str:
    return e.action.service


def check_routes(a: Analysis) -> list[Finding]:
    """Findings for the route table."""
    routes = sorted(a.program.routes.entries, key=lambda e: -e.priority)
    out: list[Finding] = []
    reported: set = set()
    for k, r in enumerate(routes):
        higher = [h for h in routes[:k] if _service_of(h) == _service_of(r)]
        positions = a.relevant([r.match])
        terms = [a.term(r.match), a.allowed_term(positions)] + [z3.Not(a.term(h.match)) for h in higher]
        out_ = a.solve(*terms)
        if isinstance(out_, Unsat) and r.origin not in reported:
            reported.add(r.origin)
            why = "routes of higher precedence catch every allowed request it matches" if higher else \
                "no allowed request matches it"
            out.append(Finding("route-unreachable", "warning", r.origin, f"this route is never taken: {why}",
                               related=tuple(sorted({h.origin for h in higher}))))
        elif isinstance(out_, Unknown):
            out.append(Finding("unknown", "error", r.origin, "the solver could not decide whether this route is taken"))
    return out + _unused_versions(a, routes)


def _unused_versions(a: Analysis, routes) -> list[Finding]:
    out = []
    services = sorted({_service_of(r) for r in routes})
    for svc in services:
        mine = [r for r in routes if _service_of(r) == svc]
        split = [r for r in mine if r.action.split]
        if not split:
            continue
        ids = a.program.service_identities(svc)
        # Requests that no route with a split catches go to every version: is there such a request?
        to_service = Match.of([(F.DST_ID, InSet(tuple(sorted(ids))))])
        positions = a.relevant([to_service])
        caught = z3.Or([a.term(r.match) for r in split])
        terms = [a.term(to_service), a.allowed_term(positions), a.enc.http, z3.Not(caught)]
        if not isinstance(a.solve(*terms), Unsat):
            continue
        for ident in ids:
            version = a.program.identity(ident).version
            if version is None:
                continue
            weight = sum(b.weight for r in split for b in r.action.split if b.version == version)
            if weight == 0:
                origin = a.program.identity(ident).origin
                out.append(Finding("unused-version", "warning", origin,
                                   f"version '{version}' of '{svc}' gets weight 0 in every route, and routes "
                                   f"catch every allowed request: it receives no traffic",
                                   related=tuple(sorted({r.origin for r in split}))))
    return out
