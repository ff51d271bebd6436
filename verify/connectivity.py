"""Who can reach whom: the connectivity map of a program, from the solver.

For every ordered pair of identities (by longest-prefix ownership), Z3 answers
"can some flow from A open a connection to B?", and "is every flow from A to B
allowed?". Identities that own no address (a service whose versions own all of
it) are left out. An edge carries the rules that decide the allowed flows found: one
witness for the pair, then one for each allow rule that can match the pair
(each witness judged again by the interpreter). Identities with the same edges
in and out can be drawn as one node (`groups`).

Pairs alike (verify/alike.py): a question is asked once per class of pairs.
The first pair of a class is asked as above, its witness judged by the
interpreter; every other pair gets that witness moved to its own addresses,
which the index's entries must decide by the entry in the same place (else
VerificationBug), and the rules in those places.
"""

from __future__ import annotations

from contextvars import ContextVar

from dataclasses import replace as dataclass_replace

import z3
import networkx as nx

from anyplane.ir import fields as F
from anyplane.ir.describe import PROTOCOLS, describe
from anyplane.ir.flow import TCP, UDP
from anyplane.ir.interp import evaluate
from anyplane.ir.match import Absent, AnyOf, Exact, InSet, Match, Range, exact_values, int_ranges, merge_ranges
from anyplane.ir.nodes import Program
from anyplane.ir.owners import owned_addresses
from anyplane.ir.pairspace import PairSpace

from .alike import PairClasses
from .context import Analysis
from .reach import reachability
from .result import Unknown, Unsat, VerificationBug

#: Allow rules asked about per pair, beyond the first witness.
MAX_RULES_PER_EDGE = 12
#: Protocol-and-port cells asked about per pair; past it, an edge says "ports vary".
MAX_CELLS_PER_EDGE = 64
_PORTED = (TCP, UDP)


#: Under mtls, each identity's certificate (None: it holds none); unset without mtls.
_HOLDS: ContextVar[dict | None] = ContextVar("holds", default=None)


def _pair(src: str, dst: str, extra: Match | None = None) -> Match:
    """The flows from one identity to another; under mtls, each with the source's own certificate or
    none (the map draws who reaches whom while nobody holds another's key: `query` asks the rest)."""
    fields = dict(extra.fields) if extra is not None else {}
    fields["src.id"], fields["dst.id"] = InSet((src,)), InSet((dst,))
    holds = _HOLDS.get()
    if holds is not None and F.SRC_PEER not in fields:
        principal = holds.get(src)
        fields[F.SRC_PEER] = AnyOf((Absent(), InSet((principal,)))) if principal else Absent()
    return Match.of(fields)


def _admits(m: Match, src: str, dst: str) -> bool:
    """Whether a match's own identity sets admit the pair."""
    for side, name in (("src.id", src), ("dst.id", dst)):
        fm = m.get(side)
        if (isinstance(fm, InSet) and name not in fm.values) or (isinstance(fm, Exact) and fm.value != name):
            return False
    return True


def connectivity(program: Program, progress=None, alike: bool = True) -> nx.DiGraph:
    """Who can reach whom (see `_connectivity`); under mtls, every source with its own certificate."""
    token = _HOLDS.set({i.name: i.principal for i in program.identities} if program.mtls is not None else None)
    try:
        return _connectivity(program, progress, alike)
    finally:
        _HOLDS.reset(token)


