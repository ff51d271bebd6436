"""Address classes: the equivalence classes of addresses that a set of entries can tell apart.

    atoms   = every endpoint prefix, and every CIDR that the entries match on one side
    class   = (owner of the atom under longest-prefix ownership, CIDRs containing the atom)

Two addresses in the same class get the same answer from every source (or
destination) match of the entries, so engines classify an address once, by
longest prefix over the atoms, and decide on the class. Class 0 is "in no
atom": owned by nobody and inside no CIDR. The kernel (backends/ebpf/model.py)
and the sidecar (backends/envoy/inbound.py) build their lookups from this.
`rules_alike` and `endpoint_rows` tell a change of binding alone (the kernel's
rebind.py, the switch's push session), where only the address tables change.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from anyplane.ir import fields as F
from anyplane.ir.addr import Prefix
from anyplane.ir.lpm import LpmTable
from anyplane.ir.match import PrefixMatch, options
from anyplane.ir.owners import nesting, ownership
from anyplane.ir.nodes import Entry, Program


def rules_alike(a: Program, b: Program) -> bool:
    """Whether two programs differ at most in their endpoint rows (a binding: pods that came and went):
    the same entries, default, connection state and rules (the counters' labels). An engine that keys
    its rules by class or identity then changes only its address tables."""
    return a is b or all(getattr(a, f) is getattr(b, f) or getattr(a, f) == getattr(b, f)
                         for f in ("default", "connections", "acl", "rules"))


def endpoint_rows(program: Program) -> set[tuple[int, int, int, str]]:
    """The program's endpoint rows as (family, value, length, identity): what a binding changes."""
    prefixes = list(map(attrgetter("prefix"), program.endpoints))
    return set(zip(map(attrgetter("family"), prefixes), map(attrgetter("value"), prefixes),
                   map(attrgetter("length"), prefixes), map(attrgetter("identity"), program.endpoints)))


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


def _sorted_prefixes(owners) -> tuple[list[Prefix], list[tuple[int, int]], dict[int, list[int]]]:
    """The endpoint prefixes by (family, first address), those keys, and each family's prefix lengths
    (made once per ownership table)."""
    cached = owners.__dict__.get("_sorted_cache")
    if cached is None:
        order = sorted(owners.owner_of, key=lambda p: (p.family, p.first, p.length))
        lengths: dict[int, set[int]] = {}
        for p in order:
            lengths.setdefault(p.family, set()).add(p.length)
        cached = (order, [(p.family, p.first) for p in order], {f: sorted(n) for f, n in lengths.items()})
        object.__setattr__(owners, "_sorted_cache", cached)
    return cached


def _telling(owners, cidrs: set[Prefix], named: set[str]) -> set[Prefix]:
    """The endpoint prefixes whose addresses the entries can tell from those around them: owned by an
    identity the entries name, meeting one of their CIDRs, or nested in such a prefix (its addresses
    have another owner than the prefix around it). The others get the class of what is around them."""
    import bisect

    # Endpoint prefixes nest or are apart: one meets a CIDR when it lies inside it (its first address is
    # in the CIDR) or holds it (a supernet of the CIDR at one of the endpoints' lengths).
    order, firsts, lengths = _sorted_prefixes(owners)
    stack = [p for p, who in owners.owner_of.items() if who in named]
    for c in cidrs:
        lo = bisect.bisect_left(firsts, (c.family, c.first))
        hi = bisect.bisect_right(firsts, (c.family, c.last))
        stack += order[lo:hi]
        stack += [up for n in lengths.get(c.family, ()) if n < c.length
                  and (up := c.supernet(n)) in owners.owner_of]
    keep: set[Prefix] = set()
    while stack:
        p = stack.pop()
        if p not in keep:
            keep.add(p)
            stack.extend(owners.children.get(p, ()))
    return keep


def address_classes(program: Program, entries: list[Entry], side: str, telling: bool = False) -> AddressClasses:
    """Classes for one side: atoms are endpoint prefixes and the side's CIDRs in matches. With `telling`,
    only the endpoint prefixes the entries can tell apart (the others fall in the class of what is around
    them, which every entry answers alike): a lookup for these entries alone (a sidecar's listener)."""
    cidrs = side_cidrs(entries, side)
    owners = ownership(program)
    owned = owners.owner_of
    if telling:
        id_field = F.SRC_ID if side == "src" else F.DST_ID
        named = {v for e in entries if (fm := e.match.get(id_field)) is not None for o in options(fm)
                 for v in o.values}
        atoms = sorted(_telling(owners, cidrs, named) | cidrs)
    else:
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
