"""Verification figures: full `verify`, one query, and `diff`, on ClassBench and synthetic L7 policies.

    python bench/verify.py [--sizes 1000,10000] [--format json] [--against REV]

Per policy: time to load and encode, full verify (asserts, dead, redundant,
conflicts, routes) and the solver calls it needed; the mean time of 50
random queries after loading; and diff of two versions that differ in 10
rules. Targets at 10k rules: verify <= 10 s (<= 5 s for the ClassBench
sets), a query <= 100 ms, diff <= 5 s, near-linear in rule count.

`--against REV` also times `verify` of each ClassBench set with the code of
another commit (a git worktree, run in a child process beside a child of this
checkout, one after the other; each converts the rules with its own
bench/classbench.py) and says whether the findings are the same (kind and
rule of each).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.compiler.launch import GC_THRESHOLDS, tune_gc  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402
from anyplane.compiler.whatif import query_pattern  # noqa: E402
from anyplane.verify.context import Analysis  # noqa: E402
from anyplane.verify.diff import diff  # noqa: E402
from anyplane.verify.reach import reachability  # noqa: E402
from anyplane.verify.run import verify  # noqa: E402

from bench import classbench, synth  # noqa: E402

NAMES = {1000: "1k", 10000: "10k"}


def workloads(sizes):
    """(name, policy text) pairs."""
    for size in sizes:
        for family in ("acl1", "fw1", "ipc1"):
            path = classbench.DATA / f"{family}_{NAMES.get(size, size)}.rules"
            if path.exists():
                yield f"classbench-{family}", size, classbench.to_policy(classbench.read_rules(path), path.stem)
        yield "synthetic-l7", size, synth.generate(size)


def _queries(text: str, compiled, n: int, rng: random.Random) -> list[str]:
    rules = [line for line in text.splitlines() if line.startswith(("allow", "deny"))]
    out = []
    for line in rng.sample(rules, min(n, len(rules))):
        body = line.split(None, 1)[1]
        out.append(body.split(" priority")[0].split(" rate")[0])
    return out


def _edit(text: str, n: int, rng: random.Random) -> str:
    lines = text.splitlines()
    idx = [i for i, line in enumerate(lines) if line.startswith(("allow", "deny"))]
    for i in rng.sample(idx, min(n, len(idx))):
        line = lines[i]
        verdict, rest = line.split(None, 1)
        rest = re.sub(r" rate \S+( burst \d+)?", "", rest)  # a deny cannot keep a rate limit
        lines[i] = f"{'deny' if verdict == 'allow' else 'allow'} {rest}"
    return "\n".join(lines) + "\n"


def measure(name: str, size: int, text: str) -> dict:
    """Figures for one policy."""
    rng = random.Random(7)
    t0 = time.perf_counter()
    compiled = compile_sources([(f"{name}.ap", text)])
    t1 = time.perf_counter()
    report = verify(compiled.program)
    t2 = time.perf_counter()
    analysis = Analysis(compiled.program)
    queries = [query_pattern(compiled, q) for q in _queries(text, compiled, 50, rng)]
    t3 = time.perf_counter()
    for q in queries:
        reachability(analysis, q)
    t4 = time.perf_counter()
    edited = compile_sources([(f"{name}.ap", _edit(text, 10, rng))])
    t5 = time.perf_counter()
    d = diff(compiled.program, edited.program)
    t6 = time.perf_counter()
    kinds = {}
    for f in report.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {"workload": name, "rules": len(compiled.program.rules), "compile_s": t1 - t0, "verify_s": t2 - t1,
            "solver_calls": report.solver_calls, "findings": kinds,
            "query_ms": (t4 - t3) / max(1, len(queries)) * 1000, "diff_s": t6 - t5,
            "diff_classes": len(d.newly_allowed) + len(d.newly_denied) + len(d.changed)}


#: Run in a child: verify one ClassBench set (argv: the directory holding the `anyplane` package, the tree
#: whose bench/classbench.py converts the rules, the rules file, the collector's thresholds).
CHILD = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from anyplane.compiler.pipeline import compile_sources
from anyplane.verify.run import verify
sys.path.insert(1, sys.argv[2])
from bench import classbench
path = classbench.DATA / sys.argv[3]
text = classbench.to_policy(classbench.read_rules(path), path.stem)
gc.set_threshold(*json.loads(sys.argv[4]))  # the CLI's (older commits had no launch.tune_gc)
compiled = compile_sources([("p.ap", text)])
t = time.perf_counter()
report = verify(compiled.program)
seconds = time.perf_counter() - t
first = min(e.origin.line for e in compiled.program.acl.entries)  # findings by rule, not by line
found = sorted({(f.kind, f.span.line - first if f.span else -1) for f in report.findings})
print(json.dumps({"verify_s": seconds, "findings": found}))
"""