def _connectivity(program: Program, progress=None, alike: bool = True) -> nx.DiGraph:
    """A directed graph: a node per identity (`kind`), an edge per pair where some flow from the source
    opens a connection to the destination, with `rules` (the deciding allows, "FILE:LINE text"),
    `default` (the default allows some of it), `everything` (no flow of the pair is denied) and
    `witness` (one allowed flow). `alike`: ask once per class of alike pairs (module doc); False asks
    every pair (the reference the classes are tested against)."""
    owns = owned_addresses(program)
    names = sorted(i.name for i in program.identities if owns.get(i.name))  # (versions may own it all)
    texts = {r.id: f"{r.origin.loc} {r.text}" for r in program.rules}
    kinds = {i.name: i.kind for i in program.identities}
    # Traffic between two outside addresses crosses no policy of ours: no edge between externals.
    externals = [n for n in names if kinds[n] == "external"]
    total = len(names) ** 2 - len(externals) ** 2
    classes = PairClasses(program, names) if alike else None
    first: dict[tuple, tuple[str, str]] = {}  # class -> the pair asked
    like: dict[tuple[str, str], list] = {}  # the pair asked -> the pairs (and blocks of pairs) of its class
    asked = []

    def add(key, pair, block=None):
        if key is not None and key in first:
            like[first[key]].append(block if block is not None else pair)
            return
        if key is not None:
            first[key] = pair
            like[pair] = []
            if block is not None:
                like[pair].append(block)
        asked.append(pair)
    if classes is None:
        for s in names:
            for d in names:
                if not (kinds[s] == "external" and kinds[d] == "external"):
                    add(None, (s, d))
    else:
        # Pairs with an outside end are keyed one by one (no edge between two of them); the rest by
        # blocks of pairs alike (verify/alike.py PairSpace), never one pair at a time.
        space = PairSpace([classes], names, names, loose=externals)
        work = [(p, None) for p in space.singles if not (kinds[p[0]] == "external" and kinds[p[1]] == "external")]
        for block in space.blocks:
            rep = space.representative(block)
            if rep is not None:
                work.append((rep, block))
        for pair, block in sorted(work, key=lambda w: w[0]):
            key = classes.key(*pair)
            if key is None and block is not None:  # (not so by construction) each pair on its own
                for member in space.members(block):
                    add(classes.key(*member), member)
                continue
            add(key, pair, block)
    a = Analysis(program, extra=[_pair(s, d) for s, d in asked])
    a.solver.add(z3.Not(a.enc.fragment))  # an edge is a flow that opens a connection: never a later fragment
    if classes is not None and [id(e) for e in classes.ordered] != [id(e) for e in a.ordered]:
        raise VerificationBug("the entries are not in one decision order")
    graph = nx.DiGraph(pairs=total, asked=len(asked))
    for ident in program.identities:
        if ident.name in names:
            graph.add_node(ident.name, kind=ident.kind)
    found: dict[tuple[str, str], dict] = {}
    for n, (src, dst) in enumerate(asked):
        if progress:
            progress(n + 1, 2 * len(asked))
        m = _pair(src, dst)
        r = reachability(a, (m,), blockers=False)  # an edge or none: what blocks it is not drawn
        if r.reachable is None:
            raise VerificationBug(f"the solver gave up on {src} -> {dst}: {r.reason}")
        if not r.reachable:
            continue
        edge = {"rules": [], "default": False, "witness": r.witness.text, "http": [], "decided": [],
                "everything": isinstance(a.solve(a.region([m]), z3.Not(a.allowed_term(a.relevant([m])))), Unsat)}
        _record(program, r.witness, edge, texts, a)
        edge["flow"] = r.witness
        found[(src, dst)] = edge
    # The other allows that may carry flows of a connected pair: one question each.
    narrowed = {(src, dst): [_pair(src, dst, a.ordered[i].match) for i in a.relevant([_pair(src, dst)])
                             if a.ordered[i].action.verdict == "allow"
                             and _admits(a.ordered[i].match, src, dst)][:MAX_RULES_PER_EDGE]
                for src, dst in found}
    cells = {key: _cells(a, *key) for key in found}
    b = Analysis(program, extra=[m for ms in narrowed.values() for m in ms]
                 + [m for cs in cells.values() for _, m in cs or ()]) if found else None
    if b is not None:
        b.solver.add(z3.Not(b.enc.fragment))
    for n, ((src, dst), edge) in enumerate(found.items()):
        if progress:
            progress(len(asked) + n + 1, len(asked) + len(found))
        for m in narrowed[(src, dst)]:
            r = reachability(b, (m,), blockers=False)
            if r.reachable:
                _record(program, r.witness, edge, texts, a)
        edge["flows"] = _flows(b, cells[(src, dst)], edge["everything"], src, dst)
        edge["label"] = label(edge["flows"])
    for asked_pair, members in like.items():
        if asked_pair not in found:
            continue
        for member in members:
            for pair in space.members(member) if isinstance(member[0], list) else (member,):
                if pair != asked_pair:
                    found[pair] = _moved(a, classes, found[asked_pair], asked_pair, pair, texts)
    for (src, dst), edge in found.items():
        del edge["decided"], edge["flow"]
    for pair in sorted(found):
        graph.add_edge(*pair, **found[pair])
    return graph


