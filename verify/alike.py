"""Pairs of identities alike: decided alike field by field, so that a question asked about one pair
answers every pair of its class.

Two pairs (source identity, destination identity) are alike when the entries that can match their
flows are, in decision order, the same matches apart from addresses and identities, with the same
verdicts, and every one of them holds for all of each pair's addresses. An entry that holds for part
of an identity's addresses (a prefix inside it) puts the pair in no class (`key` is None), with one
exception: an identity's pair with itself, when each of its addresses is a host with one entry for
that address to itself, all of them in the same place among the pair's other entries and with the
same verdict (a cluster's pods' own traffic): its class also says that place and verdict, and whether
two different addresses of the identity exist. On the region of a pair (source owned by one
identity, destination by the other) an entry matches exactly when the rest of its match does: alike
pairs are decided alike, whatever the rest of the match holds (ports, protocols, HTTP). Two programs
with the same endpoints and the same key for a pair (with `interned` shared) decide that pair alike
too: a key ends with the program's default, so programs with other defaults never share one.

A cluster's pairs fall into a few classes (tier to tier, across namespaces) however many namespaces
and pods it has: the map (verify/connectivity.py) asks one pair per class, the proof of an export
(verify/compose.py) asks only the pairs whose keys differ.
"""

from __future__ import annotations

from bisect import bisect_left

from anyplane.ir import fields as F
from anyplane.ir.match import Exact, InSet, PrefixMatch, options, to_itself
from anyplane.ir.nodes import Program, ordered
from anyplane.ir.owners import ownership
from anyplane.ir.pairspace import bit_positions

from .diff import action_key

_ADDRESS_FIELDS = (F.SRC_ID, F.SRC_IP, F.DST_ID, F.DST_IP)


class PairClasses:
    """Which entries can match a pair's flows, and whether the pair is alike with others (see the module doc).

    Per identity and side, bit sets over decision positions: the entries whose address and identity
    constraints hold for every address it owns (`full`), and those that hold for part of them or
    cannot be told without the addresses (`part`)."""

    def __init__(self, program: Program, names: list[str], interned: dict | None = None):
        self.ordered = list(ordered(program.acl))  # the order of Analysis.ordered
        self.default = ("default", program.default)  # what a pair gets where none of its entries match
        own = ownership(program)
        declared = own.prefixes
        spans = _Declared(declared)
        everyone = {"src": 0, "dst": 0}  # entries with no constraint on the side
        full = {side: {n: 0 for n in names} for side in ("src", "dst")}
        part = {side: {n: 0 for n in names} for side in ("src", "dst")}
        interned = {} if interned is None else interned  # shared: keys of two programs compare
        self.code = []
        names_set = set(names)
        self.selves = 0  # entries for one address to itself (a pod's traffic to itself)
        # Under mtls, a certificate names its holders: the map asks of each source its own certificate
        # (or none), so an entry for some certificates can match only their holders' flows.
        holders: dict[str, tuple[str, ...]] = {}
        for ident in program.identities:
            if ident.principal is not None:
                holders[ident.principal] = holders.get(ident.principal, ()) + (ident.name,)
        for i, e in enumerate(self.ordered):
            bit = 1 << i
            if to_itself(e.match) is not None:
                self.selves |= bit
            rest = tuple((k, v) for k, v in e.match.fields if k not in _ADDRESS_FIELDS)
            self.code.append(interned.setdefault((rest, action_key(e.action)), len(interned)))
            for side, id_field, ip_field in (("src", F.SRC_ID, F.SRC_IP), ("dst", F.DST_ID, F.DST_IP)):
                ids, ips = e.match.get(id_field), e.match.get(ip_field)
                peers = e.match.get(F.SRC_PEER) if side == "src" else None
                if ids is None and ips is None and isinstance(peers, InSet):
                    ids = InSet(tuple(sorted({n for p in peers.values for n in holders.get(p, ())}))) \
                        if any(p in holders for p in peers.values) else None
                    if ids is None:
                        continue  # a certificate nobody in the policy holds
                if ids is None and ips is None:
                    everyone[side] |= bit
                    continue
                values = _values(ids) if ids is not None and ips is None else None
                if values is not None:  # identities only: it holds for theirs, for no one else's
                    for n in values:
                        if n in full[side]:
                            full[side][n] |= bit
                    continue
                near = names if ips is None or _nets(ips) is None else \
                    {n for net in _nets(ips) for n in spans.near(net)} & names_set
                for n in near:
                    how = _covers(ids, ips, n, declared.get(n, ()), own)
                    if how == "full":
                        full[side][n] |= bit
                    elif how == "part":
                        part[side][n] |= bit
        for side in full:
            for n in names:
                full[side][n] |= everyone[side]
        self.full, self.part, self.everyone = full, part, everyone
        self.families = {n: frozenset(f for f, _ in own.addresses(n)) for n in names}
        self.address = {n: {} for n in names}  # identity -> family -> an address it owns
        for n in names:
            for family, address in own.addresses(n):
                self.address[n].setdefault(family, address)
        # identity -> (family, address) -> the position of its entry for that address to itself, for the
        # identities whose addresses are all hosts with one such entry each (None: not so)
        self.hosts: dict[str, dict | None] = {}
        for i, e in enumerate(self.ordered):
            host = to_itself(e.match)
            if host is None or len(e.match.fields) != 2:
                continue
            who = own.covering_owner(host)
            if who in names_set:
                mine = self.hosts.setdefault(who, {})
                if mine is not None and (host.family, host.first) in mine:
                    self.hosts[who] = None
                elif mine is not None:
                    mine[(host.family, host.first)] = i
        for n, mine in list(self.hosts.items()):
            prefixes = declared.get(n, ())
            if mine is not None and (len(mine) != len(prefixes) or any(
                    p.length != p.width or (p.family, p.first) not in mine for p in prefixes)):
                self.hosts[n] = None
        self._self_keys: dict[str, tuple | None] = {}

    def key(self, src: str, dst: str, selfless: bool = False) -> tuple | None:
        """The class of the pair, or None when some entry holds for part of its addresses. `selfless`:
        for the flows between two different addresses only (an entry for one address to itself matches
        none of them)."""
        mask = ~self.selves if selfless else -1
        part_src, part_dst = self.part["src"][src] & mask, self.part["dst"][dst] & mask
        if (part_src & (self.full["dst"][dst] | part_dst)) or (part_dst & self.full["src"][src]):
            if src == dst and not selfless:
                return self._self_key(src)
            return None
        return (self.families[src] & self.families[dst],) + \
            tuple(self.code[i] for i in self.positions(src, dst, mask)) + (self.default,)

    def _self_key(self, name: str) -> tuple | None:
        """The class of an identity's pair with itself when its only entries for part of it are each
        host's entry to itself (module doc), else None."""
        if name in self._self_keys:
            return self._self_keys[name]
        out = None
        hosts = self.hosts.get(name)
        base = self.key(name, name, selfless=True) if hosts else None
        if base is not None:
            full = self.full["src"][name] & self.full["dst"][name] & ~self.selves
            places = {((full & ((1 << i) - 1)).bit_count(), self.code[i]) for i in hosts.values()}
            # also no other entry holds for one of its addresses to itself
            others = self.part["src"][name] & self.part["dst"][name] & self.selves
            if len(places) == 1 and others.bit_count() == len(hosts):
                multi = frozenset(f for f in self.families[name] if sum(1 for k in hosts if k[0] == f) > 1)
                out = base + (("itself",) + places.pop() + (multi,),)
        self._self_keys[name] = out
        return out

    def through_hosts(self, name: str) -> bool:
        """Whether the identity's pair with itself has its class through its hosts' entries to themselves."""
        return self._self_keys.get(name) is not None

    def moved(self, flow_src: int, flow_dst: int, family: int, name: str) -> tuple[int, int] | None:
        """For a flow of an identity with itself whose class has entries to itself: the same kind of flow
        (one address to itself, or between two) between this identity's own host addresses."""
        hosts = [a for f, a in (self.hosts.get(name) or {}) if f == family]
        if not hosts:
            return None
        if flow_src == flow_dst:
            return hosts[0], hosts[0]
        return (hosts[0], hosts[1]) if len(hosts) > 1 else None

    def host_entry(self, name: str, family: int, address: int) -> int | None:
        """The position of the entry for one of an identity's host addresses to itself."""
        return (self.hosts.get(name) or {}).get((family, address))

    def positions(self, src: str, dst: str, mask: int = -1) -> list[int]:
        """The entries that hold for every flow of a pair's region but the rest of their match, in order."""
        return list(bit_positions(self.full["src"][src] & self.full["dst"][dst] & mask))


