"""Figures for inputs at the edges: one rule with thousands of addresses, and the request normal form.

    python bench/wide.py [--sizes 2000,20000] [--format json]

A rule naming N source addresses goes through `check` and `compile` for each
target in a fresh process (wall time, start-up included). Target: linear in N, 20,000
addresses in seconds. Then the sidecar's normal form (`anyplane.ir.http`):
hostile request targets normalised per second by the model the verifier uses.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = [("check", []), ("compile -t ir", ["compile", "-t", "ir"]), ("compile -t p4", ["compile", "-t", "p4"]),
         ("compile -t ebpf", ["compile", "-t", "ebpf"]), ("compile -t envoy", ["compile", "-t", "envoy"])]


def wide_policy(n: int) -> str:
    """One allow naming n distinct host addresses."""
    addrs = ", ".join(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1, n + 1))
    return ("service web { address 192.168.0.0/24 port 80 http }\ndefault deny\n"
            f"allow {addrs} -> web tcp 80\n")


def run_step(args: list[str], policy: Path, out: Path) -> dict:
    """Wall time (start-up included) and exit status of one anyplane command."""
    cmd = [sys.executable, "-m", "anyplane.compiler"] + (args or ["check"]) + [str(policy)]
    if args:
        cmd += ["-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return {"seconds": time.perf_counter() - t0, "exit": proc.returncode}


def normal_form_rate(n: int = 20000) -> float:
    """Hostile request targets per second through the model's normalisation."""
    sys.path.insert(0, str(ROOT))
    from anyplane.ir import http

    rng = random.Random(3)
    pieces = ["/", "//", ".", "..", "%2e", ";", "%3b", "a", "b", "%41", "%c3%a9", "\\", "?q=1", "%%30%30", "x" * 20]
    targets = ["/" + "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))) for _ in range(n)]
    t0 = time.perf_counter()
    for t in targets:
        try:
            http.parse_target(t)
        except http.Rejected:
            pass
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            policy = Path(tmp) / f"wide{n}.ap"
            policy.write_text(wide_policy(n))
            for k, (label, step) in enumerate(STEPS):
                print(f"  {n} addresses: {label} ...", file=sys.stderr, flush=True)
                rows.append({"addresses": n, "step": label, **run_step(step, policy, Path(tmp) / f"out{n}-{k}")})
    rate = normal_form_rate()
    if args.format == "json":
        print(json.dumps({"wide_rule": rows, "normal_form_targets_per_s": rate}, indent=2))
        return
    print(f"{'addresses':>9}  {'step':<17} {'seconds':>8} {'exit':>4}")
    for r in rows:
        print(f"{r['addresses']:>9}  {r['step']:<17} {r['seconds']:>8.2f} {r['exit']:>4}")
    print(f"normal form (the verifier's model of the sidecar): {rate:,.0f} hostile targets/s")
    print("target: linear in the number of addresses; 20,000 addresses in seconds")


if __name__ == "__main__":
    main()
