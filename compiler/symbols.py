"""Declarations and name resolution: the symbol table shared by checks and lowering.

    ast.Policy --collect--> Symbols (services, externals, versions, prefixes)
    ast.EndpointRef --resolve--> identities | prefix | any
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from anyplane.ir.addr import Prefix
from anyplane.ir.source import Diagnostic, Note, error

from . import ast
from .values import parse_prefix

RESERVED = frozenset("""
    service workload namespace labels external group default allow deny route limits assert address port
    version any
    tcp udp icmp icmp6 proto sport type code http host header present absent rate burst priority
    to timeout retry on per-try eject consecutive for not reachable only except stateless connections mtls
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
    #: a workload's pods: (namespace, {key: value}); its prefixes come from the binding (`bound`) or
    #: are placeholders (compiler/binding.py)
    selector: tuple | None = None
    bound: bool = False

    @property
    def workload(self) -> bool:
        return self.selector is not None

    @property
    def http_ports(self) -> tuple[int, ...]:
        """The service's HTTP (or gRPC) ports, sorted."""
        if not isinstance(self.node, ast.Service):
            return ()
        return tuple(sorted({n for p in self.node.ports if p.protocol.text in ("http", "grpc") for n in p.numbers}))

    @property
    def identities(self) -> tuple[str, ...]:
        """Identity names making up this declaration: itself and its versions."""
        return (self.name,) + tuple(f"{self.name}.{v}" for v in sorted(self.versions))

    @property
    def families(self) -> set[int]:
        """Address families of every prefix, versions included; both for a workload (its pods may
        have either, whatever the binding of the moment says)."""
        if self.workload:
            return {4, 6}
        fams = {p.family for p, _ in self.prefixes}
        fams |= {p.family for ps in self.version_prefixes.values() for p, _ in ps}
        return fams


