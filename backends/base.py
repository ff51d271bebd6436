"""What every backend shares: the engine interface, artifacts, the per-rule report, capabilities.

An engine is one subclass of `Engine` in `backends/<engine>/engine.py`, an
instance registered by name (`backends/registry.py`). The compiler reaches
engines only through that interface:

    name, place       `-t p4` and where the engine sits on a path (`fabric`); one vocabulary
    capability        what it matches and does, and how much it holds: placement reads it
    emit(program, options)        -> Output: artifacts, the per-rule report, a read-back
    read_back(program, options)   -> Program: what the emitted artifacts decide, as IR (the proof)
    holds(action) / count(program, options) / covers(program): what placement asks

A backend never drops part of a policy silently: every rule gets a line in
its compile report saying whether the engine enforces it as written, as its
L4 projection, or not at all (and why). An engine that fails says why through
one error type, `EngineError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from anyplane.ir.nodes import Program
from anyplane.ir.project import project_l4

if TYPE_CHECKING:
    from .deployment import Deployment

class Follower:
    """Pushes to one running target, one policy after another (`Engine.follow`): `push(program,
    extra)` with the push's keyword arguments in `extra`; `close()` when done."""

    def __init__(self, push, close=lambda: None):
        self.push, self.close = push, close


class EngineError(Exception):
    """An engine failed and says why in words (toolchain, kernel, Envoy, a deployment file, a push)."""


class BadInput(EngineError):
    """An input file an engine reads (a capture, say) cannot be used: a usage error."""


class NotOffered(EngineError):
    """An optional operation (push, status, replay) the engine does not offer."""


class Unsupported(EngineError):
    """A match, action or value an engine cannot express (reported at the rule, or placed elsewhere)."""


ENFORCED = "enforced"
PROJECTED = "l4-projection"
NOT_ENFORCED = "not-enforced"


@dataclass(frozen=True)
class Artifact:
    """One output file: a relative path and its content."""

    path: str
    data: str | bytes


@dataclass(frozen=True)
class RuleReport:
    """How one engine treats one policy rule."""

    rule: str
    location: str
    text: str
    status: str
    detail: str = ""
    entries: int = 0

    def to_json(self) -> dict:
        """One row of `report.json`."""
        return {"rule": self.location, "text": self.text, "status": self.status, "detail": self.detail,
                "entries": self.entries}


