"""IP addresses and prefixes as plain integers, for both address families.

An address is `(family, value)` where family is 4 or 6 and value an int of 32
or 128 bits. Prefixes never carry host bits: `Prefix.__post_init__` checks it,
so two equal networks always compare equal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .space import to_prefixes

WIDTH = {4: 32, 6: 128}


@dataclass(frozen=True, slots=True, order=True)
class Prefix:
    """An IPv4 or IPv6 network: family, network value, prefix length."""

    family: int
    value: int
    length: int

    def __post_init__(self) -> None:
        if self.family not in WIDTH:
            raise ValueError(f"address family must be 4 or 6, not {self.family}")
        width = WIDTH[self.family]
        if not 0 <= self.length <= width:
            raise ValueError(f"prefix length {self.length} out of range for IPv{self.family}")
        if self.value & ~self.mask or not 0 <= self.value < (1 << width):
            raise ValueError(f"prefix {self.value:#x}/{self.length} has host bits set")

    @property
    def width(self) -> int:
        """Address width in bits (32 or 128)."""
        return WIDTH[self.family]

    @property
    def mask(self) -> int:
        """The network mask as an integer."""
        width = WIDTH[self.family]
        return ((1 << width) - 1) ^ ((1 << (width - self.length)) - 1)

    @property
    def first(self) -> int:
        """Lowest address inside."""
        return self.value

    @property
    def last(self) -> int:
        """Highest address inside."""
        return self.value | (((1 << self.width) - 1) ^ self.mask)

    def contains(self, family: int, address: int) -> bool:
        """True when the address lies inside this prefix."""
        return family == self.family and (address & self.mask) == self.value

    def covers(self, other: "Prefix") -> bool:
        """True when every address of `other` lies inside this prefix."""
        return (other.family == self.family and other.length >= self.length
                and (other.value & self.mask) == self.value)

    def overlaps(self, other: "Prefix") -> bool:
        """True when the two share an address (one covers the other)."""
        return self.covers(other) or other.covers(self)

    @classmethod
    def range_of(cls, family: int, lo: int, hi: int) -> list["Prefix"]:
        """The fewest prefixes whose addresses are exactly [lo, hi] (a range as CIDRs)."""
        return [cls(family, v, n) for v, n in to_prefixes(WIDTH[family], lo, hi)]

    def supernet(self, length: int) -> "Prefix":
        """The prefix of `length` (at most this one's) that covers this one."""
        shift = self.width - length
        return Prefix(self.family, self.value >> shift << shift, length)

    def __str__(self) -> str:
        return f"{format_address(self.family, self.value)}/{self.length}"

    @classmethod
    def parse(cls, text: str) -> "Prefix":
        """Parse `a.b.c.d/n`, `x::y/n` or a bare address (a host prefix).

        Raises ValueError with a readable message, including for host bits set.
        """
        net = ipaddress.ip_network(text, strict=True)
        return cls(net.version, int(net.network_address), net.prefixlen)

    @classmethod
    def host(cls, family: int, address: int) -> "Prefix":
        """The single-address prefix of an address."""
        return cls(family, address, WIDTH[family])


def outermost(prefixes) -> list[Prefix]:
    """The prefixes no other one covers, sorted (one pass: in sorted order a cover comes first, and
    the kept prefixes are disjoint, so only the last kept one can cover the next)."""
    kept: list[Prefix] = []
    for p in sorted(set(prefixes)):
        if not (kept and kept[-1].covers(p)):
            kept.append(p)
    return kept


#: Every address of each family.
EVERYTHING = (Prefix(4, 0, 0), Prefix(6, 0, 0))


def subtract(prefixes, minus) -> list[Prefix]:
    """The addresses of `prefixes` not in any of `minus`, as the fewest prefixes (sorted): a prefix
    that some of `minus` only partly overlaps is split in halves until each half is inside or outside.
    """
    cut = outermost(minus)
    out: list[Prefix] = []

    def split(p: Prefix, overlapping: list[Prefix]) -> None:
        if not overlapping:
            out.append(p)
            return
        if any(q.covers(p) for q in overlapping):
            return
        for bit in (0, 1):
            half = Prefix(p.family, p.value | bit << (p.width - p.length - 1), p.length + 1)
            split(half, [q for q in overlapping if half.covers(q) or q.covers(half)])

    for p in outermost(prefixes):
        split(p, [q for q in cut if p.covers(q) or q.covers(p)])
    return sorted(out)


def parse_address(text: str) -> tuple[int, int]:
    """Parse a bare IPv4 or IPv6 address into `(family, value)`."""
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


def format_address(family: int, value: int) -> str:
    """Canonical text of an address (`10.0.0.1`, `fd00::1`)."""
    if family == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))
