"""The surface syntax as frozen dataclasses, each with the span it was parsed from.

These types stop at `compiler/`: lowering turns them into `anyplane.ir`, and
nothing outside this package sees them. Block items keep their source order
so that `fmt` can print them back as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from anyplane.ir.source import Span


@dataclass(frozen=True, slots=True)
class Word:
    """A name, keyword value or other bare token, with its span."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Num:
    """An integer literal."""

    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class Str:
    """A string literal, unescaped (`raw` keeps the source text)."""

    value: str
    raw: str
    span: Span


# ---- endpoints ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AddressClause:
    """`address CIDR, CIDR...`"""

    addresses: tuple[Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class PortClause:
    """`port N PROTOCOL` or `port LO-HI PROTOCOL`"""

    number: Num
    protocol: Word
    span: Span
    last: Num | None = None  # the end of a range (`port 5060-5061 tcp`)

    @property
    def numbers(self) -> range:
        """Every port number the clause declares."""
        return range(self.number.value, (self.last or self.number).value + 1)


@dataclass(frozen=True, slots=True)
class VersionClause:
    """`version NAME address CIDR, ...`"""

    name: Word
    addresses: tuple[Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class NamespaceClause:
    """`namespace NAME` (a workload's)"""

    name: Word
    span: Span


@dataclass(frozen=True, slots=True)
class LabelsClause:
    """`labels KEY=VALUE, ...` (a workload's): each word is one `key=value`"""

    labels: tuple[Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class AccountClause:
    """`account NAME` (a workload's): the Kubernetes service account its pods run as"""

    name: Word
    span: Span


@dataclass(frozen=True, slots=True)
class WorkloadMtls:
    """`mtls strict|permissive|off` inside a workload: how its own sidecar takes connections"""

    mode: Word
    span: Span


ServiceItem = Union[AddressClause, PortClause, VersionClause, NamespaceClause, LabelsClause, AccountClause,
                    WorkloadMtls]


@dataclass(frozen=True, slots=True)
class Service:
    """`service NAME { items }`, or `workload NAME { items }`: a service whose pods are those of a
    namespace that carry some labels, its addresses given by a binding (`keyword` says which)."""

    name: Word
    items: tuple[ServiceItem, ...]
    span: Span
    keyword: str = "service"

    @property
    def workload(self) -> bool:
        return self.keyword == "workload"

    @property
    def namespace(self) -> Word | None:
        """The `namespace` clause's name (the last, when there are several: checks refuse that)."""
        found = [item.name for item in self.items if isinstance(item, NamespaceClause)]
        return found[-1] if found else None

    @property
    def account(self) -> Word | None:
        """The `account` clause's name (the last, when there are several: checks refuse that)."""
        found = [item.name for item in self.items if isinstance(item, AccountClause)]
        return found[-1] if found else None

    @property
    def labels(self) -> tuple[Word, ...]:
        """Every `key=value` of the `labels` clauses."""
        return tuple(w for item in self.items if isinstance(item, LabelsClause) for w in item.labels)

    @property
    def addresses(self) -> tuple[Word, ...]:
        """Every address of the service's `address` clauses."""
        return tuple(a for item in self.items if isinstance(item, AddressClause) for a in item.addresses)

    @property
    def ports(self) -> tuple[PortClause, ...]:
        """The `port` clauses."""
        return tuple(item for item in self.items if isinstance(item, PortClause))

    @property
    def versions(self) -> tuple[VersionClause, ...]:
        """The `version` clauses."""
        return tuple(item for item in self.items if isinstance(item, VersionClause))


@dataclass(frozen=True, slots=True)
class External:
    """`external NAME { address ... }`"""

    name: Word
    items: tuple[AddressClause, ...]
    span: Span

    @property
    def addresses(self) -> tuple[Word, ...]:
        """Every address of the external's `address` clauses."""
        return tuple(a for item in self.items for a in item.addresses)


# ---- rules -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EndpointRef:
    """One endpoint in a rule or pattern: `name` (a declaration or a group), `name.version`,
    `name.*` (every address inside the declaration's prefixes, whoever owns it), an address or `any`."""

    kind: str  # "name" | "version" | "within" | "address" | "any"
    name: Word | None
    version: Word | None
    address: Word | None
    span: Span

    @property
    def text(self) -> str:
        """The endpoint as written, canonically."""
        if self.kind == "any":
            return "any"
        if self.kind == "address":
            return self.address.text
        if self.kind == "version":
            return f"{self.name.text}.{self.version.text}"
        if self.kind == "within":
            return f"{self.name.text}.*"
        return self.name.text


@dataclass(frozen=True, slots=True)
class Group:
    """`group NAME { endpoint, ... }`: a named set of endpoints, usable wherever a name is."""

    name: Word
    members: tuple[EndpointRef, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class PortRange:
    """`N` or `LO-HI`."""

    lo: Num
    hi: Num
    span: Span


@dataclass(frozen=True, slots=True)
class L4:
    """The L4 part: `tcp|udp [PORTS] [sport PORTS]`, `icmp|icmp6 [type N|NAME [code M]]`, `proto N`."""

    kind: str  # "tcp" | "udp" | "icmp" | "icmp6" | "proto"
    ports: tuple[PortRange, ...]
    sports: tuple[PortRange, ...]
    icmp_type: Num | Word | None  # a number, or a name such as echo-request
    icmp_code: Num | None
    proto: Num | None
    span: Span
    fragment: bool = False  # flows only: a non-first fragment (no L4 header)


@dataclass(frozen=True, slots=True)
class HeaderTest:
    """`header "name" present|absent|= "value"`."""

    name: Str
    test: str  # "present" | "absent" | "equals"
    value: Str | None
    span: Span


@dataclass(frozen=True, slots=True)
class L7:
    """The HTTP part: `http [METHODS] [PATHS] [host H] [header ...]`; empty methods = any."""

    methods: tuple[Word, ...]
    any_method: bool
    paths: tuple[Word, ...]
    host: Str | None
    headers: tuple[HeaderTest, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Rate:
    """`rate N/UNIT [burst B]`."""

    count: int
    unit: str
    burst: Num | None
    span: Span


@dataclass(frozen=True, slots=True)
class Pattern:
    """`SRC -> DST [l4] [l7]`: the flow set of a rule, assert, query or explain."""

    src: tuple[EndpointRef, ...]
    dst: tuple[EndpointRef, ...]
    l4: L4 | None
    l7: L7 | None
    span: Span
    src_except: tuple[EndpointRef, ...] = ()  # patterns only: `any except office -> db`
    dst_except: tuple[EndpointRef, ...] = ()
    peer: "Str | Word | None" = None  # flows only: `peer "spiffe://..."` or `peer plaintext`


@dataclass(frozen=True, slots=True)
class Rule:
    """`allow|deny PATTERN [rate ...] [priority N]`."""

    verdict: Word
    pattern: Pattern
    rates: tuple[Rate, ...]
    priorities: tuple[Num, ...]
    span: Span

    @property
    def rate(self) -> Rate | None:
        """The rate clause, if any (checks reject more than one)."""
        return self.rates[0] if self.rates else None

    @property
    def priority(self) -> int:
        """The rule's priority (0 when not given)."""
        return self.priorities[0].value if self.priorities else 0


@dataclass(frozen=True, slots=True)
class Default:
    """`default allow|deny`."""

    verdict: Word
    span: Span


@dataclass(frozen=True, slots=True)
class Mtls:
    """`mtls strict|permissive|off [trust-domain "DOMAIN"]`: mutual TLS between the workloads' sidecars."""

    mode: Word
    trust_domain: Str | None
    span: Span


@dataclass(frozen=True, slots=True)
class Stateless:
    """`stateless`: every packet is judged alone (no connection state)."""

    span: Span


@dataclass(frozen=True, slots=True)
class ConnectionItem:
    """`KEY VALUE` inside `connections { }`: a timeout (`tcp 1h`) or the table size (`max 65536`)."""

    key: Word
    value: Word
    span: Span


@dataclass(frozen=True, slots=True)
class Connections:
    """`connections { tcp 6h  udp 60s  ... }`: connection tracking's timeouts and table size."""

    items: tuple[ConnectionItem, ...]
    span: Span


# ---- traffic management --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BackendRef:
    """`VERSION [N%]` inside `to`."""

    version: Word
    weight: Num | None
    span: Span


@dataclass(frozen=True, slots=True)
class RouteTo:
    """`to v1 80%, v2 20%`."""

    backends: tuple[BackendRef, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class RouteTimeout:
    """`timeout DURATION`."""

    duration: Word
    span: Span


@dataclass(frozen=True, slots=True)
class RouteRetry:
    """`retry N [on COND, ...] [per-try DURATION]`."""

    attempts: Num
    conditions: tuple[Word, ...]
    per_try: Word | None
    span: Span


RouteItem = Union[RouteTo, RouteTimeout, RouteRetry]


@dataclass(frozen=True, slots=True)
class Route:
    """`route SERVICE http ... { items }`."""

    service: Word
    l7: L7
    items: tuple[RouteItem, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class LimitValue:
    """`max-connections N` and friends."""

    key: Word
    value: Num
    span: Span


@dataclass(frozen=True, slots=True)
class LimitEject:
    """`eject N consecutive COND for DURATION`."""

    consecutive: Num
    condition: Word
    duration: Word
    span: Span


@dataclass(frozen=True, slots=True)
class Limits:
    """`limits SERVICE { items }`."""

    service: Word
    items: tuple[Union[LimitValue, LimitEject], ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Assert:
    """`assert [not] reachable PATTERN`, or `assert only SRC -> DST ...` (no source other than SRC
    reaches DST with the rest of the pattern)."""

    reachable: bool
    pattern: Pattern
    span: Span
    only: bool = False


Statement = Union[Service, External, Group, Default, Stateless, Connections, Mtls, Rule, Route, Limits, Assert]


@dataclass(frozen=True, slots=True)
class Comment:
    """A `#` comment, kept for `fmt`."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One parsed file: its statements and comments."""

    path: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """Several files that form one policy (names are global)."""

    files: tuple[SourceFile, ...]

    @property
    def statements(self) -> tuple[Statement, ...]:
        """Every statement of every file, in file order."""
        return tuple(s for f in self.files for s in f.statements)
