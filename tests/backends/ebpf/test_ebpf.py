"""The kernel engine in the running kernel: verifier, BPF_PROG_TEST_RUN, atomic swaps, rate limits.

Expected verdicts come from the reference interpreter on the policy's L4
projection (and, for ClassBench traces, also from an independent first-match
classifier); packet-hygiene verdicts are the documented ones, written out here.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings

from anyplane.backends.ebpf import loader, model, packet
from anyplane.backends.ebpf.engine import build_all
from anyplane.backends.ebpf.loader import LoadError
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError

from bench import classbench

from ...conftest import EXAMPLES, ROOT, load_example
from ...kernel import kernel_verdicts, loaded, reference_verdicts, require_kernel
from ...strategies import policies

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _kernel():
    require_kernel()


def expected(program, f: Flow) -> str:
    return "pass" if evaluate(project_l4(program), f).verdict == "allow" else "drop"


def assert_agree(cl, program, frames, got):
    """Kernel verdicts, packet after packet, equal the reference's (the interpreter, with the
    connection tracker: a reply of an earlier allowed packet passes); a rate-limited allow may be
    dropped, and every such drop must show in the rule's rate-limited counter."""
    bad, limited = [], 0
    for (p, want, rated), g in zip(reference_verdicts(program, frames, got), got):
        if g == want:
            continue
        if rated and g == "drop":
            limited += 1
            continue
        bad.append((p.flow.text, p.tcp, g, want))
    assert not bad, f"{len(bad)} of {len(frames)} differ, e.g. {bad[:3]}"
    assert limited == sum(row["rate_limited"] for row in cl.counters())


def varied_frames(flows: list[Flow], seed: int) -> list[bytes]:
    """Frames for flows, some with VLAN tags, IPv4 options or IPv6 extension headers."""
    rng = random.Random(seed)
    out = []
    for f in flows:
        vlans = rng.choice((0, 0, 0, 1, 2))
        options = b"\x01\x01\x01\x00" * rng.choice((0, 0, 1, 3)) if f.family == 4 else b""
        exts = [(0, b"\x01\x04\x00\x00\x00\x00")] * rng.choice((0, 0, 1, 2)) if f.family == 6 else []
        out.append(packet.frame(f, vlans=vlans, ip_options=options, ext_headers=exts))
    return out


def fragments_of(flows: list[Flow]) -> list[Flow]:
    return [Flow(f.family, f.src, f.dst, f.proto, fragment=True) for f in flows]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_load_and_agree_with_the_interpreter_on_10000_packets(name):
    program = load_example(name).program
    flows = [f.without_http() for f in FlowGen(program, seed=11).flows(9500)]
    flows += fragments_of(flows[:500])
    with loaded(program, name) as (cl, _):
        frames = varied_frames(flows, seed=1)
        got = kernel_verdicts(cl, frames)
        assert_agree(cl, program, frames, got)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=6))
def test_random_policies_pass_the_verifier_and_agree(text):
    try:
        program = compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        assume(False)
    flows = [f.without_http() for f in FlowGen(program, seed=3).flows(600)]
    with loaded(program, "random") as (cl, _):
        frames = [packet.frame(f) for f in flows]
        got = kernel_verdicts(cl, frames)
        assert_agree(cl, program, frames, got)


def trace_flows(headers) -> list[Flow]:
    """ClassBench headers (src, dst, sport, dport, proto) as flows: ports for TCP and UDP, an echo request
    for ICMP (ClassBench rules do not read its type), the protocol alone otherwise."""
    flows = []
    for src, dst, sport, dport, proto in headers:
        if proto in (6, 17):
            flows.append(Flow(4, src, dst, proto, sport, dport))
        elif proto == 1:
            flows.append(Flow(4, src, dst, proto, icmp_type=8, icmp_code=0))
        else:
            flows.append(Flow(4, src, dst, proto))
    return flows


@pytest.mark.parametrize("name,pooled,fields", [("acl1_1k", False, 3), ("fw1_1k", False, 3), ("ipc1_1k", False, 3),
                                                ("fw1_10k", False, 3), ("fw1_1k", True, 3), ("ipc1_10k", True, 3),
                                                ("ipc1_1k", False, 6), ("fw1_10k", True, 6)])
