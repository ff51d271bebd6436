"""Finite abstraction of the HTTP part of a flow, exact for the IR's string matches.

The IR only compares strings by equality (methods, hosts, header values) and
by prefix (paths). So the infinitely many strings split into finitely many
classes that every match treats alike:

    paths:   for every literal L (exact paths, path prefixes and "/"):
             "eq L"  = exactly L;
             "ext L" = strictly longer than L, starting with no longer literal
    hosts:   absent | each literal | any other value
    headers: per name: absent | each literal value | any other value

Each class has a concrete witness string, so a model turns into a real
request. `Domain.of(programs)` collects the literals of one or more programs
(two for a diff), so both sides share one abstraction.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from anyplane.ir import fields as F
from anyplane.ir.flow import HTTP_METHODS
from anyplane.ir.match import AnyOf, InSet, Match, StrExact, StrPrefix, options
from anyplane.ir.nodes import Program

# Characters that extend a path in normal form whatever precedes them ('.' could form a dot segment).
_EXTENSION_CHARS = "xyzqjkw0123456789abcdefghilmnoprstuv-_~"


@dataclass(frozen=True)
class PathDomain:
    """Path classes: index i is ("eq" | "ext", literal), sorted by literal.

    Because literals are sorted, the classes of every path starting with a
    prefix form one contiguous index range: a prefix match is two comparisons.
    """

    classes: tuple[tuple[str, str], ...]
    witnesses: tuple[str, ...]
    literals: tuple[str, ...]

    @classmethod
    def build(cls, exact: set[str], prefixes: set[str]) -> "PathDomain":
        nodes = sorted(exact | prefixes | {"/"})
        classes, witnesses = [], []
        for k, lit in enumerate(nodes):
            classes.append(("eq", lit))
            witnesses.append(lit)
            used = set()
            for n in nodes[k + 1:]:  # the longer literals extending lit follow it directly
                if not n.startswith(lit):
                    break
                used.add(n[len(lit)])
            ch = next((c for c in _EXTENSION_CHARS if c not in used), None)
            if ch is not None:
                classes.append(("ext", lit))
                witnesses.append(lit + ch)
        return cls(tuple(classes), tuple(witnesses), tuple(c[1] for c in classes))

    def exact(self, value: str) -> list[int]:
        """Classes of paths equal to `value`."""
        i = bisect_left(self.literals, value)
        return [i] if i < len(self.literals) and self.classes[i] == ("eq", value) else []

    def prefix_range(self, value: str) -> tuple[int, int] | None:
        """The inclusive range of classes of paths starting with `value` (None if empty)."""
        lo = bisect_left(self.literals, value)
        hi = bisect_left(self.literals, value + "\U0010ffff")
        return (lo, hi - 1) if hi > lo else None

    def ranges(self, fm) -> list[tuple[int, int]]:
        """Inclusive class ranges of the paths a path match admits (StrExact, StrPrefix or AnyOf of them)."""
        out = []
        for o in (fm.options if isinstance(fm, AnyOf) else (fm,)):
            if isinstance(o, StrExact):
                out += [(i, i) for i in self.exact(o.value)]
            elif isinstance(o, StrPrefix):
                r = self.prefix_range(o.value)
                if r is not None:
                    out.append(r)
            else:
                out.append((0, len(self.classes) - 1))
        return out

    def prefix(self, value: str) -> list[int]:
        """Classes of paths starting with `value`."""
        r = self.prefix_range(value)
        return list(range(r[0], r[1] + 1)) if r else []

    def classify(self, path: str) -> int:
        """The class of a concrete path (which must start with '/')."""
        best = max((i for i, (kind, lit) in enumerate(self.classes) if path.startswith(lit)),
                   key=lambda i: len(self.classes[i][1]))
        lit = self.classes[best][1]
        want = "eq" if path == lit else "ext"
        return next(i for i, c in enumerate(self.classes) if c == (want, lit))


@dataclass(frozen=True)
class ValueDomain:
    """Absent (0), each literal (1..n), any other present value (n+1)."""

    literals: tuple[str, ...]
    other: str

    @classmethod
    def build(cls, literals: set[str], other: str) -> "ValueDomain":
        lits = tuple(sorted(literals))
        while other in lits:
            other += "-other"
        return cls(lits, other)

    @property
    def size(self) -> int:
        """Number of classes including absent."""
        return len(self.literals) + 2

    def exact(self, value: str) -> int:
        """Class of a literal value."""
        return self.literals.index(value) + 1

    def witness(self, cls_id: int) -> str | None:
        """A value of the class (None for absent)."""
        if cls_id == 0:
            return None
        return self.literals[cls_id - 1] if cls_id <= len(self.literals) else self.other

    def classify(self, value: str | None) -> int:
        """The class of a concrete value."""
        if value is None:
            return 0
        return self.literals.index(value) + 1 if value in self.literals else len(self.literals) + 1


@dataclass(frozen=True)
class Domain:
    """Everything needed to treat HTTP requests finitely."""

    methods: tuple[str, ...]
    paths: PathDomain
    hosts: ValueDomain
    headers: dict[str, ValueDomain]
    #: client certificates under mutual TLS: none (plaintext), each SPIFFE ID a match names, any other
    peers: ValueDomain = ValueDomain((), "spiffe://other.example/ns/other/sa/other")

    @classmethod
    def of(cls, programs: list[Program], extra: list[Match] = ()) -> "Domain":
        """The domain covering every literal of the programs (and of extra matches, e.g. a query)."""
        exact, prefixes, hosts, peers = set(), set(), set(), set()
        headers: dict[str, set[str]] = {}
        matches = list(extra)
        for p in programs:
            matches += [e.match for e in p.acl.entries] + [e.match for e in p.routes.entries]
            matches += [m for a in p.asserts for m in a.pattern]
        for m in matches:
            for name, fm in m.fields:
                for o in options(fm):
                    if name == F.HTTP_PATH:
                        (exact if isinstance(o, StrExact) else prefixes).add(o.value)
                    elif name == F.HTTP_HOST and isinstance(o, StrExact):
                        hosts.add(o.value)
                    elif name == F.SRC_PEER and isinstance(o, InSet):
                        peers.update(o.values)
                    elif name.startswith(F.HEADER_PREFIX):
                        values = headers.setdefault(name[len(F.HEADER_PREFIX):], set())
                        if isinstance(o, StrExact):
                            values.add(o.value)
        domains = sorted({p.mtls.trust_domain for p in programs if p.mtls is not None}) or ["other.example"]
        return cls(HTTP_METHODS, PathDomain.build(exact, prefixes), ValueDomain.build(hosts, "other.example"),
                   {h: ValueDomain.build(v, "other") for h, v in sorted(headers.items())},
                   ValueDomain.build(peers, f"spiffe://{domains[0]}/ns/other/sa/other"))
