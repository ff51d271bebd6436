"""Figures for the set language: groups, `name.*`, `except` and `assert only` at scale.

    python bench/language.py [--sizes 100,1000] [--format json]

A mesh of N services in zones (an external /16 per zone holding /24
services), partners declared inside the internet, a group per zone, and per
service: an allow from its zone's group except one neighbour, an allow from
`internet.* except` the partners, and an `assert only` naming its callers. Each
figure is one step on that policy in this process: parse + check + lower
(`except` becomes prefix arithmetic over what names own), `verify` (the asserts,
the ownership notes, the anomalies) and `fmt`. Target: linear in N; 1,000
services (3,000 rules, 2,000 `only` asserts) through verify in under a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.compiler import api  # noqa: E402
from anyplane.compiler.fmt import format_file  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

ZONE = 50  # services per zone


def policy(n: int) -> str:
    """The mesh of n services as policy text."""
    zones = (n + ZONE - 1) // ZONE
    out = ["external internet { address 0.0.0.0/0 }"]
    out += [f"external partner{p} {{ address 198.51.100.{16 * p}/28 }}" for p in range(4)]
    out.append("group partners { " + ", ".join(f"partner{p}" for p in range(4)) + " }")
    for z in range(zones):
        out.append(f"external zone{z} {{ address 10.{z}.0.0/16 }}")
    for i in range(n):
        z, k = divmod(i, ZONE)
        out.append(f"service s{i} {{ address 10.{z}.{k}.0/24 port 8080 http port 9000-9001 tcp }}")
    for z in range(zones):
        members = [f"s{i}" for i in range(z * ZONE, min(n, (z + 1) * ZONE))]
        out.append(f"group g{z} {{ " + ", ".join(members) + " }")
    out.append("default deny")
    for i in range(n):
        z, k = divmod(i, ZONE)
        neighbour = f"s{z * ZONE + (k + 1) % min(ZONE, n - z * ZONE)}"
        out.append(f"allow g{z} except {neighbour} -> s{i} tcp 9000-9001")
        out.append(f"allow internet.* except partners, 203.0.113.0/24 -> s{i} http GET /pub/*")
        out.append(f"allow partners -> s{i} http POST /api/* priority 1")
        out.append(f"assert only g{z} -> s{i} tcp 9000-9001")
        out.append(f"assert only internet.*, partners -> s{i} http")
    return "\n".join(out) + "\n"


def measure(n: int) -> dict:
    """Seconds per step for n services."""
    text = policy(n)
    t0 = time.perf_counter()
    compiled = compile_sources([("mesh.ap", text)])
    t1 = time.perf_counter()
    report = api.verify(compiled)
    t2 = time.perf_counter()
    format_file(compiled.policy.files[0])
    t3 = time.perf_counter()
    failed = sum(f.kind == "assertion-failed" for f in report.findings)
    return {"services": n, "rules": len(compiled.program.rules), "entries": len(compiled.program.acl.entries),
            "asserts": len(compiled.program.asserts), "failed_asserts": failed,
            "ownership_notes": sum(f.kind == "ownership" for f in report.findings),
            "compile_s": round(t1 - t0, 2), "verify_s": round(t2 - t1, 2), "fmt_s": round(t3 - t2, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--format", choices=["text", "json"], default="text")
    args = ap.parse_args()
    rows = [measure(int(s)) for s in args.sizes.split(",")]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return
    print(f"{'services':>8} {'rules':>6} {'entries':>7} {'asserts':>7} {'failed':>6} {'notes':>5} "
          f"{'compile s':>9} {'verify s':>8} {'fmt s':>6}")
    for r in rows:
        print(f"{r['services']:>8} {r['rules']:>6} {r['entries']:>7} {r['asserts']:>7} {r['failed_asserts']:>6} "
              f"{r['ownership_notes']:>5} {r['compile_s']:>9} {r['verify_s']:>8} {r['fmt_s']:>6}")


if __name__ == "__main__":
    main()
