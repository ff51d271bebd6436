"""Fabric-engine figures: acl entries per ClassBench set, native ranges and --no-range, against naive expansion.

    python bench/fabric.py [--sizes 1k,10k] [--sets acl1,fw1,ipc1] [--format json]

For each set: rules, acl entries with native range match, with ranges as
ternary (`--no-range`), the naive prefix expansion (every port range as its
prefix cover, no merging, no redundancy removal), and compile time (policy
to WriteRequest, front end excluded and reported apart).
Anchors: naive expansion needs up to 30 entries per 16-bit range; published
ACL compressors reach about 50% of the original rule count.
Target: fewer entries than naive by at least half; 10k rules compile in < 10 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.backends.p4 import engine  # noqa: E402
from anyplane.backends.p4.pipeline import Features, Names, p4info  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

from bench import classbench, report  # noqa: E402


def measure(name: str) -> dict:
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    t0 = time.perf_counter()
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    t1 = time.perf_counter()
    row = {"set": name, "rules": len(rules), "frontend_s": round(t1 - t0, 2)}
    for label, features in (("range", Features(acl_size=1 << 20)),
                            ("ternary", Features(range_match=False, acl_size=1 << 20))):
        t2 = time.perf_counter()
        _, names, entries = engine.build_all(program, features)
        req, _ = engine.write_request(Names(p4info(features)), entries)
        seconds = time.perf_counter() - t2
        row[f"{label}_entries"] = len(entries.acl)
        row[f"{label}_naive"] = entries.naive
        row[f"{label}_compile_s"] = round(seconds, 2)
        row[f"{label}_write_bytes"] = req.ByteSize()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1k,10k")
    ap.add_argument("--sets", default="acl1,fw1,ipc1")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    def line(row: dict) -> str:
        return (f"{row['set']:>9}: {row['rules']:>6} rules | range {row['range_entries']:>6} entries "
                f"({row['range_entries'] / row['range_naive']:.0%} of naive {row['range_naive']}) "
                f"{row['range_compile_s']:.2f} s | no-range {row['ternary_entries']:>6} "
                f"({row['ternary_entries'] / row['ternary_naive']:.0%} of naive) "
                f"{row['ternary_compile_s']:.2f} s | front end {row['frontend_s']:.2f} s")

    cases = [(f"{s}_{size}",) for size in args.sizes.split(",") for s in args.sets.split(",")]
    report.run(cases, measure, line, args.format)

if __name__ == "__main__":
    main()
