"""`compile -t all` figures: every engine's artifacts plus the composition proof, and the proof's share.

    python bench/compose.py [--sets acl1_1k,acl1_10k,synthetic_10k] [--format json]

Target: at 10k rules, everything (front end, three engines, placement, proof) in at most 60 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.backends.ebpf import engine as kernel  # noqa: E402
from anyplane.backends.envoy import engine as sidecar  # noqa: E402
from anyplane.backends.p4 import engine as fabric  # noqa: E402
from anyplane.backends.p4.pipeline import Features  # noqa: E402
from anyplane.compiler.commands.placement import place, prove_path  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

from bench import classbench, synth  # noqa: E402


def source(name: str) -> str:
    if name.startswith("synthetic_"):
        return synth.generate(int(name.split("_")[1].replace("k", "000")))
    return classbench.to_policy(classbench.read_rules(classbench.DATA / f"{name}.rules"), name)


def measure(name: str) -> dict:
    text = source(name)
    t0 = time.perf_counter()
    program = compile_sources([(f"{name}.ap", text)]).program
    t1 = time.perf_counter()
    outputs = {"fabric": fabric.emit(program, Features(acl_size=1 << 20)), "kernel": kernel.emit(program),
               "sidecar": sidecar.emit(program)}
    t2 = time.perf_counter()
    rows = place(program, ["fabric", "kernel", "sidecar"], outputs)
    result = prove_path(program, ["fabric", "kernel", "sidecar"])
    t3 = time.perf_counter()
    total = t3 - t0
    return {"set": name, "rules": len(program.rules), "frontend_s": round(t1 - t0, 2),
            "engines_s": round(t2 - t1, 2), "placement_and_proof_s": round(t3 - t2, 2),
            "proof_s": round(result.seconds, 2), "total_s": round(total, 2),
            "proof_share": round(result.seconds / total, 3), "proved": result.proved,
            "unplaced": sum(1 for r in rows if r.placed is None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="acl1_1k,acl1_10k,fw1_10k,synthetic_10k")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    rows = []
    for name in args.sets.split(","):
        row = measure(name)
        rows.append(row)
        if args.format == "text":
            print(f"{name:>14}: {row['rules']:>6} rules  total {row['total_s']:>6.1f} s  (front end "
                  f"{row['frontend_s']:.1f}, engines {row['engines_s']:.1f}, proof {row['proof_s']:.1f} s = "
                  f"{row['proof_share']:.0%})  proved={row['proved']}", flush=True)
    if args.format == "json":
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
