"""Front-end figures: parse / check / lower time and peak memory at 1k, 10k and 100k rules.

    python bench/frontend.py [--sizes 1000,10000,100000] [--format json]

Two workloads per size: a synthetic policy (bench/synth.py: services, versions,
L4 and HTTP rules, priorities) and ClassBench acl1 converted to a policy
(bench/classbench.py). Each measurement runs in a fresh process so that peak
RSS belongs to that size alone. Target: 100k rules in at most 10 s and 1 GiB,
cost linear in rule count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import classbench, synth  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from anyplane.compiler.pipeline import check_policy, lower_policy, parse_policy, read_sources, _no_gc_pauses
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with _no_gc_pauses():
    t0 = time.perf_counter(); sources = read_sources([sys.argv[1]])
    t1 = time.perf_counter(); policy = parse_policy(sources)
    t2 = time.perf_counter(); symbols = check_policy(policy)
    t3 = time.perf_counter(); program = lower_policy(policy, symbols)
    t4 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rules": len(program.rules), "entries": len(program.acl.entries), "read_s": t1 - t0,
                  "parse_s": t2 - t1, "check_s": t3 - t2, "lower_s": t4 - t3, "total_s": t4 - t0,
                  "peak_rss_mib": peak / 1024, "startup_rss_mib": base / 1024}))
"""


def _policy(workload: str, size: int, tmp: Path) -> Path | None:
    path = tmp / f"{workload}_{size}.ap"
    if workload == "synthetic":
        path.write_text(synth.generate(size))
        return path
    name = {1000: "acl1_1k", 10000: "acl1_10k", 100000: "acl1_100k"}.get(size)
    rules_file = classbench.DATA / f"{name}.rules" if name else None
    if rules_file is None or not rules_file.exists():
        return None
    path.write_text(classbench.to_policy(classbench.read_rules(rules_file), name))
    return path


def measure(path: Path) -> dict:
    """Run the front end on one file in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in ("synthetic", "classbench-acl1"):
            for size in sizes:
                path = _policy(workload, size, Path(tmp))
                if path is None:
                    continue
                if args.format == "text":
                    print(f"  {workload} {size} ...", file=sys.stderr, flush=True)
                row = {"workload": workload, "size": size, "bytes": os.path.getsize(path), **measure(path)}
                row["us_per_rule"] = row["total_s"] / row["rules"] * 1e6
                results.append(row)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return
    print(f"{'workload':<16} {'rules':>7} {'parse s':>8} {'check s':>8} {'lower s':>8} {'total s':>8} "
          f"{'us/rule':>8} {'peak MiB':>9}")
    for r in results:
        print(f"{r['workload']:<16} {r['rules']:>7} {r['parse_s']:>8.2f} {r['check_s']:>8.2f} {r['lower_s']:>8.2f} "
              f"{r['total_s']:>8.2f} {r['us_per_rule']:>8.1f} {r['peak_rss_mib']:>9.0f}")
    print("target: 100k rules in <= 10 s and <= 1024 MiB, linear in rule count")


if __name__ == "__main__":
    main()
