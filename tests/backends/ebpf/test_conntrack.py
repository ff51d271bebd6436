"""Connection tracking in the kernel engine, with real TCP, UDP and ICMP traffic between two namespaces.

Namespace B is the protected host: its end of the veth pair runs the XDP
program at ingress and the tc program at egress (as `push -t ebpf --iface`
attaches them). Namespace A is its peer on the network, unprotected. The
policy lets B open connections to A; nothing lets A open connections to B.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anyplane.backends.ebpf.loader import LoadError
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.conn import Tracker, reverse
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError

from ...conftest import load_example, run
from ...kernel import kernel_verdicts, loaded, paired, require_kernel
from ...strategies import policies
from ...netns import Pair, checksum, icmp_error, tcp_segment

pytestmark = [pytest.mark.kernel, pytest.mark.timing]

POLICY = """
external peer { address {net}.1/32 }
service  local { address {net}.2/32 }
default deny
allow local -> peer tcp 8080
allow local -> peer tcp 8081
allow local -> peer udp 9999
allow local -> peer icmp type echo-request
connections { udp {udp}  icmp {icmp}  tcp-closing 1s  max {max} }
"""
TCP_ACK, TCP_PSH_ACK = 0x10, 0x18


class Host:
    """The pair of namespaces, and the policy pushed to B's interface."""

    def __init__(self, pair: Pair, tmp, name: str):
        self.pair, self.tmp, self.name = pair, tmp, name
        self.peer, self.host = pair.ip(1), pair.ip(2)
        # Short, for the timeout tests; a test that reads connections after the exchange, or outlives
        # pushes, sets longer ones: on a loaded machine seconds pass between two steps.
        self.udp_timeout = self.icmp_timeout = "2s"

    def push(self, max_connections: int = 1024, drop: str | None = None, *extra: str) -> dict:
        text = POLICY.replace("{net}", self.pair.net).replace("{max}", str(max_connections)) \
            .replace("{udp}", self.udp_timeout).replace("{icmp}", self.icmp_timeout)
        if drop:
            text = "\n".join(line for line in text.splitlines() if line.strip() != drop)
        policy = self.tmp / "host.ap"
        policy.write_text(text)
        done = run("push", "-t", "ebpf", str(policy), "--iface", self.pair.vb, "--netns", self.pair.b,
                        "--name", self.name, "--format", "json", *extra)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def status(self) -> dict:
        done = run("status", "-t", "ebpf", "--name", self.name, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["connections"]

    def a(self, *args, **kw) -> socket.socket:
        return self.pair.socket(self.pair.a, *args, **kw)

    def b(self, *args, **kw) -> socket.socket:
        return self.pair.socket(self.pair.b, *args, **kw)

    def listen(self, port: int) -> socket.socket:
        s = self.a(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.peer, port))
        s.listen(16)
        return s

    def connect(self, port: int, timeout: float = 1.0):
        """B connects to A:port; (B's socket, A's accepted socket), or None when it cannot."""
        c = self.b(socket.AF_INET, socket.SOCK_STREAM, timeout=timeout)
        try:
            c.connect((self.peer, port))
        except OSError:
            c.close()
            return None
        return c

    def udp(self, where: str, port: int) -> socket.socket:
        s = (self.a if where == "a" else self.b)(socket.AF_INET, socket.SOCK_DGRAM, timeout=0.5)
        s.bind((self.peer if where == "a" else self.host, port))
        return s


def received(s: socket.socket, size: int = 100, wait: float | None = None):
    """What arrives (None: nothing within the socket's timeout, or `wait` seconds for what should
    arrive: a loaded machine may take longer than the short timeouts the "nothing" checks use)."""
    if wait is not None:
        s.settimeout(wait)
    try:
        return s.recv(size)
    except OSError:
        return None


