"""Pods that come and go under a policy over workloads: the kernel engine on a veth pair.

Namespace B is the server's pod (XDP at its ingress, tc at its egress, as `push -t ebpf --iface`
attaches them); namespace A holds the client pods, one address each on A's end of the pair. The
policy names workloads, never addresses; each binding (which pods exist, at which addresses) is
pushed with `--bind` while connections are open. The program stays loaded (the same program id),
every packet gets the verdict of the binding in force, a connection of a pod that stayed is kept,
and one of a pod that left is cut at its next packet.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import yaml

from anyplane.backends.ebpf.engine import attached_prog

from ..conftest import run
from ..kernel import paired
from ..netns import Pair, sh

pytestmark = [pytest.mark.kernel, pytest.mark.timing]

POLICY = """
workload client { namespace shop labels app=client }
workload server { namespace shop labels app=server port 8080 tcp }
default deny
allow client -> server tcp 8080
connections { tcp 300s }
"""


def _until(condition, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Cluster:
    def __init__(self, pair: Pair, tmp, name: str):
        self.pair, self.tmp, self.name = pair, tmp, name
        (tmp / "p.ap").write_text(POLICY)
        for host in (3, 4, 5):
            sh("ip", "-n", pair.a, "addr", "add", f"{pair.ip(host)}/24", "dev", pair.va)

    def bind(self, clients: list[int]) -> dict:
        """Push the policy with these client pods (by last octet) and the server pod at B."""
        pods = [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": self.pair.ip(2)},
                 "metadata": {"name": "server-0", "namespace": "shop", "labels": {"app": "server"}}}]
        pods += [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": self.pair.ip(k)},
                  "metadata": {"name": f"client-{k}", "namespace": "shop", "labels": {"app": "client"}}}
                 for k in clients]
        (self.tmp / "pods.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
        done = run("push", "-t", "ebpf", str(self.tmp / "p.ap"), "--bind", str(self.tmp / "pods.yaml"),
                   "--iface", self.pair.vb, "--netns", self.pair.b, "--name", self.name, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def program(self) -> int:
        return attached_prog(self.pair.vb, self.pair.b)

    def connect(self, host: int, timeout: float):
        """A client pod (A at .host) connects to the server; its socket, or None when it cannot."""
        c = self.pair.socket(self.pair.a, socket.AF_INET, socket.SOCK_STREAM, timeout=timeout)
        c.bind((self.pair.ip(host), 0))
        try:
            c.connect((self.pair.ip(2), 8080))
        except OSError:
            c.close()
            return None
        return c


@pytest.fixture
def cluster(tmp_path):
    with paired("wl", 197) as (pair, name):
        yield Cluster(pair, tmp_path, name)


def _arrives(server_side, data: bytes, wait: float) -> bool:
    server_side.settimeout(wait)
    try:
        return server_side.recv(100) == data
    except OSError:
        return False


def test_pods_come_and_go_under_one_loaded_program(cluster):
    first = cluster.bind([3, 4])
    assert first["reloaded"] is True and first["binding"]["pods"] == 3 and first["binding"]["generation"] == 1
    old_pods = cluster.tmp / "pods-before.yaml"
    old_pods.write_text((cluster.tmp / "pods.yaml").read_text())
    program = cluster.program()
    server = cluster.pair.socket(cluster.pair.b, socket.AF_INET, socket.SOCK_STREAM, timeout=30)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((cluster.pair.ip(2), 8080))
    server.listen(16)
    leaving = cluster.connect(3, timeout=30)
    staying = cluster.connect(4, timeout=30)
    assert leaving is not None and staying is not None
    at_server = {}
    for sock in (leaving, staying):
        peer, (address, _) = server.accept()
        at_server[address] = peer
    assert cluster.connect(5, timeout=1) is None, "a pod of no workload reached the server"

    # Pod .3 leaves, pod .5 starts: a new binding, the same policy.
    second = cluster.bind([4, 5])
    assert second["reloaded"] is False and second["generation"] != first["generation"]
    assert second["binding"]["digest"] != first["binding"]["digest"] and second["binding"]["generation"] == 2
    assert cluster.program() == program, "the program was reloaded for a change of pods"
    status = run("status", "-t", "ebpf", "--name", cluster.name, "--format", "json")
    assert json.loads(status.stdout)["binding"] == second["binding"], status.stdout
    # The tables the kernel holds now, read back from its maps and decoded, are proved against the policy
    # with the new pods; against the pods before, the proof fails at a pod that came or left.
    policy = str(cluster.tmp / "p.ap")
    proved = run("status", "-t", "ebpf", "--name", cluster.name, "--prove", policy, "--bind",
                 str(cluster.tmp / "pods.yaml"))
    assert proved.returncode == 0 and "proved: the live tables decide exactly what" in proved.stdout, proved
    stale = run("status", "-t", "ebpf", "--name", cluster.name, "--prove", policy, "--bind", str(old_pods),
                "--format", "json")
    assert stale.returncode == 1, stale
    flow = json.loads(stale.stdout)["proof"]["counterexample"]["flow"]
    assert flow.split()[0] in (cluster.pair.ip(3), cluster.pair.ip(5)), flow
    assert cluster.bind([4, 5])["binding"]["generation"] == 2, "the same pods again are the same binding"
    joined = _until(lambda: cluster.connect(5, timeout=2), what="the new pod to reach the server")
    server.accept()
    staying.sendall(b"still here")
    assert _arrives(at_server[cluster.pair.ip(4)], b"still here", wait=30), "a staying pod's connection was cut"
    leaving.sendall(b"gone")
    assert not _arrives(at_server[cluster.pair.ip(3)], b"gone", wait=1), "a pod that left kept its connection"
    assert cluster.connect(3, timeout=1) is None, "a pod that left reached the server"
    for sock in (leaving, staying, joined, server, *at_server.values()):
        sock.close()


def test_a_push_of_a_new_binding_writes_the_address_tables_alone(tmp_path):
    """In one process (a controller that follows pods), a push whose program differs from the last one
    only in its binding writes the address tables of the loaded program, and the kernel then decides
    every pod's packets as the interpreter does under the new binding (BPF_PROG_TEST_RUN)."""
    import os

    from anyplane.backends.ebpf.engine import push
    from anyplane.backends.ebpf.loader import SLOT_REUSE_MS, Classifier
    from anyplane.compiler import binding
    from anyplane.compiler.pipeline import compile_sources
    from anyplane.ir.flow import Flow
    from anyplane.ir.interp import evaluate
    from anyplane.ir.project import project_l4

    from ..kernel import kernel_verdicts, packet, require_kernel

    require_kernel()

    def program(clients: dict[str, str]):
        pods = [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": "10.9.0.2"},
                 "metadata": {"name": "server-0", "namespace": "shop", "labels": {"app": "server"}}}]
        pods += [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": ip},
                  "metadata": {"name": name, "namespace": "shop", "labels": {"app": "client"}}}
                 for name, ip in clients.items()]
        path = tmp_path / f"pods-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
        return compile_sources([("p.ap", POLICY.replace("connections { tcp 300s }", ""))],
                               binding=binding.read([str(path)])).program

    name = f"test-rebind-{os.getpid()}"
    before = program({"client-a": "10.9.0.3", "client-b": "10.9.0.4"})
    after = program({"client-b": "10.9.0.4", "client-c": "10.9.0.5", "client-d": "10.9.1.77"})
    try:
        first = push(before, None, name)
        time.sleep(SLOT_REUSE_MS / 1000)  # pods change seconds apart, not within a push of the last one
        second = push(after, None, name)
        assert first["reloaded"] and not second["reloaded"] and second["rebound"], second
        addresses = [int.from_bytes(bytes(map(int, a.split("."))), "big")
                     for a in ("10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.1.77", "10.9.0.9")]
        flows = [Flow(4, s, d, 6, 40000, port) for s in addresses for d in addresses if s != d for port in (8080, 80)]
        got = kernel_verdicts(Classifier(name), [packet.frame(f, tcp="S") for f in flows])
        want = ["pass" if evaluate(project_l4(after), f).verdict == "allow" else "drop" for f in flows]
        assert got == want
        assert got[flows.index(Flow(4, addresses[4], addresses[0], 6, 40000, 8080))] == "pass", "the new pod"
        assert got[flows.index(Flow(4, addresses[1], addresses[0], 6, 40000, 8080))] == "drop", "the pod that left"
        # What the kernel holds after the rebind, read from its maps, is proved against the new binding.
        from anyplane.backends.ebpf.engine import ENGINE
        from anyplane.verify.compose import prove

        live = ENGINE.read_live(after, name=name)
        assert prove(project_l4(after), {"ebpf": live}).proved
        assert not prove(project_l4(before), {"ebpf": ENGINE.read_live(before, name=name)}).proved
    finally:
        Classifier(name).remove()