class _Declared:
    """The identities whose declared prefixes overlap a prefix: those that hold it (one lookup per prefix
    length in use) and those inside it (a binary search)."""

    def __init__(self, declared: dict[str, tuple]):
        self.by_network: dict[tuple[int, int, int], set[str]] = {}
        rows = []
        for name, prefixes in declared.items():
            for p in prefixes:
                self.by_network.setdefault((p.family, p.length, p.first), set()).add(name)
                rows.append((p.family, p.first, name))
        self.lengths = sorted({(f, n) for f, n, _ in self.by_network})
        rows.sort()
        self.rows, self.keys = rows, [(f, a) for f, a, _ in rows]

    def near(self, net) -> set[str]:
        out: set[str] = set()
        for family, length in self.lengths:
            if family == net.family and length <= net.length:
                width = 32 if family == 4 else 128
                first = net.first & ~((1 << (width - length)) - 1) if length else 0
                out |= self.by_network.get((family, length, first), set())
        k = bisect_left(self.keys, (net.family, net.first))
        while k < len(self.rows) and self.keys[k] <= (net.family, net.last):
            out.add(self.rows[k][2])
            k += 1
        return out


def _nets(ips):
    nets = [o.prefix if isinstance(o, PrefixMatch) else None for o in options(ips)]
    return None if None in nets else nets


def _values(ids) -> list[str] | None:
    """The identities an identity match names (None: not a plain list of names)."""
    values = [v for o in options(ids) for v in (o.values if isinstance(o, InSet) else
                                                (o.value,) if isinstance(o, Exact) else (None,))]
    return None if None in values else values


def _covers(ids, ips, name: str, prefixes, own) -> str:
    """Whether an entry's identity and address constraints on one side hold for all ("full"), none
    ("none") or part ("part") of the addresses an identity owns: judged on its declared prefixes, where
    a prefix of the entry inside one of them counts only if the identity owns some address of it (it is
    not all inside others' longer prefixes)."""
    out = "full"
    if ids is not None:
        values = _values(ids)
        if values is None:
            return "part"
        if name not in values:
            return "none"
    if ips is not None:
        nets = _nets(ips)
        if nets is None or not prefixes:
            return "part"
        if all(any(n.covers(p) for n in nets) for p in prefixes):
            return out
        for n in nets:
            for p in prefixes:
                if n.covers(p) or (p.covers(n) and own.covering_owner(n) == name):
                    return "part"
        return "none"
    return out
