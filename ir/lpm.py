"""A longest-prefix-match lookup table (hash per prefix length).

The interpreter resolves ownership by a linear scan, which is the definition;
this is the fast equivalent for tools that resolve many addresses (flow
generation, address-class computation). Tests check the two agree.
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
