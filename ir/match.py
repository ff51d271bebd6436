"""Match kinds: what a table entry requires of one field.

A `Match` is a conjunction over fields; each field gets one `FieldMatch`.
Disjunction inside a field is `AnyOf` (or `InSet` for exact values). The
meaning of every kind is defined once, in `ir.interp.field_matches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

from .addr import Prefix
from .fields import lookup, sort_key
from .space import merge


@dataclass(frozen=True, slots=True)
class Exact:
    """The field equals the value."""

    value: int | str


@dataclass(frozen=True, slots=True)
class InSet:
    """The field equals one of the values (sorted, distinct, non-empty)."""

    values: tuple

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("InSet needs at least one value")
        if tuple(sorted(set(self.values))) != self.values:
            raise ValueError(f"InSet values must be sorted and distinct: {self.values!r}")


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The address field lies inside the prefix (same family)."""

    prefix: Prefix


@dataclass(frozen=True, slots=True)
class Range:
    """The integer field lies in [lo, hi]."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"empty range {self.lo}-{self.hi}")


@dataclass(frozen=True, slots=True)
class Ternary:
    """`field & mask == value`; the value has no bits outside the mask."""

    value: int
    mask: int

    def __post_init__(self) -> None:
        if self.value & ~self.mask:
            raise ValueError(f"ternary value {self.value:#x} has bits outside mask {self.mask:#x}")


@dataclass(frozen=True, slots=True)
class StrExact:
    """The string field is present and equals the value."""

    value: str


@dataclass(frozen=True, slots=True)
class StrPrefix:
    """The string field is present and starts with the value."""

    value: str


@dataclass(frozen=True, slots=True)
class Present:
    """The field is present (any value)."""


@dataclass(frozen=True, slots=True)
class Absent:
    """The field is absent."""


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one of the options holds (no nested AnyOf, at least one option)."""

    options: tuple

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("AnyOf needs at least one option")
        if any(isinstance(o, AnyOf) for o in self.options):
            raise ValueError("AnyOf options must not be AnyOf")


FieldMatch = Union[Exact, InSet, PrefixMatch, Range, Ternary, StrExact, StrPrefix, Present, Absent, AnyOf]


@dataclass(frozen=True, slots=True)
class Match:
    """A conjunction of field matches, one per field, sorted by field; empty matches all."""

    fields: tuple[tuple[str, FieldMatch], ...] = ()

    def __post_init__(self) -> None:
        keys = [sort_key(name) for name, _ in self.fields]
        for name, _ in self.fields:
            lookup(name)
        if any(a >= b for a, b in zip(keys, keys[1:])):
            raise ValueError(f"match fields must be distinct and in catalogue order: {[n for n, _ in self.fields]}")

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, FieldMatch]] | dict) -> "Match":
        """Build a match from (field, match) pairs in any order."""
        items = pairs.items() if isinstance(pairs, dict) else pairs
        return cls(tuple(sorted(items, key=lambda kv: sort_key(kv[0]))))

    def get(self, name: str) -> FieldMatch | None:
        """The match on one field, or None when the field is unconstrained."""
        for field_name, fm in self.fields:
            if field_name == name:
                return fm
        return None

    @property
    def layer(self) -> str:
        """The highest layer any constrained field belongs to (L3 when empty)."""
        return max((lookup(n).layer for n, _ in self.fields), default="L3")

    def without_layer(self, layer: str) -> "Match":
        """This match with every field of the given layer dropped."""
        return Match(tuple((n, m) for n, m in self.fields if lookup(n).layer != layer))

    def only(self, *names: str) -> "Match":
        """This match on the named fields alone (a side of a flow: its source, or its destination)."""
        return Match(tuple((n, m) for n, m in self.fields if n in names))


def options(fm: FieldMatch) -> tuple:
    """The alternatives of a field match (a single match is its own only alternative)."""
    return fm.options if isinstance(fm, AnyOf) else (fm,)


def exact_values(fm: FieldMatch) -> frozenset[int] | None:
    """The values an Exact / InSet match (or a disjunction of them) admits; None for any other kind."""
    out: set[int] = set()
    for o in options(fm):
        if isinstance(o, Exact):
            out.add(o.value)
        elif isinstance(o, InSet):
            out.update(o.values)
        else:
            return None
    return frozenset(out)


def int_ranges(fm: FieldMatch) -> list[tuple[int, int]] | None:
    """An integer match (Exact / InSet / Range, or a disjunction of them) as inclusive ranges; None
    for any other kind."""
    out: list[tuple[int, int]] = []
    for o in options(fm):
        if isinstance(o, Range):
            out.append((o.lo, o.hi))
        elif isinstance(o, Exact):
            out.append((o.value, o.value))
        elif isinstance(o, InSet):
            out.extend((v, v) for v in o.values)
        else:
            return None
    return out


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Inclusive integer ranges, sorted, with overlapping and adjacent ones merged (ir/space.py's
    `merge`, as a list)."""
    return list(merge(ranges))


def to_itself(m: Match) -> Prefix | None:
    """The address when a match holds only for flows from one address to that same address (a pod's
    traffic to itself): it holds for no flow between two different addresses, whatever else it says."""
    src, dst = m.get("src.ip"), m.get("dst.ip")
    if isinstance(src, PrefixMatch) and src == dst and src.prefix.length == src.prefix.width:
        return src.prefix
    return None
