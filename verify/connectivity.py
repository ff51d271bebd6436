"""Who can reach whom: the connectivity map of a program, from the solver.

For every ordered pair of identities (by longest-prefix ownership), Z3 answers
"can some flow from A open a connection to B?", and "is every flow from A to B
allowed?". Identities that own no address (a service whose versions own all of
it) are left out. An edge carries the rules that decide the allowed flows found: one
witness for the pair, then one for each allow rule that can match the pair
(each witness judged again by the interpreter). Identities with the same edges
in and out can be drawn as one node (`groups`).
"""

from __future__ import annotations

import z3
import networkx as nx

from anyplane.ir.interp import evaluate
from anyplane.ir.match import InSet, Match
from anyplane.ir.nodes import Program
from anyplane.ir.owners import owned_addresses

from .context import Analysis
from .reach import reachability
from .result import VerificationBug

#: Allow rules asked about per pair, beyond the first witness.
MAX_RULES_PER_EDGE = 12


def _pair(src: str, dst: str, extra: Match | None = None) -> Match:
    fields = dict(extra.fields) if extra is not None else {}
    fields["src.id"], fields["dst.id"] = InSet((src,)), InSet((dst,))
    return Match.of(fields)


def _admits(m: Match, src: str, dst: str) -> bool:
    """Whether a match's own identity sets admit the pair."""
    for side, name in (("src.id", src), ("dst.id", dst)):
        fm = m.get(side)
        if isinstance(fm, InSet) and name not in fm.values:
            return False
    return True


def connectivity(program: Program, progress=None) -> nx.DiGraph:
    """A directed graph: a node per identity (`kind`), an edge per pair where some flow from the source
    opens a connection to the destination, with `rules` (the deciding allows, "FILE:LINE text"),
    `default` (the default allows some of it), `everything` (no flow of the pair is denied) and
    `witness` (one allowed flow)."""
    owns = owned_addresses(program)
    names = sorted(i.name for i in program.identities if owns.get(i.name))  # (versions may own it all)
    texts = {r.id: f"{r.origin.loc} {r.text}" for r in program.rules}
    pairs = [(s, d) for s in names for d in names]
    a = Analysis(program, extra=[_pair(s, d) for s, d in pairs])
    graph = nx.DiGraph()
    for ident in program.identities:
        if ident.name in names:
            graph.add_node(ident.name, kind=ident.kind)
    allows = [e for e in a.ordered if e.action.verdict == "allow"]
    found: dict[tuple[str, str], dict] = {}
    for n, (src, dst) in enumerate(pairs):
        if progress:
            progress(n + 1, 2 * len(pairs))
        m = _pair(src, dst)
        r = reachability(a, (m,))
        if r.reachable is None:
            raise VerificationBug(f"the solver gave up on {src} -> {dst}: {r.reason}")
        if not r.reachable:
            continue
        edge = {"rules": [], "default": False, "witness": r.witness.text,
                "everything": a.solve(a.region([m]), z3.Not(a.allowed_term(a.relevant([m]))))[0] == "unsat"}
        _record(program, r.witness, edge, texts)
        found[(src, dst)] = edge
    # The other allows that may carry flows of a connected pair: one question each.
    narrowed = {(src, dst): [_pair(src, dst, e.match) for e in allows if _admits(e.match, src, dst)][:MAX_RULES_PER_EDGE]
                for src, dst in found}
    b = Analysis(program, extra=[m for ms in narrowed.values() for m in ms]) if found else None
    for n, ((src, dst), edge) in enumerate(found.items()):
        if progress:
            progress(len(pairs) + n + 1, len(pairs) + len(found))
        for m in narrowed[(src, dst)]:
            r = reachability(b, (m,))
            if r.reachable:
                _record(program, r.witness, edge, texts)
        graph.add_edge(src, dst, **edge)
    return graph


def _record(program: Program, witness, edge: dict, texts: dict[str, str]) -> None:
    d = evaluate(program, witness)
    if d.verdict != "allow":
        raise VerificationBug(f"witness {witness.text} is not allowed by the interpreter")
    if d.entry is None:
        edge["default"] = True
        return
    text = texts.get(d.entry.rule, d.entry.origin.loc)
    if text not in edge["rules"]:
        edge["rules"].append(text)


def groups(graph: nx.DiGraph) -> list[list[str]]:
    """Identities with the same edges in and out (same rules, same completeness), largest first."""
    def signature(node):
        out = tuple(sorted((d, tuple(graph.edges[node, d]["rules"]), graph.edges[node, d]["everything"])
                           for d in graph.successors(node) if d != node))
        into = tuple(sorted((s, tuple(graph.edges[s, node]["rules"]), graph.edges[s, node]["everything"])
                            for s in graph.predecessors(node) if s != node))
        return out, into, graph.has_edge(node, node)
    by: dict = {}
    for node in sorted(graph.nodes):
        by.setdefault(signature(node), []).append(node)
    return sorted(by.values(), key=lambda g: (-len(g), g))
