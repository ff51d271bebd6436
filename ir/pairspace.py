"""Pairs of a table's sources and destinations cut into blocks decided alike, without visiting each pair.

A table here is anything with, per entry in decision order, an interned `code` (what the entry does
apart from its addresses and identities: two entries of one code decide the flows they match alike),
and per side ("src", "dst") and name bit sets over entries: `full[side][name]` (the entries that
hold for every address of the name), `part[side][name]` (those that hold for part of them),
`everyone[side]` (the entries that do not constrain the side), and `families[name]`.
verify/alike.py's PairClasses is one (the map and the proof of an export); the k8s exporter builds
one over its regions. Two pairs whose entries that hold have the same sequence of codes are decided
alike; `PairSpace` finds blocks of such pairs from per-name profiles.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right


def bit_positions(x: int):
    """The positions of the bits set in x, ascending."""
    if x.bit_count() <= 8:  # few bits: each step costs the length of x
        while x:
            low = x & -x
            yield low.bit_length() - 1
            x ^= low
        return
    digits = bin(x)[::-1]  # digit i is bit i (then "b0")
    i = digits.find("1")
    while i >= 0:
        yield i
        i = digits.find("1", i + 1)


class PairSpace:
    """The pairs of sources × destinations cut, without visiting each, into blocks of pairs that the
    tables of one or more programs (over the same names) key alike, and pairs keyed one by one.

    An entry that constrains both sides holds for few pairs: those pairs, each identity's pair with
    itself, and every pair of a `loose` identity or of one some entry holds for part of without
    constraining the other side, are keyed one by one (`singles`). For every other pair the entries
    that hold are those that constrain neither side, those that constrain only the source and hold for
    all of it, and those that constrain only the destination likewise. Its key follows from a profile
    of the source (each source-only entry's code and its place among the entries that hold for every
    source) and one of the destination (each destination-only entry's code and place). Moving an entry
    past entries of its own code leaves the sequence of codes as it was, so a place counts only up to
    runs of one code: the identities of many namespaces share a profile, and the blocks (`blocks`: the
    sources of one profile × the destinations of one) are few."""

    def __init__(self, tables: list, srcs: list[str], dsts: list[str], loose=()):
        special: set[tuple[str, str]] = set()
        loose_src, loose_dst = set(loose), set(loose)
        sp: dict[str, list] = {s: [] for s in srcs}
        dp: dict[str, list] = {d: [] for d in dsts}
        for t in tables:
            n = len(t.code)
            full, part = {}, {}
            for side, names in (("src", srcs), ("dst", dsts)):
                full[side], part[side] = [[] for _ in range(n)], [[] for _ in range(n)]
                free = ~t.everyone[side]
                for name in names:
                    for i in bit_positions(t.full[side][name] & free):
                        full[side][i].append(name)
                    for i in bit_positions(t.part[side][name]):
                        part[side][i].append(name)
            every = {side: [bool((t.everyone[side] >> i) & 1) or len(full[side][i]) == len(names)
                            for i in range(n)] for side, names in (("src", srcs), ("dst", dsts))}
            before: dict[str, list[int]] = {s: [] for s in srcs}  # source-only entries, ascending
            after: dict[str, list[int]] = {d: [] for d in dsts}  # destination-only entries
            u: list[int] = []  # the entries that hold for every source, ascending
            common: list[int] = []  # places in u of the entries that hold for every pair
            for i in range(n):
                if every["src"][i]:
                    u.append(i)
                    if every["dst"][i]:
                        common.append(len(u) - 1)
                    else:
                        for d in full["dst"][i]:
                            after[d].append(len(u) - 1)
                        loose_dst.update(part["dst"][i])
                elif every["dst"][i]:
                    for s in full["src"][i]:
                        before[s].append(i)
                    loose_src.update(part["src"][i])
                else:
                    ends = full["dst"][i] + part["dst"][i]
                    for s in full["src"][i] + part["src"][i]:
                        special.update((s, d) for d in ends)
            code = t.code
            # run[k]: where the run of one code that ends at u[k] starts
            run = []
            for k, i in enumerate(u):
                run.append(run[k - 1] if k and code[u[k - 1]] == code[i] else k)
            places: dict[str, list[tuple[int, int]]] = {}
            cuts: set[int] = set(common)  # a destination-only entry's place counts against these too
            for s, xs in before.items():
                out, floor = [], 0
                for x in xs:
                    k = bisect_left(u, x)  # the entries that hold for every source before x
                    if k and code[u[k - 1]] == code[x]:
                        k = run[k - 1]
                    floor = max(floor, k)
                    out.append((code[x], floor))
                    cuts.add(floor)
                places[s] = out
            cut = sorted(cuts)
            rank = {k: r for r, k in enumerate(cut)}
            for s in srcs:
                sp[s].append(tuple((c, rank[k]) for c, k in places[s]))
            for d in dsts:
                dp[d].append(tuple((code[u[k]], bisect_right(cut, k)) for k in after[d]))
        for s in set(srcs) & set(dsts):
            special.add((s, s))
        by_src: dict[tuple, list[str]] = {}
        for s in srcs:
            if s not in loose_src:
                by_src.setdefault(tuple(t.families[s] for t in tables) + tuple(sp[s]), []).append(s)
        by_dst: dict[tuple, list[str]] = {}
        for d in dsts:
            if d not in loose_dst:
                by_dst.setdefault(tuple(t.families[d] for t in tables) + tuple(dp[d]), []).append(d)
        self.blocks = [(a, b) for a in by_src.values() for b in by_dst.values()]
        # the block of a pair that is not a single: (its source's group, its destination's group)
        self.src_group = {s: g for g, names in enumerate(by_src.values()) for s in names}
        self.dst_group = {d: g for g, names in enumerate(by_dst.values()) for d in names}
        src_set, dst_set = set(srcs), set(dsts)
        singles = {(s, d) for s, d in special if s in src_set and d in dst_set}
        singles.update((s, d) for s in loose_src & src_set for d in dsts)
        singles.update((s, d) for s in srcs for d in loose_dst & dst_set)
        self.singles = sorted(singles)
        self._single = singles

    def block_of(self, src: str, dst: str) -> tuple[int, int] | None:
        """The block of a pair, as (its source's group, its destination's group); None for a single."""
        gs, gd = self.src_group.get(src), self.dst_group.get(dst)
        if gs is None or gd is None or (src, dst) in self._single:
            return None
        return gs, gd

    def members(self, block: tuple[list[str], list[str]]):
        """The pairs of a block, but the singles."""
        single = self._single
        return ((s, d) for s in block[0] for d in block[1] if (s, d) not in single)

    def representative(self, block: tuple[list[str], list[str]]) -> tuple[str, str] | None:
        return next(self.members(block), None)