def until(condition, timeout: float = 30.0, what: str = "the condition"):
    """Poll until `condition()` is true (returns its value); a loaded machine may take a while."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def host(tmp_path):
    with paired("ct", 198) as (pair, name):
        yield Host(pair, tmp_path, name)


def test_an_allowed_connection_gets_its_replies(host):
    host.udp_timeout = host.icmp_timeout = "300s"  # counted at the end, however long the steps took
    host.push()
    server = host.listen(8080)
    c = host.connect(8080)
    assert c is not None, "the SYN-ACK of an allowed connection was dropped"
    peer, _ = server.accept()
    peer.sendall(b"hello")
    assert received(c, wait=30) == b"hello"
    c.sendall(b"more")
    assert received(peer, wait=30) == b"more"

    u = host.udp("b", 40001)
    echo = host.udp("a", 9999)
    u.sendto(b"ping", (host.peer, 9999))
    data, back = echo.recvfrom(100)
    echo.sendto(b"pong", back)
    assert received(u, wait=30) == b"pong"

    icmp = host.b(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, timeout=0.5)
    body = b"\x08\x00\x00\x00\x12\x34\x00\x01" + b"anyplane"
    icmp.sendto(body[:2] + checksum(body).to_bytes(2, "big") + body[4:], (host.peer, 0))
    reply = received(icmp)
    while reply is not None and reply[20] != 0:
        reply = received(icmp)
    assert reply is not None, "the echo reply was dropped"

    conns = host.status()
    assert conns["by_protocol"].get("tcp") == 1 and conns["tcp_states"] == {"established": 1}
    assert conns["by_protocol"].get("udp") == 1 and conns["by_protocol"].get("icmp") == 1
    assert conns["counted"]["opened"] == 3 and conns["counted"]["replies"] >= 4


def test_what_the_policy_does_not_allow_is_dropped_both_ways(host):
    host.push()
    host.listen(8082)
    assert host.connect(8082, timeout=0.5) is None  # the host may not open it: its SYN never leaves

    # A peer may not open connections to the host, even from a port the host's connections use.
    listener = host.b(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.host, 5000))
    listener.listen(4)
    c = host.a(socket.AF_INET, socket.SOCK_STREAM, timeout=0.5)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((host.peer, 8080))
    with pytest.raises(OSError):
        c.connect((host.host, 5000))

    # A datagram shaped like a reply (from the allowed service's port) with no connection behind it.
    inbox = host.udp("b", 40002)
    fake = host.udp("a", 9999)
    fake.sendto(b"unsolicited", (host.host, 40002))
    assert received(inbox) is None
    assert host.status()["held"] == 0


def test_icmp_errors_pass_for_a_connection_and_not_otherwise(host):
    host.push()
    server = host.listen(8080)
    c = host.connect(8080)
    assert c is not None
    server.accept()
    port = c.getsockname()[1]
    watch = host.b(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, timeout=0.5)
    sender = host.a(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def arrives(sport: int) -> bool:
        sender.sendto(icmp_error(3, 4, host.host, host.peer, 6, sport, 8080), (host.host, 0))
        while True:
            data = received(watch, 200)
            if data is None:
                return False
            if data[20] == 3 and int.from_bytes(data[48:50], "big") == sport:
                return True

    assert arrives(port), "fragmentation needed about an allowed connection was dropped"
    assert not arrives(port ^ 1), "fragmentation needed about no connection passed"
    assert host.status()["counted"]["related"] == 1


def test_connections_expire_on_timeout_and_close_on_fin_and_rst(host):
    host.push()
    u = host.udp("b", 40003)
    echo = host.udp("a", 9999)
    u.sendto(b"ping", (host.peer, 9999))
    _, back = echo.recvfrom(100)
    echo.sendto(b"pong", back)
    assert received(u, wait=30) == b"pong"
    time.sleep(2.6)  # udp 2s (a loaded machine only sends the late reply later)
    echo.sendto(b"late", back)
    assert received(u) is None, "a reply after the UDP timeout passed"

    server = host.listen(8080)
    c = host.connect(8080)
    peer, _ = server.accept()
    port = c.getsockname()[1]
    closed = time.monotonic()
    c.close()  # FIN
    peer.close()
    # Closing, then gone once tcp-closing (1s) has passed, and not before.
    seen = until(lambda: host.status(), what="a status")
    assert seen["tcp_states"] in ({"closing": 1}, {}), seen
    until(lambda: host.status()["by_protocol"].get("tcp") is None, what="the closed connection to expire")
    assert time.monotonic() - closed >= 1.0
    watch = host.b(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP, timeout=0.5)
    raw = host.a(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw.sendto(tcp_segment(host.peer, host.host, 8080, port, TCP_PSH_ACK, b"late"), (host.host, 0))
    assert received(watch, 200) is None, "a segment after the connection closed passed"

    server = host.listen(8081)
    c = host.connect(8081)
    assert c is not None
    assert host.status()["tcp_states"] == {"established": 1}
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    until(lambda: host.status()["by_protocol"].get("tcp") is None, what="the reset connection to go")


def test_a_full_table_evicts_old_connections_and_fails_closed(host):
    """The kernel's LRU hash is approximate: entries another CPU created wait in that CPU's list, so
    which old entry goes is not exact. What holds: the table never holds more than its size, so at
    most that many replies pass; the old connections are (mostly) gone, and the newest pass."""
    size = 1024
    host.udp_timeout = "300s"  # sending 3,072 datagrams may take seconds: none may expire meanwhile
    host.push(max_connections=size)
    # The table's LRU is kept per CPU: on one CPU (the programs run on the sender's) its order is the
    # order the connections were made, whatever else the machine runs.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        _fill_and_answer(host, size)
    finally:
        os.sched_setaffinity(0, cpus)


def _fill_and_answer(host, size: int) -> None:
    echo = host.udp("a", 9999)
    flows = []
    for port in range(41000, 41000 + 3 * size):
        s = host.udp("b", port)
        s.setblocking(False)
        s.sendto(b"x", (host.peer, 9999))
        flows.append(s)
    conns = host.status()
    assert conns["held"] + conns["expired"] <= size
    for s in flows:
        echo.sendto(b"back", (host.host, s.getsockname()[1]))

    got = [False] * len(flows)

    def arrived():
        for n, s in enumerate(flows):
            if not got[n]:
                try:
                    got[n] = s.recv(100) == b"back"
                except BlockingIOError:
                    pass
        return all(got[-size // 4:])
    until(arrived, what="the replies of the newest connections")
    time.sleep(0.5)  # a reply that should not pass has had the time it would need; then count
    arrived()
    for s in flows:
        s.close()
    assert sum(got) <= size, f"{sum(got)} replies passed through a table of {size}"
    oldest = got[:size]
    assert sum(oldest) <= size // 4, f"{sum(oldest)} of the {size} oldest connections were kept"
    assert all(got[-size // 4:]), "a reply of one of the newest connections was dropped"


def test_a_push_cuts_what_the_new_policy_denies_and_keeps_the_rest(host):
    host.udp_timeout = "300s"  # the UDP connection must outlive two pushes on a loaded machine
    host.push()
    server = host.listen(8080)
    c = host.connect(8080)
    peer, _ = server.accept()
    u = host.udp("b", 40004)
    echo = host.udp("a", 9999)
    u.sendto(b"ping", (host.peer, 9999))
    _, back = echo.recvfrom(100)

    pushed = host.push(1024, "allow local -> peer tcp 8080")
    assert pushed["reloaded"] is False
    peer.sendall(b"after")
    assert received(c) is None, "a connection the new policy denies was kept"
    echo.sendto(b"kept", back)
    assert received(u, wait=30) == b"kept"
    assert host.status()["counted"]["cut"] == 1

    # A push that reloads the program (a table of another size) keeps the connections too.
    pushed = host.push(2048, "allow local -> peer tcp 8080")
    assert pushed["reloaded"] is True and pushed["connections_kept"] >= 1
    echo.sendto(b"still", back)
    assert received(u, wait=30) == b"still"


# -- the kernel against the reference tracker, on conversations (BPF_PROG_TEST_RUN) -------------------

def conversation(flows, seed: int):
    """Packets of connections: openings with TCP flags, replies, ICMP errors about them (or about
    nothing), and packets seen again later."""
    rng = random.Random(seed)
    out = []
    for f in flows:
        tcp = f.proto == 6 and not f.fragment
        out.append((f, rng.choice(("S", "S", "A", "FA", "R", "")) if tcp else "", None))
        if rng.random() < 0.6:
            out.append((reverse(f), rng.choice(("SA", "A", "FA", "R")) if tcp else "", None))
        if rng.random() < 0.2 and not f.fragment:
            kind = (3, 4) if f.family == 4 else (2, 0)
            about = f if rng.random() < 0.7 else replace(f, src=f.dst, dst=f.src)
            out.append((Flow(f.family, f.dst, f.src, 1 if f.family == 4 else 58, icmp_type=kind[0],
                             icmp_code=kind[1]), "", about))
        if out and rng.random() < 0.3:
            out.append(rng.choice(out))
    return out


def kernel_and_tracker(program, later, packets, switch_at: int):
    """(kernel verdicts, tracker verdicts), with `later` pushed before packet `switch_at`."""
    from anyplane.backends.ebpf.engine import build_all
    from anyplane.backends.ebpf import packet

    tracker = Tracker(project_l4(program))
    got, want = [], []
    with loaded(program, "conv") as (cl, c):
        for n, (f, flags, quoted) in enumerate(packets):
            if n == switch_at:
                cl.write(build_all(later, c.layout.capacity).tables)
                tracker.program = project_l4(later)
            data = packet.frame(f, tcp=flags or "", quoted=quoted)
            got.append(kernel_verdicts(cl, [data])[0])
            p = packet.parse_packet(data)
            want.append("pass" if tracker.judge(p, 0.0).verdict == "allow" else "drop")
    return got, want


def _without_rates(text: str) -> str:
    return "\n".join(line.split(" rate ")[0] if " rate " in line else line for line in text.splitlines()) + "\n"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=6), policies(max_rules=6), st.integers(0, 2**16))
def test_conversations_agree_with_the_tracker_across_a_push(first, second, seed):
    require_kernel()
    try:
        p1 = compile_sources([("p.ap", _without_rates(first))]).program
        p2 = compile_sources([("p.ap", _without_rates(second))]).program
    except DiagnosticError:
        assume(False)
    flows = [f.without_http() for f in FlowGen(p1, seed=seed).flows(150)]
    flows += [f.without_http() for f in FlowGen(p2, seed=seed).flows(50)]
    packets = conversation(flows, seed)
    try:
        got, want = kernel_and_tracker(p1, p2, packets, switch_at=len(packets) // 2)
    except (ValueError, LoadError):  # the second policy does not fit the first one's program
        assume(False)
    bad = [(packets[n][0].text, packets[n][1], g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} of {len(packets)} differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("name", ["edge-firewall", "zero-trust"])
def test_example_conversations_agree_with_the_tracker(name):
    require_kernel()
    program = load_example(name).program
    flows = [f.without_http() for f in FlowGen(program, seed=5).flows(3000)]
    packets = conversation(flows, 5)
    got, want = kernel_and_tracker(program, program, packets, switch_at=len(packets) + 1)
    bad = [(packets[n][0].text, packets[n][1], g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} of {len(packets)} differ, e.g. {bad[:3]}"
    assert sum(1 for g in got if g == "pass") > len(got) // 10


def test_a_reply_to_a_connection_only_requests_allow_passes_as_explain_says():
    """The policy allows only `GET /x` to web's HTTP port. The connection's opening carries no request:
    the kernel opens it (its L4 projection allows port 80) and passes the reply, and `explain` on the
    reply says allow, naming each engine's answer, rather than judging the opening by request rules."""
    from anyplane.backends.ebpf import packet
    from anyplane.compiler.explain import explain

    require_kernel()
    program = compile_sources([("p.ap", "service web { address 10.0.1.0/24 port 80 http }\ndefault deny\n"
                                         "allow 10.0.2.0/24 -> web http GET /x\n")]).program
    opening = Flow(4, 0x0A000205, 0x0A000105, 6, sport=40000, dport=80)
    with loaded(program, "httpreply") as (cl, _):
        got = [kernel_verdicts(cl, [packet.frame(f, tcp=flags)])[0]
               for f, flags in ((opening, "S"), (reverse(opening), "SA"), (reverse(opening), "A"))]
    engines = [("ebpf", "kernel", "connections", "any"), ("p4", "fabric", "tcp-established", "any")]
    x = explain(program, reverse(opening), engines)
    assert got == ["pass", "pass", "pass"]
    assert x["verdict"] == "allow" and x["reply"] is not None and x["as_new"]["verdict"] == "deny"
    assert [e["verdict"] for e in x["engines"]] == ["allow", "allow"]
