"""Program structure: identities, the endpoint table, prioritised tables, asserts.

A `Program` is what the compiler produces and what every engine and the
verifier read. It is immutable; passes rewrite it with `dataclasses.replace`.
Every entry carries `origin`, the span of the policy line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .actions import CircuitBreaker, strictness
from .addr import Prefix
from .match import Match
from .memo import per_program
from .source import Span

MAX_PRIORITY = 1_000_000
#: Above every rule a policy can write: what an engine does before it consults the rules (a sidecar under
#: `mtls strict` refuses a connection without a client certificate).
TOP_PRIORITY = MAX_PRIORITY + 1


@dataclass(frozen=True, slots=True, order=True)
class Port:
    """A declared service port and its application protocol (http, grpc, tcp, udp)."""

    number: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Selector:
    """A workload's pods: those of `namespace` that carry every label of `labels` (as a Kubernetes
    podSelector's matchLabels reads them). `bound`: its addresses come from a binding (the pods of
    the moment); otherwise it stands on placeholder addresses that only the analyses see
    (compiler/binding.py), and engines that match addresses refuse it."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    bound: bool
    #: label keys its pods do not carry (`labels !tier`, a selector's `DoesNotExist`)
    absent: tuple[str, ...] = field(default=(), metadata={"omit_empty": True})

    def text(self) -> str:
        """`shop app=web,tier=frontend,!canary`"""
        words = [f"{k}={v}" for k, v in self.labels] + [f"!{k}" for k in self.absent]
        return f"{self.namespace} " + (",".join(words) or "(every pod)")


@dataclass(frozen=True, slots=True)
class Identity:
    """A named owner of addresses: a service, a service version, an external, or a workload (a
    service whose pods a selector picks out, `selector`).

    `id` is a small positive integer (0 means "owned by nobody"); engines that
    key tables on identities use it. A version's `name` is `service.version`.
    """

    id: int
    name: str
    kind: str
    service: str
    version: str | None
    ports: tuple[Port, ...]
    origin: Span
    selector: Selector | None = field(default=None, metadata={"omit_none": True})
    #: The SPIFFE ID its pods prove with their certificates under mutual TLS (workloads, when the policy
    #: turns mTLS on): `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT`.
    principal: str | None = field(default=None, metadata={"omit_none": True})
    #: how its own sidecar takes connections under mutual TLS: "strict" or "permissive" (None: it asks
    #: for no certificate, though as a client it may present its own)
    mtls: str | None = field(default=None, metadata={"omit_none": True})

    @property
    def http_ports(self) -> tuple[int, ...]:
        """Ports that speak HTTP (http or grpc)."""
        return tuple(p.number for p in self.ports if p.protocol in ("http", "grpc"))


@dataclass(frozen=True, slots=True)
class EndpointPrefix:
    """One row of the ownership table: addresses in `prefix` belong to `identity`.

    Longest prefix wins; no two rows share a prefix.
    """

    prefix: Prefix
    identity: str
    origin: Span


@dataclass(frozen=True, slots=True)
class Entry:
    """A table entry: if `match` holds, `action` applies, highest `priority` first.

    `rule` names the policy rule the entry was lowered from; one rule may give
    several entries (all share its origin and, for rate limits, its bucket).
    """

    priority: int
    match: Match
    action: object
    origin: Span
    rule: str

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= TOP_PRIORITY:
            raise ValueError(f"priority {self.priority} out of 0..{TOP_PRIORITY}")

    @property
    def layer(self) -> str:
        """The highest layer any matched field belongs to."""
        return self.match.layer


def precedence(entry: Entry) -> tuple:
    """What the language orders matching entries by: highest priority first; at equal priority deny
    beats rate limit beats allow (the slower rate first). Entries of equal precedence decide alike."""
    return (-entry.priority, strictness(entry.action))


def decision_key(entry: Entry) -> tuple:
    """Order in which matching acl entries decide: lower key wins. Precedence, then source location,
    so that the deciding rule reported among equals is deterministic (line order decides nothing else)."""
    return (*precedence(entry), entry.origin)


@dataclass(frozen=True, slots=True)
class Table:
    """A prioritised match-action table."""

    name: str
    entries: tuple[Entry, ...]


