"""Two network namespaces joined by a veth pair, and sockets opened inside either of them.

A socket belongs to the network namespace it was created in, so `Pair.socket`
creates it on a short-lived thread that has entered the namespace (setns(2)
applies to the calling thread only); the socket is then used from any thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, **kw)


class Pair:
    """Namespaces `a` (NET.1, fd99:TAG::1) and `b` (NET.2, fd99:TAG::2) on one veth pair; `vb` is b's
    end. Use as a context manager: everything is deleted on exit."""

    def __init__(self, prefix: str, tag: int, octet: int = 199):
        self.tag = tag
        self.a, self.b = f"{prefix}-a-{tag}", f"{prefix}-b-{tag}"
        self.va, self.vb = f"{prefix}a{tag}"[:15], f"{prefix}b{tag}"[:15]
        self.net = f"10.{octet}.{tag}"
        self.v6 = f"fd99:{tag:x}::2"

    def __enter__(self) -> "Pair":
        self.close()
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        try:
            sh("ip", "link", "add", self.va, "type", "veth", "peer", "name", self.vb)
            sh("ip", "link", "set", self.va, "netns", self.a)
            sh("ip", "link", "set", self.vb, "netns", self.b)
            for ns, dev, host in ((self.a, self.va, 1), (self.b, self.vb, 2)):
                sh("ip", "-n", ns, "addr", "add", f"{self.net}.{host}/24", "dev", dev)
                sh("ip", "-n", ns, "addr", "add", f"fd99:{self.tag:x}::{host}/64", "dev", dev, "nodad")
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)

    def socket(self, ns: str, *args, timeout: float = 1.0) -> socket.socket:
        """A socket (socket.socket arguments) living in namespace `ns`."""
        out: dict = {}

        def enter() -> None:
            try:
                fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {ns}")
                finally:
                    os.close(fd)
                out["s"] = socket.socket(*args)
            except BaseException as exc:  # handed to the caller's thread
                out["e"] = exc

        t = threading.Thread(target=enter)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        out["s"].settimeout(timeout)
        return out["s"]

    def ip(self, host: int) -> str:
        return f"{self.net}.{host}"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    """A TCP segment (header with a valid checksum, then the payload), for a raw IPPROTO_TCP socket."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 1000, 1, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    csum = checksum(pseudo + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def icmp_error(kind: int, code: int, quoted_src: str, quoted_dst: str, proto: int, sport: int, dport: int,
               mtu: int = 1280) -> bytes:
    """An ICMP error message (type, code) quoting the IPv4 header and first 8 bytes of a packet."""
    quoted_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 1, 0, 64, proto, 0,
                            socket.inet_aton(quoted_src), socket.inet_aton(quoted_dst))
    quoted_ip = quoted_ip[:10] + struct.pack("!H", checksum(quoted_ip)) + quoted_ip[12:]
    quoted = quoted_ip + struct.pack("!HHI", sport, dport, 1000)
    body = struct.pack("!BBHHH", kind, code, 0, 0, mtu) + quoted
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]
