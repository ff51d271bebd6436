"""Declarations and name resolution: the symbol table shared by checks and lowering.

    ast.Policy --collect--> Symbols (services, externals, versions, prefixes)
    ast.EndpointRef --resolve--> identities | prefix | any
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anyplane.ir.addr import Prefix
from anyplane.ir.source import Diagnostic, Note, error

from . import ast
from .values import parse_prefix

RESERVED = frozenset("""
    service external default allow deny route limits assert address port version any
    tcp udp icmp proto sport type code http host header present absent rate burst priority
    to timeout retry on per-try eject consecutive for not reachable
""".split())


@dataclass
class Declaration:
    """A service or external: its node, prefixes and versions."""

    name: str
    kind: str
    node: ast.Service | ast.External
    prefixes: list[tuple[Prefix, ast.Word]] = field(default_factory=list)
    versions: dict[str, ast.VersionClause] = field(default_factory=dict)
    version_prefixes: dict[str, list[tuple[Prefix, ast.Word]]] = field(default_factory=dict)

    @property
    def http_ports(self) -> tuple[int, ...]:
        """The service's HTTP (or gRPC) ports, sorted."""
        if not isinstance(self.node, ast.Service):
            return ()
        return tuple(sorted({p.number.value for p in self.node.ports if p.protocol.text in ("http", "grpc")}))

    @property
    def identities(self) -> tuple[str, ...]:
        """Identity names making up this declaration: itself and its versions."""
        return (self.name,) + tuple(f"{self.name}.{v}" for v in sorted(self.versions))

    @property
    def families(self) -> set[int]:
        """Address families of every prefix, versions included."""
        fams = {p.family for p, _ in self.prefixes}
        fams |= {p.family for ps in self.version_prefixes.values() for p, _ in ps}
        return fams


@dataclass
class Symbols:
    """Every declaration of a policy by name."""

    decls: dict[str, Declaration] = field(default_factory=dict)
    resolved: dict[str, "Resolved"] = field(default_factory=dict)

    def service(self, name: str) -> Declaration | None:
        """The service with this name, or None."""
        d = self.decls.get(name)
        return d if d is not None and d.kind == "service" else None


@dataclass(frozen=True)
class Resolved:
    """What an endpoint reference denotes."""

    kind: str  # "ids" | "prefix" | "any"
    identities: tuple[str, ...] = ()
    prefix: Prefix | None = None
    families: frozenset[int] = frozenset((4, 6))
    decl: Declaration | None = None


class ResolveError(Exception):
    """An endpoint reference that does not resolve: a diagnostic code and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _prefixes(words, diagnostics: list[Diagnostic]) -> list[tuple[Prefix, ast.Word]]:
    out = []
    for w in words:
        try:
            out.append((parse_prefix(w.text), w))
        except ValueError as exc:
            diagnostics.append(error(w.span, "bad-address", str(exc)))
    return out


def collect(policy: ast.Policy) -> tuple[Symbols, list[Diagnostic]]:
    """Build the symbol table; report duplicate and reserved names and bad addresses."""
    symbols, diags = Symbols(), []
    for stmt in policy.statements:
        if not isinstance(stmt, (ast.Service, ast.External)):
            continue
        name = stmt.name
        if name.text in RESERVED:
            diags.append(error(name.span, "reserved-name", f"'{name.text}' is a keyword and cannot name an endpoint"))
        _length(name, diags)
        if name.text in symbols.decls:
            first = symbols.decls[name.text].node.name
            diags.append(error(name.span, "duplicate-name", f"'{name.text}' is declared twice",
                               Note(first.span, f"'{name.text}' was first declared here")))
            continue
        kind = "service" if isinstance(stmt, ast.Service) else "external"
        decl = Declaration(name.text, kind, stmt, _prefixes(stmt.addresses, diags))
        if not stmt.addresses:
            diags.append(error(name.span, "no-address", f"{kind} '{name.text}' has no address"))
        if isinstance(stmt, ast.Service):
            for v in stmt.versions:
                if v.name.text in decl.versions:
                    diags.append(error(v.name.span, "duplicate-name",
                                       f"version '{v.name.text}' of '{name.text}' is declared twice",
                                       Note(decl.versions[v.name.text].name.span, "first declared here")))
                    continue
                if v.name.text in RESERVED:
                    diags.append(error(v.name.span, "reserved-name",
                                       f"'{v.name.text}' is a keyword and cannot name a version"))
                _length(v.name, diags)
                decl.versions[v.name.text] = v
                decl.version_prefixes[v.name.text] = _prefixes(v.addresses, diags)
        symbols.decls[name.text] = decl
    return symbols, diags


#: Names become DNS labels (`v1.reviews`), file names and Envoy resource names: at most a DNS label.
MAX_NAME = 63


def _length(name, diags: list[Diagnostic]) -> None:
    if len(name.text) > MAX_NAME:
        diags.append(error(name.span, "bad-name", f"a name is at most {MAX_NAME} characters (this one has "
                                                  f"{len(name.text)}): names become DNS labels and file names"))


def resolve(ref: ast.EndpointRef, symbols: Symbols) -> Resolved:
    """Resolve an endpoint reference; raises ResolveError when it cannot (memoised per text)."""
    text = ref.text
    hit = symbols.resolved.get(text)
    if hit is None:
        hit = symbols.resolved[text] = _resolve(ref, symbols)
    return hit


def _resolve(ref: ast.EndpointRef, symbols: Symbols) -> Resolved:
    if ref.kind == "any":
        return Resolved("any")
    if ref.kind == "address":
        try:
            prefix = parse_prefix(ref.address.text)
        except ValueError as exc:
            raise ResolveError("bad-address", str(exc)) from None
        return Resolved("prefix", prefix=prefix, families=frozenset((prefix.family,)))
    decl = symbols.decls.get(ref.name.text)
    if decl is None:
        raise ResolveError("unknown-name", f"unknown endpoint '{ref.name.text}'")
    if ref.kind == "name":
        return Resolved("ids", decl.identities, families=frozenset(decl.families), decl=decl)
    if decl.kind != "service":
        raise ResolveError("unknown-version", f"'{ref.name.text}' is an external and has no versions")
    version = ref.version.text
    if version not in decl.versions:
        known = ", ".join(sorted(decl.versions)) or "none"
        raise ResolveError("unknown-version",
                          f"service '{decl.name}' has no version '{version}' (versions: {known})")
    fams = frozenset(p.family for p, _ in decl.version_prefixes[version])
    return Resolved("ids", (f"{decl.name}.{version}",), families=fams, decl=decl)
