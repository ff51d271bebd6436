"""The kernel engine's entry points: emit artifacts, push to an interface, replay, status.

    emit(program)               -> xdp.c, xdp.o, the map contents, report.txt
    push(program, iface, name)  -> load (first time or when the policy outgrows the
                                   program), write the idle generation, flip, attach
    replay(program, frames)     -> the kernel's verdict for each frame (BPF_PROG_TEST_RUN)
    status(name)                -> counters per rule of the live policy
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field

from anyplane.ir.conn import Tracker
from anyplane.ir.interp import evaluate
from anyplane.ir.nodes import Program
from anyplane.ir.project import ENFORCED, PROJECTED, enforcement, l7_conditions, project_l4

from .. import base
from ..classes import endpoint_rows
from . import packet
from .decode import decode
from .emit import Layout, compile_c, render
from .loader import TC_PREF, VERDICTS, Classifier, LoadError, Tables, run_frames, tables
from .model import Model, Unsupported, build
from .rebind import rebind

NAME = "ebpf"


CAPABILITY = base.Capability(
    engine="ebpf", place="kernel", fields=base.L4_FIELDS, families=(4, 6),
    actions=("allow", "deny", "packet-rate-limit", "counters"), capacity=None, state="connections")


def labels(program: Program) -> dict[str, str]:
    """Rule id -> "FILE:LINE text", for counters."""
    return {r.id: f"{r.origin.loc} {r.text}" for r in program.rules}


def report(program: Program, model: Model) -> list[base.RuleReport]:
    """How the kernel engine treats each rule."""
    per_rule: dict[str, int] = {}
    for e in model.entries:
        per_rule[e.rule] = per_rule.get(e.rule, 0) + 1

    def classify(rule):
        status = enforcement(rule)
        n = per_rule.get(rule.id, 0)
        if status == ENFORCED:
            return base.ENFORCED, "", n
        if status == PROJECTED:
            kinds = l7_conditions(program, rule.id)
            rates = " and request rates" if "HTTP" in kinds else ""
            return base.PROJECTED, f"{kinds} conditions{rates} are left to the sidecar", n
        return base.NOT_ENFORCED, "a deny with HTTP conditions is not applied below L7", 0
    return base.rule_rows(program, classify)


@dataclass
class Compiled:
    """Everything built for one program."""

    model: Model
    tables: Tables
    layout: Layout
    memo: dict = field(default_factory=dict, compare=False)  # kept for rebinding (rebind.py)

    @property
    def source(self) -> str:
        """The C source for the layout (rendered when a push must load a program, not at every push)."""
        if self.layout not in _SOURCES:
            _SOURCES[self.layout] = render(self.layout)
        return _SOURCES[self.layout]


_SOURCES: dict[Layout, str] = {}
#: Per classifier, the program this process last pushed to it, its tables and the mark its state had
#: after that push: a push that changes only the binding starts from them (rebind.py), unless another
#: push came between.
_RECENT: dict[str, tuple[Program, Compiled, tuple]] = {}


def _mark(state: dict) -> tuple:
    """What tells one push of a classifier from every other: its epoch and when it flipped."""
    return state.get("epoch"), state.get("flipped_ns")


def build_all(program: Program, capacity: int | None = None) -> Compiled:
    """Model, map contents and the layout the program is rendered for."""
    try:
        model = build(program, capacity)
    except Unsupported as exc:
        raise LoadError(f"the kernel engine cannot hold this policy: {exc}") from exc
    t = tables(model, labels(program), program.connections)
    return Compiled(model, t, t.need.grown())


def emit(program: Program) -> base.Output:
    """The artifacts `anyplane compile -t ebpf` writes."""
    c = build_all(program)
    t = c.tables
    out = base.Output(report=report(program, c.model))
    out.read_back = lambda: read_back(program, t)
    meta = {"layout": vars(c.layout), "need": vars(t.need), "entries": len(c.model.entries),
            "classes": {"src": len(c.model.src.keys), "dst": len(c.model.dst.keys),
                        "sport": c.model.sport.count, "dport": c.model.dport.count, "icmp": c.model.icmp.count},
            "counters": t.labels, "default": "allow" if c.model.default_verdict else "deny"}
    out.artifacts += [
        base.Artifact("xdp.c", c.source),
        base.Artifact("xdp.o", compile_c(c.source)),
        base.Artifact("maps/addr4.bin", t.addr4.tobytes()),
        base.Artifact("maps/cls.bin", t.cls.tobytes()),
        base.Artifact("maps/row.bin", t.row),
        base.Artifact("maps/blk.bin", t.blk),
        base.Artifact("maps/act.bin", t.act),
        base.Artifact("maps/tb.bin", t.tb),
        base.Artifact("maps/meta.bin", t.meta),
        base.Artifact("maps/addr6.json", json.dumps([[k.hex(), v] for k, v in t.addr6], indent=1) + "\n"),
        base.Artifact("tables.json", json.dumps(meta, indent=2) + "\n"),
        base.Artifact("report.txt", out.report_text("ebpf/xdp")),
    ]
    return out


def attached_prog(iface: str, netns: str | None = None) -> int | None:
    """Id of the XDP program on an interface (None if none)."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", "link", "show", "dev", iface]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LoadError(f"no interface '{iface}'")
    info = json.loads(proc.stdout)[0]
    xdp = info.get("xdp") or {}
    return xdp.get("prog", {}).get("id") if isinstance(xdp, dict) else None


