"""endpoint_set: one side of a pattern (`A, B except C`) -> the regions it denotes.

    internet except 10.0.0.0/8    ->  [(any id, what internet owns outside 10.0.0.0/8)]
    any except payments           ->  [(any id, every address payments does not own)]
    partners, 192.0.2.0/24        ->  [(ids {partner-a, partner-b}, any address), (any id, 192.0.2.0/24)]

A region is `(ids, prefixes)`: flows whose address is owned by one of `ids` and
lies in one of `prefixes` (None: no condition on that part). Names match by
owner (the longest declared prefix), raw addresses and `name.*` by address.
`except` removes names by owner and addresses by address: an excluded name
stands for exactly the addresses it owns, so `any except payments` still
admits the addresses of a service declared inside payments' network.
"""

from __future__ import annotations

from anyplane.ir.addr import EVERYTHING, Prefix, subtract
from anyplane.ir.owners import nesting

from ..symbols import Resolved, Symbols, resolve

Region = tuple[tuple[str, ...] | None, tuple[Prefix, ...] | None]


def _declared(symbols: Symbols) -> dict[str, tuple[Prefix, ...]]:
    """Identity -> the prefixes it declares (memoised on the symbol table)."""
    cached = symbols.cache.get("declared")
    if cached is None:
        cached = {}
        for d in symbols.decls.values():
            cached[d.name] = tuple(p for p, _ in d.prefixes)
            for v, ps in d.version_prefixes.items():
                cached[f"{d.name}.{v}"] = tuple(p for p, _ in ps)
        symbols.cache["declared"] = cached
    return cached


def _tree(symbols: Symbols) -> tuple[dict[Prefix, str], dict[Prefix, list[Prefix]]]:
    """Every declared prefix's owner, and the prefixes nested directly inside each (memoised)."""
    cached = symbols.cache.get("tree")
    if cached is None:
        owner = {p: who for who, ps in _declared(symbols).items() for p in ps}
        prefixes = sorted(owner)
        children: dict[Prefix, list[Prefix]] = {p: [] for p in prefixes}
        for p, k in zip(prefixes, nesting(prefixes)):
            if k is not None:
                children[prefixes[k]].append(p)
        cached = symbols.cache["tree"] = (owner, children)
    return cached


def owned(identities, symbols: Symbols) -> list[Prefix]:
    """The addresses the identities own: each of their prefixes minus the prefixes of others nested in
    it (what those hold again for one of the identities comes back with that prefix)."""
    key = ("owned", frozenset(identities))
    hit = symbols.cache.get(key)
    if hit is not None:
        return hit
    owner, children = _tree(symbols)
    declared = _declared(symbols)
    mine = set(identities)
    out: list[Prefix] = []
    for who in mine:
        for p in declared.get(who, ()):
            cut, stack = [], list(children[p])
            while stack:  # the nearest nested prefixes of others; ours nested deeper are walked through
                q = stack.pop()
                if owner[q] in mine:
                    stack.extend(children[q])
                else:
                    cut.append(q)
            out += subtract([p], cut) if cut else [p]
    symbols.cache[key] = out
    return out


def _parts(resolved: list[Resolved]) -> tuple[bool, list[str], list[Prefix]]:
    """Whether `any` is among them, the identities and the raw prefixes."""
    every = any(r.kind == "any" for r in resolved)
    ids = list(dict.fromkeys(i for r in resolved for i in r.identities))
    prefixes = [p for r in resolved for p in r.prefixes + ((r.prefix,) if r.prefix is not None else ())]
    return every, ids, prefixes


def regions(refs, excluded, symbols: Symbols) -> list[Region]:
    """The regions a side denotes; [] when `except` leaves nothing."""
    every, ids, prefixes = _parts([resolve(r, symbols) for r in refs])
    x_every, x_ids, x_prefixes = _parts([resolve(r, symbols) for r in excluded])
    if x_every:
        return []
    cut = x_prefixes + (owned(x_ids, symbols) if x_ids else [])
    if every:
        return [(None, tuple(subtract(EVERYTHING, cut)) if cut else None)]
    out: list[Region] = []
    keep = [i for i in ids if i not in set(x_ids)]
    if keep:
        declared = _declared(symbols)
        mine = [p for i in keep for p in declared.get(i, ())]
        if any(p.covers(q) or q.covers(p) for p in mine for q in x_prefixes):
            # Owned by one of `keep` and outside the excluded prefixes: said with addresses alone (what
            # the names own, minus the prefixes), which every engine matches.
            left = subtract(owned(keep, symbols), x_prefixes)
            if left:
                out.append((None, tuple(left)))
        else:
            out.append((tuple(sorted(keep)), None))
    if prefixes:
        left = subtract(prefixes, cut)
        if left:
            out.append((None, tuple(left)))
    return out


def families(side: list[Region], symbols: Symbols) -> set[int]:
    """Address families a side's regions hold."""
    declared = _declared(symbols)
    out: set[int] = set()
    for ids, prefixes in side:
        if prefixes is not None:
            out |= {p.family for p in prefixes}
        elif ids is not None:
            out |= {p.family for i in ids for p in declared.get(i, ())}
            if any(d is not None and d.workload for d in map(symbols.decls.get, ids)):
                out |= {4, 6}  # a workload's pods may have either, whatever today's binding says
        else:
            out |= {4, 6}
    return out
