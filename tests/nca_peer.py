"""network-config-analyzer (NCA, IBM's peer tool) as a second opinion on Kubernetes policies.

NCA runs from a virtualenv of its own (`make nca` installs it in `.nca/`: its pins clash with
ours). Its per-pair listing (`--output_format txt_no_fw_rules`) is read into the same form as
anyplane's map edges, so the two answers compare pair by pair:

    {(src, dst): Conns}     src/dst: "ns/pod", or ("range", first, last) for outside addresses

Conns is what a pair allows: TCP and UDP destination ports as merged ranges, and whether every
other protocol is allowed (NCA and anyplane both treat ICMP and the rest as "other protocols"
when no policy names them; SCTP ports are out of scope: anyplane does not import them).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_PORTS = ((0, 65535),)
_NCA_ALL_PORTS = ((1, 65535),)


def nca_binary() -> str | None:
    for candidate in (os.environ.get("ANYPLANE_NCA"), str(ROOT / ".nca" / "bin" / "nca"), shutil.which("nca")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _merge(ranges) -> tuple:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


@dataclass(frozen=True)
class Conns:
    tcp: tuple = ()
    udp: tuple = ()
    other: bool = False

    @classmethod
    def everything(cls) -> "Conns":
        return cls(ALL_PORTS, ALL_PORTS, True)

    def normal(self) -> "Conns":
        """Port 0 is no port a policy can name: NCA's "every port" is 1-65535, anyplane's 0-65535."""
        def norm(r):
            return () if not r else _merge((max(lo, 1), hi) for lo, hi in r if hi >= 1)
        return Conns(norm(self.tcp), norm(self.udp), self.other)

    def union(self, other: "Conns") -> "Conns":
        return Conns(_merge(self.tcp + other.tcp), _merge(self.udp + other.udp), self.other or other.other)

    def complement(self) -> "Conns":
        def comp(r):
            out, at = [], 1
            for lo, hi in _merge(r):
                if lo > at:
                    out.append((at, lo - 1))
                at = max(at, hi + 1)
            if at <= 65535:
                out.append((at, 65535))
            return tuple(out)
        n = self.normal()
        return Conns(comp(n.tcp), comp(n.udp), not n.other)

    def __bool__(self) -> bool:
        return bool(self.tcp or self.udp or self.other)

    def text(self) -> str:
        n = self.normal()
        if n == Conns.everything().normal():
            return "all"
        parts = [f"{p} " + ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in r)
                 for p, r in (("tcp", n.tcp), ("udp", n.udp)) if r]
        return "; ".join(parts + (["other protocols"] if n.other else [])) or "nothing"


# -- NCA's side ------------------------------------------------------------------------------------
_LINE = re.compile(r"^(\S+) => (\S+) : (.+)$")
_CUBE = re.compile(r"\{([^{}]*)\}")
_KEYS = re.compile(r"(protocols|src_ports|dst_ports|icmp_type|icmp_code|methods|paths|hosts|src_peers|dst_peers):")


def _ports(text: str) -> tuple:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return _merge(out)


def _cube(body: str) -> Conns:
    keys = list(_KEYS.finditer(body))
    fields = {}
    for k, nxt in zip(keys, keys[1:] + [None]):
        fields[k.group(1)] = body[k.end():nxt.start() if nxt else len(body)].strip().rstrip(",")
    unknown = set(fields) - {"protocols", "dst_ports"}
    if unknown:
        raise ValueError(f"NCA cube with {sorted(unknown)}: not compared here ({body})")
    protocols = [p.strip() for p in fields.get("protocols", "").split(",") if p.strip()] or ["TCP", "UDP", "other"]
    ports = _ports(fields["dst_ports"]) if "dst_ports" in fields else _NCA_ALL_PORTS
    out = Conns()
    for p in protocols:
        if p == "TCP":
            out = out.union(Conns(tcp=ports))
        elif p == "UDP":
            out = out.union(Conns(udp=ports))
        elif p == "SCTP":
            continue  # SCTP is out of scope (see the module doc)
        else:
            if "dst_ports" in fields:
                raise ValueError(f"NCA gives ports for {p}: not compared here ({body})")
            out = out.union(Conns(other=True))
    return out


def parse_conns(text: str) -> Conns:
    text = text.strip()
    if text in ("All connections", "All"):
        return Conns.everything()
    if text.startswith("All but "):
        return parse_conns(text[len("All but "):]).complement()
    out = Conns()
    for cube in _CUBE.finditer(text):
        out = out.union(_cube(cube.group(1)))
    if not _CUBE.search(text):
        raise ValueError(f"unreadable NCA connections: {text!r}")
    return out


def endpoint(text: str):
    if "/" in text:
        return text
    first, _, last = text.partition("-")
    return ("range", ipaddress.ip_address(first), ipaddress.ip_address(last or first))


def nca(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    binary = nca_binary()
    if binary is None:
        raise RuntimeError("nca is not installed (make nca)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def connectivity(policies: Path, pods: Path, namespaces: Path) -> dict:
    """NCA's connectivity: {(src, dst): Conns} for every pair it lists (it leaves out a pod to itself)."""
    r = nca(["--connectivity", str(policies), "--pod_list", str(pods), "--ns_list", str(namespaces),
             "--output_format", "txt_no_fw_rules", "--output_endpoints", "pods"], policies.parent)
    pairs: dict = {}
    for line in r.stdout.splitlines():
        m = _LINE.match(line.strip())
        if m:
            key = (endpoint(m.group(1)), endpoint(m.group(2)))
            pairs[key] = pairs.get(key, Conns()).union(parse_conns(m.group(3)))
    if not pairs and r.returncode:
        raise RuntimeError(f"nca failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
    return pairs


def query_result(args: list[str], cwd: Path) -> tuple[int, str]:
    """A yes/no query (equiv, semantic_diff, sanity): NCA's numerical result and its text."""
    r = nca(args + ["--output_format", "txt"], cwd)
    return r.returncode, r.stdout + r.stderr