def test_push_watch_follows_the_pods_file_with_the_address_tables_alone(cluster):
    """`push -t ebpf --watch`: the pods file changes while it runs; the next push rebinds the loaded
    program (address tables alone, the same program), and the new pod reaches the server."""
    import os
    import queue
    import subprocess
    import sys
    import threading

    from ..conftest import ROOT, stop_watcher

    cluster.bind([4])
    program = cluster.program()
    pods_file = cluster.tmp / "pods.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "push", "-t", "ebpf", str(cluster.tmp / "p.ap"),
                             "--bind", str(pods_file), "--iface", cluster.pair.vb, "--netns", cluster.pair.b,
                             "--name", cluster.name, "--watch", "--interval", "0.05", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    server = cluster.pair.socket(cluster.pair.b, socket.AF_INET, socket.SOCK_STREAM, timeout=30)
    try:
        first = json.loads(lines.get(timeout=120))
        assert first["event"] == "pushed" and first["binding"]["pods"] == 2, first
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((cluster.pair.ip(2), 8080))
        server.listen(16)
        assert cluster.connect(5, timeout=1) is None, "a pod of no workload reached the server"
        items = yaml.safe_load(pods_file.read_text())["items"]
        items.append({"apiVersion": "v1", "kind": "Pod", "status": {"podIP": cluster.pair.ip(5)},
                      "metadata": {"name": "client-5", "namespace": "shop", "labels": {"app": "client"}}})
        swap = cluster.tmp / "swap.yaml"
        swap.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
        os.replace(swap, pods_file)
        second = json.loads(lines.get(timeout=120))
        assert second["event"] == "pushed" and second["rebound"] and not second["reloaded"], second
        assert second["binding"]["pods"] == 3 and second["binding"]["generation"] == first["binding"]["generation"] + 1
        assert cluster.program() == program, "the program was reloaded for a change of pods"
        joined = _until(lambda: cluster.connect(5, timeout=2), what="the new pod to reach the server")
        joined.close()
    finally:
        rc = stop_watcher(proc)
        server.close()
    assert rc == 0, proc.stderr.read()
