"""Semantic checks: every mistake in a policy becomes a diagnostic at its span.

    ast.Policy --check--> (Symbols, [Diagnostic])

All checks run; nothing stops at the first error. Lowering runs only on a
policy with no error-level diagnostics, so it may assume what is checked here.
"""

from __future__ import annotations

from anyplane.ir.actions import EJECT_CONDITIONS, RATE_MAX, RETRY_CONDITIONS, RateLimit
from anyplane.ir.nodes import MAX_PRIORITY
from anyplane.ir.source import Diagnostic, Note, Span, error

from . import ast
from .lower.sets import families, regions
from .suppress import suppressions
from .symbols import Declaration, ResolveError, Symbols, collect, resolve
from .values import (ICMP_TYPES, check_header_name, check_header_value, check_host, check_method, icmp_type_number,
                     parse_duration_ms, parse_rate_unit, path_match)

MAX_RETRIES = 25
MAX_PORT_RANGE = 64
CONNECTION_TIMEOUTS = ("tcp", "tcp-opening", "tcp-closing", "udp", "icmp", "other")
MIN_CONNECTIONS, MAX_CONNECTIONS = 1024, 1 << 24


class Checker:
    """Collects diagnostics over a whole policy."""

    def __init__(self, symbols: Symbols):
        self.symbols = symbols
        self.diags: list[Diagnostic] = []

    def err(self, span: Span, code: str, message: str, *notes: Note) -> None:
        """Record an error."""
        self.diags.append(error(span, code, message, *notes))

    def attempt(self, span: Span, code: str, fn, *args):
        """Call a value parser; on ValueError record it and return None."""
        try:
            return fn(*args)
        except ValueError as exc:
            self.err(span, code, str(exc))
            return None

    # -- declarations -------------------------------------------------------
    def declarations(self) -> None:
        """Addresses (duplicates, versions inside their service) and ports."""
        seen: dict = {}
        for decl in self.symbols.decls.values():
            owned = [(p, w, decl.name) for p, w in decl.prefixes]
            for v, ps in decl.version_prefixes.items():
                owned += [(p, w, f"{decl.name}.{v}") for p, w in ps]
                for p, w in ps:
                    if not any(sp.covers(p) for sp, _ in decl.prefixes):
                        self.err(w.span, "version-outside",
                                 f"version '{v}' address {p} is outside the addresses of service '{decl.name}'")
            for p, w, owner in owned:
                if p in seen:
                    first_w, first_owner = seen[p]
                    self.err(w.span, "duplicate-address",
                             f"{p} is declared by both '{first_owner}' and '{owner}'; ownership would be ambiguous",
                             Note(first_w.span, "first declared here"))
                else:
                    seen[p] = (w, owner)
            if decl.kind == "service":
                self._ports(decl)

    def _ports(self, decl: Declaration) -> None:
        numbers: dict[tuple[int, str], ast.PortClause] = {}
        for pc in decl.node.ports:
            bad = [n for n in (pc.number, pc.last) if n is not None and not 1 <= n.value <= 65535]
            for n in bad:
                self.err(n.span, "bad-port", f"port {n.value} is out of range 1-65535")
            if bad:
                continue
            if pc.last is not None and pc.last.value <= pc.number.value:
                self.err(pc.span, "empty-range", f"port range {pc.number.value}-{pc.last.value} is empty: "
                                                 "write the lower port first")
                continue
            if len(pc.numbers) > MAX_PORT_RANGE:
                self.err(pc.span, "bad-port", f"a port range is at most {MAX_PORT_RANGE} ports (this one has "
                                              f"{len(pc.numbers)}): each port is a listener of the sidecar")
                continue
            for n in pc.numbers:
                key = (n, "udp" if pc.protocol.text == "udp" else "tcp")
                if key in numbers:
                    span = pc.number.span if pc.last is None else pc.span
                    self.err(span, "duplicate-port", f"{key[1]} port {n} of '{decl.name}' is declared twice",
                             Note(numbers[key].span, "first declared here"))
                    break
                numbers[key] = pc

    # -- patterns -----------------------------------------------------------
    def pattern(self, p: ast.Pattern) -> None:
        """Endpoints, L4 and L7 parts of a rule, assert or query pattern."""
        src = self._side(p.src, p.src_except, "source")
        dst = self._side(p.dst, p.dst_except, "destination")
        if p.peer is not None:
            self.err(p.peer.span, "peer-in-pattern", "'peer' is one flow's client certificate: it belongs in a "
                                                     "flow (explain --flow), not in a pattern")
        if src is not None and self.symbols.principals:
            self._mtls_except(p.src_except)
        fam = lambda s: " and ".join(f"IPv{f}" for f in sorted(s)) or "no"
        if src is not None and dst is not None and not (src & dst):
            self.err(p.span, "family-mismatch",
                     f"source has only {fam(src)} addresses and destination only {fam(dst)} addresses: "
                     "this can never match")
        elif src is not None and dst is not None and p.l4 is not None and p.l4.kind in ("icmp", "icmp6"):
            self._icmp_family(p.l4, src & dst)
        if p.l4 is not None:
            self._l4(p.l4)
        if p.l7 is not None:
            self.l7(p.l7)
            self._http_port(p)

    def _mtls_except(self, excluded) -> None:
        """Under mutual TLS a workload source is its certificate too, and a pattern cannot say "any
        certificate but this one" yet: `except` may not take a workload out of a source."""
        for ref in excluded:
            if ref.kind == "name" and any(i in self.symbols.principals for i in self._ids(ref)):
                self.err(ref.span, "mtls-except", f"under mtls, '{ref.text}' is a certificate as well as addresses, "
                                                  "and a source cannot take a certificate out ('except'); name the "
                                                  "sources that may connect instead")

    def _icmp_family(self, l4: ast.L4, common: set[int]) -> None:
        """`icmp type N` is ICMP over IPv4 and `icmp6` ICMPv6: the endpoints must have that family."""
        if l4.kind == "icmp6" and 6 not in common:
            self.err(l4.span, "family-mismatch", "'icmp6' is ICMPv6, and these endpoints have no IPv6 addresses in "
                                                 "common: write 'icmp'")
        elif l4.kind == "icmp" and isinstance(l4.icmp_type, ast.Num) and 4 not in common:
            self.err(l4.span, "family-mismatch",
                     f"'icmp type {l4.icmp_type.value}' is ICMP over IPv4, and these endpoints have no IPv4 addresses "
                     f"in common: write 'icmp6 type {l4.icmp_type.value}', or name the message "
                     "('icmp type echo-request' is both families)")
        elif l4.kind == "icmp" and isinstance(l4.icmp_type, ast.Word) and l4.icmp_type.text in ICMP_TYPES:
            has = {f for f, n in zip((4, 6), ICMP_TYPES[l4.icmp_type.text]) if n is not None}
            if not has & common:
                kind = f"ICMPv{6 if 6 in has else 4}"
                self.err(l4.span, "family-mismatch", f"'{l4.icmp_type.text}' is an {kind} message, and these "
                                                     "endpoints have no such addresses in common")

    def _side(self, refs, excluded, what: str) -> set[int] | None:
        """The address families of one side (None when it has errors)."""
        ok = True
        for ref in refs + excluded:
            try:
                resolve(ref, self.symbols)
            except ResolveError as exc:
                self.err(ref.span, exc.code, exc.message)
                ok = False
        if not ok:
            return None
        side = regions(refs, excluded, self.symbols)
        if not side:
            first, last = refs[0].span, (excluded or refs)[-1].span
            span = Span(first.file, first.line, first.col, last.end_line, last.end_col)
            named = ", ".join(r.text for r in refs)
            if excluded:
                self.err(span, "empty-set", f"the {what} '{named} except {', '.join(r.text for r in excluded)}' "
                                            "leaves no address")
            else:  # `name.*` of a declaration without addresses
                self.err(span, "empty-set", f"the {what} '{named}' holds no address")
            return None
        return families(side, self.symbols)

    def _ranges(self, ranges, what: str) -> None:
        for r in ranges:
            for n in ((r.lo,) if r.lo is r.hi else (r.lo, r.hi)):
                if not 0 <= n.value <= 65535:
                    self.err(n.span, "bad-port", f"{what} {n.value} is out of range 0-65535")
            if r.lo.value > r.hi.value:
                self.err(r.span, "empty-range", f"{what} range {r.lo.value}-{r.hi.value} is empty")

    def _l4(self, l4: ast.L4) -> None:
        if l4.fragment:
            self.err(l4.span, "bad-fragment", "'fragment' describes one concrete packet (explain, replay), not a rule")
        self._ranges(l4.ports, "port")
        self._ranges(l4.sports, "source port")
        if isinstance(l4.icmp_type, ast.Word):
            self.attempt(l4.icmp_type.span, "bad-number", icmp_type_number, l4.kind, l4.icmp_type.text)
        numbers = ((l4.icmp_type, "ICMP type"), (l4.icmp_code, "ICMP code"), (l4.proto, "protocol"))
        for n, what in numbers:
            if isinstance(n, ast.Num) and not 0 <= n.value <= 255:
                self.err(n.span, "bad-number", f"{what} {n.value} is out of range 0-255")

    def l7(self, l7: ast.L7) -> None:
        """Methods, paths, host and headers of an HTTP part."""
        for m in l7.methods:
            self.attempt(m.span, "bad-method", check_method, m.text)
        for p in l7.paths:
            self.attempt(p.span, "bad-path", path_match, p.text)
        if l7.host is not None:
            self.attempt(l7.host.span, "bad-host", check_host, l7.host.value)
        names: dict[str, ast.HeaderTest] = {}
        for h in l7.headers:
            self.attempt(h.name.span, "bad-header", check_header_name, h.name.value)
            if h.value is not None:
                self.attempt(h.value.span, "bad-header", check_header_value, h.value.value)
            if h.name.value in names:
                self.err(h.span, "duplicate-clause", f"header '{h.name.value}' is tested twice",
                         Note(names[h.name.value].span, "first tested here"))
            names[h.name.value] = h

    def _http_port(self, p: ast.Pattern) -> None:
        if p.l4 is not None:
            if p.l4.kind != "tcp":
                self.err(p.l4.span, "http-needs-tcp", "HTTP runs over TCP: use 'tcp PORT http ...' or drop the L4 part")
            return
        for ref in p.dst:
            try:
                r = resolve(ref, self.symbols)
            except ResolveError:
                continue
            if r.kind in ("any", "prefix") or (ref.kind == "within"):
                self.err(ref.span, "no-http-port",
                         f"'{ref.text}' has no http port: write 'tcp PORT http ...' to say which port")
                continue
            if r.prefixes:
                self.err(ref.span, "no-http-port",
                         f"group '{ref.text}' holds addresses ({r.prefixes[0]}), which have no http port: "
                         "write 'tcp PORT http ...' to say which port")
            for decl in (r.decls if r.kind == "set" else (r.decl,)):
                if not decl.http_ports:
                    what = "an external" if decl.kind == "external" else "a service with no 'port N http'"
                    inside = f" (in group '{ref.text}')" if r.kind == "set" else ""
                    self.err(ref.span, "no-http-port",
                             f"'{decl.name}'{inside} is {what}: write 'tcp PORT http ...' or declare an http port")

    # -- statements -----------------------------------------------------------
    def assertion(self, a: ast.Assert) -> None:
        """An assert's pattern; `only` needs a source that leaves some other source out."""
        self.pattern(a.pattern)
        p = a.pattern
        if a.only and any(r.kind == "any" for r in p.src) and not p.src_except:
            self.err(p.src[0].span, "empty-set", "'assert only any -> ...' leaves no other source to rule out; "
                                                 "name the sources that may reach the destination")
        if a.only and self.symbols.principals:
            for ref in p.src:
                if ref.kind == "name" and any(i in self.symbols.principals for i in self._ids(ref)):
                    self.err(ref.span, "mtls-except", f"under mtls, 'assert only' with the workload '{ref.text}' as "
                                                      "a source would need every certificate but its own; assert "
                                                      "'not reachable' of the sources to rule out instead")

    def _ids(self, ref) -> tuple[str, ...]:
        try:
            return resolve(ref, self.symbols).identities
        except ResolveError:
            return ()

    def rule(self, r: ast.Rule) -> None:
        """A policy rule: its pattern, rate and priority."""
        self.pattern(r.pattern)
        for extra in r.rates[1:]:
            self.err(extra.span, "duplicate-clause", "a rule takes one 'rate' clause",
                     Note(r.rates[0].span, "first given here"))
        for extra in r.priorities[1:]:
            self.err(extra.span, "duplicate-clause", "a rule takes one 'priority' clause",
                     Note(r.priorities[0].span, "first given here"))
        for n in r.priorities[:1]:
            if n.value > MAX_PRIORITY:
                self.err(n.span, "bad-priority", f"priority {n.value} is out of range 0-{MAX_PRIORITY}")
        for rate in r.rates[:1]:
            self._rate(r, rate)

    def _rate(self, r: ast.Rule, rate: ast.Rate) -> None:
        """A rate every engine that could enforce it holds, meaning the same everywhere."""
        if r.verdict.text == "deny":
            self.err(rate.span, "bad-rate", "a deny rule cannot have a rate limit")
        per_s = self.attempt(rate.span, "bad-rate", parse_rate_unit, rate.unit)
        if rate.burst is None and rate.count > RATE_MAX:
            self.err(rate.span, "bad-rate", f"rate {rate.count} is more than the engines count ({RATE_MAX} per period)")
            return
        burst = rate.burst.value if rate.burst is not None else rate.count
        burst_span = rate.burst.span if rate.burst is not None else rate.span
        if rate.count <= 0:
            self.err(rate.span, "bad-rate", "a rate must be at least 1")
        elif rate.count > RATE_MAX:
            self.err(rate.span, "bad-rate", f"rate {rate.count} is more than the engines count ({RATE_MAX} per period)")
        if burst <= 0:
            self.err(burst_span, "bad-rate", "a burst must be at least 1")
        elif burst > RATE_MAX:
            self.err(burst_span, "bad-rate", f"burst {burst} is more than the engines hold ({RATE_MAX})")
        elif per_s and 0 < rate.count <= RATE_MAX and r.pattern.l7 is not None:
            need = RateLimit(rate.count, per_s, burst, "-").refill
            if burst < need:
                self.err(burst_span, "bad-rate",
                         f"burst {burst} is too small for {rate.count}/{rate.unit}: the sidecar refills its bucket "
                         f"at most every 50 ms, so it needs a burst of at least {need} (write 'burst {need}')")

    def route(self, r: ast.Route) -> None:
        """A route: its service, match, backends, timeout and retry policy."""
        decl = self.symbols.decls.get(r.service.text)
        if decl is None:
            self.err(r.service.span, "unknown-name", f"unknown service '{r.service.text}'")
        elif decl.kind != "service":
            self.err(r.service.span, "not-a-service", f"'{decl.name}' is an external; only services have routes")
            decl = None
        elif not decl.http_ports:
            self.err(r.service.span, "no-http-port", f"service '{decl.name}' has no http port to route")
        self.l7(r.l7)
        firsts: dict[type, object] = {}
        for item in r.items:
            if type(item) in firsts:
                self.err(item.span, "duplicate-clause", "this clause is given twice in one route",
                         Note(firsts[type(item)].span, "first given here"))
                continue
            firsts[type(item)] = item
            if isinstance(item, ast.RouteTo):
                self._backends(item, decl)
            elif isinstance(item, ast.RouteTimeout):
                self.attempt(item.duration.span, "bad-duration", parse_duration_ms, item.duration.text)
            else:
                self._retry(item)

    def _backends(self, to: ast.RouteTo, decl: Declaration | None) -> None:
        seen: dict[str, ast.BackendRef] = {}
        for b in to.backends:
            v = b.version.text
            if decl is not None and v not in decl.versions:
                known = ", ".join(sorted(decl.versions)) or "none"
                self.err(b.version.span, "unknown-version",
                         f"service '{decl.name}' has no version '{v}' (versions: {known})")
            if v in seen:
                self.err(b.span, "duplicate-clause", f"version '{v}' appears twice", Note(seen[v].span, "first here"))
            seen[v] = b
            if b.weight is not None and not 0 <= b.weight.value <= 100:
                self.err(b.weight.span, "bad-weight", f"weight {b.weight.value}% is out of range 0-100%")
        weights = [b.weight for b in to.backends]
        if len(weights) == 1 and weights[0] is None:
            return
        missing = [b for b in to.backends if b.weight is None]
        if missing:
            self.err(missing[0].span, "bad-weight", "give every version a weight when splitting traffic")
            return
        total = sum(w.value for w in weights)
        if total != 100:
            self.err(to.span, "bad-weight", f"weights add up to {total}%, not 100%")

    def _retry(self, r: ast.RouteRetry) -> None:
        if not 0 <= r.attempts.value <= MAX_RETRIES:
            self.err(r.attempts.span, "bad-retry", f"retry count {r.attempts.value} is out of range 0-{MAX_RETRIES}")
        for c in r.conditions:
            if c.text not in RETRY_CONDITIONS:
                self.err(c.span, "bad-retry", f"unknown retry condition '{c.text}'; use one of {', '.join(RETRY_CONDITIONS)}")
        if r.per_try is not None:
            self.attempt(r.per_try.span, "bad-duration", parse_duration_ms, r.per_try.text)

    def limits(self, lim: ast.Limits) -> None:
        """Circuit-breaking limits of a service."""
        decl = self.symbols.decls.get(lim.service.text)
        if decl is None:
            self.err(lim.service.span, "unknown-name", f"unknown service '{lim.service.text}'")
        elif decl.kind != "service":
            self.err(lim.service.span, "not-a-service", f"'{decl.name}' is an external; only services have limits")
        seen: dict[str, object] = {}
        for item in lim.items:
            key = item.key.text if isinstance(item, ast.LimitValue) else "eject"
            if key in seen:
                self.err(item.span, "duplicate-clause", f"'{key}' is given twice", Note(seen[key].span, "first here"))
            seen[key] = item
            if isinstance(item, ast.LimitValue):
                if item.value.value < 1:
                    self.err(item.value.span, "bad-limit", f"'{key}' must be at least 1")
                continue
            if item.consecutive.value < 1:
                self.err(item.consecutive.span, "bad-limit", "eject needs at least 1 consecutive error")
            if item.condition.text not in EJECT_CONDITIONS:
                self.err(item.condition.span, "bad-limit",
                         f"unknown ejection condition '{item.condition.text}'; use {' or '.join(EJECT_CONDITIONS)}")
            self.attempt(item.duration.span, "bad-duration", parse_duration_ms, item.duration.text)

    def connections(self, block: ast.Connections) -> None:
        """Timeouts (1 s to 24 h) and the table size of `connections { }`."""
        seen: dict[str, ast.ConnectionItem] = {}
        for item in block.items:
            key = item.key.text
            if key in seen:
                self.err(item.span, "duplicate-clause", f"'{key}' is given twice", Note(seen[key].span, "first here"))
            seen[key] = item
            if key == "max":
                n = int(item.value.text) if item.value.text.isdigit() else None
                if n is None or not MIN_CONNECTIONS <= n <= MAX_CONNECTIONS:
                    self.err(item.value.span, "bad-limit", f"'max' is a number of connections, {MIN_CONNECTIONS}-"
                                                           f"{MAX_CONNECTIONS}")
            elif key in CONNECTION_TIMEOUTS:
                ms = self.attempt(item.value.span, "bad-duration", parse_duration_ms, item.value.text)
                if ms is not None and ms < 1000:
                    self.err(item.value.span, "bad-duration", "a connection timeout is at least 1s")
            else:
                self.err(item.key.span, "bad-limit", f"unknown connection setting '{key}'; use "
                                                     f"{', '.join(CONNECTION_TIMEOUTS)} (timeouts) or max")

    def uniqueness(self, policy: ast.Policy) -> None:
        """One default, one limits block per service, no two routes with the same match."""
        defaults = [s for s in policy.statements if isinstance(s, ast.Default)]
        for extra in defaults[1:]:
            self.err(extra.span, "duplicate-default", "the default is set twice",
                     Note(defaults[0].span, "first set here"))
        state = [s for s in policy.statements if isinstance(s, (ast.Stateless, ast.Connections))]
        for extra in state[1:]:
            what = "'stateless' and 'connections { }' contradict each other" if type(extra) is not type(state[0]) \
                else "connection state is set twice"
            self.err(extra.span, "duplicate-clause", what, Note(state[0].span, "first set here"))
        limits: dict[str, ast.Limits] = {}
        for s in policy.statements:
            if isinstance(s, ast.Limits):
                if s.service.text in limits:
                    self.err(s.span, "duplicate-clause", f"'{s.service.text}' has two limits blocks",
                             Note(limits[s.service.text].span, "first here"))
                limits.setdefault(s.service.text, s)
        matches: dict[tuple, ast.Route] = {}
        for s in policy.statements:
            if not isinstance(s, ast.Route):
                continue
            l7 = s.l7
            base = (s.service.text, frozenset(m.text for m in l7.methods),
                    l7.host.value if l7.host else None,
                    frozenset((h.name.value, h.test, h.value.value if h.value else None) for h in l7.headers))
            for path in l7.paths or (ast.Word("/*", l7.span),):
                key = base + (path.text,)
                if key in matches:
                    self.err(path.span, "duplicate-route",
                             f"this route matches exactly what another route of '{s.service.text}' matches "
                             f"({path.text}); precedence cannot order them",
                             Note(matches[key].span, "the other route"))
                matches.setdefault(key, s)


def check(policy: ast.Policy, binding=None) -> tuple[Symbols, list[Diagnostic]]:
    """Run every check; diagnostics come back sorted by position. `binding`: the pods that give the
    workloads their addresses (compiler/binding.py)."""
    symbols, diags = collect(policy, binding)
    diags += suppressions(policy)[1]
    checker = Checker(symbols)
    checker.declarations()
    for stmt in policy.statements:
        if isinstance(stmt, ast.Rule):
            checker.rule(stmt)
        elif isinstance(stmt, ast.Route):
            checker.route(stmt)
        elif isinstance(stmt, ast.Limits):
            checker.limits(stmt)
        elif isinstance(stmt, ast.Assert):
            checker.assertion(stmt)
        elif isinstance(stmt, ast.Connections):
            checker.connections(stmt)
    checker.uniqueness(policy)
    out = diags + checker.diags
    out.sort(key=lambda d: (d.span.file, d.span.line, d.span.col) if d.span else ("", 0, 0))
    return symbols, out
