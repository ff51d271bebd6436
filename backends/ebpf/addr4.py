"""IPv4 address classes as a three-level array (strides 16, 8, 8), the way DIR-24-8 routers do it.

    entry = class id                  (bit 31 clear)
          | POINTER | chunk index     (bit 31 set: look the next 8 bits up in that chunk)

    level 1: 65536 entries per side (source at 0, destination at 65536), indexed by the top 16 bits
    chunks:  256 entries each, from 2 * 65536 on, indexed by the next 8 bits

An address is classified in at most three array loads, which BPF inlines,
instead of a walk down the kernel's LPM trie. Prefixes are expanded in order
of increasing length, so a longer prefix always overwrites a shorter one.
"""

from __future__ import annotations

from array import array

from anyplane.ir.addr import Prefix

POINTER = 1 << 31
LEVEL1 = 1 << 16
CHUNK = 256


class Addr4Table:
    """The flat u32 array for both sides."""

    def __init__(self):
        self.data = array("I", bytes(4 * 2 * LEVEL1))

    def _chunk(self, inherited: int) -> int:
        index = (len(self.data) - 2 * LEVEL1) // CHUNK
        self.data.extend([inherited] * CHUNK)
        return index

    def _descend(self, slot: int) -> int:
        """Offset of the chunk below `slot`, creating it (filled with the slot's class) if needed."""
        value = self.data[slot]
        if not value & POINTER:
            index = self._chunk(value)
            self.data[slot] = POINTER | index
            value = self.data[slot]
        return 2 * LEVEL1 + (value & ~POINTER) * CHUNK

    def add(self, side: int, prefix: Prefix, cls: int) -> None:
        """Make every address of the prefix map to `cls` (call in order of increasing length)."""
        base = side * LEVEL1
        first, last, length = prefix.first, prefix.last, prefix.length
        if length <= 16:
            for i in range(first >> 16, (last >> 16) + 1):
                self.data[base + i] = cls
            return
        level2 = self._descend(base + (first >> 16))
        if length <= 24:
            for j in range((first >> 8) & 255, ((last >> 8) & 255) + 1):
                self.data[level2 + j] = cls
            return
        level3 = self._descend(level2 + ((first >> 8) & 255))
        for k in range(first & 255, (last & 255) + 1):
            self.data[level3 + k] = cls

    def lookup(self, side: int, address: int) -> int:
        """The class of an address, exactly as the XDP program reads it."""
        value = self.data[side * LEVEL1 + (address >> 16)]
        if value & POINTER:
            value = self.data[2 * LEVEL1 + (value & ~POINTER) * CHUNK + ((address >> 8) & 255)]
            if value & POINTER:
                value = self.data[2 * LEVEL1 + (value & ~POINTER) * CHUNK + (address & 255)]
        return value


def build_addr4(sides: list[list[tuple[Prefix, int]]]) -> Addr4Table:
    """Tables for the IPv4 prefixes of each side (index 0 = source, 1 = destination)."""
    table = Addr4Table()
    for side, prefixes in enumerate(sides):
        for prefix, cls in sorted((p for p in prefixes if p[0].family == 4), key=lambda pc: pc[0].length):
            table.add(side, prefix, cls)
    return table