def _child(package_parent: Path, rules: str) -> dict:
    """verify in a child, with the package under `package_parent` and its tree's own bench/classbench.py
    (the policy as that commit's language writes it)."""
    tree = (package_parent / "anyplane").resolve()
    out = subprocess.run([sys.executable, "-c", CHILD, str(package_parent), str(tree), rules,
                          json.dumps(GC_THRESHOLDS)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def against(rev: str, sizes) -> list[dict]:
    """verify of each ClassBench set here and at another commit, in children of their own."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="anyplane-bench-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            for parent, target in ((Path(tmp) / "then", tree), (Path(tmp) / "now", ROOT)):
                parent.mkdir()
                (parent / "anyplane").symlink_to(target)
            for size in sizes:
                for family in ("acl1", "fw1", "ipc1"):
                    rules = f"{family}_{NAMES.get(size, size)}.rules"
                    if not (classbench.DATA / rules).exists():
                        continue
                    print(f"  {rules} here and at {rev} ...", file=sys.stderr, flush=True)
                    now, then = _child(Path(tmp) / "now", rules), _child(Path(tmp) / "then", rules)
                    mine, theirs = {tuple(f) for f in now["findings"]}, {tuple(f) for f in then["findings"]}
                    rows.append({"rules": rules, "verify_s": now["verify_s"], "then_s": then["verify_s"],
                                 "same_findings": mine == theirs, "findings": len(mine),
                                 "differing": sorted(mine ^ theirs)})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.add_argument("--against", metavar="REV", help="also time verify of the ClassBench sets at this commit")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.against:
        rows = against(args.against, sizes)
        if args.format == "json":
            print(json.dumps(rows, indent=2))
            return
        print(f"{'rules':<18} {'verify s':>9} {args.against[:10] + ' s':>13}  same findings")
        for r in rows:
            differing = "; ".join(f"{kind} at rule {k + 1}" for kind, k in r["differing"][:4])
            print(f"{r['rules']:<18} {r['verify_s']:>9.2f} {r['then_s']:>13.2f}  "
                  + (f"yes ({r['findings']})" if r["same_findings"] else
                     f"{len(r['differing'])} of {r['findings']} differ: {differing}"))
        print("target: verify <= 5 s for every 10k ClassBench set")
        return
    tune_gc()  # as the CLI runs
    rows = []
    for name, size, text in workloads(sizes):
        print(f"  {name} {size} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, size, text))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return
    print(f"{'workload':<18} {'rules':>6} {'verify s':>9} {'solver':>7} {'query ms':>9} {'diff s':>7}  findings")
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["findings"].items()))
        print(f"{r['workload']:<18} {r['rules']:>6} {r['verify_s']:>9.2f} {r['solver_calls']:>7} "
              f"{r['query_ms']:>9.1f} {r['diff_s']:>7.2f}  {kinds}")
    print("targets at 10k rules: verify <= 10 s, query <= 100 ms, diff <= 5 s")


if __name__ == "__main__":
    main()