def _prog_id(cl: Classifier) -> int:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(cl.prog_path)],
                         capture_output=True, text=True).stdout
    return json.loads(out)["id"]


def push(program: Program, iface: str | None, name: str = "default", netns: str | None = None,
         egress: bool = True, binding: dict | None = None) -> dict:
    """Make `program` the live policy of classifier `name` (attached to `iface` if given: XDP at ingress,
    and for a stateful policy with `egress`, the tc program at egress). The connection table stays:
    each connection is judged again under the new policy at its next packet. `binding` (which pods gave
    the workloads their addresses: digest, pods) is kept with the live generation, for `status`, with the
    binding's own generation: 1 for the first, one more at each push that brings other pods."""
    started = time.perf_counter()
    cl = Classifier(name)
    capacity = cl.layout.capacity if cl.installed else None
    c, rebound = None, False
    recent = _RECENT.get(name)
    if recent is not None and cl.installed and _mark(cl.state()) == recent[2]:
        c = rebind(recent[0], recent[1], program)  # only pods came and went: the address tables change
        rebound = c is not None
    if c is None:
        try:
            c = build_all(program, capacity)
        except ValueError:  # more entries than the loaded program's capacity
            c = build_all(program)
        if program.endpoints:  # what the next push of a new binding compares with, worked out now
            c.memo["rows"] = endpoint_rows(program)
    reloaded, kept = False, None
    egress = egress and program.connections.stateful
    if not cl.installed or not cl.layout.fits(c.tables.need):
        was = attached_prog(iface, netns) if iface else None
        had = cl.installed
        kept = cl.install(compile_c(c.source), c.layout)["connections_kept"]
        kept = kept if had else None
        reloaded = True
        if was is not None:
            cl.attach(iface, netns, egress)
    gen = cl.write(c.tables)
    state = cl.state()
    before = state.get("binding")
    if binding is not None:  # the binding's own generation: one more at each push of other pods
        held = before.get("generation", 1) if before else 0
        changed = not before or before.get("digest") != binding.get("digest")
        binding = dict(binding, generation=held + 1 if changed else held)
    state["binding"] = binding
    cl._save(state)
    _RECENT[name] = (program, c, _mark(state))
    if iface and (attached_prog(iface, netns) != _prog_id(cl) or egress != _egress_attached(iface, netns)):
        cl.attach(iface, netns, egress)
    return {"name": name, "iface": iface, "generation": gen, "reloaded": reloaded, "egress": bool(iface and egress),
            "connections_kept": kept, "entries": len(c.model.entries), "rebound": rebound, "binding": binding,
            "seconds": round(time.perf_counter() - started, 4)}