@dataclass
class Symbols:
    """Every declaration of a policy by name."""

    decls: dict[str, Declaration] = field(default_factory=dict)
    groups: dict[str, ast.Group] = field(default_factory=dict)
    resolved: dict[str, "Resolved"] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict, repr=False)  # derived tables (lower.sets)
    placeholders: bool = False  # some workload stands on placeholder addresses (compiler/binding.py)
    #: `mtls strict|permissive`: (mode, trust domain, the statement); None without mutual TLS
    mtls: tuple | None = None
    #: under mutual TLS, each workload's SPIFFE ID (`spiffe://DOMAIN/ns/NAMESPACE/sa/ACCOUNT`)
    principals: dict[str, str] = field(default_factory=dict)
    #: under mutual TLS, how each workload's own sidecar takes connections: "strict" or "permissive"
    #: (a workload whose sidecar says `mtls off` is absent: it asks for no certificate)
    modes: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every name an endpoint may use: declarations, their versions, groups."""
        return sorted(set(self.decls) | set(self.groups)
                      | {f"{d.name}.{v}" for d in self.decls.values() for v in d.versions})

    def service(self, name: str) -> Declaration | None:
        """The service with this name, or None."""
        d = self.decls.get(name)
        return d if d is not None and d.kind == "service" else None


@dataclass(frozen=True)
class Resolved:
    """What an endpoint reference denotes: identities, one raw prefix, everything, or a set of both
    (a group, or `name.*`)."""

    kind: str  # "ids" | "prefix" | "any" | "set"
    identities: tuple[str, ...] = ()
    prefix: Prefix | None = None
    families: frozenset[int] = frozenset((4, 6))
    decl: Declaration | None = None
    prefixes: tuple[Prefix, ...] = ()  # a set's raw prefixes
    decls: tuple[Declaration, ...] = ()  # a set's declarations (for their http ports)


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


def collect(policy: ast.Policy, binding=None) -> tuple[Symbols, list[Diagnostic]]:
    """Build the symbol table; report duplicate and reserved names and bad addresses. Workloads get
    their addresses from `binding` (compiler/binding.py), or placeholders without one."""
    symbols, diags = Symbols(), []
    workloads: list[Declaration] = []
    for stmt in policy.statements:
        if not isinstance(stmt, (ast.Service, ast.External, ast.Group)):
            continue
        name = stmt.name
        if name.text in RESERVED:
            diags.append(error(name.span, "reserved-name", f"'{name.text}' is a keyword and cannot name an endpoint"))
        _length(name, diags)
        if name.text in symbols.decls or name.text in symbols.groups:
            first = (symbols.decls[name.text].node if name.text in symbols.decls else symbols.groups[name.text]).name
            diags.append(error(name.span, "duplicate-name", f"'{name.text}' is declared twice",
                               Note(first.span, f"'{name.text}' was first declared here")))
            continue
        if isinstance(stmt, ast.Group):
            symbols.groups[name.text] = stmt
            continue
        kind = "service" if isinstance(stmt, ast.Service) else "external"
        decl = Declaration(name.text, kind, stmt, _prefixes(stmt.addresses, diags))
        if isinstance(stmt, ast.Service) and stmt.workload:
            decl.selector = _selector(stmt, diags)
            workloads.append(decl)
        elif not stmt.addresses:
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
    _mtls(policy, symbols, workloads, diags)
    if workloads:
        _bind(symbols, workloads, binding, diags)
    return symbols, diags


DEFAULT_TRUST_DOMAIN = "cluster.local"


def _mtls(policy: ast.Policy, symbols: Symbols, workloads: list[Declaration], diags: list[Diagnostic]) -> None:
    """The `mtls` statement (one at most) and, when it turns mutual TLS on, every workload's SPIFFE ID."""
    from .binding import namespace_problem

    stmts = [s for s in policy.statements if isinstance(s, ast.Mtls)]
    for extra in stmts[1:]:
        diags.append(error(extra.span, "duplicate-clause", "mutual TLS is set twice", Note(stmts[0].span, "first set here")))
    for d in workloads:
        account = d.node.account
        if account is not None and (why := namespace_problem(account.text)):
            diags.append(error(account.span, "bad-account", why.replace("namespace", "service account")))
        extra = [i for i in d.node.items if isinstance(i, ast.AccountClause)][1:]
        for item in extra:
            diags.append(error(item.span, "duplicate-clause", f"workload '{d.name}' runs as one service account"))
        own = [i for i in d.node.items if isinstance(i, ast.WorkloadMtls)]
        for item in own[1:]:
            diags.append(error(item.span, "duplicate-clause", f"workload '{d.name}' has one mtls mode"))
        if own and not stmts:
            diags.append(error(own[0].span, "mtls-without-domain", f"workload '{d.name}' sets its mtls mode, but the "
                                                                   "policy has no 'mtls' statement (its trust domain)"))
    if not stmts:
        return
    stmt = stmts[0]
    if stmt.mode.text == "off" and not any(isinstance(i, ast.WorkloadMtls) and i.mode.text != "off"
                                           for d in workloads for i in d.node.items):
        return
    domain = DEFAULT_TRUST_DOMAIN
    if stmt.trust_domain is not None:
        domain = stmt.trust_domain.value
        if not TRUST_DOMAIN.fullmatch(domain):
            diags.append(error(stmt.trust_domain.span, "bad-trust-domain",
                               "a trust domain is a DNS name: lower-case letters, digits, '.', '-' and '_'"))
    symbols.mtls = (stmt.mode.text, domain, stmt)
    for d in workloads:
        account = d.node.account.text if d.node.account is not None else "default"
        symbols.principals[d.name] = f"spiffe://{domain}/ns/{d.selector[0]}/sa/{account}"
        own = [i for i in d.node.items if isinstance(i, ast.WorkloadMtls)]
        mode = own[0].mode.text if own else stmt.mode.text
        if mode != "off":
            symbols.modes[d.name] = mode


TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?")


