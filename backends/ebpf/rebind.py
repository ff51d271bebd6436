"""A new binding on tables already built: pods that came and went, without building the policy again.

A binding (compiler/binding.py) changes which host addresses a workload owns, never the rules. The
kernel's tables key every address by its class (backends/classes.py: its owner and the CIDRs of the
rules that hold it), so when only endpoint rows of single hosts change and each new host's class is
one the tables already have:

    an address that arrives    its class is written at its slot of the address table (IPv4: the
                               multibit trie of arrays, addr4.py; IPv6: one trie key)
    an address that leaves     its slot takes the class of the longest remaining prefix holding it

and every other table (the rules' bit vectors, actions, ports) stays as it is. Anything else (the
rules changed, a prefix that is not a host, a host that is also a rule's CIDR, a class the tables do
not have yet) returns None and the policy is built afresh. tests/compiler/test_workloads.py checks that the
result decides every flow as tables built afresh do, and so does a second rebind from it (which reuses
what the first one worked out: each side's CIDRs and prefix lengths, the rows it was given).
"""

from __future__ import annotations

import dataclasses
from array import array
from bisect import bisect_left, insort

from anyplane.ir.addr import Prefix
from anyplane.ir.nodes import Program

from ..classes import AddressClasses, endpoint_rows, rules_alike, side_cidrs
from .addr4 import Addr4Table
from .loader import trie_key


def rebind(before: Program, compiled, program: Program):
    """`compiled` (engine.Compiled for `before`) made to hold `program`'s binding, or None (see the module
    doc). `compiled` itself is left as it was. The work grows with the rows that changed (and one pass
    over the rows to find them)."""
    if not rules_alike(before, program):
        return None
    old = compiled.memo["rows"] if "rows" in compiled.memo else endpoint_rows(before)
    new = endpoint_rows(program)
    gone = [(Prefix(f, v, n), who) for f, v, n, who in old - new]
    came = [(Prefix(f, v, n), who) for f, v, n, who in new - old]
    if not (gone or came):
        return compiled
    if any(p.length != p.width for p, _ in gone + came):
        return None
    replaced = {p for p, _ in came}
    gone = [(p, who) for p, who in gone if p not in replaced]  # a host given to another workload: re-added
    model, tables = compiled.model, compiled.tables
    table = Addr4Table.__new__(Addr4Table)
    table.data = array("I", tables.addr4)
    sides = []
    memo = dict(compiled.memo)  # what rebinding the same rules needs again: each side's CIDRs and lengths
    if "cidrs" not in memo:
        memo["cidrs"] = (side_cidrs(model.entries, "src"), side_cidrs(model.entries, "dst"))
    if "lengths" not in memo:
        memo["lengths"] = tuple(frozenset((q.family, q.length) for q, _ in c.prefixes) for c in (model.src, model.dst))
    lengths_of = []
    for side, classes in enumerate((model.src, model.dst)):
        cidrs = memo["cidrs"][side]
        if any(p in cidrs for p, _ in gone + came):
            return None  # the host is also a rule's CIDR: its class changes with it
        if "ids" not in memo:  # each side's class numbers by key, the same for every binding of these rules
            memo["ids"] = tuple({key: k for k, key in enumerate(c.keys)} for c in (model.src, model.dst))
        ids = memo["ids"][side]
        atoms = list(classes.prefixes)  # sorted by prefix
        for p, _ in gone + came:
            k = bisect_left(atoms, (p, -1))
            if k < len(atoms) and atoms[k][0] == p:
                del atoms[k]
        for p, who in came:
            cls = ids.get((who, frozenset(c for c in cidrs if c.covers(p))))
            if cls is None:
                return None  # a class the tables do not have: its bit vector row is new
            insort(atoms, (p, cls))
        # The lengths in use, or more (a length whose last atom left only costs a lookup that finds nothing).
        known = memo["lengths"][side] | {(p.family, p.length) for p, _ in came}
        lengths_of.append(known)
        lengths = sorted(known, reverse=True)
        for p, _ in gone:
            if p.family == 4:
                table.add(side, p, _enclosing(atoms, lengths, p))
        for p, who in came:
            if p.family == 4:
                table.add(side, p, atoms[bisect_left(atoms, (p, -1))][1])
        sides.append(AddressClasses(classes.keys, tuple(atoms)))
    addr6 = dict(tables.addr6)  # the IPv6 trie: a host that left is a key less (the trie's longest match does the rest)
    for side, classes in enumerate(sides):
        for p, _ in gone + came:
            if p.family == 6:
                addr6.pop(trie_key(side, p), None)
        for p, _ in came:
            if p.family == 6:
                addr6[trie_key(side, p)] = classes.prefixes[bisect_left(classes.prefixes, (p, -1))][1]
    addr6 = list(addr6.items())
    need = dataclasses.replace(tables.need, chunks=table.chunks, addr6=len(addr6))
    model = dataclasses.replace(model, src=sides[0], dst=sides[1])
    tables = dataclasses.replace(tables, addr4=table.data, addr6=addr6, need=need)
    memo["lengths"], memo["rows"] = tuple(lengths_of), new
    return dataclasses.replace(compiled, model=model, tables=tables, layout=need.grown(), memo=memo)


def _enclosing(atoms: list[tuple[Prefix, int]], lengths: list[tuple[int, int]], p: Prefix) -> int:
    """The class of the longest atom holding `p` (0: none); `atoms` sorted by prefix."""
    for family, length in lengths:
        if family == p.family and length < p.length:
            q = p.supernet(length)
            k = bisect_left(atoms, (q, -1))
            if k < len(atoms) and atoms[k][0] == q:
                return atoms[k][1]
    return 0
