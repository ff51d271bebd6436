"""resolve_endpoints: declarations -> identities and the ownership (LPM) table.

    service reviews { address 10.0.2.0/24  version v1 address 10.0.2.0/26 }
    ->  identities: reviews, reviews.v1
        endpoints:  10.0.2.0/24 -> reviews,  10.0.2.0/26 -> reviews.v1

Identity ids are assigned in name order starting at 1 (0 means unowned).
"""

from __future__ import annotations

from anyplane.ir.nodes import EndpointPrefix, Identity, Port, Selector

from .. import ast
from ..symbols import Symbols


def resolve_endpoints(symbols: Symbols) -> tuple[tuple[Identity, ...], tuple[EndpointPrefix, ...]]:
    """Identities (sorted by name, ids from 1) and ownership rows (sorted by prefix)."""
    idents: list[tuple] = []
    rows: list[EndpointPrefix] = []
    for decl in symbols.decls.values():
        ports: tuple[Port, ...] = ()
        if isinstance(decl.node, ast.Service):
            ports = tuple(sorted(Port(n, p.protocol.text) for p in decl.node.ports for n in p.numbers))
        selector = None
        if decl.workload:
            namespace, labels, absent = decl.selector
            selector = Selector(namespace, tuple(sorted(labels.items())), decl.bound, absent)
        idents.append((decl.name, decl.kind, decl.name, None, ports, decl.node.name.span, selector,
                       symbols.principals.get(decl.name), symbols.modes.get(decl.name)))
        rows += [EndpointPrefix(p, decl.name, w.span) for p, w in decl.prefixes]
        for v, clause in decl.versions.items():
            name = f"{decl.name}.{v}"
            idents.append((name, decl.kind, decl.name, v, ports, clause.name.span, None))
            rows += [EndpointPrefix(p, name, w.span) for p, w in decl.version_prefixes[v]]
    idents.sort(key=lambda t: t[0])
    identities = tuple(Identity(i + 1, *t) for i, t in enumerate(idents))
    rows.sort(key=lambda r: (r.prefix.family, r.prefix.value, r.prefix.length))
    return identities, tuple(rows)
