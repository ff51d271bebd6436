"""The flow space's set algebra: sets of integers, prefixes, and boxes. One place for every user.

A set of integers (ports, protocol numbers, ICMP types, the addresses of one family, identity
numbers) is `Intervals`: inclusive (lo, hi) ranges, sorted, disjoint and not adjacent. `merge` makes
one from any ranges; the other operations take `Intervals` and give `Intervals`.

    merge(ranges)                    any ranges -> Intervals (sorted, overlapping and adjacent joined)
    union(a, b)   meet(a, b)   minus(a, b)   complement(a, lo, hi)
    meets(a, b)   within(a, b)       whether two sets share a value; whether a lies inside b
    holes(lo, hi, points)            [lo, hi] less some single values
    prefix_range(width, value, length)   a prefix's addresses as (lo, hi)
    to_prefixes(width, lo, hi)       ranges to CIDRs: the fewest prefixes (value, length) that are [lo, hi]

Prefixes as objects (ir/addr.py's `Prefix`) use these: `Prefix.overlaps`, `Prefix.range_of`.

A box is a tuple of sets, one per dimension: the points whose every coordinate lies in its set.

    box_meet(p, h)   box_empty(p)   box_apart(p, h)   box_inside(p, h)
    box_cut(p, h)                    p less h, as disjoint boxes
    boxes_without(pieces, holes)     a union of boxes less others, as disjoint boxes

Users: the importers' port sets (compiler/importers/ports.py), the verifier's rule-by-rule refinement
and overlap index (verify/refine.py, verify/index.py), the Kubernetes exporters' ipBlocks
(backends/kube), and the connection model's replies (ir/conn.py). tests/ir/test_space.py holds each
operation against sets of integers.
"""

from __future__ import annotations

from typing import Callable, Iterable

Intervals = tuple[tuple[int, int], ...]
Box = tuple[Intervals, ...]


def merge(ranges: Iterable[tuple[int, int]]) -> Intervals:
    """Inclusive integer ranges, sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def union(a: Intervals, b: Intervals) -> Intervals:
    if not a:
        return tuple(b)
    if not b:
        return tuple(a)
    return merge((*a, *b))


def meet(a: Intervals, b: Intervals) -> Intervals:
    """The values in both (one sweep over the two sorted lists)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def minus(a: Intervals, b: Intervals) -> Intervals:
    """The values of a that are not in b."""
    out, j = [], 0
    for lo, hi in a:
        while j < len(b) and b[j][1] < lo:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= hi:
            if b[k][0] > lo:
                out.append((lo, b[k][0] - 1))
            lo = max(lo, b[k][1] + 1)
            if lo > hi:
                break
            k += 1
        if lo <= hi:
            out.append((lo, hi))
    return tuple(out)


def complement(a: Intervals, lo: int, hi: int) -> Intervals:
    """[lo, hi] less a."""
    return minus(((lo, hi),), a)


def meets(a: Intervals, b: Intervals) -> bool:
    """Whether the two sets share a value."""
    i = j = 0
    while i < len(a) and j < len(b):
        if max(a[i][0], b[j][0]) <= min(a[i][1], b[j][1]):
            return True
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return False


def within(a: Intervals, b: Intervals) -> bool:
    """Whether every value of a is in b."""
    return not minus(a, b)


def holes(lo: int, hi: int, points: Iterable[int]) -> Intervals:
    """[lo, hi] less some single values."""
    return minus(((lo, hi),), merge((p, p) for p in points))


def prefix_range(width: int, value: int, length: int) -> tuple[int, int]:
    """The addresses of a prefix of a `width`-bit family (value: any address inside it)."""
    size = 1 << (width - length)
    lo = value & ~(size - 1)
    return lo, lo + size - 1


def to_prefixes(width: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The fewest prefixes (value, length) whose addresses are exactly [lo, hi] (ranges to CIDRs), in
    address order."""
    out = []
    while lo <= hi:
        # The largest block that starts at lo (aligned) and ends at or before hi.
        align = (lo & -lo).bit_length() - 1 if lo else width
        fits = (hi - lo + 1).bit_length() - 1
        size = min(align, fits)
        out.append((lo, width - size))
        lo += 1 << size
    return out


# -- boxes ---------------------------------------------------------------------------------------------

def box_meet(p: Box, h: Box) -> Box:
    return tuple(meet(a, b) for a, b in zip(p, h))


def box_empty(p: Box) -> bool:
    return any(not dim for dim in p)


def box_apart(p: Box, h: Box) -> bool:
    """Whether two boxes share no point (one interval per dimension is the common case)."""
    for a, b in zip(p, h):
        if len(a) == 1 and len(b) == 1:
            if a[0][1] < b[0][0] or b[0][1] < a[0][0]:
                return True
        elif not meets(a, b):
            return True
    return False


def box_inside(p: Box, h: Box) -> bool:
    """Whether box p lies inside box h (an empty box lies inside every box)."""
    if box_empty(p):
        return True
    for a, b in zip(p, h):
        if len(b) == 1:
            if a[0][0] < b[0][0] or a[-1][1] > b[0][1]:
                return False
        elif minus(a, b):
            return False
    return True


def box_cut(p: Box, h: Box) -> list[Box]:
    """p less h, as disjoint boxes (at most one per dimension)."""
    common = box_meet(p, h)
    if box_empty(common):
        return [p]
    out = []
    for d in range(len(p)):
        outside = minus(p[d], h[d])
        if outside:
            out.append(p[:d] + (outside,) + p[d + 1:])
        p = p[:d] + (common[d],) + p[d + 1:]
    return out


def boxes_without(pieces: Iterable[Box], holes_: Iterable[Box], spend: Callable[[int], None] | None = None) -> list[Box]:
    """A union of boxes less every hole, as disjoint boxes (a hole that covers a piece removes it
    whole). `spend(n)` is told the work as it goes (a caller's bound may stop it by raising)."""
    holes_ = list(holes_)
    out: list[Box] = []
    work = [(p, 0) for p in pieces]
    while work:
        p, k = work.pop()
        while k < len(holes_):
            h = holes_[k]
            k += 1
            if spend is not None:
                spend(1)
            if box_apart(p, h):
                continue
            if box_inside(p, h):
                break
            parts = box_cut(p, h)
            if spend is not None:
                spend(len(parts))
            work.extend((q, k) for q in parts)
            break
        else:
            out.append(p)
    return out