def _selector(stmt: ast.Service, diags: list[Diagnostic]) -> tuple:
    """A workload's (namespace, {key: value}), its clauses held to Kubernetes' syntax."""
    from .binding import label_problem, namespace_problem

    spaces = [item for item in stmt.items if isinstance(item, ast.NamespaceClause)]
    for extra in spaces[1:]:
        diags.append(error(extra.span, "duplicate-clause", f"workload '{stmt.name.text}' has one namespace",
                           Note(spaces[0].span, "the first")))
    namespace = stmt.namespace.text if stmt.namespace is not None else "default"
    if stmt.namespace is not None and (why := namespace_problem(namespace)):
        diags.append(error(stmt.namespace.span, "bad-namespace", why))
    labels: dict[str, str] = {}
    absent: list[str] = []
    spans: dict[str, ast.Word] = {}
    for w in stmt.labels:
        lacks = w.text.startswith("!")
        key, value, why = label_problem(w.text[1:] + "=" if lacks else w.text)
        if why:
            diags.append(error(w.span, "bad-label", why))
        elif key in spans:
            diags.append(error(w.span, "duplicate-label",
                               f"label '{key}' is given twice (a pod carries one value of a key, or none)",
                               Note(spans[key].span, "first given here")))
        elif lacks:
            absent.append(key)
            spans[key] = w
        else:
            labels[key], spans[key] = value, w
    return namespace, labels, tuple(sorted(absent))


def _bind(symbols: Symbols, workloads: list[Declaration], binding, diags: list[Diagnostic]) -> None:
    """Each workload's prefixes; workloads that could select one pod, and declared addresses in the
    placeholder ranges while a workload stands on them, are errors."""
    from .binding import assign, overlapping, reserved

    workloads.sort(key=lambda d: d.name)
    by_namespace: dict[str, list[Declaration]] = {}
    for d in workloads:
        by_namespace.setdefault(d.selector[0], []).append(d)
    pairs = ((a, b) for same in by_namespace.values() for i, a in enumerate(same) for b in same[i + 1:])
    for a, b in pairs:  # workloads of different namespaces never share a pod
        if overlapping(a.selector, b.selector):
            both = ",".join([f"{k}={v}" for k, v in sorted({**a.selector[1], **b.selector[1]}.items())]
                            + [f"!{k}" for k in sorted({*a.selector[2], *b.selector[2]})])
            diags.append(error(b.node.name.span, "overlapping-workloads",
                               f"workloads '{a.name}' and '{b.name}' can select the same pod (one in namespace "
                               f"{a.selector[0]} labelled {both or 'anything'}): give them a label key with different "
                               "values, or different namespaces", Note(a.node.name.span, f"'{a.name}'")))
    accounts = {d.name: principal.rsplit("/", 1)[1] for d in workloads
                if (principal := symbols.principals.get(d.name)) is not None}
    given, problems = assign([(d.name, d.selector[0], d.selector[1], d.node.name.span, d.selector[2])
                              for d in workloads], binding,
                             accounts)
    diags += problems
    for d in workloads:
        d.prefixes = [(p, ast.Word(str(p), span)) for p, span in given.get(d.name, [])]
        d.bound = binding is not None
    symbols.placeholders = binding is None
    if binding is None:
        for d in symbols.decls.values():
            if d.workload:
                continue
            clashes = [w for p, w in d.prefixes if reserved(p)]
            clashes += [w for ps in d.version_prefixes.values() for p, w in ps if reserved(p)]
            for w in clashes:
                diags.append(error(w.span, "reserved-address",
                                   f"{w.text} lies inside 240.0.0.0/4 or 100::/64, where unbound workloads stand; "
                                   "bind the workloads (--bind PODS.yaml) or leave these ranges out"))


#: Names become DNS labels (`v1.reviews`), file names and Envoy resource names: at most a DNS label.
MAX_NAME = 63


def _length(name, diags: list[Diagnostic]) -> None:
    if len(name.text) > MAX_NAME:
        diags.append(error(name.span, "bad-name", f"a name is at most {MAX_NAME} characters (this one has "
                                                  f"{len(name.text)}): names become DNS labels and file names"))


def resolve(ref: ast.EndpointRef, symbols: Symbols, _open: tuple[str, ...] = ()) -> Resolved:
    """Resolve an endpoint reference; raises ResolveError when it cannot (memoised per text)."""
    text = ref.text
    hit = symbols.resolved.get(text)
    if hit is None:
        hit = _resolve(ref, symbols, _open)
        symbols.resolved[text] = hit
    return hit


