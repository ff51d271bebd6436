"""The XDP program attached to a veth pair between two network namespaces, with real traffic.

Namespace A (client, 10.199.x.1 / fd99::1) talks to namespace B (server,
10.199.x.2 / fd99::2); the program sits on B's end of the veth pair, where
packets from A arrive. Allowed connections and datagrams arrive; denied ones
never do, and show up in the counters of `anyplane status`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ...conftest import ROOT
from ...kernel import require_kernel

pytestmark = pytest.mark.kernel

POLICY = """
external client { address {net}.1/32, fd99:{tag}::1/128 }
service  server { address {net}.2/32, fd99:{tag}::2/128 }
default deny
allow client -> server tcp 8080
allow client -> server udp 9999
allow client -> server icmp type 8
allow any -> any icmp6 type neighbor-solicitation
allow any -> any icmp6 type neighbor-advertisement
"""

SERVER = textwrap.dedent("""
    import socket, sys, threading, time
    seen = []
    def tcp(port, family, host):
        s = socket.socket(family, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port)); s.listen(8)
        while True:
            c, _ = s.accept(); c.sendall(b"hello"); c.close(); print("tcp", host, port, flush=True)
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
        while True:
            data, _ = s.recvfrom(100); print("udp", port, data.decode(), flush=True)
    for args in ((8080, socket.AF_INET, "0.0.0.0"), (8081, socket.AF_INET, "0.0.0.0"), (8080, socket.AF_INET6, "::")):
        threading.Thread(target=tcp, args=args, daemon=True).start()
    for port in (9999, 9998):
        threading.Thread(target=udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(60)
""")

CLIENT = textwrap.dedent("""
    import json, socket, struct, sys, time
    net, v6 = sys.argv[1], sys.argv[2]
    out = {}
    def connect(family, host, port):
        s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(1.5)
        try:
            s.connect((host, port)); return s.recv(5).decode()
        except OSError as e:
            return type(e).__name__
    out["tcp8080"] = connect(socket.AF_INET, net + ".2", 8080)
    out["tcp8081"] = connect(socket.AF_INET, net + ".2", 8081)
    out["tcp6_8080"] = connect(socket.AF_INET6, v6, 8080)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for port in (9999, 9998):
        u.sendto(b"ping%d" % port, (net + ".2", port))
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); r.settimeout(1.5)
    def icmp(kind):
        body = struct.pack("!BBHHH", kind, 0, 0, 7, 1) + b"x" * 8
        csum = sum(struct.unpack("!%dH" % (len(body) // 2), body)); csum = (csum >> 16) + (csum & 0xffff); csum = ~(csum + (csum >> 16)) & 0xffff
        r.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (net + ".2", 0))
        try:
            while True:
                data, _ = r.recvfrom(100)
                if data[20] == 0:
                    return "reply"
        except OSError:
            return "timeout"
    out["echo"] = icmp(8)
    out["timestamp"] = icmp(13)
    time.sleep(0.3)
    print(json.dumps(out))
""")


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, **kw)


@pytest.fixture
def namespaces(tmp_path):
    require_kernel()
    tag = os.getpid() % 200 + 10
    a, b, va, vb = f"ap-a-{tag}", f"ap-b-{tag}", f"apa{tag}", f"apb{tag}"
    net = f"10.199.{tag}"
    for ns in (a, b):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        for ns, dev, host in ((a, va, 1), (b, vb, 2)):
            sh("ip", "-n", ns, "addr", "add", f"{net}.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd99:{tag:x}::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        policy = tmp_path / "live.ap"
        policy.write_text(POLICY.replace("{net}", net).replace("{tag}", f"{tag:x}"))
        yield {"a": a, "b": b, "vb": vb, "net": net, "v6": f"fd99:{tag:x}::2", "policy": policy, "name": f"live-{tag}"}
    finally:
        sh(sys.executable, "-m", "anyplane.compiler", "status", "-t", "ebpf", "--name", f"live-{tag}", check=False)
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)
        from anyplane.backends.ebpf.loader import Classifier
        Classifier(f"live-{tag}").remove()


def anyplane(*args):
    return sh(sys.executable, "-m", "anyplane.compiler", *args, check=False, cwd=ROOT)


def test_real_traffic_across_a_veth_pair(namespaces):
    ns = namespaces
    pushed = anyplane("push", "-t", "ebpf", str(ns["policy"]), "--iface", ns["vb"], "--netns", ns["b"],
                      "--name", ns["name"], "--format", "json")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["reloaded"] is True
    server = subprocess.Popen(["ip", "netns", "exec", ns["b"], sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = sh("ip", "netns", "exec", ns["a"], sys.executable, "-c", CLIENT, ns["net"], ns["v6"])
        result = json.loads(client.stdout)
    finally:
        server.kill()
        received = server.communicate()[0]
    assert result["tcp8080"] == "hello"           # allowed: the handshake and data pass
    assert result["tcp8081"] in ("timeout", "TimeoutError")  # denied: the SYN never arrives
    assert result["tcp6_8080"] == "hello"          # IPv6, with neighbour discovery allowed
    assert result["echo"] == "reply"               # icmp type 8 allowed
    assert result["timestamp"] == "timeout"        # another ICMP type is not
    assert "udp 9999 ping9999" in received and "udp 9998" not in received
    assert "tcp 0.0.0.0 8081" not in received

    status = json.loads(anyplane("status", "-t", "ebpf", "--name", ns["name"], "--format", "json").stdout)
    counts = {row["rule"].split(" ", 1)[1] if row["rule"] != "default" else "default": row["packets"]
              for row in status["rules"]}
    assert counts["allow client -> server tcp 8080"] >= 3
    assert counts["allow client -> server udp 9999"] == 1
    assert counts["default"] >= 2  # the SYN to 8081 (and its retries), the UDP to 9998, the timestamp request

    # A second push changes the policy without reloading the program.
    ns["policy"].write_text(ns["policy"].read_text().replace("tcp 8080", "tcp 8081"))
    again = anyplane("push", "-t", "ebpf", str(ns["policy"]), "--iface", ns["vb"], "--netns", ns["b"],
                     "--name", ns["name"], "--format", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["reloaded"] is False
    server = subprocess.Popen(["ip", "netns", "exec", ns["b"], sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        result = json.loads(sh("ip", "netns", "exec", ns["a"], sys.executable, "-c", CLIENT, ns["net"], ns["v6"]).stdout)
    finally:
        server.kill()
        server.communicate()
    assert result["tcp8081"] == "hello" and result["tcp8080"] in ("timeout", "TimeoutError")
