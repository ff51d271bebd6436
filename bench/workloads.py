"""Figures for policies over workloads: analyses without a binding, a binding of N pods, the kernel
engine under pods that come and go, and the Kubernetes export of the workloads.

    python bench/workloads.py [--pods 200,1000,5000] [--format json]

The policy: N/20 namespaces of five workloads each (web, api, db, cache, worker, selected by `app`),
tier-to-tier rules, monitoring from one namespace, DNS to kube-system, outside partners by CIDR, and
an assertion per namespace. The binding: N pods spread over the workloads (one address each).

    check        parse, check and lower without a binding (placeholders)
    verify       `verify` without a binding: findings and assertions over the workloads
    bind         the same with the binding of N pods (reading the pods included)
    kernel       the kernel engine's tables for the bound policy (build), and the push of a classifier
    switch       the switch's entries for the bound policy (the suite's P4Runtime server), and what the
                 push of a changed binding writes (endpoint entries: the switch's address-to-identity
                 tables), through the session `push --watch` keeps, and as a push alone
    change       one pod replaced by another (a new address in the same /24): the push of the new
                 binding, with the program left loaded and written as a delta into the idle generation,
                 until a packet of the new pod is judged by it (BPF_PROG_TEST_RUN)
    export       `-t k8s` of the unbound policy with its proof, and the lines written per line of policy

The policy does not grow with the pods; what depends on them is the binding's read and the kernel's
address map. There is no peer on this machine for a kernel that follows pods (Cilium's agent needs a
cluster); network-config-analyzer's figures for a cluster of this size are in bench/cluster.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.compiler import api, binding  # noqa: E402
from anyplane.compiler.launch import tune_gc  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

TIERS = ("web", "api", "db", "cache", "worker")


def policy(pods: int) -> str:
    namespaces = max(1, pods // 20)
    lines = []
    for n in range(namespaces):
        for t in TIERS:
            lines.append(f"workload {t}-{n} {{ namespace team{n} labels app={t} port 8080 http port 5432 tcp }}")
    lines.append("workload prometheus { namespace monitoring labels app=prometheus }")
    lines.append("workload coredns { namespace kube-system labels k8s-app=kube-dns port 53 udp }")
    lines.append("external partners { address 198.51.100.0/24 }")
    lines.append("external internet { address 0.0.0.0/0 }")
    lines.append("default deny")
    for n in range(namespaces):
        lines += [f"allow internet -> web-{n} tcp 8080", f"allow web-{n} -> api-{n} tcp 8080",
                  f"allow api-{n} -> db-{n} tcp 5432", f"allow api-{n} -> cache-{n} tcp 5432",
                  f"allow worker-{n} -> db-{n} tcp 5432", f"allow worker-{n} -> partners tcp 443",
                  f"assert not reachable web-{n} -> db-{n} tcp 5432"]
    lines.append("allow prometheus -> any tcp 9090")
    lines.append("allow any -> coredns udp 53")
    return "\n".join(lines) + "\n"


def pods_doc(pods: int, moved: int | None = None) -> dict:
    """N pods over the workloads; `moved`: that pod gets a new address (it left, another started)."""
    namespaces = max(1, pods // 20)
    items = []
    for k in range(pods):
        n, t = k % namespaces, TIERS[(k // namespaces) % len(TIERS)]
        last = (k & 127) + (128 if k == moved else 0)  # pods at .0-.127 of each /24; a new one above
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"{t}-{k}", "namespace": f"team{n}", "labels": {"app": t}},
                      "status": {"podIP": f"10.{64 + (k >> 15)}.{(k >> 7) & 255}.{last}"}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


#: Membership changes timed (the pod moves, then moves back): the median and the range are printed.
CHANGES = 9


def kernel_figures(program, changed, tmp: Path) -> dict:
    """The kernel engine: tables, first push, and the push of a changed binding until a packet of the
    new pod is judged by it."""
    from anyplane.backends.ebpf import packet
    from anyplane.backends.ebpf.engine import build_all, push
    from anyplane.backends.ebpf.loader import SLOT_REUSE_MS, Classifier, run_frames
    from anyplane.ir.flow import Flow

    built, build_s = timed(lambda: build_all(program))
    if os.geteuid() != 0 or not os.path.ismount("/sys/fs/bpf"):
        return {"build_s": build_s, "entries": len(built.model.entries), "skipped": "needs root and bpffs"}
    name = f"bench-wl-{os.getpid()}"
    try:
        first, first_s = timed(lambda: push(program, None, name))
        push(program, None, name)  # both generations hold it: a change is then written as a delta
        # The moved pod (of api-0) reaches db-0 only under the new binding.
        new = next(r.prefix for r in changed.endpoints if r.prefix.family == 4 and r.prefix.length == 32
                   and r.prefix.value not in {p.prefix.value for p in program.endpoints})
        db = next(r.prefix for r in changed.endpoints if r.identity == "db-0")
        frame = packet.frame(Flow(4, new.value, db.value, 6, 40000, 5432), tcp="S")
        cl = Classifier(name)
        # The pod moves and moves back, CHANGES times: each change timed from the push until a packet of the
        # moved pod gets the new binding's verdict (it reaches db-0 under the changed binding only).
        times, pushes, second = [], [], None
        fd = cl.prog_fd()
        try:
            for k in range(CHANGES):
                target, want = (changed, 2) if k % 2 == 0 else (program, 1)  # XDP_PASS, XDP_DROP
                # Pods change every few seconds, not within a push of the last one: a generation just left is
                # rewritten only SLOT_REUSE_MS after (packets may still be reading it), which is not timed.
                time.sleep(SLOT_REUSE_MS / 1000 + 0.01)
                start = time.perf_counter()
                done = push(target, None, name)
                while run_frames(fd, [frame])[0][0] != want:
                    pass
                times.append(time.perf_counter() - start)
                pushes.append(done["seconds"])
                second = second or done
        finally:
            os.close(fd)
        return {"build_s": build_s, "entries": len(built.model.entries), "first_push_s": first_s,
                "change_push_s": statistics.median(pushes), "change_to_first_packet_s": statistics.median(times),
                "change_to_first_packet_range_s": [min(times), max(times)], "changes": CHANGES,
                "change_rebound": second.get("rebound"),
                "reloaded_on_change": second["reloaded"], "reloaded_first": first["reloaded"]}
    finally:
        Classifier(name).remove()


def switch_figures(program, changed) -> dict:
    """The switch: entries for the bound policy, pushed to the suite's P4Runtime server, and the push
    of a changed binding (the updates it writes, the seconds it takes)."""
    from anyplane.backends.p4.pipeline import Features, p4info
    from anyplane.backends.p4.push import Session, push

    from tests.p4server import Device, Server

    # The default program's endpoint tables hold 4,096 entries each: a binding of more pods needs more.
    features = Features(endpoint_size=max(4096, 2 * len(program.endpoints)))
    with Server(Device(p4info(features))) as server:
        first = push(program, server.addr, features=features)
        # A push alone: build every entry, read the switch, write the difference.
        alone, alone_s = timed(lambda: push(changed, server.addr, features=features))
        push(program, server.addr, features=features)
        # `push --watch`: one session; after its first push, a change of pods writes endpoint entries alone.
        session = Session(server.addr)
        try:
            push(program, server.addr, features=features, session=session)
            second, change_s = timed(lambda: push(changed, server.addr, features=features, session=session))
        finally:
            session.close()
    return {"acl_entries": first["entries"], "entries_written": first["inserted"],
            "change_updates": second["inserted"] + second["deleted"] + second["modified"],
            "change_endpoints_only": second["endpoints_only"], "change_s": change_s,
            "change_alone_updates": alone["updates"], "change_alone_s": alone_s}


def run(pods: int) -> dict:
    text = policy(pods)
    out = {"pods": pods, "workloads": sum(1 for line in text.splitlines() if line.startswith("workload")),
           "policy_lines": text.count("\n")}
    unbound, out["check_s"] = timed(lambda: compile_sources([("cluster.ap", text)]))
    report, out["verify_s"] = timed(lambda: api.verify(unbound))
    out["findings"] = len(report.findings)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "pods.yaml").write_text(yaml.safe_dump(pods_doc(pods)))
        (tmp / "moved.yaml").write_text(yaml.safe_dump(pods_doc(pods, moved=max(1, pods // 20))))  # of api-0
        bound, out["bind_s"] = timed(lambda: compile_sources([("cluster.ap", text)],
                                                             binding=binding.read([str(tmp / "pods.yaml")])))
        changed = compile_sources([("cluster.ap", text)], binding=binding.read([str(tmp / "moved.yaml")]))
        out["kernel"] = kernel_figures(bound.program, changed.program, tmp)
        out["switch"] = switch_figures(bound.program, changed.program)
    exported, out["export_s"] = timed(lambda: api.compile_target(unbound, "k8s"))
    proof, out["proof_s"] = timed(lambda: api.prove_export(unbound, "k8s", exported))
    out["proved"] = proof.proved
    written = sum(a.data.count("\n") for a in exported.artifacts
                  if a.path.endswith(".yaml") and a.path != "identities.yaml")
    out["export_lines"] = written
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="200,1000,5000")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    tune_gc()
    rows = []
    for n in (int(x) for x in args.pods.split(",")):
        row = run(n)
        rows.append(row)
        if args.format == "text":
            k = row["kernel"]
            kernel = (f"kernel build {k['build_s']:.2f} s ({k['entries']} entries)" +
                      (f", push {k['first_push_s']:.2f} s, a pod replaced (median of {k['changes']}): push "
                       f"{k['change_push_s'] * 1000:.1f} ms, first packet judged by it after "
                       f"{k['change_to_first_packet_s'] * 1000:.1f} ms "
                       f"({k['change_to_first_packet_range_s'][0] * 1000:.1f}-"
                       f"{k['change_to_first_packet_range_s'][1] * 1000:.1f}) "
                       f"(reloaded: {k['reloaded_on_change']}, address tables only: {k['change_rebound']})"
                       if "first_push_s" in k else f" ({k.get('skipped')})"))
            w = row["switch"]
            switch = (f"switch {w['acl_entries']} ACL entries ({w['entries_written']} written in all), a pod "
                      f"replaced: {w['change_updates']} updates in {w['change_s'] * 1000:.1f} ms through a session "
                      f"({w['change_alone_s'] * 1000:.0f} ms for a push alone)")
            print(f"{n:>6} pods, {row['workloads']} workloads, {row['policy_lines']} lines: check {row['check_s']:.2f} s, "
                  f"verify {row['verify_s']:.2f} s ({row['findings']} findings), with the binding "
                  f"{row['bind_s']:.2f} s; {kernel}; {switch}; -t k8s {row['export_s']:.2f} s + proof {row['proof_s']:.2f} s "
                  f"({row['export_lines']} lines, proved: {row['proved']}); peak {row['peak_mib']} MiB", flush=True)
    if args.format == "json":
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
