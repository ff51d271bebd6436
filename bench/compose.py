"""`compile -t all` figures: every engine's artifacts plus the composition proof, and the proof's share.

    python bench/compose.py [--sets acl1_1k,acl1_10k,synthetic_10k] [--format json]

Target: at 10k rules, everything (front end, three engines, placement, proof) in at most 60 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.backends import registry  # noqa: E402
from anyplane.backends.base import Options  # noqa: E402
from anyplane.compiler import place as placement  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

from bench import classbench, report, synth  # noqa: E402


def source(name: str) -> str:
    if name.startswith("synthetic_"):
        return synth.generate(int(name.split("_")[1].replace("k", "000")))
    return classbench.to_policy(classbench.read_rules(classbench.DATA / f"{name}.rules"), name)


def measure(name: str, prefer: str, capacity: int | None = None) -> dict:
    text = source(name)
    t0 = time.perf_counter()
    program = compile_sources([(f"{name}.ap", text)]).program
    t1 = time.perf_counter()
    plan = placement.plan(program, placement.regions(program, ("fabric", "kernel", "sidecar")), prefer,
                          {"fabric": capacity} if capacity else None)
    t2 = time.perf_counter()
    programs = plan.programs
    outputs = {where: registry.at(where).emit(sub, Options(capacity=1 << 20)) for where, sub in programs.items()}
    t3 = time.perf_counter()
    result = placement.prove(program, plan, outputs=outputs)
    t4 = time.perf_counter()
    total = t4 - t0
    return {"set": name, "prefer": prefer, "capacity": capacity, "rules": len(program.rules),
            "frontend_s": round(t1 - t0, 2), "placement_s": round(t2 - t1, 2), "engines_s": round(t3 - t2, 2), "proof_s": round(t4 - t3, 2),
            "total_s": round(total, 2), "proof_share": round((t4 - t3) / total, 3), "proved": result.proved,
            "questions": result.questions,
            "held": {p: len(sub.rules) for p, sub in programs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="acl1_1k,acl1_10k,fw1_10k,synthetic_10k")
    ap.add_argument("--prefer", default="early", help="early, late or everywhere (comma-separated for several)")
    ap.add_argument("--capacity", type=int, default=None,
                    help="switch capacity in entries (rules that do not fit spill to the kernel)")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    def line(row: dict) -> str:
        held = ", ".join(f"{p} {n}" for p, n in row["held"].items())
        cap = f" cap {row['capacity']}" if row["capacity"] else ""
        return (f"{row['set']:>14} {row['prefer'] + cap:<10}: {row['rules']:>6} rules  total {row['total_s']:>6.1f} s  "
                f"(front end {row['frontend_s']:.1f}, placement {row['placement_s']:.1f}, engines "
                f"{row['engines_s']:.1f}, proof {row['proof_s']:.1f} s = {row['proof_share']:.0%})  "
                f"proved={row['proved']} ({row['questions']} solver questions)  rules held: {held}")

    cases = [(name, prefer) for name in args.sets.split(",") for prefer in args.prefer.split(",")]
    report.run(cases, lambda name, prefer: measure(name, prefer, args.capacity), line, args.format)

if __name__ == "__main__":
    main()
