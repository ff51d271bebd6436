"""Connection-tracking figures for the kernel engine (BPF_PROG_TEST_RUN, the running kernel).

    python bench/conntrack.py [--sizes 10,10000] [--connections 20000] [--format json]

For the ClassBench acl1 set cut to each size and made stateful: the kernel's
own mean ns for

    new        the opening packet of a new connection: classification, then the table insert
    reply      a reply of a known connection (a table lookup in each direction, no classification)
    again      a further packet of a known connection going its own way (lookup, the entry's decision)
    stateless  the same packet under the same rules without connection state (classification only)

each frame run 2,000 times. A new connection's SYN opens a connection at its
first run only, so `new` is measured in two parts: a denied SYN (the same path:
classification and two lookups that miss, no insert, no state left) run 2,000
times, plus the cost of one insert into a full 1M-entry LRU table of the same
key and value, measured by a small program inserting random keys.
New connections per second per core follow from `new` (program time only, no
driver or stack). Memory: the
kernel's accounting (`bytes_memlock`) for a table of 1,048,576 connections
(key 40 bytes, value 32, plus the LRU hash's own per-element overhead).

Anchors: Cilium sizes its connection-tracking maps at 512k TCP and 256k
non-TCP entries per node by default; nf_conntrack (nftables `ct state`) keeps
one `struct nf_conn` per connection, whose slab object size this machine's
/proc/slabinfo reports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.backends.ebpf import bpfsys as B  # noqa: E402
from anyplane.backends.ebpf import packet  # noqa: E402
from anyplane.backends.ebpf.emit import compile_c  # noqa: E402
from anyplane.backends.ebpf.engine import build_all  # noqa: E402
from anyplane.backends.ebpf.loader import XDP_PASS, Classifier  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402
from anyplane.ir.conn import reverse  # noqa: E402
from anyplane.ir.flow import Flow  # noqa: E402

from bench import classbench  # noqa: E402

TABLE = 1 << 20
REPEAT = 2000   # runs per frame where the packet's state does not change
SAMPLE = 64     # frames measured that way


def _policy(rules, name: str, stateful: bool) -> str:
    text = classbench.to_policy(rules, name).replace("stateless\n", "")
    return text + (f"connections {{ max {TABLE} }}\n" if stateful else "stateless\n")


def _flows(stateless_fd: int, n: int, rng) -> tuple[list[Flow], list[Flow]]:
    """Distinct TCP flows from the set's trace (source addresses and ports varied): (allowed, denied) by
    the rules, as the stateless program in the kernel says."""
    trace = [t for t in classbench.read_trace(classbench.DATA / "acl1_10k.trace") if t[4] == 6]
    allowed, denied, seen = [], [], set()
    for _ in range(100 * n):
        if len(allowed) >= n and len(denied) >= SAMPLE:
            break
        src, dst, sport, dport, proto = rng.choice(trace)
        if rng.random() < 0.5:
            src ^= rng.randrange(256)
        if rng.random() < 0.5:
            sport = rng.randrange(1024, 65536)
        k = (src, dst, sport, dport)
        if k in seen:
            continue
        seen.add(k)
        f = Flow(4, src, dst, 6, sport, dport)
        ok = B.test_run(stateless_fd, packet.frame(f), 1)[0] == XDP_PASS
        (allowed if ok else denied).append(f)
    return allowed[:n], denied[:SAMPLE]


def _ns(fd: int, frames: list[bytes], repeat: int = 1) -> float:
    return statistics.mean(B.test_run(fd, f, repeat)[1] for f in frames)


def _loaded(program, name: str) -> Classifier:
    c = build_all(program)
    cl = Classifier(f"bench-ct-{name}-{os.getpid()}")
    cl.install(compile_c(c.source), c.layout)
    cl.write(c.tables)
    return cl


def _memlock(cl: Classifier) -> int:
    info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(cl.root / "maps" / "ct")],
                                     capture_output=True, text=True, check=True).stdout)
    return int(info.get("bytes_memlock", 0))


INSERT_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct ct_key { __u8 family, proto; __u16 sport, dport, pad; __u8 src[16], dst[16]; };
struct ct_val { __u64 last; __u32 epoch, rule, bucket, icmp, state, pad; };
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct ct_key); __type(value, struct ct_val);
         __uint(max_entries, %d); } ct SEC(".maps");
SEC("xdp")
int insert(struct xdp_md *ctx)
{
    struct ct_key k = { .family = 4, .proto = 6 };
    struct ct_val v = { .last = bpf_ktime_get_ns() };
    __u32 r = bpf_get_prandom_u32(), s = bpf_get_prandom_u32();
    __builtin_memcpy(k.src, &r, 4);
    __builtin_memcpy(k.dst, &s, 4);
    bpf_map_update_elem(&ct, &k, &v, BPF_ANY);
    return XDP_PASS;
}
SEC("xdp")
int nothing(struct xdp_md *ctx)
{
    __u32 r = bpf_get_prandom_u32(), s = bpf_get_prandom_u32();
    return r == s ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
""" % TABLE


