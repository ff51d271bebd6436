"""Address classes: the equivalence classes of addresses that a set of entries can tell apart.

    atoms   = every endpoint prefix, and every CIDR that the entries match on one side
    class   = (owner of the atom under longest-prefix ownership, CIDRs containing the atom)

Two addresses in the same class get the same answer from every source (or
destination) match of the entries, so engines classify an address once, by
longest prefix over the atoms, and decide on the class. Class 0 is "in no
atom": owned by nobody and inside no CIDR. The kernel (backends/ebpf/model.py)
and the sidecar (backends/envoy/inbound.py) build their lookups from this.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.addr import Prefix
from anyplane.ir.lpm import LpmTable
from anyplane.ir.match import PrefixMatch, options
from anyplane.ir.owners import nesting, ownership
from anyplane.ir.nodes import Entry, Program


@dataclass(frozen=True)
class AddressClasses:
    """One side's address classes: class 0 is "in no prefix the policy mentions"."""

    keys: tuple[tuple[str | None, frozenset[Prefix]], ...]
    prefixes: tuple[tuple[Prefix, int], ...]

    def merged(self, signature) -> "AddressClasses":
        """Classes that get the same `signature(key)` merged into one (the first key represents it), and
        atoms whose class equals the class of the atom around them dropped: the longest-prefix lookup
        still gives every address a class with the same signature."""
        ids: dict = {signature(self.keys[0]): 0}
        keys = [self.keys[0]]
        remap = []
        for key in self.keys:
            sig = signature(key)
            if sig not in ids:
                ids[sig] = len(keys)
                keys.append(key)
            remap.append(ids[sig])
        prefixes = []
        for (p, cls), parent in zip(self.prefixes, nesting([p for p, _ in self.prefixes])):
            if remap[cls] != (remap[self.prefixes[parent][1]] if parent is not None else 0):
                prefixes.append((p, remap[cls]))
        return AddressClasses(tuple(keys), tuple(prefixes))

    def lookup(self, family: int, address: int) -> int:
        """The class of an address (longest matching prefix, else 0)."""
        hit = LpmTable(self.prefixes).lookup(family, address)
        return 0 if hit is None else hit


def side_cidrs(entries: list[Entry], side: str) -> set[Prefix]:
    """The CIDRs the entries match on one side ("src" or "dst")."""
    ip_field = F.SRC_IP if side == "src" else F.DST_IP
    cidrs: set[Prefix] = set()
    for e in entries:
        fm = e.match.get(ip_field)
        if fm is not None:
            cidrs.update(o.prefix for o in options(fm) if isinstance(o, PrefixMatch))
    return cidrs


def address_classes(program: Program, entries: list[Entry], side: str) -> AddressClasses:
    """Classes for one side: atoms are endpoint prefixes and the side's CIDRs in matches."""
    cidrs = side_cidrs(entries, side)
    owners = ownership(program)
    owned = owners.owner_of
    atoms = sorted(set(owned) | cidrs)
    by_length: dict[tuple[int, int], set[int]] = {}
    for c in cidrs:
        by_length.setdefault((c.family, c.length), set()).add(c.value)
    keys: dict[tuple, int] = {(None, frozenset()): 0}
    prefixes = []
    for p in atoms:
        if p in owned:
            owner = owned[p]
        else:
            owner = owners.covering_owner(p)
        member = frozenset(p.supernet(length) for (fam, length), values in by_length.items()
                           if fam == p.family and length <= p.length and p.supernet(length).value in values)
        cls = keys.setdefault((owner, member), len(keys))
        prefixes.append((p, cls))
    ordered = sorted(keys.items(), key=lambda kv: kv[1])
    return AddressClasses(tuple(k for k, _ in ordered), tuple(prefixes))