def _moved(a: Analysis, classes: PairClasses, edge: dict, asked: tuple[str, str], pair: tuple[str, str], texts) -> dict:
    """The edge of a pair alike with the pair asked: its witness moved to the pair's own addresses and
    decided by the entry in the same place, the rules in the places the asked pair's were found."""
    mask = ~classes.selves if pair[0] == pair[1] and classes.through_hosts(pair[0]) else -1
    mine, theirs = classes.positions(*pair, mask), classes.positions(*asked, mask)
    place = {p: k for k, p in enumerate(theirs)}
    w = edge["flow"]
    ends = classes.moved(w.src, w.dst, w.family, pair[0]) if pair[0] == pair[1] else None
    if ends is None:
        ends = classes.address[pair[0]][w.family], classes.address[pair[1]][w.family]
    moved = dataclass_replace(w, src=ends[0], dst=ends[1])
    hit = a.matching(moved)
    decided = hit[0] if hit else None

    def like(p: int | None) -> int | None:
        """The entry of this pair in the place of the asked pair's entry p."""
        if p is None:
            return None
        if p in place:
            return mine[place[p]]
        # an entry for one of the asked identity's addresses to itself: this one's, for the moved flow's
        return classes.host_entry(pair[0], w.family, ends[0])
    expected = edge["decided"][0]
    want = like(expected)
    if a.ids(moved) != pair or decided != want or (decided is None and a.program.default != "allow") or \
            (decided is not None and a.ordered[decided].action.verdict != "allow"):
        raise VerificationBug(f"{moved.text} is not decided for {pair[0]} -> {pair[1]} as {w.text} is for "
                              f"{asked[0]} -> {asked[1]}")
    rules = []
    for p in edge["decided"]:
        if p is not None:
            e = a.ordered[like(p)]
            text = texts.get(e.rule, e.origin.loc)
            if text not in rules:
                rules.append(text)
    return dict(edge, witness=moved.text, rules=rules, flow=None, decided=[], http=list(edge["http"]),
                flows=[dict(f) for f in edge["flows"]])


def _cells(a: Analysis, src: str, dst: str) -> list[tuple[dict, Match]] | None:
    """The pair cut into protocol-and-port cells on which every entry that can match the pair is
    constant: a cell per protocol the entries name (per port range for TCP and UDP), and one for the
    other protocols. None when the entries' ports are not ranges, or the cells are too many."""
    pair = _pair(src, dst)
    # The entries that can match the pair: an entry whose box meets the pair's but names other identities
    # (an egress to `outside`, whose prefix holds every address) cuts no cell of it, so that pairs alike
    # are cut alike.
    entries = [a.ordered[i] for i in a.relevant([pair]) if _admits(a.ordered[i].match, src, dst)]
    named: set[int] = set()
    for e in entries:
        fm = e.match.get(F.PROTO)
        values = exact_values(fm) if fm is not None else frozenset()
        if values is None:
            return None
        named |= values
    if not named:
        return [({"protocol": "any"}, pair)]
    out = []
    for proto in sorted(named):
        base = _pair(src, dst, Match.of({F.PROTO: Exact(proto)}))
        name = PROTOCOLS.get(proto, f"proto {proto}")
        if proto not in _PORTED:
            out.append(({"protocol": proto, "name": name}, base))
            continue
        cuts = {0, 65536}
        for e in entries:
            fm, pm = e.match.get(F.DPORT), e.match.get(F.PROTO)
            if fm is None or (pm is not None and proto not in exact_values(pm)):
                continue
            ranges = int_ranges(fm)
            if ranges is None:
                return None
            cuts |= {lo for lo, _ in ranges} | {hi + 1 for _, hi in ranges}
        cuts = sorted(cuts)
        for lo, hi in zip(cuts, cuts[1:]):
            m = _pair(src, dst, Match.of({F.PROTO: Exact(proto), F.DPORT: Range(lo, hi - 1)}))
            out.append(({"protocol": proto, "name": name, "ports": [[lo, hi - 1]]}, m))
    out.append(({"protocol": "other", "except": sorted(named)}, _pair(src, dst, Match.of({F.PROTO: InSet(tuple(sorted(named)))}))))
    return out if len(out) <= MAX_CELLS_PER_EDGE else None


