"""A longest-prefix-match lookup table (hash per prefix length).

The interpreter resolves ownership by a linear scan, which is the definition;
this is the fast equivalent for tools that resolve many addresses (flow
generation, address-class computation). Tests check the two agree.
`lpm_ranges` writes a longest-prefix table as the ranges of addresses each value holds.
"""

from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from .addr import WIDTH, Prefix

V = TypeVar("V")


class LpmTable(Generic[V]):
    """Map prefixes to values; `lookup` returns the value of the longest match."""

    def __init__(self, rows: Iterable[tuple[Prefix, V]] = ()):
        self._by_len: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        for prefix, value in rows:
            self.insert(prefix, value)

    def insert(self, prefix: Prefix, value: V) -> None:
        """Add or replace one prefix."""
        self._by_len[prefix.family].setdefault(prefix.length, {})[prefix.value] = value
        self._lengths = None

    def _sorted_lengths(self, family: int) -> list[int]:
        if getattr(self, "_lengths", None) is None:
            self._lengths = {f: sorted(self._by_len[f], reverse=True) for f in (4, 6)}
        return self._lengths[family]

    def lookup_prefix(self, family: int, address: int, max_length: int | None = None) -> tuple[Prefix, V] | None:
        """The longest prefix containing the address (no longer than max_length) and its value, or None."""
        width = WIDTH[family]
        for length in self._sorted_lengths(family):
            if max_length is not None and length > max_length:
                continue
            key = address >> (width - length) << (width - length) if length else 0
            table = self._by_len[family][length]
            if key in table:
                return Prefix(family, key, length), table[key]
        return None

    def covering(self, prefix: Prefix) -> tuple[Prefix, V] | None:
        """The longest stored prefix that covers every address of `prefix`."""
        return self.lookup_prefix(prefix.family, prefix.value, prefix.length)

    def lookup(self, family: int, address: int) -> V | None:
        """The value of the longest prefix containing the address, or None."""
        hit = self.lookup_prefix(family, address)
        return hit[1] if hit else None


def lpm_ranges(prefixes: list[tuple[int, int, object]], width: int, rest) -> list[tuple[int, int, object]]:
    """Longest-prefix match as ranges: (lo, hi, value) for prefixes given as (first, last, value) cover
    [0, 2**width) with the value of the longest prefix holding each address (`rest` where none does).
    Prefixes nest or are apart; of two equal ones, the later wins."""
    out: list[list] = []

    def emit(lo, hi, value):
        if lo > hi:
            return
        if out and out[-1][2] == value and out[-1][1] + 1 == lo:
            out[-1][1] = hi
        else:
            out.append([lo, hi, value])

    stack: list[tuple[int, object]] = []
    at = 0
    for first, last, value in sorted(prefixes, key=lambda p: (p[0], -p[1])):
        while stack and stack[-1][0] < first:
            end, v = stack.pop()
            emit(at, end, v)
            at = end + 1
        emit(at, first - 1, stack[-1][1] if stack else rest)
        at = first
        stack.append((last, value))
    while stack:
        end, v = stack.pop()
        emit(at, end, v)
        at = max(at, end + 1)
    emit(at, (1 << width) - 1, rest)
    return [tuple(r) for r in out]
