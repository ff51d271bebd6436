"""The flow-space algebra (ir/space.py) against sets of integers, and its ranges-to-CIDRs against the
standard library's summarize_address_range."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from anyplane.ir import space
from anyplane.ir.addr import Prefix

DOMAIN = 64


def _values(iv) -> set:
    return {v for lo, hi in iv for v in range(lo, hi + 1)}


def _normal(iv) -> bool:
    return all(lo <= hi for lo, hi in iv) and all(a[1] + 1 < b[0] for a, b in zip(iv, iv[1:]))


ranges = st.lists(st.tuples(st.integers(0, DOMAIN - 1), st.integers(0, 8)).map(lambda t: (t[0], min(DOMAIN - 1, t[0] + t[1]))),
                  max_size=6)
sets = ranges.map(space.merge)


@settings(max_examples=300)
@given(ranges)
def test_merge_keeps_the_values_and_makes_the_normal_form(rs):
    got = space.merge(rs)
    assert _normal(got) and _values(got) == _values(rs)


@settings(max_examples=300)
@given(sets, sets)
def test_the_set_operations_are_those_of_sets_of_integers(a, b):
    A, B = _values(a), _values(b)
    for got, want in ((space.union(a, b), A | B), (space.meet(a, b), A & B), (space.minus(a, b), A - B),
                      (space.complement(a, 0, DOMAIN - 1), set(range(DOMAIN)) - A)):
        assert _normal(got) and _values(got) == want, (a, b, got)
    assert space.meets(a, b) == bool(A & B)
    assert space.within(a, b) == (A <= B)


@given(st.integers(0, DOMAIN - 1), st.integers(0, DOMAIN - 1), st.sets(st.integers(0, DOMAIN - 1)))
def test_holes_leave_out_exactly_the_points(lo, hi, points):
    got = space.holes(lo, hi, points)
    assert _normal(got) and _values(got) == set(range(lo, hi + 1)) - points


@settings(max_examples=300)
@given(st.sampled_from([4, 6]), st.data())
def test_ranges_become_the_fewest_cidrs_as_the_standard_library_says(version, data):
    width = 32 if version == 4 else 128
    lo = data.draw(st.integers(0, (1 << width) - 1))
    hi = data.draw(st.integers(lo, min((1 << width) - 1, lo + data.draw(st.sampled_from([0, 7, 1000, 1 << 40])))))
    klass = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    want = [(int(n.network_address), n.prefixlen) for n in ipaddress.summarize_address_range(klass(lo), klass(hi))]
    assert space.to_prefixes(width, lo, hi) == want
    for value, length in want:
        first, last = space.prefix_range(width, value, length)
        assert (first, last) == (value, value + (1 << (width - length)) - 1)


@given(st.sampled_from([4, 6]), st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1),
       st.integers(0, 32))
def test_prefixes_overlap_when_they_share_an_address(family, va, la, vb, lb):
    shift = 0 if family == 4 else 96
    a, b = (Prefix(family, (va << shift) & Prefix(family, 0, la).mask, la),
            Prefix(family, (vb << shift) & Prefix(family, 0, lb).mask, lb))
    assert a.overlaps(b) == (max(a.first, b.first) <= min(a.last, b.last)) == b.overlaps(a)
    assert not Prefix(4, 0, 0).overlaps(Prefix(6, 0, 0)), "families never overlap"
    assert Prefix.range_of(family, a.first, a.last) == [a]


boxes = st.tuples(sets, sets)


def _points(b) -> set:
    return {(x, y) for x in _values(b[0]) for y in _values(b[1])}


@settings(max_examples=300)
@given(boxes, boxes, st.lists(boxes, max_size=4))
def test_boxes_cut_meet_and_subtract_as_sets_of_points(p, h, more):
    P, H = _points(p), _points(h)
    assert _points(space.box_meet(p, h)) == P & H
    assert space.box_apart(p, h) == (not (P & H)) or space.box_empty(p) or space.box_empty(h)
    assert space.box_inside(p, h) == (P <= H) or space.box_empty(p)
    parts = space.box_cut(p, h)
    assert set().union(*map(_points, parts)) == P - H
    assert sum(len(_points(q)) for q in parts) == len(P - H), "the parts are disjoint"
    left = space.boxes_without([p, h], more)
    want = (P | H) - set().union(*map(_points, more))
    assert set().union(*map(_points, left)) == want
