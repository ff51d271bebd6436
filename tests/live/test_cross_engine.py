"""Cross-engine differential test: flows cross the fabric, the kernel and the sidecar in path order.

    fabric   the P4Runtime entries as the test server received them (pushed by anyplane's P4Runtime client),
             run by the table-semantics evaluator on the packet's frame
    kernel   the XDP program loaded in the running kernel, BPF_PROG_TEST_RUN on the same frame
    sidecar  a running Envoy with the inbound listeners of every service, sent the real request

A flow is allowed end to end iff every engine on its path allows it; that
must equal the interpreter's verdict for the policy.
"""

from __future__ import annotations

from dataclasses import replace

import ipaddress
import socket

import pytest

from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.deployment import Deployment, Sidecar
from anyplane.backends.p4.pipeline import Features, p4info
from anyplane.backends.p4.push import push
from anyplane.compiler import place as placement
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.nodes import Connections
from anyplane.ir.interp import evaluate

from bench import classbench

from ..conftest import EXAMPLES, compile_text
from ..envoyrun import Upstream, free_port, request, require_envoy, running, subnet
from ..kernel import kernel_verdicts, loaded, packet, require_kernel
from ..p4eval import Switch
from ..p4server import Device, Server

pytestmark = [pytest.mark.kernel, pytest.mark.envoy]

# Below the kernel's ephemeral port range (32768-60999), apps at +10000 too: no client socket can hold them.
PORTS = {"productpage": 19080, "reviews": 19081, "ratings": 19082, "details": 19083, "mysql": 13306}


def _bookinfo(n: int) -> str:
    """bookinfo moved into 127.n/16 with one port per service (one Envoy holds every sidecar)."""
    text = open(EXAMPLES["bookinfo"][0]).read()
    text = text.replace("10.0.", f"127.{n}.").replace("192.168.0.0/16", f"127.{n}.168.0/24")
    text = text.replace("172.16.0.0/12", f"127.{n}.172.0/24").replace(", fd00:0:0:2::/64", "")
    lines = []
    current = None
    for line in text.splitlines():
        for svc in PORTS:
            if line.startswith(f"service {svc}"):
                current = svc
        if current and "port 9080 http" in line:
            line = line.replace("port 9080 http", f"port {PORTS[current]} http")
        if "-> mysql" in line or current == "mysql":
            line = line.replace("3306", str(PORTS["mysql"]))
        if line.strip() == "}" or line.startswith("service") and line.rstrip().endswith("}"):
            current = None
        lines.append(line)
    return "\n".join(lines) + "\n"


def _fabric(program):
    device = Device(p4info(Features()))
    with Server(device) as server:
        push(program, server.addr)
    return Switch(device.p4info, device)


def _sidecars(program, n: int):
    """One Envoy holding every service's inbound listeners (bound to 0.0.0.0 on test-only ports)."""
    admin = ("127.0.0.1", free_port())
    listeners, clusters = [], []
    for svc in PORTS:
        dep = Deployment({svc: Sidecar(inbound="0.0.0.0", app="127.0.0.1", app_port_offset=10000, admin=admin)})
        lst, cl, _ = sidecar_resources(program, svc, dep)
        listeners += [x for x in lst if x["name"].startswith("in|")]
        clusters += [c for c in cl if c["name"].startswith("in|")]
    return bootstrap("productpage", Deployment({"productpage": Sidecar(admin=admin)}), None, listeners, clusters), \
        f"{admin[0]}:{admin[1]}"


def _sidecar_verdict(f) -> str | None:
    """What the sidecar does with a flow it receives (None when no sidecar is on its path)."""
    dst = str(ipaddress.ip_address(f.dst))
    src = str(ipaddress.ip_address(f.src))
    if f.dport == PORTS["mysql"]:
        try:
            with socket.create_connection((dst, f.dport), timeout=5, source_address=(src, 0)) as s:
                s.sendall(b"ping")
                return "allow" if s.recv(100) == b"echo:ping" else "deny"
        except (ConnectionResetError, ConnectionRefusedError):
            return "deny"
    headers = dict(f.http.headers)
    headers["host"] = f.http.host or "service"
    status, _, _ = request(dst, f.dport, f.http.method, f.http.path, headers, source=src)
    return {200: "allow", 403: "deny", 429: "allow"}.get(status, f"status {status}")


def _on_sidecar_path(program, f) -> bool:
    owners = {row.identity for row in program.endpoints if row.prefix.contains(f.family, f.dst)}
    return f.proto == 6 and f.dport in PORTS.values() and bool(owners)