def _egress_attached(iface: str, netns: str | None) -> bool:
    """Whether anyplane's tc program runs at the interface's egress."""
    cmd = ["tc"] + (["-n", netns] if netns else []) + ["-j", "filter", "show", "dev", iface, "egress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        rows = json.loads(proc.stdout or "[]")
    except ValueError:
        return False
    return any(str(r.get("pref")) == TC_PREF and r.get("options", {}).get("bpf_name", "").startswith("anyplane_tc")
               for r in rows)


def status(name: str = "default") -> dict:
    """Counters per rule of the live policy."""
    cl = Classifier(name)
    if not cl.installed:
        raise LoadError(f"no classifier named '{name}' is loaded (anyplane push -t ebpf ... first)")
    return {"name": name, "generation": cl.live_gen(), "binding": cl.state().get("binding"), "rules": cl.counters(),
            "connections": cl.connections()}


def expected(program: Program, parsed) -> str:
    """What the policy's L4 projection says about a parsed frame ("pass" / "drop")."""
    if parsed == packet.NOT_IP:
        return "pass"
    if parsed == packet.MALFORMED:
        return "drop"
    return "pass" if evaluate(program, parsed).verdict == "allow" else "drop"


def replay(program: Program, frames: list[bytes], name: str = "replay") -> list[dict]:
    """Run frames, in order, through the compiled program in the kernel (its connection table starts
    empty); compare each with the reference: the interpreter, and `ir.conn.Tracker` for connections."""
    c = build_all(program)
    cl = Classifier(f"{name}-{os.getpid()}")
    cl.install(compile_c(c.source), c.layout)
    try:
        cl.write(c.tables)
        tracker = Tracker(project_l4(program))
        fd = cl.prog_fd()
        rows = []
        try:
            for data in frames:
                parsed = packet.parse_packet(data)
                rc, _ = run_frames(fd, [data])[0]
                if isinstance(parsed, str):
                    rows.append({"flow": parsed, "verdict": VERDICTS.get(rc, str(rc)),
                                 "expected": "pass" if parsed == packet.NOT_IP else "drop", "rule": None})
                    continue
                j = tracker.judge(parsed, time.monotonic())
                rows.append({"flow": parsed.flow.text, "verdict": VERDICTS.get(rc, str(rc)),
                             "expected": "pass" if j.verdict == "allow" else "drop",
                             "rule": j.entry.origin.loc if j.entry else None, "as": j.why})
        finally:
            os.close(fd)
        return rows
    finally:
        cl.remove()


def read_back(program: Program, tables) -> Program:
    """What one generation's map contents (loader.Tables) decide, as IR (decode.py): the composition
    proof then covers the bytes a push writes, not the entries they were built from."""
    return decode(program, dict(tables.image(), meta=tables.meta), tables.addr6)


def lifted(program: Program, model=None) -> Program:
    """What the classifier's tables decide, as IR: the entries the bit vectors were built from,
    in their order, and the default (for the composition proof; the kernel tests check that the
    tables decide like these entries). `model`: the tables already built for the program."""
    from dataclasses import replace

    from anyplane.ir.nodes import Table

    if model is None:
        model = build_all(program).model
    entries = tuple(model.entries)
    n = len(entries)
    ordered = tuple(replace(e, priority=n - k) for k, e in enumerate(entries))
    return replace(program, default="allow" if model.default_verdict else "deny",
                   acl=Table("kernel", ordered), routes=Table("routes", ()))


class KernelEngine(base.Engine):
    """The host's kernel: an XDP classifier over map-held tables, updated atomically."""

    name, place, capability = "ebpf", "kernel", CAPABILITY

    def emit(self, program: Program, options: base.Options) -> base.Output:
        """`compile -t ebpf`."""
        return emit(program)

    def read_back(self, program: Program, options: base.Options) -> Program:
        """What the classifier's maps decide, decoded from their bytes (decode.py)."""
        return read_back(program, build_all(program).tables)

    keeps_binding = True  # `status` says which pods the live policy holds

    def push(self, program: Program, **kw) -> dict:
        """Load or update the classifier (see `push`)."""
        return push(program, **kw)

    def status(self, **kw) -> dict:
        """Counters per rule of the live policy."""
        return status(**kw)

    def read_live(self, program: Program, name: str = "default", **kw) -> Program:
        """What the live generation of a loaded classifier decides: its maps, read from the kernel and
        decoded (decode.py)."""
        cl = Classifier(name)
        if not cl.installed:
            raise LoadError(f"no classifier named '{name}' is loaded (anyplane push -t ebpf ... first)")
        image, addr6 = cl.image()
        return decode(program, image, addr6)

    def replay(self, program: Program, flows=None, pcap: str | None = None) -> list[dict]:
        """Flows (as packets below L7) or a pcap capture through the compiled program in the kernel,
        beside the interpreter's verdicts; LoadError for a capture that cannot be read."""
        if pcap is not None:
            try:
                frames = packet.read_pcap(pcap)
            except (OSError, ValueError) as exc:
                raise base.BadInput(f"cannot read the capture '{pcap}': {exc}") from None
        else:
            frames = [packet.frame(f.without_http()) for f in flows]
        return replay(program, frames)


ENGINE = KernelEngine()