@per_program(keep=32)
def ordered(table: Table) -> tuple[Entry, ...]:
    """A table's entries in decision order, sorted once per table (every engine, placement and the
    verifier ask for it)."""
    return tuple(sorted(table.entries, key=decision_key))


@dataclass(frozen=True, slots=True)
class Rule:
    """A policy rule as written: its id, origin, action, layer and canonical text."""

    id: str
    origin: Span
    action: str
    layer: str
    priority: int
    text: str
    accepts: tuple[str, ...] = ()  # finding kinds the author accepts here (`# anyplane: allow redundant`)


@dataclass(frozen=True, slots=True)
class Limits:
    """Circuit breaking for one destination service."""

    service: str
    breaker: CircuitBreaker
    origin: Span


@dataclass(frozen=True, slots=True)
class Assert:
    """`assert [not] reachable PATTERN`: the pattern is a disjunction of matches. `assert only SRC -> DST
    ...` is held as `not reachable` over the flows of every other source (`only` keeps how it was said)."""

    reachable: bool
    pattern: tuple[Match, ...]
    origin: Span
    text: str
    only: bool = False


@dataclass(frozen=True, slots=True)
class Connections:
    """Connection state: whether rules judge connections (their replies and related ICMP errors pass) or
    every packet alone (`stateless`), how long an idle connection is remembered, and how many are."""

    stateful: bool = True
    tcp_s: int = 21600          # an established TCP connection (replies seen)
    tcp_opening_s: int = 60     # opened, no reply yet
    tcp_closing_s: int = 10     # after a FIN
    udp_s: int = 60
    icmp_s: int = 30            # echo requests, until their replies
    other_s: int = 60           # any other protocol
    max: int = 262144           # connections held; the least recently used go first

    def timeout_s(self, proto: int, state: str = "established") -> int:
        """The idle timeout of a connection of this protocol (TCP: "opening", "established", "closing")."""
        if proto == 6:
            return {"opening": self.tcp_opening_s, "closing": self.tcp_closing_s}.get(state, self.tcp_s)
        return {17: self.udp_s, 1: self.icmp_s, 58: self.icmp_s}.get(proto, self.other_s)


@dataclass(frozen=True, slots=True)
class Mtls:
    """Mutual TLS on the workloads' sidecars: the policy's mode (each workload's own is `Identity.mtls`).
    `strict`: a workload's sidecar accepts TCP only from a client with a certificate of the trust domain;
    `permissive`: with one or without (a client without one is judged by its address); `off`: only the
    workloads that say otherwise ask. Rules that name a workload as source match its certificate."""

    mode: str
    trust_domain: str
    origin: Span

    def __post_init__(self) -> None:
        if self.mode not in ("strict", "permissive", "off"):
            raise ValueError(f"mtls mode must be strict, permissive or off, not {self.mode!r}")


@dataclass(frozen=True, slots=True)
class Program:
    """A whole policy, lowered."""

    default: str
    default_origin: Span | None
    identities: tuple[Identity, ...]
    endpoints: tuple[EndpointPrefix, ...]
    acl: Table
    routes: Table
    limits: tuple[Limits, ...]
    asserts: tuple[Assert, ...]
    rules: tuple[Rule, ...]
    connections: Connections = Connections()
    mtls: Mtls | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        if self.default not in ("allow", "deny"):
            raise ValueError(f"default must be allow or deny, not {self.default!r}")

    def identity(self, name: str) -> Identity:
        """The identity with this name (KeyError if none)."""
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(name)

    def rule(self, rule_id: str) -> Rule:
        """The source rule with this id (KeyError if none)."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    @property
    def unbound(self) -> tuple[Identity, ...]:
        """Workloads standing on placeholder addresses (no binding gave them theirs)."""
        return tuple(i for i in self.identities if i.selector is not None and not i.selector.bound)

    @property
    def mesh(self) -> tuple[str, ...]:
        """The identities whose sidecars ask for client certificates (mutual TLS), by name."""
        return tuple(i.name for i in self.identities if i.mtls is not None)

    def service_identities(self, service: str) -> tuple[str, ...]:
        """Names of the identities that make up a service (the service and its versions)."""
        return _identities_by_service(self).get(service, ())


@per_program
def _identities_by_service(program: Program) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for i in program.identities:
        out.setdefault(i.service, []).append(i.name)
    return {k: tuple(v) for k, v in out.items()}