def test_classbench_traces_agree_with_interpreter_and_first_match(name, pooled, fields, monkeypatch):
    """The whole trace; the 10k sets also show that the verifier accepts the program at that size. `pooled`:
    the rows name their blocks in the pool, as they do beyond 32 MiB of rows (the 100k sets). `fields`: 3 where
    protocol, ports and ICMP are one combined field, 6 where its tables would be too large."""
    if pooled:
        monkeypatch.setattr(loader, "INLINE_BYTES", 0)
    if fields == 6:
        monkeypatch.setattr(model, "L4_BUDGET", 0)
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    trace = classbench.read_trace(classbench.DATA / f"{name}.trace")
    if len(rules) > 5000:  # the oracles are linear searches in Python: a sample of the trace
        trace = random.Random(3).sample(trace, 200)
    flows = trace_flows(trace)
    with loaded(program, name) as (cl, c):
        assert c.layout.pooled == pooled and len(c.model.fields) == fields
        got = kernel_verdicts(cl, [packet.frame(f) for f in flows])
    projected = project_l4(program)
    for (src, dst, sport, dport, proto), f, verdict in zip(trace, flows, got):
        first = classbench.first_match(rules, src, dst, sport, dport, proto)
        oracle = "drop" if first is None or classbench.is_deny(first) else "pass"
        interp = "pass" if evaluate(projected, f).verdict == "allow" else "drop"
        assert verdict == oracle == interp, (f.text, verdict, oracle, interp)


HYGIENE_POLICY = """
external a { address 10.1.0.0/16, fd00:1::/64 }
external b { address 10.2.0.0/16, fd00:2::/64 }
default deny
allow a -> b tcp 80
allow a -> b proto 17
allow a -> b icmp type 8
"""
A4, B4 = 0x0A010001, 0x0A020001
A6, B6 = 0xFD000001 << 96 | 1, 0xFD000002 << 96 | 1
TCP80 = Flow(4, A4, B4, 6, 40000, 80)
TCP81 = Flow(4, A4, B4, 6, 40000, 81)


def _ipv4_header(proto=6, ihl=5, version=4, frag=0, total=40) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total, 1, frag, 64, proto, 0,
                       A4.to_bytes(4, "big"), B4.to_bytes(4, "big"))


ETH4 = packet.MACS + b"\x08\x00"
ETH6 = packet.MACS + b"\x86\xdd"
HYGIENE = [
    # (case, frame, documented verdict)
    ("an ARP frame is not IP: passed", packet.MACS + b"\x08\x06" + bytes(28), "pass"),
    ("an allowed IPv4 TCP packet", packet.frame(TCP80), "pass"),
    ("a denied IPv4 TCP packet", packet.frame(TCP81), "drop"),
    ("IPv4 header cut short", ETH4 + _ipv4_header()[:12], "drop"),
    ("IPv4 IHL below 5", ETH4 + _ipv4_header(ihl=4) + bytes(20), "drop"),
    ("EtherType IPv4 but version 6", ETH4 + _ipv4_header(version=6) + bytes(20), "drop"),
    ("IPv4 options are skipped", packet.frame(TCP80, ip_options=b"\x01" * 8), "pass"),
    ("IPv4 options and a denied port", packet.frame(TCP81, ip_options=b"\x01" * 40), "drop"),
    ("TCP header cut before the ports", ETH4 + _ipv4_header() + b"\x9c", "drop"),
    ("first fragment (MF set) is judged with its ports",
     ETH4 + _ipv4_header(frag=0x2000) + struct.pack("!HH", 40000, 80) + bytes(16), "pass"),
    ("non-first TCP fragment has no ports: tcp 80 does not match it",
     packet.frame(Flow(4, A4, B4, 6, fragment=True)), "drop"),
    ("non-first UDP fragment matches a protocol-only rule", packet.frame(Flow(4, A4, B4, 17, fragment=True)), "pass"),
    ("one VLAN tag", packet.frame(TCP80, vlans=1), "pass"),
    ("two VLAN tags (QinQ)", packet.frame(TCP80, vlans=2), "pass"),
    ("three VLAN tags are not judged: dropped",
     packet.MACS + b"\x81\x00\x00\x01" * 3 + b"\x08\x00" + _ipv4_header() + struct.pack("!HH", 1, 80) + bytes(16),
     "drop"),
    ("VLAN tag cut short", packet.MACS + b"\x81\x00\x00", "drop"),
    ("ICMP echo request allowed", packet.frame(Flow(4, A4, B4, 1, icmp_type=8, icmp_code=0)), "pass"),
    ("ICMP header cut short", ETH4 + _ipv4_header(proto=1) + b"\x08", "drop"),
    ("IPv6 TCP allowed", packet.frame(Flow(6, A6, B6, 6, 1, 80)), "pass"),
    ("IPv6 TCP denied", packet.frame(Flow(6, A6, B6, 6, 1, 81)), "drop"),
    ("IPv6 header cut short", ETH6 + bytes(20), "drop"),
    ("IPv6 hop-by-hop and destination options are walked",
     packet.frame(Flow(6, A6, B6, 6, 1, 80), ext_headers=[(0, bytes(6)), (60, bytes(14))]), "pass"),
    ("IPv6 AH is the protocol, as in IPv4: tcp 80 does not match", packet.frame(Flow(6, A6, B6, 51)), "drop"),
    ("IPv6 routing header is walked", packet.frame(Flow(6, A6, B6, 6, 1, 80), ext_headers=[(43, bytes(6))]), "pass"),
    ("IPv6 chain longer than six headers is dropped",
     packet.frame(Flow(6, A6, B6, 6, 1, 80), ext_headers=[(0, bytes(6))] * 7), "drop"),
    ("IPv6 extension header cut short",
     ETH6 + struct.pack("!IHBB16s16s", 6 << 28, 8, 0, 64, A6.to_bytes(16, "big"), B6.to_bytes(16, "big")) + b"\x06",
     "drop"),
    ("IPv6 non-first fragment of TCP has no ports", packet.frame(Flow(6, A6, B6, 6, fragment=True)), "drop"),
    ("IPv6 non-first fragment of UDP", packet.frame(Flow(6, A6, B6, 17, fragment=True)), "pass"),
    ("ICMPv6 echo request: type 128 is not icmp type 8", packet.frame(Flow(6, A6, B6, 58, icmp_type=128, icmp_code=0)),
     "drop"),
]


