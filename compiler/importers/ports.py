"""What a Kubernetes policy rule admits on the wire: TCP ports, UDP ports, ICMP and ICMPv6 types, and
every other protocol.

    Ports.ALL                      a rule without ports: every protocol, every port
    Ports(tcp=((80, 80),))         `ports: [{port: 80}]`
    a | b, a & b, a - b            the set algebra the tiers of AdminNetworkPolicy need
    a.rules()                      anyplane rule suffixes that say exactly `a`: ("", "tcp 80", ...) to
                                   allow, and those to deny above them (an "all but" set)

Ranges are inclusive and merged. A rule with ports never admits other protocols; SCTP ports are
refused by the importer before they get here. ICMP types (0-255) are Cilium's `icmps`; a rule without
ports admits them all, as every other protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyplane.ir.match import merge_ranges
from anyplane.ir.space import meet, merge, minus

EVERY = ((0, 65535),)


# The importers' port sets come from manifests in any order: each is made a set of ranges first.

def _union(a, b) -> tuple:
    return merge((*a, *b))


def _intersect(a, b) -> tuple:
    return meet(merge(a), merge(b))


def _minus(a, b) -> tuple:
    return minus(merge(a), merge(b))


@dataclass(frozen=True)
class Ports:
    tcp: tuple = ()
    udp: tuple = ()
    other: bool = False  # every protocol but TCP, UDP, ICMP and ICMPv6
    icmp: tuple = ()  # ICMP types (ranges of 0-255)
    icmp6: tuple = ()  # ICMPv6 types

    def __or__(self, o: "Ports") -> "Ports":
        return Ports(_union(self.tcp, o.tcp), _union(self.udp, o.udp), self.other or o.other,
                     _union(self.icmp, o.icmp), _union(self.icmp6, o.icmp6))

    def __and__(self, o: "Ports") -> "Ports":
        return Ports(_intersect(self.tcp, o.tcp), _intersect(self.udp, o.udp), self.other and o.other,
                     _intersect(self.icmp, o.icmp), _intersect(self.icmp6, o.icmp6))

    def __sub__(self, o: "Ports") -> "Ports":
        return Ports(_minus(self.tcp, o.tcp), _minus(self.udp, o.udp), self.other and not o.other,
                     _minus(self.icmp, o.icmp), _minus(self.icmp6, o.icmp6))

    def __bool__(self) -> bool:
        return bool(self.tcp or self.udp or self.other or self.icmp or self.icmp6)

    @property
    def everything(self) -> bool:
        return self == ALL

    @staticmethod
    def of(resolved) -> "Ports":
        """From the importer's resolved ports: "all", or {"tcp": ranges, "udp": ranges, "icmp": types,
        "icmp6": types}."""
        if resolved == "all":
            return ALL
        return Ports(*(tuple(merge_ranges(resolved.get(k, []))) for k in ("tcp", "udp")), False,
                     *(tuple(merge_ranges(resolved.get(k, []))) for k in ("icmp", "icmp6")))

    def rules(self) -> tuple[list[str], list[str]]:
        """(allow suffixes, deny suffixes): allowing the first and denying the second above them says
        exactly this set. An empty set is ([], [])."""
        if not self:
            return [], []
        if self.other:  # everything, less some TCP or UDP ports or ICMP types
            missing = ALL - self
            return [""], _suffixes(missing)
        return _suffixes(self), []


def _suffixes(p: Ports) -> list[str]:
    out = []
    for name, ranges in (("tcp", p.tcp), ("udp", p.udp)):
        if not ranges:
            continue
        if ranges == EVERY:
            out.append(f" {name}")
        else:
            out.append(f" {name} " + ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges))
    for name, ranges in (("icmp", p.icmp), ("icmp6", p.icmp6)):
        if ranges == TYPES:
            out.append(f" {name}")
        else:
            out += [f" {name} type {t}" for lo, hi in ranges for t in range(lo, hi + 1)]
    return out


TYPES = ((0, 255),)  # every ICMP (or ICMPv6) type
ALL = Ports(EVERY, EVERY, True, TYPES, TYPES)
NONE = Ports()