def _flows(a: Analysis, cells, everything: bool, src: str, dst: str) -> list[dict]:
    """The allowed part of each cell (`all`: every flow of the cell is allowed), merged: adjacent port
    ranges of one protocol with the same answer become one. Without cells, one line for the pair."""
    if everything:
        return [{"protocol": "any", "all": True}]
    if cells is None:
        return [{"protocol": "any", "all": False, "note": "ports vary"}]
    out: list[dict] = []
    for cell, m in cells:
        if cell["protocol"] == "other":  # the cell is the pair without the named protocols
            region = z3.And(a.region([_pair(src, dst)]), a.outside(m))
        else:
            region = a.region([m])
        term = a.allowed_term(a.relevant([_pair(src, dst) if cell["protocol"] == "other" else m]))
        some = a.solve(region, term)
        if isinstance(some, Unknown):
            raise VerificationBug(f"the solver gave up on {src} -> {dst} {cell}")
        if isinstance(some, Unsat):
            continue
        every = isinstance(a.solve(region, z3.Not(term)), Unsat)
        item = dict(cell, all=every)
        last = out[-1] if out else None
        if (last is not None and "ports" in item and "ports" in last and last["protocol"] == item["protocol"]
                and last["all"] == item["all"] and last["ports"][-1][1] + 1 == item["ports"][0][0]):
            last["ports"][-1][1] = item["ports"][0][1]
        elif last is not None and "ports" in item and "ports" in last and last["protocol"] == item["protocol"] \
                and last["all"] == item["all"]:
            last["ports"].append(item["ports"][0])
        else:
            out.append(item)
    for item in out:
        if item.get("ports") == [[0, 65535]]:
            del item["ports"]
    return out


def label(flows: list[dict]) -> str:
    """The flows of an edge in words: "tcp 443, 8000-8080; udp 53; other protocols (some)"."""
    parts = []
    for f in flows:
        if f["protocol"] == "any":
            text = "any protocol" if f["all"] else "some flows" + (f" ({f['note']})" if f.get("note") else "")
        elif f["protocol"] == "other":
            text = "other protocols"
        else:
            text = f["name"] + ("" if "ports" not in f else " " + ", ".join(
                str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merge_ranges(map(tuple, f["ports"]))))
        parts.append(text + ("" if f["all"] or f["protocol"] == "any" else " (some)"))
    return "; ".join(parts)


def _record(program: Program, witness, edge: dict, texts: dict[str, str], a: Analysis) -> None:
    d = evaluate(program, witness)
    if d.verdict != "allow":
        raise VerificationBug(f"witness {witness.text} is not allowed by the interpreter")
    edge["decided"].append(a.position[id(d.entry)] if d.entry is not None else None)
    if d.entry is None:
        edge["default"] = True
        return
    text = texts.get(d.entry.rule, d.entry.origin.loc)
    if text not in edge["rules"]:
        edge["rules"].append(text)
    http = describe(program, d.entry.match)["http"]
    if http and http not in edge["http"]:
        edge["http"].append(http)


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