def test_packet_hygiene_verdicts_are_the_documented_ones():
    program = compile_sources([("h.ap", HYGIENE_POLICY)]).program
    with loaded(program, "hygiene") as (cl, _):
        got = kernel_verdicts(cl, [frame for _, frame, _ in HYGIENE])
    wrong = [(case, want, g) for (case, _, want), g in zip(HYGIENE, got) if g != want]
    assert not wrong, wrong
    # The parser that replay uses to name a frame's flow agrees with the kernel on every case.
    for case, frame, want in HYGIENE:
        parsed = packet.parse(frame)
        assert (want == "pass") == (parsed == packet.NOT_IP or (not isinstance(parsed, str)
                                                                 and expected(program, parsed) == "pass")), case


POLICY_1 = """
external a { address 10.1.0.0/16 }
external b { address 10.2.0.0/16 }
default deny
allow a -> b tcp 80
deny 10.1.5.0/24 -> b
"""
POLICY_2 = """
external a { address 10.1.0.0/16 }
external b { address 10.2.0.0/16 }
default deny
allow a -> b tcp 81
allow 10.1.5.0/24 -> b udp 53 priority 3
deny a -> b icmp
"""


def test_policy_swaps_are_atomic_under_load():
    p1 = compile_sources([("p1.ap", POLICY_1)]).program
    p2 = compile_sources([("p2.ap", POLICY_2)]).program
    flows = [Flow(4, 0x0A010101 + k, 0x0A020202, 6, 1234, port) for k in (0, 0x400) for port in (80, 81)]
    flows += [Flow(4, 0x0A010501, 0x0A020202, 17, 1234, 53), Flow(4, 0x0A010101, 0x0A020202, 1, icmp_type=8, icmp_code=0)]
    allowed = [{expected(p1, f), expected(p2, f)} for f in flows]
    assert any(len(a) == 2 for a in allowed)
    c1, c2 = build_all(p1, 64), build_all(p2, 64)
    frames = [packet.frame(f) for f in flows]
    with loaded(p1, "swap") as (cl, _):
        stop = threading.Event()
        swaps = []

        def swapper():
            while not stop.is_set():
                cl.write(c2.tables if len(swaps) % 2 == 0 else c1.tables)
                swaps.append(1)
        thread = threading.Thread(target=swapper)
        thread.start()
        seen = []
        try:
            deadline = time.time() + 3
            while time.time() < deadline:
                seen.append(kernel_verdicts(cl, frames))
        finally:
            stop.set()
            thread.join()
    assert len(swaps) >= 10, "the swapper made too few swaps to mean anything"
    for verdicts in seen:
        for v, ok in zip(verdicts, allowed):
            assert v in ok, "a packet got a verdict neither policy gives"
    assert {tuple(v) for v in seen} >= {tuple(expected(p1, f) for f in flows), tuple(expected(p2, f) for f in flows)}


