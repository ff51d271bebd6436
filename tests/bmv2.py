"""The P4 reference toolchain in tests: p4c (p4test, p4c-bm2-ss) and a running BMv2 switch.

The toolchain comes from ../shared/p4-toolchain (installed by `make test` into
.p4tools/ of the checkout). Without that folder the tests skip and say why; with
it, in CI, a missing install is a failure.

`Bmv2()` runs simple_switch_grpc in a network namespace of the test's own, with
two veth pairs: switch port 0 (s0) faces h0, port 1 (s1) faces h1. Its P4Runtime
server listens on a unix socket. `switch.send(frames)` puts each frame into port
0 from h0 and reports which ones came out of port 1 on h1: the switch's verdict.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import CI, ROOT

SHARED = ROOT.parent / "shared" / "p4-toolchain"
TOOLS = Path(os.environ.get("ANYPLANE_P4_TOOLS", ROOT / ".p4tools")) / "bin"
_ids = itertools.count()


def tool(name: str) -> str:
    """The path of a toolchain binary, or skip/fail the test (see the module docstring)."""
    path = TOOLS / name
    if path.exists():
        return str(path)
    if not SHARED.exists():
        pytest.skip(f"the P4 toolchain is not here: no {SHARED} to install it from")
    if os.geteuid() != 0:
        pytest.skip("BMv2 tests need root (network namespaces)")
    (pytest.fail if CI else pytest.skip)(f"{path} is missing: `make test` installs the P4 toolchain from {SHARED}")


def compile_program(source: str, workdir: Path) -> tuple[Path, Path]:
    """p4c-bm2-ss on a program: (BMv2 JSON, p4c's own P4Info in text format)."""
    src = workdir / "anyplane.p4"
    src.write_text(source)
    out, info = workdir / "bmv2.json", workdir / "p4info.txtpb"
    proc = subprocess.run([tool("p4c-bm2-ss"), "--arch", "v1model", "--p4runtime-files", str(info), "-o", str(out),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, info


# Sends frames from h0 and reports which arrived on h1 (run inside the namespace).
_PEER = r"""
import socket, sys, time, select
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
gap = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
rx.bind(("h1", 0))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("h0", 0))
seen = set()
def drain(wait):
    end = time.time() + wait
    while True:
        left = end - time.time()
        if left <= 0 or not select.select([rx], [], [], left)[0]:
            return
        data, addr = rx.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING:
            seen.add(data[-4:])  # the frame's tag (the kernel may have taken its VLAN tags off)
start = time.time()
for k, f in enumerate(frames):
    if gap:
        time.sleep(max(0.0, start + k * gap - time.time()))
    tx.send(f)
    if k % 40 == 39:
        drain(0.02 if not gap else 0.0)
sent = time.time() - start
drain(1.0)
print("".join("1" if f[-4:] in seen else "0" for f in frames))
print(sent)
"""


# Keeps `window` frames in flight: sends more as earlier ones come out on h1 (or after 50 ms).
_PACER = r"""
import socket, sys, time, select
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
window = int(sys.argv[1])
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
rx.bind(("h1", 0))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("h0", 0))
got = sent = 0
start = time.time()
while sent < len(frames) or (got < sent and time.time() - last < 0.05):
    while sent < len(frames) and sent - got < window:
        tx.send(frames[sent]); sent += 1; last = time.time()
    if select.select([rx], [], [], 0.05)[0]:
        data, addr = rx.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING:
            got += 1; last = time.time()
    elif sent - got >= window:
        got = sent - window + 1  # frames lost in the switch: let the window move on
print(got, time.time() - start)
"""


class Bmv2:
    """simple_switch_grpc in a namespace of its own (a context manager)."""

    def __init__(self, device_id: int = 0):
        self.ns = f"ap-bmv2-{os.getpid()}-{next(_ids)}"
        self.device_id = device_id
        self.tmp = tempfile.TemporaryDirectory()
        self.addr = f"unix:{self.tmp.name}/p4rt.sock"
        self.proc = None

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True)

    def __enter__(self) -> "Bmv2":
        binary = tool("simple_switch_grpc")
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        for k in (0, 1):
            self._ip("link", "add", f"s{k}", "type", "veth", "peer", "name", f"h{k}")
        subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                       check=True, capture_output=True)
        for dev in ("lo", "s0", "h0", "s1", "h1"):
            self._ip("link", "set", dev, "up")
        log = open(Path(self.tmp.name) / "switch.log", "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, binary, "--no-p4", "--device-id",
                                      str(self.device_id), "-i", "0@s0", "-i", "1@s1", "--",
                                      "--grpc-server-addr", self.addr], stdout=log, stderr=subprocess.STDOUT)
        sock = Path(self.tmp.name) / "p4rt.sock"
        deadline = time.time() + 30
        while not sock.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"simple_switch_grpc did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """What the switch printed."""
        return (Path(self.tmp.name) / "switch.log").read_text(errors="replace")

    def send(self, frames: list[bytes], gap: float = 0.0) -> list[bool]:
        """Per frame: whether it left the switch on port 1 (`gap`: seconds between frames, else as fast
        as the switch keeps up). Every frame must end with a tag of 4 bytes no other frame has."""
        assert len({f[-4:] for f in frames}) == len(frames), "frames need distinct 4-byte tags at their end"
        proc = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", _PEER, str(gap)],
                              input="\n".join(f.hex() for f in frames), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        verdicts, seconds = proc.stdout.split()
        self.sending_s = float(seconds)  # how long sending took (a meter test's time base)
        return [c == "1" for c in verdicts]

    def throughput(self, frames: list[bytes], window: int = 32) -> float:
        """Frames per second the switch forwards with `window` frames in flight (all must be allowed)."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", _PACER, str(window)],
                              input="\n".join(f.hex() for f in frames), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        got, seconds = proc.stdout.split()
        return int(got) / float(seconds)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        self.tmp.cleanup()