@dataclass
class Output:
    """What a backend emits for a program."""

    artifacts: list[Artifact] = field(default_factory=list)
    report: list[RuleReport] = field(default_factory=list)
    #: What the artifacts decide, read back as IR (for the composition proof); None when the engine
    #: offers no read-back of this output.
    read_back: Callable[[], Program] | None = None

    def report_text(self, engine: str) -> str:
        """The compile report as text."""
        lines = [f"# {engine}: how each rule is enforced", ""]
        width = max((len(r.location) for r in self.report), default=10)
        for r in self.report:
            detail = f"  ({r.detail})" if r.detail else ""
            lines.append(f"{r.location:<{width}}  {r.status:<14} {r.text}{detail}")
        counts = {}
        for r in self.report:
            counts[r.status] = counts.get(r.status, 0) + 1
        lines += ["", "summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Capability:
    """What an engine can match and do, and how much it holds: data the compiler places rules by."""

    engine: str
    place: str  # where it sits on a path, e.g. fabric, kernel or sidecar
    fields: tuple[str, ...]
    families: tuple[int, ...]
    actions: tuple[str, ...]
    capacity: int | None
    protocols: str = "any"  # "any", or "tcp" for an engine that only sees TCP streams to service ports
    #: Connection state: "connections" (replies of allowed connections and related ICMP errors pass:
    #: the kernel's connection table, the sidecar's terminated TCP connections); "tcp-established" (no
    #: connections: TCP segments with ACK or RST set shaped like replies of an allow pass, whether or not
    #: a connection exists; other replies are judged alone, like a switch ACL's "established"); "none"
    #: (every packet is judged alone, so under a stateful policy a deny or the default drops replies).
    state: str = "none"

    @property
    def sees_http(self) -> bool:
        """Whether the engine sees HTTP requests (and so holds HTTP conditions and request rates)."""
        return "http" in self.fields

    @property
    def meters_packets(self) -> bool:
        """Whether the engine enforces packet rate limits."""
        return "packet-rate-limit" in self.actions

    @property
    def sees_everything(self) -> bool:
        """Whether every flow on the path crosses the engine (it can hold a default deny)."""
        return self.protocols == "any"

    def to_json(self) -> dict:
        """The capability as a JSON object (placement reports carry it)."""
        return {"engine": self.engine, "place": self.place, "fields": list(self.fields),
                "families": list(self.families),
                "actions": list(self.actions), "capacity": self.capacity, "protocols": self.protocols,
                "state": self.state}


L4_FIELDS = ("src.ip", "dst.ip", "src.id", "dst.id", "proto", "sport", "dport", "icmp.type", "icmp.code")


def rule_rows(program: Program, classify) -> list[RuleReport]:
    """One report row per rule; `classify(rule) -> (status, detail, entries)`."""
    rows = []
    for r in program.rules:
        status, detail, entries = classify(r)
        rows.append(RuleReport(r.id, r.origin.loc, r.text, status, detail, entries))
    return rows


@dataclass(frozen=True)
class Options:
    """What a compile asks of the engines; each engine reads the fields it names in `Engine.options`."""

    out_dir: str = "."
    dry_run: bool = False
    range_match: bool = True
    deployment: Deployment | None = None  # the sidecars' sockets and endpoints (backends/deployment.py)
    capacity: int | None = None  # entries the engine may use (None: its own)
    xds: tuple = ()  # (host, port) of the xDS servers the sidecars' bootstraps point at (envoy)
    xds_delta: bool = False  # the incremental flavour of xDS (envoy)
    xds_tls: dict | None = None  # {"cert", "key", "ca"}: the sidecars' TLS to the xDS server (envoy)
    ca: tuple | None = None  # (cert, key, chain, kept in the output) PEM: signs the sidecars' SVIDs (envoy)


class Engine:
    """One forwarding engine. Subclasses set the class attributes and implement `emit`."""

    #: The target name (`compile -t NAME`), also the folder of its artifacts under `-t all`.
    name: str = ""
    #: Where it sits on a path (`--path fabric,kernel,sidecar`).
    place: str = ""
    capability: Capability
    #: The `Options` fields it reads (others are usage errors when given for it alone).
    options: frozenset[str] = frozenset()
    #: Whether its artifacts name addresses for workloads (then an unbound workload, which stands on
    #: placeholders only the analyses see, is refused; compiler/binding.py). Engines that select pods by
    #: their labels set False.
    needs_addresses: bool = True
    #: The importer that reads its artifacts back (`compiler/importers`: "k8s", "cilium", "istio"), for
    #: the export proof; None: the engine reads its output back itself (`Output.read_back`), or not at all.
    reads_back_with: str | None = None
    #: Whether its artifacts carry routes (weighted versions, retries, timeouts), compared after a read-back.
    carries_routes: bool = False
    #: Whether a target remembers which pods (binding) its live policy holds (`push` takes `binding=`).
    keeps_binding: bool = False

    # -- optional operations: an engine offers one by overriding it (`offers`) ---------------------------

    def push(self, program: Program, **kw) -> dict:
        """Make the policy live on a running target (the keyword arguments are the engine's own)."""
        raise NotOffered(f"-t {self.name} has no push")

    def follow(self, **kw) -> "Follower":
        """What pushes policy after policy to one running target (`push --watch`), keeping what the engine
        can reuse between pushes; by default, each push as a push alone."""
        return Follower(lambda program, extra: self.push(program, **kw, **extra))

    def status(self, **kw) -> dict:
        """Counters and state of a running target."""
        raise NotOffered(f"-t {self.name} has no status")

    def replay(self, program: Program, flows=None, pcap: str | None = None) -> list[dict]:
        """Flows (or a capture's frames) through the engine, beside the policy's verdicts."""
        raise NotOffered(f"-t {self.name} has no replay")

    def read_live(self, program: Program, **kw) -> Program:
        """What a running target decides now, read from it and decoded as IR (`status --prove`);
        `program` gives what the target does not hold (identities, rule origins)."""
        raise NotOffered(f"-t {self.name} cannot be read back while it runs")

    def workloads(self, program: Program) -> list[str]:
        """The identities an exporter's resources decide for (the export proof's scope); every
        identity unless the engine says otherwise."""
        return [i.name for i in program.identities]

    def exempt(self, program: Program) -> list:
        """Prefixes whose traffic to themselves the export leaves out of its proof (a pod reaching itself)."""
        return []

    def control_plane(self, limits=None):
        """A server that feeds running targets their configuration (`serve`): `prepare(program,
        deployment, version)`, `publish`, `start`, `stop`, `status`, `certify`, `rotate`."""
        raise NotOffered(f"-t {self.name} has no control plane")

    def control_plane_limits(self, **kw):
        """The control plane's limits, from keyword values."""
        raise NotOffered(f"-t {self.name} has no control plane")

    def services(self, program: Program) -> list[str]:
        """The services whose targets a control plane feeds (one proof scope each)."""
        return []

    def offers(self, operation: str) -> bool:
        """Whether the engine overrides the optional operation ("push", "status", "replay", "read_live",
        "control_plane"; "follow" is offered with "push")."""
        return getattr(type(self), operation) is not getattr(Engine, operation)

    def emit(self, program: Program, options: Options) -> Output:
        """The artifacts for a program, its per-rule report and (where it can) a read-back."""
        raise NotImplementedError

    def read_back(self, program: Program, options: Options) -> Program:
        """What the engine's artifacts for `program` decide, as IR (emitting them again if needed)."""
        out = self.emit(program, options)
        if out.read_back is None:
            raise EngineError(f"{self.name} offers no read-back of its output")
        return out.read_back()

    def holds(self, action) -> str | None:
        """None when the engine can hold this action's values, else why not (e.g. a rate it cannot meter)."""
        return None

    def count(self, program: Program, options: Options) -> tuple[int, dict[str, str]]:
        """Entries the engine needs for a program, and the rules (FILE:LINE) it cannot express and why."""
        return len(project_l4(program).acl.entries), {}

    def judges(self, program: Program, flow) -> bool:
        """Whether a flow crosses the engine at all (engines with `protocols != "any"` see only part of
        the traffic; the others judge every flow)."""
        return True

    def covers(self, program: Program) -> dict[str, bool]:
        """Per rule id, whether all of the rule's flows cross this engine (only engines that see part of
        the traffic, `protocols != "any"`, are asked)."""
        return {r.id: True for r in program.rules}

    def reads_http(self, program: Program) -> dict[str, str | None]:
        """Per rule id with HTTP conditions (only engines that see HTTP are asked): None when the engine
        reads every request the rule is about, else why it cannot, said so that the user can fix the
        policy. `check` rejects a rule no engine reads."""
        return {r.id: None for r in program.rules if r.layer == "L7"}


def refuse_mtls(program: Program, target: str, why: str) -> None:
    """An exporter that cannot carry mutual TLS refuses a policy under `mtls` where the statement is."""
    if program.mtls is None:
        return
    from anyplane.ir.source import DiagnosticError, error

    raise DiagnosticError([error(program.mtls.origin, target, f"-t {target} cannot carry mutual TLS: {why} "
                                                                "(compile the sidecars with -t envoy)")])
