"""P4Runtime IDs as p4c assigns them, so that P4Info from p4c and from anyplane agree.

    id = (prefix << 24) | (jenkins_one_at_a_time(fully qualified name) & 0xffffff)

with the prefix byte of the entity type (p4info.proto's P4Ids) and linear
probing inside the prefix when two names collide. Match fields and action
parameters are numbered 1, 2, ... in declaration order.
"""

from __future__ import annotations

ACTION = 0x01
TABLE = 0x02
DIRECT_COUNTER = 0x13
METER = 0x14
COUNTER = 0x12
MASK32 = 0xFFFFFFFF


def jenkins_one_at_a_time(text: str) -> int:
    """Bob Jenkins' one-at-a-time hash of the name's bytes (32 bits)."""
    h = 0
    for byte in text.encode():
        h = (h + byte) & MASK32
        h = (h + (h << 10)) & MASK32
        h ^= h >> 6
    h = (h + (h << 3)) & MASK32
    h ^= h >> 11
    h = (h + (h << 15)) & MASK32
    return h


class Ids:
    """Allocates IDs in p4c's way; the same names in the same order give the same IDs."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.by_name: dict[tuple[int, str], int] = {}

    def get(self, prefix: int, name: str) -> int:
        """The ID of `name` among entities of type `prefix`."""
        key = (prefix, name)
        if key in self.by_name:
            return self.by_name[key]
        low = jenkins_one_at_a_time(name) & 0xFFFFFF
        candidate = (prefix << 24) | low
        while candidate in self.used:
            low = (low + 1) & 0xFFFFFF
            candidate = (prefix << 24) | low
        self.used.add(candidate)
        self.by_name[key] = candidate
        return candidate
