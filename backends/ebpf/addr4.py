"""IPv4 address classes as a multibit trie of arrays: strides 16, 4, 4, 4, 4.

    entry = class id                  (bit 31 clear)
          | POINTER | chunk index     (bit 31 set: look the next 4 bits up in that chunk)

    level 1: 65536 entries per side (source at 0, destination at 65536), indexed by the top 16 bits
    chunks:  16 entries each, from 2 * 65536 on, indexed by the next 4 bits

The map's elements are 16 entries (64 bytes): level 1 is 4,096 elements per side and each chunk is one
element, so a chunk index is an element index and nothing is padded (an array map pads every value to
8 bytes). An address is classified in at most five inlined array loads, instead of a walk down the
kernel's LPM trie. ClassBench's sets are mostly /25 to /32 prefixes on both sides: with 8-bit strides
below 16 bits (DIR-24-8), each host prefix in a /24 of its own costs a 256-entry chunk (1 KiB), and the
100k sets needed 0.4 to 0.7 GiB per generation; with 4-bit strides it costs at most four 64-byte chunks.
Prefixes are expanded in order of increasing length, so a longer prefix always overwrites a shorter one.
"""

from __future__ import annotations

from array import array

from anyplane.ir.addr import Prefix

POINTER = 1 << 31
LEVEL1 = 1 << 16
STRIDE = 4
CHUNK = 1 << STRIDE
ELEMENT = CHUNK  # entries per map element
LEVEL1_ELEMENTS = LEVEL1 // ELEMENT


class Addr4Table:
    """The flat u32 array for both sides."""

    def __init__(self):
        self.data = array("I", bytes(4 * 2 * LEVEL1))

    @property
    def chunks(self) -> int:
        """Chunks below level 1."""
        return (len(self.data) - 2 * LEVEL1) // CHUNK

    def _chunk(self, inherited: int) -> int:
        index = self.chunks
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
        offset, consumed = self._descend(base + (first >> 16)), 16
        while True:
            consumed += STRIDE
            shift = 32 - consumed
            lo = (first >> shift) & (CHUNK - 1)
            if length <= consumed:
                hi = (last >> shift) & (CHUNK - 1)
                for k in range(lo, hi + 1):
                    self.data[offset + k] = cls
                return
            offset = self._descend(offset + lo)

    def lookup(self, side: int, address: int) -> int:
        """The class of an address, exactly as the XDP program reads it."""
        value = self.data[side * LEVEL1 + (address >> 16)]
        shift = 16
        while value & POINTER:
            shift -= STRIDE
            value = self.data[2 * LEVEL1 + (value & ~POINTER) * CHUNK + ((address >> shift) & (CHUNK - 1))]
        return value


def build_addr4(sides: list[list[tuple[Prefix, int]]]) -> Addr4Table:
    """Tables for the IPv4 prefixes of each side (index 0 = source, 1 = destination)."""
    table = Addr4Table()
    for side, prefixes in enumerate(sides):
        for prefix, cls in sorted((p for p in prefixes if p[0].family == 4), key=lambda pc: pc[0].length):
            table.add(side, prefix, cls)
    return table