def test_bookinfo_end_to_end_through_switch_kernel_and_sidecar():
    """Each engine runs the program placed on it, with L3/L4 enforcement early (the switch holds the
    denies and the default) and late (the kernel does). One test: both runs bind the same ports."""
    require_kernel()
    require_envoy()
    global PORTS
    base = dict(PORTS)
    try:
        for shift, prefer in enumerate(("early", "late")):
            PORTS = {svc: port + 100 * shift for svc, port in base.items()}  # fresh sockets for each run
            _bookinfo_through_the_path(prefer)
    finally:
        PORTS = base


def _bookinfo_through_the_path(prefer: str) -> None:
    n = subnet()
    program = compile_text(_bookinfo(n), "bookinfo.ap").program
    plan = placement.plan(program, placement.regions(program, ("fabric", "kernel", "sidecar")), prefer)
    held = {where: len(sub.rules) for where, sub in plan.programs.items()}
    assert held["sidecar"] and (held["fabric"] if prefer == "early" else held["kernel"])
    flows = []
    for f in FlowGen(program, seed=13, http_share=0.7).flows(20000):
        if f.family != 4 or not ipaddress.ip_address(f.src).is_loopback or not ipaddress.ip_address(f.dst).is_loopback:
            continue
        if str(ipaddress.ip_address(f.src)).endswith(".0") or str(ipaddress.ip_address(f.src)).endswith(".255"):
            continue
        owner = next((svc for svc, port in PORTS.items() if f.dport == port), None)
        if f.proto == 6 and owner is not None:
            http_port = owner != "mysql"
            if (f.http is not None) != http_port:
                continue  # a sidecar's HTTP port speaks HTTP, its TCP port raw TCP
        elif f.http is not None:
            continue
        flows.append(f)
        if len(flows) == 600:
            break
    assert len(flows) == 600
    fabric = _fabric(plan.programs["fabric"])
    fabric_verdicts = [fabric.verdict(packet.frame(f.without_http()))[0] for f in flows]
    # Packets are judged one by one here (each engine's connection state has tests of its own).
    with loaded(replace(plan.programs["kernel"], connections=Connections(stateful=False)), f"cross{n}") as (cl, _):
        kernel = ["allow" if v == "pass" else "deny"
                  for v in kernel_verdicts(cl, [packet.frame(f.without_http()) for f in flows])]
    config, admin = _sidecars(plan.programs["sidecar"], n)
    apps = [Upstream("127.0.0.1", port + 10000, svc) for svc, port in PORTS.items() if svc != "mysql"]
    import socketserver
    import threading

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"echo:" + self.request.recv(100))

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", PORTS["mysql"] + 10000), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    mismatches, sidecar_seen = [], 0
    try:
        for app in apps:
            app.__enter__()
        with running(config, admin):
            for f, fab, ker in zip(flows, fabric_verdicts, kernel):
                verdicts = {"fabric": fab, "kernel": ker}
                # Path order: a packet the switch or the kernel drops never reaches the sidecar.
                if fab == ker == "allow" and _on_sidecar_path(program, f):
                    verdicts["sidecar"] = _sidecar_verdict(f)
                    sidecar_seen += 1
                together = "allow" if all(v == "allow" for v in verdicts.values()) else "deny"
                want = evaluate(program, f).verdict
                if together != want:
                    mismatches.append((f.text, want, verdicts))
    finally:
        for app in apps:
            app.__exit__()
        echo.shutdown()
        echo.server_close()
    assert not mismatches, mismatches[:10]
    assert sidecar_seen > 100
    assert {"allow", "deny"} <= {evaluate(program, f).verdict for f in flows}


@pytest.mark.parametrize("name", ["acl1_1k", "fw1_1k"])
def test_classbench_policies_through_switch_and_kernel(name):
    """The switch holds 300 acl entries: the default and the lowest denies spill to the kernel."""
    require_kernel()
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    plan = placement.plan(program, placement.regions(program, ("fabric", "kernel")), "early", {"fabric": 300})
    assert plan.spilled
    flows = [f.without_http() for f in FlowGen(program, seed=3).flows(3000)]
    fabric = _fabric(plan.programs["fabric"])
    frames = [packet.frame(f) for f in flows]
    with loaded(plan.programs["kernel"], name) as (cl, _):
        kernel = kernel_verdicts(cl, frames)
    for f, frame, ker in zip(flows, frames, kernel):
        together = "allow" if fabric.verdict(frame)[0] == "allow" and ker == "pass" else "deny"
        assert together == evaluate(program, f).verdict, f.text
