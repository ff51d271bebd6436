"""Address ownership of a program, computed once: who owns an address, which prefixes an identity
declares, which declarations nest in which, and readable addresses an identity really owns.

    ownership(program).owner(4, 0x0A000105)        -> "reviews.v1"   (longest prefix)
    ownership(program).prefixes["reviews"]         -> (10.0.2.0/24, fd00:0:0:2::/64)
    ownership(program).children[10.0.2.0/24]       -> [10.0.2.0/26, 10.0.2.64/26]
    ownership(program).parent[10.0.2.0/26]         -> 10.0.2.0/24
    ownership(program).addresses("reviews")        -> [(4, 0x0A000201), ...]  (readable first)

`ir.interp.owner` is the definition (a linear scan over the endpoint table);
this module is its fast, shared form, and tests hold the two together. Every
engine, the verifier, placement and the flow tools ask it instead of keeping
their own tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from .addr import WIDTH, Prefix
from .lpm import LpmTable
from .memo import per_program
from .nodes import Program

#: Readable addresses tried first inside very broad prefixes (documentation ranges, RFC 5737/3849).
READABLE = {4: (0xCB007101, 0xC6336401, 0xC0000201), 6: (0x20010DB8 << 96 | 1,)}


def edges(p: Prefix) -> list[int]:
    """Boundary addresses of a prefix: after the network address, the network address, the last, the
    middle."""
    top = (1 << WIDTH[p.family]) - 1
    return [a for a in (p.first + 1, p.first, p.last, (p.first + p.last) // 2) if 0 <= a <= top]


def outside(p: Prefix) -> list[int]:
    """The addresses just outside a prefix (where they exist)."""
    top = (1 << WIDTH[p.family]) - 1
    return [a for a in (p.first - 1, p.last + 1) if 0 <= a <= top]


def nesting(prefixes: list[Prefix]) -> list[int | None]:
    """For prefixes sorted by (family, value, length): the position of the longest other one covering
    each (one pass with a stack of the prefixes enclosing the current one)."""
    out: list[int | None] = []
    stack: list[int] = []
    for k, p in enumerate(prefixes):
        while stack and not prefixes[stack[-1]].covers(p):
            stack.pop()
        out.append(stack[-1] if stack else None)
        stack.append(k)
    return out


@dataclass(frozen=True)
class Ownership:
    """The endpoint table of one program, indexed."""

    table: LpmTable[str]
    owner_of: dict[Prefix, str]  # endpoint prefix -> its identity
    prefixes: dict[str, tuple[Prefix, ...]]  # identity -> its endpoint prefixes (what it declares)
    parent: dict[Prefix, Prefix | None]  # endpoint prefix -> the endpoint prefix it nests in
    children: dict[Prefix, tuple[Prefix, ...]]  # endpoint prefix -> those nested directly in it

    def owner(self, family: int, address: int) -> str | None:
        """The identity owning an address (longest endpoint prefix), or None."""
        return self.table.lookup(family, address)

    def covering_owner(self, p: Prefix) -> str | None:
        """The owner of the longest endpoint prefix covering all of `p` (None when none does)."""
        hit = self.table.covering(p)
        return hit[1] if hit else None

    def addresses(self, identity: str) -> list[tuple[int, int]]:
        """Addresses the identity really owns, most readable first (see `owned_addresses`)."""
        return self._owned.get(identity, [])

    @property
    def _owned(self) -> dict[str, list[tuple[int, int]]]:
        cached = self.__dict__.get("_owned_cache")
        if cached is None:
            cached = _readable(self)
            object.__setattr__(self, "_owned_cache", cached)
        return cached


def _readable(o: Ownership) -> dict[str, list[tuple[int, int]]]:
    """For each identity, boundary addresses that it really owns, most readable first: a documentation
    address inside a very broad prefix, then the address after a network address, the network address,
    the last addresses and the middle, then addresses right around nested prefixes."""
    rows = sorted(o.owner_of)
    owned: dict[str, dict[tuple[int, int], None]] = {}
    # Two passes so that every identity's own edges come before the addresses it owns only as the gaps
    # around someone else's nested prefix.
    for around in (False, True):
        for p in rows:
            if around:
                candidates = [a for c in o.children[p][:32] for a in outside(c) if p.contains(p.family, a)]
            else:
                candidates = [a for a in READABLE[p.family] if p.contains(p.family, a)] if p.length < 8 else []
                candidates += edges(p)
            for a in candidates:
                who = o.owner(p.family, a)
                if who is not None:
                    owned.setdefault(who, {})[(p.family, a)] = None
    return {k: list(v) for k, v in owned.items()}


def ownership(program: Program) -> Ownership:
    """The program's ownership, built once per endpoint table (programs rewritten from one another, as
    placement and the proof make them, share it)."""
    return _of(program.endpoints)


@per_program
def _of(endpoints) -> Ownership:
    rows = sorted(endpoints, key=lambda r: r.prefix)
    prefixes = [r.prefix for r in rows]
    owner_of = {r.prefix: r.identity for r in rows}
    by_identity: dict[str, list[Prefix]] = {}
    for r in endpoints:
        by_identity.setdefault(r.identity, []).append(r.prefix)
    parent: dict[Prefix, Prefix | None] = {}
    children: dict[Prefix, list[Prefix]] = {p: [] for p in prefixes}
    for p, k in zip(prefixes, nesting(prefixes)):
        parent[p] = prefixes[k] if k is not None else None
        if k is not None:
            children[prefixes[k]].append(p)
    return Ownership(LpmTable(owner_of.items()), owner_of, {k: tuple(v) for k, v in by_identity.items()},
                     parent, {k: tuple(v) for k, v in children.items()})


def surprising(outer, inner) -> bool:
    """Whether a rule naming identity `outer` leaving out `inner` (declared inside its prefixes) would
    surprise: not for the versions of one service, nor for a service inside an external network (a
    workload is not "the internet"); yes for anything else (a partner inside the internet)."""
    if outer.service == inner.service:
        return False
    return not (outer.kind == "external" and inner.kind == "service")


def enclosing(program: Program, family: int, address: int) -> list[tuple[str, Prefix]]:
    """The declarations whose prefixes hold the address but which do not own it (a more specific one
    does), innermost first: the names that, written in a rule, do not cover this address, when that
    would surprise (`surprising`)."""
    o = ownership(program)
    idents = {i.name: i for i in program.identities}
    hit = o.table.covering(Prefix.host(family, address))
    if hit is None:
        return []
    prefix, owner = hit
    out: list[tuple[str, Prefix]] = []
    p = o.parent.get(prefix)
    while p is not None:
        who = o.owner_of[p]
        if surprising(idents[who], idents[owner]) and all(who != n for n, _ in out):
            out.append((who, p))
        p = o.parent.get(p)
    return out


def described(program: Program, flow, pods: dict | None = None) -> str:
    """A flow in pattern syntax with each address's owner after it:
    `192.0.2.1 (internet) -> 10.0.0.1 (lb) tcp 443 sport 0` (no name for an address nobody owns).
    `pods` ((family, address) -> (pod, pods in its identity), from an import): an identity that stands
    for several pods is named with the pod at the address, `10.1.0.5 (shop_app-web: pod shop/web-2,
    one of 4)`. An unbound workload's placeholder address is named as a pod of it, and a client
    certificate by the workloads that hold it."""
    o = ownership(program)
    src, arrow, dst, *rest = flow.text.split(" ")
    names = [o.owner(flow.family, a) for a in (flow.src, flow.dst)]
    unbound = {i.name for i in program.unbound}
    for k, a in enumerate((flow.src, flow.dst)):
        pod = (pods or {}).get((flow.family, a))
        if names[k] and pod is not None:
            names[k] = f"{names[k]}: pod {pod[0]}, one of {pod[1]}"
        elif names[k] in unbound:
            names[k] = f"{names[k]}: a pod of the workload, unbound"
    src, dst = (f"{t} ({n})" if n else t for t, n in zip((src, dst), names))
    if flow.peer is not None:  # the certificate's holders after it: `peer "spiffe://..." (checkout's)`
        holders = [i.name for i in program.identities if i.principal == flow.peer]
        quoted = next((k for k, t in enumerate(rest) if t == "peer"), None)
        if quoted is not None and quoted + 1 < len(rest):
            rest[quoted + 1] += f" ({', '.join(holders)}'s)" if holders else " (no workload's)"
    return " ".join([src, arrow, dst] + rest)


def witness_json(program: Program, flow) -> dict:
    """A flow's JSON with the owners of its addresses (`src_owner`, `dst_owner`; null when unowned)."""
    o = ownership(program)
    return dict(flow.to_json(), src_owner=o.owner(flow.family, flow.src), dst_owner=o.owner(flow.family, flow.dst))


def owned_addresses(program: Program) -> dict[str, list[tuple[int, int]]]:
    """For each identity, boundary addresses that it really owns, most readable first."""
    return ownership(program)._owned
