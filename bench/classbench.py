"""ClassBench rule sets and traces -> anyplane policies and flows.

    @195.146.99.241/32  102.208.113.69/32  0 : 65535  1707 : 1707  0x06/0xFF  0x0000/0x0200
    ->  allow 195.146.99.241/32 -> 102.208.113.69/32 tcp 1707 priority 956

First-match order becomes descending priority (the first rule gets the
highest). Source ports, protocol wildcards and protocol numbers are kept:
0x06 -> tcp, 0x11 -> udp, another exact protocol -> `proto N`, a wildcard
protocol -> no L4 part. The flags field is dropped (anyplane matches on the
5-tuple), so rules differing only in flags become shadowed. ClassBench has no
actions: one rule in five, chosen by a fixed hash of its index, is a deny;
the default is deny.

    python -m bench.classbench ../shared/data/classbench/acl1_1k.rules > acl1_1k.ap
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

def _find_data() -> Path:
    """The ClassBench directory: $ANYPLANE_CLASSBENCH, ../shared beside the checkout, or /work/shared."""
    candidates = [os.environ.get("ANYPLANE_CLASSBENCH", ""),
                  Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "classbench",
                  Path("/work/shared/data/classbench")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return Path(candidates[1])


DATA = _find_data()
TCP, UDP = 6, 17


@dataclass(frozen=True)
class CbRule:
    """One ClassBench rule: prefixes as (value, length), inclusive port ranges, protocol value/mask."""

    src: tuple[int, int]
    dst: tuple[int, int]
    sport: tuple[int, int]
    dport: tuple[int, int]
    proto: int
    proto_mask: int


def _prefix(text: str) -> tuple[int, int]:
    addr, length = text.split("/")
    a, b, c, d = (int(x) for x in addr.split("."))
    return (a << 24 | b << 16 | c << 8 | d, int(length))


def _range(text: str) -> tuple[int, int]:
    lo, hi = text.split(":")
    return int(lo), int(hi)


def read_rules(path: str | Path) -> list[CbRule]:
    """Parse a `.rules` file (tab-separated, `@` before the source prefix)."""
    rules = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        f = line.strip().split("\t")
        proto, mask = (int(x, 16) for x in f[4].split("/"))
        rules.append(CbRule(_prefix(f[0].lstrip("@")), _prefix(f[1]), _range(f[2]), _range(f[3]), proto, mask))
    return rules


def read_trace(path: str | Path) -> list[tuple[int, int, int, int, int]]:
    """(src, dst, sport, dport, proto) per trace line."""
    out = []
    for line in Path(path).read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 5:
            out.append((int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4])))
    return out


def _cidr(p: tuple[int, int]) -> str:
    value, length = p
    if length == 0:
        return "any"
    return ".".join(str(value >> s & 255) for s in (24, 16, 8, 0)) + f"/{length}"


def _ports(r: tuple[int, int]) -> str | None:
    lo, hi = r
    if (lo, hi) == (0, 65535):
        return None
    return str(lo) if lo == hi else f"{lo}-{hi}"


def is_deny(index: int) -> bool:
    """The fixed action choice: one rule in five is a deny."""
    return (index * 2654435761) % 2**32 % 5 == 0


def rule_text(r: CbRule, index: int, count: int) -> str:
    """One rule in policy syntax."""
    parts = ["deny " if is_deny(index) else "allow", _cidr(r.src), "->", _cidr(r.dst)]
    if r.proto_mask == 0xFF and r.proto in (TCP, UDP):
        parts.append("tcp" if r.proto == TCP else "udp")
        dport, sport = _ports(r.dport), _ports(r.sport)
        if dport:
            parts.append(dport)
        if sport:
            parts += ["sport", sport]
    elif r.proto_mask == 0xFF:
        parts.append(f"proto {r.proto}")
    elif r.proto_mask != 0:
        raise ValueError(f"rule {index}: partial protocol mask {r.proto_mask:#x} is not supported")
    parts.append(f"priority {count - index}")
    return " ".join(parts)


def to_policy(rules: list[CbRule], name: str = "classbench") -> str:
    """A whole policy file for a rule set."""
    lines = [f"# {name}: {len(rules)} ClassBench rules, first match = highest priority; an ACL judges every",
             "# packet alone", "stateless", "default deny", ""]
    lines += [rule_text(r, i, len(rules)) for i, r in enumerate(rules)]
    return "\n".join(lines) + "\n"


def first_match(rules: list[CbRule], src: int, dst: int, sport: int, dport: int, proto: int) -> int | None:
    """ClassBench semantics, independently of anyplane: index of the first matching rule."""
    for i, r in enumerate(rules):
        if (src >> (32 - r.src[1]) if r.src[1] else 0) != (r.src[0] >> (32 - r.src[1]) if r.src[1] else 0):
            continue
        if (dst >> (32 - r.dst[1]) if r.dst[1] else 0) != (r.dst[0] >> (32 - r.dst[1]) if r.dst[1] else 0):
            continue
        if proto & r.proto_mask != r.proto & r.proto_mask:
            continue
        if not (r.sport[0] <= sport <= r.sport[1] and r.dport[0] <= dport <= r.dport[1]):
            continue
        return i
    return None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.classbench RULES_FILE > policy.ap")
    src = Path(sys.argv[1])
    sys.stdout.write(to_policy(read_rules(src), src.stem))