def did_you_mean(name: str, symbols: Symbols) -> str:
    """`; did you mean 'x'?` when a declared name is close, else ''."""
    close = difflib.get_close_matches(name, symbols.names(), n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


#: Groups within groups: deeper than this is refused (a chain of thousands would exhaust the stack).
MAX_GROUP_DEPTH = 64


def _group(ref: ast.EndpointRef, group: ast.Group, symbols: Symbols, open_: tuple[str, ...]) -> Resolved:
    name = group.name.text
    if name in open_:
        cycle = " -> ".join(open_[open_.index(name):] + (name,))
        raise ResolveError("group-cycle", f"group '{name}' contains itself ({cycle})")
    if len(open_) >= MAX_GROUP_DEPTH:
        raise ResolveError("group-depth", f"groups nested more than {MAX_GROUP_DEPTH} deep ({open_[0]} -> "
                                          f"{open_[1]} -> ... -> {name}): flatten them")
    idents, prefixes, decls, families = [], [], [], set()
    for member in group.members:
        r = resolve(member, symbols, open_ + (name,))
        if r.kind == "any":
            return Resolved("any")
        families |= r.families
        idents += r.identities
        prefixes += r.prefixes + ((r.prefix,) if r.prefix is not None else ())
        decls += r.decls + ((r.decl,) if r.decl is not None else ())
    return Resolved("set", tuple(dict.fromkeys(idents)), families=frozenset(families),
                    prefixes=tuple(dict.fromkeys(prefixes)), decls=tuple({d.name: d for d in decls}.values()))


def _resolve(ref: ast.EndpointRef, symbols: Symbols, open_: tuple[str, ...]) -> Resolved:
    if ref.kind == "any":
        return Resolved("any")
    if ref.kind == "address":
        try:
            prefix = parse_prefix(ref.address.text)
        except ValueError as exc:
            raise ResolveError("bad-address", str(exc)) from None
        if symbols.placeholders:
            from .binding import reserved

            if reserved(prefix):
                raise ResolveError("reserved-address", f"{prefix} lies inside 240.0.0.0/4 or 100::/64, where unbound "
                                                       "workloads stand; bind the workloads (--bind PODS.yaml) or "
                                                       "leave these ranges out")
        return Resolved("prefix", prefix=prefix, families=frozenset((prefix.family,)))
    group = symbols.groups.get(ref.name.text)
    if group is not None:
        if ref.kind != "name":
            raise ResolveError("unknown-version", f"'{ref.name.text}' is a group: write it alone")
        return _group(ref, group, symbols, open_)
    decl = symbols.decls.get(ref.name.text)
    if decl is None:
        raise ResolveError("unknown-name", f"unknown endpoint '{ref.name.text}'{did_you_mean(ref.name.text, symbols)}")
    if ref.kind == "name":
        return Resolved("ids", decl.identities, families=frozenset(decl.families), decl=decl)
    if ref.kind == "within":  # every address inside the declaration, whoever owns it
        if decl.workload:
            raise ResolveError("within-workload", f"'{decl.name}' is a workload: its addresses are its pods', "
                                                  f"so write '{decl.name}'")
        prefixes = tuple(p for p, _ in decl.prefixes)
        return Resolved("set", prefixes=prefixes, families=frozenset(p.family for p in prefixes), decls=(decl,))
    if decl.kind != "service":
        raise ResolveError("unknown-version", f"'{ref.name.text}' is an external and has no versions")
    version = ref.version.text
    if version not in decl.versions:
        known = ", ".join(sorted(decl.versions)) or "none"
        close = difflib.get_close_matches(version, decl.versions, n=1, cutoff=0.6)
        if close:
            known += f"; did you mean '{close[0]}'?"
        raise ResolveError("unknown-version",
                          f"service '{decl.name}' has no version '{version}' (versions: {known})")
    fams = frozenset(p.family for p, _ in decl.version_prefixes[version])
    return Resolved("ids", (f"{decl.name}.{version}",), families=fams, decl=decl)
