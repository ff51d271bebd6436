"""Fabric-engine figures: acl entries per ClassBench set, native ranges and --no-range, against naive expansion.

    python bench/fabric.py [--sizes 1k,10k] [--sets acl1,fw1,ipc1] [--format json]

For each set: rules, acl entries with native range match, with ranges as
ternary (`--no-range`), the naive prefix expansion (every port range as its
prefix cover, no merging, no redundancy removal), and compile time (policy
to WriteRequest, front end excluded and reported apart).
Anchors: naive expansion needs up to 30 entries per 16-bit range; published
ACL compressors reach about 50% of the original rule count.
Target: fewer entries than naive by at least half; 10k rules compile in < 10 s.
With --bmv2: packets per second through BMv2 running the generated pipeline at 1k and 10k acl entries,
against the same switch with an empty acl (the ratio is the figure).
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
    ap.add_argument("--bmv2", action="store_true",
                    help="also forward packets through BMv2 (root, and the toolchain make test installs)")
    args = ap.parse_args()
    def line(row: dict) -> str:
        return (f"{row['set']:>9}: {row['rules']:>6} rules | range {row['range_entries']:>6} entries "
                f"({row['range_entries'] / row['range_naive']:.0%} of naive {row['range_naive']}) "
                f"{row['range_compile_s']:.2f} s | no-range {row['ternary_entries']:>6} "
                f"({row['ternary_entries'] / row['ternary_naive']:.0%} of naive) "
                f"{row['ternary_compile_s']:.2f} s | front end {row['frontend_s']:.2f} s")

    cases = [(f"{s}_{size}",) for size in args.sizes.split(",") for s in args.sets.split(",")]
    report.run(cases, measure, line, args.format)
    if args.bmv2:
        rows = bmv2_rates(args.sizes.split(","))
        if args.format == "json":
            print(__import__("json").dumps(rows, indent=2))
        for r in rows:
            print(f"BMv2 {r['set']}: {r['acl_entries']} acl entries, {r['policy_pps']} packets/s against "
                  f"{r['empty_pps']} with an empty acl (ratio {r['ratio']:.2f}); push {r['push_s']} s")


def bmv2_rates(sizes: list[str], n: int = 4000) -> list[dict]:
    """Packets per second through BMv2 running the generated pipeline: ClassBench acl1 sets of each size
    against the same switch with an empty acl (default allow), on frames every policy forwards."""
    import os

    from anyplane.backends.ebpf import packet
    from anyplane.backends.p4.push import push
    from anyplane.ir.flowgen import FlowGen
    from anyplane.ir.interp import evaluate
    from google.protobuf import text_format

    os.environ.setdefault("ANYPLANE_P4_TOOLS", str(ROOT / ".p4tools"))
    from tests.bmv2 import Bmv2, compile_program

    rows = []
    with __import__("tempfile").TemporaryDirectory() as tmp:
        features = Features()
        config, _ = compile_program(engine.program_text(features), Path(tmp))
        info = Path(tmp) / "p4info.txt"
        info.write_text(text_format.MessageToString(p4info(features)))
        empty = compile_sources([("empty.ap", "default allow\n")]).program
        for size in sizes:
            rules = classbench.read_rules(classbench.DATA / f"acl1_{size}.rules")
            program = compile_sources([("acl1.ap", classbench.to_policy(rules, "acl1").replace(
                "default deny", "default allow"))]).program
            flows = [f.without_http() for f in FlowGen(program, seed=5, http_share=0).flows(4 * n)]
            flows = [f for f in flows if evaluate(program, f).verdict == "allow"][:n]
            frames = [packet.frame(f, payload=k.to_bytes(4, "big")) for k, f in enumerate(flows)]
            with Bmv2() as sw:
                push(empty, sw.addr, sw.device_id, features, pipeline_config=(str(info), str(config)))
                base = sw.throughput(frames)
                t = time.perf_counter()
                result = push(program, sw.addr, sw.device_id, features)
                push_s = time.perf_counter() - t
                loaded = sw.throughput(frames)
            rows.append({"set": f"acl1_{size}", "acl_entries": result["entries"], "empty_pps": round(base),
                         "policy_pps": round(loaded), "ratio": round(loaded / base, 3), "push_s": round(push_s, 2)})
    return rows


if __name__ == "__main__":
    main()
