"""Helpers for tests that load programs into the running kernel."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

from anyplane.backends.ebpf import packet
from anyplane.backends.ebpf.emit import compile_c
from anyplane.backends.ebpf.engine import build_all
from anyplane.backends.ebpf.loader import VERDICTS, Classifier, run_frames

from .conftest import CI


def missing() -> str | None:
    """Why kernel tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "they need root (CAP_BPF and CAP_NET_ADMIN)"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted at /sys/fs/bpf (make setup mounts it)"
    for tool in ("clang", "bpftool", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    return None


def require_kernel() -> None:
    """Skip outside CI, fail in CI: kernel tests must run there."""
    why = missing()
    if why:
        (pytest.fail if CI else pytest.skip)(f"kernel tests cannot run: {why}")


@contextmanager
def loaded(program, name: str):
    """A classifier with `program` loaded and live; removed afterwards."""
    c = build_all(program)
    cl = Classifier(f"test-{name}-{os.getpid()}")
    cl.install(compile_c(c.source), c.layout)
    try:
        cl.write(c.tables)
        yield cl, c
    finally:
        cl.remove()


@contextmanager
def paired(prefix: str, octet: int):
    """Two network namespaces on a veth pair (tests/netns.Pair) and the name of a classifier to push to B's
    end; the namespaces and the classifier are removed afterwards. Kernel tests only."""
    from .netns import Pair

    require_kernel()
    tag = os.getpid() % 200 + 20
    name = f"{prefix}-{tag}"
    with Pair(prefix, tag, octet=octet) as pair:
        try:
            yield pair, name
        finally:
            Classifier(name).remove()


def kernel_verdicts(cl: Classifier, frames: list[bytes]) -> list[str]:
    """The kernel's verdict for each frame."""
    fd = cl.prog_fd()
    try:
        return [VERDICTS[rc] for rc, _ in run_frames(fd, frames)]
    finally:
        os.close(fd)


def reference_verdicts(program, frames: list[bytes], got: list[str] | None = None):
    """(packet, "pass"/"drop", whether a rate limit decided) per frame, in order, from the reference:
    the interpreter on the L4 projection with `ir.conn.Tracker` keeping connections (the frames run
    in well under any timeout). With the kernel's verdicts `got`, a packet the kernel dropped for its
    rate opens no connection in the reference either."""
    from anyplane.ir.actions import RateLimit
    from anyplane.ir.conn import Tracker, key
    from anyplane.ir.project import project_l4

    tracker = Tracker(project_l4(program))
    out = []
    for n, data in enumerate(frames):
        p = packet.parse_packet(data)
        if isinstance(p, str):
            out.append((p, "pass" if p == packet.NOT_IP else "drop", False))
            continue
        known = key(p.flow) in tracker.table
        j = tracker.judge(p, 0.0)
        rated = j.why == "rule" and j.entry is not None and isinstance(j.entry.action, RateLimit)
        if rated and got is not None and got[n] == "drop" and not known:
            tracker.table.pop(key(p.flow), None)  # the kernel had no token: it opened nothing
        out.append((p, "pass" if j.verdict == "allow" else "drop", rated))
    return out


__all__ = ["missing", "require_kernel", "loaded", "kernel_verdicts", "reference_verdicts", "packet"]