def insert_cost() -> float:
    """ns to insert a new connection into a full 1M-entry LRU table of anyplane's key and value (random
    keys; beside the same program without the insert)."""
    pin = Path(f"/sys/fs/bpf/anyplane-bench-insert-{os.getpid()}")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "insert.o"
        obj.write_bytes(compile_c(INSERT_C))
        subprocess.run(["bpftool", "prog", "loadall", str(obj), str(pin)], check=True, capture_output=True)
    try:
        fd, base = B.obj_get(str(pin / "insert")), B.obj_get(str(pin / "nothing"))
        frame = packet.frame(Flow(4, 1, 2, 6, 1, 2))
        try:
            B.test_run(fd, frame, 2 * TABLE)  # fill the table: later inserts evict, as in steady state
            return statistics.mean(B.test_run(fd, frame, 100000)[1] - B.test_run(base, frame, 100000)[1]
                                   for _ in range(5))
        finally:
            os.close(fd)
            os.close(base)
    finally:
        shutil.rmtree(pin, ignore_errors=True)


def measure(size: int, connections: int, rng, insert_ns: float) -> dict:
    rules = classbench.read_rules(classbench.DATA / "acl1_10k.rules")[:size]
    stateful = compile_sources([("acl.ap", _policy(rules, "acl1", True))]).program
    stateless = compile_sources([("acl.ap", _policy(rules, "acl1", False))]).program
    cl = _loaded(stateless, f"{size}-stateless")
    try:
        fd = cl.prog_fd()
        try:
            flows, refused = _flows(fd, connections, rng)
            syn = [packet.frame(f, tcp="S") for f in flows]
            alone = _ns(fd, syn[:SAMPLE], REPEAT) if flows else 0.0
        finally:
            os.close(fd)
    finally:
        cl.remove()
    if not flows or not refused:
        return {"rules": size, "error": "the trace has too few allowed or denied flows"}
    replies = [packet.frame(reverse(f), tcp="SA") for f in flows]
    again = [packet.frame(f, tcp="A") for f in flows]
    denied = [packet.frame(f, tcp="S") for f in refused]
    cl = _loaded(stateful, str(size))
    try:
        fd = cl.prog_fd()
        try:
            _ns(fd, syn)  # each once: every run opens a connection
            reply = _ns(fd, replies[:SAMPLE], REPEAT)
            known = _ns(fd, again[:SAMPLE], REPEAT)
            # A denied SYN takes a new connection's path (classification, two lookups that miss) but for
            # the insert, and leaves no state, so it can run many times; the insert is measured apart.
            new = _ns(fd, denied, REPEAT) + insert_ns
        finally:
            os.close(fd)
        held = cl.connections()["held"]
        memory = _memlock(cl)
    finally:
        cl.remove()
    return {"rules": size, "connections": len(flows), "held": held, "new_ns": round(new, 1),
            "reply_ns": round(reply, 1), "again_ns": round(known, 1), "stateless_ns": round(alone, 1),
            "new_per_s_per_core": int(1e9 / new), "table_bytes_per_1m": memory * (1 << 20) // TABLE,
            "entry_bytes": 72}


def _nf_conn_size() -> int | None:
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines():
            if line.startswith("nf_conntrack "):
                return int(line.split()[3])
    except OSError:
        pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,10000")
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    rng = random.Random(7)
    rows = []
    print("  the insert into a full table ...", file=sys.stderr, flush=True)
    insert = insert_cost()
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"  acl1, {size} rules ...", file=sys.stderr, flush=True)
        rows.append(measure(size, args.connections, rng, insert))
    nf_conn = _nf_conn_size()
    if args.format == "json":
        print(json.dumps({"rows": rows, "insert_ns": round(insert, 1), "nf_conn_bytes": nf_conn}, indent=2))
        return
    print(f"{'rules':>6} {'conns':>6} {'new ns':>7} {'reply ns':>9} {'again ns':>9} {'stateless ns':>13} "
          f"{'new/s/core':>11} {'MiB per 1M':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['rules']:>6}  failed: {r['error']}")
            continue
        print(f"{r['rules']:>6} {r['connections']:>6} {r['new_ns']:>7.0f} {r['reply_ns']:>9.0f} {r['again_ns']:>9.0f} "
              f"{r['stateless_ns']:>13.0f} {r['new_per_s_per_core']:>11,} {r['table_bytes_per_1m'] / 2**20:>11.1f}")
    print(f"ns: the kernel's mean per packet (new: a denied SYN's path plus the insert into a full table, "
          f"{insert:.0f} ns)")
    print("table: 40-byte key + 32-byte value per connection, plus the LRU hash's per-element overhead")
    if nf_conn:
        print(f"anchor: nf_conntrack (nftables ct state) keeps a {nf_conn}-byte struct nf_conn per connection here "
              f"({nf_conn * (1 << 20) / 2**20:.0f} MiB per 1M, before extensions); Cilium's default tables hold 512k "
              "TCP and 256k non-TCP connections per node")


if __name__ == "__main__":
    main()