def test_a_push_writes_what_changed_and_the_kernel_decides_as_the_new_policy():
    """Both generations hold a policy of 1,500 rules; a verdict flip then rewrites its rule's action
    block (and the generation's header), and a new rule (more rows, and a port class that renumbers the
    classes above it: regions grow) rewrites less than half. Each time the kernel decides as the
    interpreter does; the pushes come from a new process (no cached images in memory), which reads
    the generation's files."""
    rules = [f"allow 10.1.{k // 250}.{k % 250 + 1} -> b tcp {1000 + k} priority {3000 - k}" for k in range(1500)]
    text = "external b { address 10.2.0.0/16 }\ndefault deny\n" + "\n".join(rules) + "\n"
    base = compile_sources([("p.ap", text)]).program
    flipped = compile_sources([("p.ap", text.replace("allow 10.1.3.8 ", "deny  10.1.3.8 "))]).program
    grown = compile_sources([("p.ap", text + "allow 10.1.7.0/24 -> b udp 5353\n")]).program
    flows = [Flow(4, 0x0A010308, 0x0A020202, 6, 1234, 1757), Flow(4, 0x0A010101, 0x0A020202, 6, 1234, 1000),
             Flow(4, 0x0A010701, 0x0A020202, 17, 1234, 5353), Flow(4, 0x0A010101, 0x0A020202, 17, 1234, 5353)]
    frames = [packet.frame(f) for f in flows]
    with loaded(base, "delta") as (cl, c):
        whole = cl.last_write["entries_written"]
        for program, most in ((flipped, 300), (grown, whole // 2)):
            for _ in range(2):  # both generations hold the base policy
                time.sleep(loader.SLOT_REUSE_MS / 1000 + 0.01)
                cl.write(c.tables)
            time.sleep(loader.SLOT_REUSE_MS / 1000 + 0.01)
            fresh = loader.Classifier(cl.name)  # another process: it reads the cached files
            fresh.write(build_all(program, c.layout.capacity).tables)
            assert 0 < fresh.last_write["entries_written"] <= most, (fresh.last_write, whole)
            assert kernel_verdicts(cl, frames) == [expected(program, f) for f in flows]


def test_a_failed_push_leaves_the_old_policy_in_force(monkeypatch):
    p1 = compile_sources([("p1.ap", POLICY_1)]).program
    p2 = compile_sources([("p2.ap", POLICY_2)]).program
    frame = packet.frame(Flow(4, 0x0A010101, 0x0A020202, 6, 1234, 80))
    with loaded(p1, "failed") as (cl, _):
        assert kernel_verdicts(cl, [frame]) == ["pass"]
        original = cl._fill
        calls = []

        def failing(name, *args):
            calls.append(name)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            return original(name, *args)
        monkeypatch.setattr(cl, "_fill", failing)
        with pytest.raises(LoadError, match="previous policy stays in force"):
            cl.write(build_all(p2, 64).tables)
        assert kernel_verdicts(cl, [frame]) == ["pass"]
        monkeypatch.setattr(cl, "_fill", original)
        cl.write(build_all(p2, 64).tables)
        assert kernel_verdicts(cl, [frame]) == ["drop"]


def test_rate_limits_are_token_buckets():
    program = compile_sources([("r.ap", """
external a { address 10.1.0.0/16 }
external b { address 10.2.0.0/16 }
default deny
allow a -> b udp 5000 rate 20/s burst 5
""")]).program
    frame = packet.frame(Flow(4, 0x0A010101, 0x0A020202, 17, 1234, 5000))
    with loaded(program, "rate") as (cl, _):
        burst = kernel_verdicts(cl, [frame] * 12)
        assert burst[:5] == ["pass"] * 5 and burst.count("pass") <= 6
        time.sleep(0.5)  # 20/s refills about 10 tokens, capped at the burst of 5
        again = kernel_verdicts(cl, [frame] * 12)
        assert 4 <= again.count("pass") <= 6
        counters = {row["rule"].split(" ")[0]: row for row in cl.counters()}
        row = counters["r.ap:5"]
        assert row["packets"] == 24 and row["rate_limited"] == 24 - burst.count("pass") - again.count("pass")


def test_policy_that_outgrows_the_program_is_reported():
    small = compile_sources([("p1.ap", POLICY_1)]).program
    rules = "".join(f"allow 10.1.{k}.0/24 -> 10.2.0.0/16 tcp {1000 + k}\n" for k in range(100))
    big = compile_sources([("big.ap", "default deny\n" + rules)]).program
    with loaded(small, "grow") as (cl, _):
        with pytest.raises(LoadError, match="push reloads the program"):
            cl.write(build_all(big).tables)


# A 100k-rule ClassBench set, compiled, loaded and run in a child process of its own, so that its peak
# memory is the compile's alone: it reports the peak after building the tables (before loading), the
# kernel's verdict for each frame, and the map memory the kernel accounts to the program.
_BIG = """
import json, sys
from anyplane.backends.ebpf import loader, model, packet
from anyplane.backends.ebpf.emit import compile_c
from anyplane.backends.ebpf.engine import build_all
from anyplane.backends.ebpf.loader import VERDICTS, Classifier, run_frames
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow
from bench import classbench
name, flows = json.load(sys.stdin)
rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
c = build_all(program)
# This process's own peak (ru_maxrss would count the process it was forked from).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
cl = Classifier(f"test-big-{name}")
cl.install(compile_c(c.source), c.layout)
try:
    cl.write(c.tables)
    fd = cl.prog_fd()
    frames = [packet.frame(Flow(**f)) for f in flows]
    verdicts = [VERDICTS.get(rc, str(rc)) for rc, _ in run_frames(fd, frames)]
    maps = cl.map_bytes()
finally:
    cl.remove()
print(json.dumps({"peak": peak, "verdicts": verdicts, "entries": len(c.model.entries), "maps": maps}))
"""


@pytest.mark.slow
def test_a_100k_rule_classbench_set_loads_within_its_memory_and_decides_like_the_interpreter():
    """acl1_100k (99,310 entries, about 99k source classes: one 100k-bit row per class would be 1.2 GB).
    The compile stays within 2 GiB, the maps within 1 GiB, and random trace packets (the 10k trace's
    headers and a corner of random rules) get the first-match oracle's and the interpreter's verdict."""
    name = "acl1_100k"
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    rng = random.Random(7)
    headers = rng.sample(classbench.read_trace(classbench.DATA / "acl1_10k.trace"), 60)
    for r in rng.sample(rules, 60):  # a corner of a rule: it matches that rule, or one before it
        headers.append((r.src[0], r.dst[0], r.sport[0], r.dport[1], r.proto if r.proto_mask else 6))
    flows = trace_flows(headers)
    fields = [{"family": 4, "src": f.src, "dst": f.dst, "proto": f.proto, "sport": f.sport, "dport": f.dport,
               "icmp_type": f.icmp_type, "icmp_code": f.icmp_code} for f in flows]
    proc = subprocess.run([sys.executable, "-c", _BIG], input=json.dumps([name, fields]), capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["entries"] == len(rules)
    assert out["peak"] <= 2 << 30, f"the compile peaked at {out['peak'] / 2**30:.2f} GiB"
    assert out["maps"] <= 1 << 30, f"the maps take {out['maps'] / 2**30:.2f} GiB"
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    projected = project_l4(program)
    for (src, dst, sport, dport, proto), f, verdict in zip(headers, flows, out["verdicts"]):
        first = classbench.first_match(rules, src, dst, sport, dport, proto)
        oracle = "drop" if first is None or classbench.is_deny(first) else "pass"
        interp = "pass" if evaluate(projected, f).verdict == "allow" else "drop"
        assert verdict == oracle == interp, (f.text, verdict, oracle, interp)


@pytest.mark.parametrize("capacity", [64, 16384, 262144])
@pytest.mark.parametrize("combined", [True, False])
@pytest.mark.parametrize("pooled", [True, False])
def test_the_verifier_accepts_every_shape_of_the_program(capacity, combined, pooled):
    """The program's loops are bounded by its sizes, and the kernel's verifier walks them within its million
    instructions: every capacity up to 262,144 entries, with three rows or six, rows pooled or not."""
    from anyplane.backends.ebpf.emit import Layout, compile_c, render
    from anyplane.backends.ebpf.loader import Classifier

    layout = Layout(capacity, 512, 64, 64, 64, 262144, 1024 if pooled else 0, 1024 if combined else 0)
    cl = Classifier(f"test-shape-{capacity}-{int(combined)}{int(pooled)}-{os.getpid()}")
    try:
        cl.install(compile_c(render(layout)), layout)
        assert cl.installed
    finally:
        cl.remove()
