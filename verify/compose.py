"""The composition proof: the engines on a path, together, decide exactly what the policy decides.

A flow or request is allowed iff every engine on its path allows it. Each
engine's decisions come as an IR program read back from what it emitted;
Z3 looks for a flow where the policy's verdict and the conjunction of the
engines' verdicts differ. None: proved. One: a compiler bug, reported with
the flow, every engine's verdict and deciding rule, re-checked in the
interpreter before it is reported.

The questions are asked region by region: by destination blocks (`regions`),
or, where one engine decides a scope, by pairs of identities (`_by_pairs`):
identities whose addresses are the same in both programs (the same endpoint
rows, nothing nested inside them) cut the flow space into pairs. Pairs whose
keys (verify/alike.py, with each program's default) are the same in both
programs are decided alike and need no question; pairs with the same pair
of keys are asked once (a policy with default deny and its export to
Kubernetes, default allow with isolating denies, never share a key, but
their pairs fall into a few pairs of keys); the flows
with an end outside those identities are two more questions, each over the
entries that can match there.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import z3

from anyplane.ir import fields as F
from anyplane.ir.addr import Prefix
from anyplane.ir.interp import evaluate
from anyplane.ir.match import InSet, Match, PrefixMatch, to_itself
from anyplane.ir.memo import per_program
from anyplane.ir.nodes import Program
from anyplane.ir.owners import ownership
from anyplane.ir.pairspace import PairSpace, bit_positions

from .alike import PairClasses
from .context import Analysis
from .diff import action_key
from .domain import Domain
from .encode import Encoder, mk_and
from .index import OverlapIndex
from .reach import prefer
from .refine import refines
from .result import UNSAT, Unknown, Unsat, VerificationBug


@dataclass
class Composition:
    """The outcome: proved, a counterexample, or unknown (a solver timeout)."""

    proved: bool
    seconds: float
    counterexample: dict | None = None
    unknown: str | None = None
    engines: list[str] = field(default_factory=list)
    #: Per engine given a source: "" when its read-back refines the source rule by rule, else why not.
    refined: dict[str, str] = field(default_factory=dict)
    #: Questions the solver answered (0: every region was settled without it).
    questions: int = 0

    def to_json(self) -> dict:
        """The outcome as JSON."""
        return {"proved": self.proved, "engines": self.engines,
                "questions": self.questions,
                "counterexample": self.counterexample, "unknown": self.unknown,
                "refined": {name: ("rule by rule" if self.refined.get(name) == "" else
                                   f"whole read-back to the solver: {self.refined[name]}" if name in self.refined
                                   else "whole read-back to the solver") for name in self.engines}}


@dataclass(frozen=True)
class Block:
    """One question's share of the flow space: `match` minus the destination prefixes in `carve`
    (asked about in blocks of their own)."""

    match: Match
    carve: frozenset[Prefix] = frozenset()
    carve_length: int = 0

    @cached_property
    def carved(self) -> list[Prefix]:
        return sorted(self.carve)

    def term(self, a: Analysis):
        """The block as a term of one analysis."""
        out = [a.term(self.match)]
        out += [a.outside_dst(p) for p in self.carved]
        return mk_and(out, a.enc.ctx)

    def relevant(self, a: Analysis, scope: Match | None = None) -> list[int]:
        """Entries of the analysis that can match a flow in the block (and in the scope)."""
        out = set(a.relevant([self.match]))
        if scope is not None:
            out &= set(a.relevant([scope]))
        if self.carve:
            out = {i for i in out if not self._carved(a.boxes[i].dst)}
        return sorted(out)

    def _carved(self, prefixes) -> bool:
        """Whether every destination of a box lies in a carved prefix (the entry matches nothing here)."""
        if prefixes is None:
            return False
        n = self.carve_length
        return all(p.length >= n and p.supernet(n) in self.carve for p in prefixes)


def regions(policy: Program, bits: int = 8) -> list[Block]:
    """A partition of the flow space by destination: IPv4 in /8 blocks, and all of IPv6.

    Each question then involves only the entries whose boxes reach its block
    (the overlap index), so the proof is many small solver calls instead of
    one over every entry of every engine.
    """
    out = [Match.of({F.DST_IP: PrefixMatch(Prefix(4, i << (32 - bits), bits))}) for i in range(1 << bits)]
    out.append(Match.of({F.DST_IP: PrefixMatch(Prefix(6, 0, 0))}))
    return [Block(m) for m in out]


SPLIT_ABOVE = 800


def _refined(a: Analysis, blocks: list[Block]):
    """The blocks, each crowded one (many entries reach it) split again: by the destination prefixes
    its entries use, or else by IPv4 source /8."""
    for block in blocks:
        dst = block.match.get(F.DST_IP)
        relevant = block.relevant(a)
        if len(relevant) <= SPLIT_ABOVE:
            yield block
            continue
        subs = _by_destination(a, block, dst.prefix, relevant)
        if subs is None and dst.prefix.family == 4:
            subs = [Block(Match.of({F.DST_IP: dst, F.SRC_IP: PrefixMatch(Prefix(4, i << 24, 8))}))
                    for i in range(256)]
            subs.append(Block(Match.of({F.DST_IP: dst, F.SRC_IP: PrefixMatch(Prefix(6, 0, 0))})))
            # Splitting only pays when the entries really spread over the sources.
            if max(len(b.relevant(a)) for b in subs) > len(relevant) // 8:
                subs = None
        yield from subs or [block]


def _by_destination(a: Analysis, block: Block, prefix: Prefix, relevant: list[int]) -> list[Block] | None:
    """Blocks for the destination prefixes the block's entries use (cut to their most common length),
    and one for the rest of the block; None when the entries do not spread over them."""
    inside = [p for i in relevant for p in (a.boxes[i].dst or ()) if p.length > prefix.length and prefix.covers(p)]
    if not inside:
        return None
    length = Counter(p.length for p in inside).most_common(1)[0][0]
    keys = frozenset(p.supernet(length) for p in inside if p.length >= length)
    if len(keys) < 2:
        return None
    subs = [Block(Match.of({F.DST_IP: PrefixMatch(k)})) for k in sorted(keys)]
    if max(len(b.relevant(a)) for b in subs) > len(relevant) // 8:
        return None
    return subs + [Block(block.match, keys, length)]


@dataclass(frozen=True)
class Scope:
    """Destinations that cross the same engines: `match` (None: all), minus `excluded`."""

    label: str
    match: Match | None
    excluded: tuple[Match, ...]
    engines: tuple[str, ...]


def prove(policy: Program, engines: dict[str, Program], scopes: list[Scope] | None = None,
          timeout_ms: int = 60_000, sources: dict[str, Program] | None = None, progress=None,
          pairs: bool = True, fragments: bool = True, same_address: bool = True) -> Composition:
    """Prove that, within every scope, AND(allows of its engines) == policy allows for every flow and request.

    `sources` (optional) names the program each engine was compiled from. An
    engine whose read-back refines its source rule by rule (verify.refine) is
    represented by that source in the solver's questions: the same decisions,
    and terms the policy shares. Scopes whose engines then trivially decide
    like the policy are settled without the solver. `progress(done, total)`
    is called as the solver's questions are answered. `pairs`: cut by pairs of identities where that
    applies (module doc); False asks by destination blocks only. `fragments`: False leaves non-first
    fragments out (a Kubernetes export: its resources do not say how a later fragment is judged);
    `same_address` False, the flows from an address to itself (a pod reaching itself, which no
    NetworkPolicy judges).
    """
    started = time.perf_counter()
    scopes = scopes or [Scope("default", None, (), tuple(engines))]
    stand_in, refined = dict(engines), {}
    for name, src in (sources or {}).items():
        if name in engines:
            same, refined[name] = refines(engines[name], src)
            if same is not None:
                stand_in[name] = same
    names = list(engines)
    open_scopes = [s for s in scopes if not _settled(policy, [stand_in[n] for n in s.engines])]
    if not open_scopes:
        return Composition(True, time.perf_counter() - started, engines=names, refined=refined)
    enc = Encoder(Domain.of([policy, *stand_in.values()]))
    a_policy = Analysis(policy, encoder=enc, timeout_ms=timeout_ms)
    analyses = {name: Analysis(p, encoder=enc, timeout_ms=timeout_ms) for name, p in stand_in.items()}
    result, question, scope = UNSAT, [], open_scopes[0]
    paired = _by_pairs(policy, stand_in, open_scopes) if pairs else None
    blocks = [] if paired is not None else list(_refined(a_policy, regions(policy)))
    done, total, asked = 0, (sum(map(len, paired.values())) if paired is not None else
                             len(blocks) * len(open_scopes)), 0
    # The blocks a scope's box meets, found in an index over the blocks' boxes (built once).
    block_index = OverlapIndex([a_policy.boxer.box(b.match) for b in blocks]) if blocks else None
    whole = ([] if fragments else [z3.Not(enc.fragment)]) + ([] if same_address else [enc.src != enc.dst])
    for scope in open_scopes:
        inside = [] if scope.match is None else [a_policy.term(scope.match)]
        excluded = _Excluded(a_policy, scope.excluded)
        box = None if scope.match is None else a_policy.boxer.box(scope.match)
        deciding = [n for n in scope.engines if not _allows_all(stand_in[n])]
        if paired is not None:
            mine = paired[scope.label]
        else:
            mine = blocks if box is None else [blocks[k] for k in block_index.candidates(box)]
            done += len(blocks) - len(mine)
        for block in mine:
            done += 1
            if progress is not None:
                progress(done, total)
            policy_allows = a_policy.allowed_term(block.relevant(a_policy, scope.match))
            together = mk_and([analyses[n].allowed_term(block.relevant(analyses[n], scope.match))
                               for n in deciding], enc.ctx)
            question = [block.term(a_policy), *inside, *excluded.meeting(block), *whole, policy_allows != together]
            result = a_policy.solve(*question)
            asked += 1
            if not isinstance(result, Unsat):
                break
        if not isinstance(result, Unsat):
            break
    if isinstance(result, Unknown):
        return Composition(False, time.perf_counter() - started, unknown=result.reason, engines=names,
                           refined=refined, questions=asked)
    if isinstance(result, Unsat):
        return Composition(True, time.perf_counter() - started, engines=names, refined=refined, questions=asked)
    flow = enc.flow(prefer(a_policy, question, result.model))
    want = evaluate(policy, flow)
    got = {name: evaluate(engines[name], flow) for name in scope.engines}
    together_verdict = "allow" if all(d.verdict == "allow" for d in got.values()) else "deny"
    if together_verdict == want.verdict:
        raise VerificationBug(f"the solver's counterexample {flow.text} does not re-evaluate as claimed")
    cex = {"flow": flow.text, "scope": scope.label, "policy": {"verdict": want.verdict, "rule": want.rule},
           "engines": {name: {"verdict": d.verdict, "rule": d.rule} for name, d in got.items()},
           "together": together_verdict}
    return Composition(False, time.perf_counter() - started, counterexample=cex, engines=names, refined=refined,
                       questions=asked)


class _Excluded:
    """A scope's excluded flows as terms (each `outside` one), asked only of the blocks they can meet: a
    pod's traffic to itself meets only the blocks whose sources and destinations may be its identity's
    (an export's proof leaves thousands of them out; asserting them all in every question costs more
    than the question)."""

    def __init__(self, a: Analysis, excluded: tuple[Match, ...]):
        own = ownership(a.program)
        self.by_owner: dict[str | None, list] = {}  # an address's owner -> its traffic to itself left out
        self.other: list = []  # the rest, asked everywhere
        for m in excluded:
            host = to_itself(m) if len(m.fields) == 2 else None
            if host is None:
                self.other.append(a.outside(m))
            else:
                self.by_owner.setdefault(own.covering_owner(host), []).append(a.outside(m))
        self.every = self.other + [t for ts in self.by_owner.values() for t in ts]

    def meeting(self, block) -> list:
        if isinstance(block, _Rest):  # the source outside `inside`, or the source in and the destination out
            inside = set(block.inside)
            return self.other if block.side == "dst" else \
                self.other + [t for o, ts in self.by_owner.items() if o not in inside for t in ts]
        names = None
        for f in (F.SRC_ID, F.DST_ID):
            ids = block.match.get(f)
            if isinstance(ids, InSet):
                names = set(ids.values) if names is None else names & set(ids.values)
        if names is None:
            return self.every
        return self.other + [t for o in sorted(names) for t in self.by_owner.get(o, ())]


class _Rest:
    """The flows with an end outside the identities `inside` (whose addresses both programs place alike):
    the source outside (`side` "src"), or the source inside and the destination outside ("dst"). Its
    entries: those whose constraint on that side does not keep them to those identities' addresses."""

    match = None

    def __init__(self, side: str, inside: tuple[str, ...]):
        self.side, self.inside = side, inside

    def term(self, a: Analysis):
        ids = Match.of({F.SRC_ID if self.side == "src" else F.DST_ID: InSet(self.inside)})
        out = [a.outside(ids)]
        if self.side == "dst":
            out.append(a.term(Match.of({F.SRC_ID: InSet(self.inside)})))
        return mk_and(out, a.enc.ctx)

    def relevant(self, a: Analysis, scope: Match | None = None) -> list[int]:
        ids, ips = (F.SRC_ID, F.SRC_IP) if self.side == "src" else (F.DST_ID, F.DST_IP)
        own, inside = ownership(a.program), set(self.inside)
        candidates = a.relevant([scope]) if scope is not None else range(len(a.ordered))
        return [i for i in candidates if not _kept_to(a.ordered[i].match, ids, ips, inside, own)]


class _RestPart(_Rest):
    """A `_Rest` region narrowed at its other end: to one identity of `inside` (`end`), or, for the
    source outside, to the destination outside them too (`end` None)."""

    def __init__(self, side: str, inside: tuple[str, ...], end: str | None):
        super().__init__(side, inside)
        self.end = end
        self.other = F.DST_ID if side == "src" else F.SRC_ID

    def term(self, a: Analysis):
        if self.end is None:
            there = a.outside(Match.of({self.other: InSet(self.inside)}))
        else:
            there = a.term(Match.of({self.other: InSet((self.end,))}))
        return mk_and([super().term(a), there], a.enc.ctx)

    def relevant(self, a: Analysis, scope: Match | None = None) -> list[int]:
        out = super().relevant(a, scope)
        if self.end is not None:
            near = set(a.relevant([Match.of({self.other: InSet((self.end,))})]))
            return [i for i in out if i in near]
        ids, ips = (F.DST_ID, F.DST_IP) if self.side == "src" else (F.SRC_ID, F.SRC_IP)
        own, inside = ownership(a.program), set(self.inside)
        return [i for i in out if not _kept_to(a.ordered[i].match, ids, ips, inside, own)]


def _rest_parts(policy: Program, engine: Program, mine: PairClasses, theirs: PairClasses,
                inside: tuple[str, ...]) -> list[_Rest]:
    """The flows with an end outside `inside` (`_Rest`), cut by the identity at the other end: the
    identities whose entries for such flows are, in both programs, in order, the same matches but for
    that end's identity and addresses, with the same actions, are decided alike by the two programs and
    left out; of each class of the others, one identity is asked (one question each, over few entries:
    a question over every entry of a cluster's policy costs Z3 more than the square of their number).
    An identity that some entry holds for part of is asked alone. Under certificates (`src.peer`) the
    whole regions are asked."""
    if any(f == F.SRC_PEER for p in (policy, engine) for e in p.acl.entries for f, _ in e.match.fields):
        return [_Rest("src", inside), _Rest("dst", inside)]
    out: list[_Rest] = []
    inside_set = set(inside)
    for side, ids, ips, other, drop in (("src", F.SRC_ID, F.SRC_IP, "dst", (F.DST_ID, F.DST_IP)),
                                        ("dst", F.DST_ID, F.DST_IP, "src", (F.SRC_ID, F.SRC_IP))):
        interned: dict = {}
        keys: dict[str, list] = {n: [] for n in inside}
        for pc, program in ((mine, policy), (theirs, engine)):
            own = ownership(program)
            relevant, codes = 0, []
            for i, e in enumerate(pc.ordered):
                if not _kept_to(e.match, ids, ips, inside_set, own):
                    relevant |= 1 << i
                rest = tuple((k, v) for k, v in e.match.fields if k not in drop)
                codes.append(interned.setdefault((rest, action_key(e.action)), len(interned)))
            for n in inside:
                if keys[n] is None or pc.part[other][n] & relevant:
                    keys[n] = None
                else:
                    keys[n].append(tuple(codes[i] for i in bit_positions(pc.full[other][n] & relevant)) +
                                   (pc.default,))
        classes: dict = {}
        for n in inside:
            key = keys[n]
            if key is None:
                out.append(_RestPart(side, inside, n))
            elif key[0] != key[1] and tuple(key) not in classes:
                classes[tuple(key)] = n
                out.append(_RestPart(side, inside, n))
        if side == "src":
            out.append(_RestPart(side, inside, None))
    return out


def _kept_to(m: Match, id_field: str, ip_field: str, inside: set, own) -> bool:
    """Whether a match holds only for addresses of these identities on one side (they have nothing
    nested in their prefixes)."""
    ids, ips = m.get(id_field), m.get(ip_field)
    if isinstance(ids, InSet) and set(ids.values) <= inside:
        return True
    if isinstance(ips, PrefixMatch):
        return own.covering_owner(ips.prefix) in inside
    return False


def _same_addresses(policy: Program, engine: Program, names: list[str]) -> list[str]:
    """The identities whose addresses both programs place alike: the same endpoint rows, and no row of
    either program inside their prefixes."""
    rows = {}
    for side, p in (("policy", policy), ("engine", engine)):
        for r in p.endpoints:
            rows.setdefault((side, r.identity), set()).add(r.prefix)
    every = sorted({(r.prefix.family, r.prefix.first, r.prefix.last) for p in (policy, engine) for r in p.endpoints})
    firsts = [(f, a) for f, a, _ in every]
    out = []
    for n in names:
        mine = rows.get(("policy", n), set())
        if not mine or mine != rows.get(("engine", n), set()):
            continue
        nested = False
        for q in mine:
            k = bisect_left(firsts, (q.family, q.first))
            while k < len(every) and firsts[k] <= (q.family, q.last):
                if every[k] != (q.family, q.first, q.last):
                    nested = True
                    break
                k += 1
            if nested:
                break
        if not nested:
            out.append(n)
    return out


def _by_pairs(policy: Program, engines: dict[str, Program], scopes: list[Scope]) -> dict[str, list] | None:
    """Per scope, the regions left to ask when the flow space is cut by pairs of identities (module
    doc): one per class of pairs whose keys differ, one per pair that has no key, and the two `_Rest`
    regions. None when a scope is decided by other than one engine, or a scope is not all flows or an
    identity set on one side."""
    inside = None
    interned: dict = {}
    mine = None
    asked = []  # (label, sources, destinations, exempt) per scope
    for scope in scopes:
        deciding = [n for n in scope.engines if not _allows_all(engines[n])]
        if len(deciding) != 1:
            return None
        engine = engines[deciding[0]]
        if inside is None:
            names = sorted(i.name for i in policy.identities)
            inside = _same_addresses(policy, engine, names)
            if not inside:
                return None
            mine = PairClasses(policy, inside, interned)
            theirs = PairClasses(engine, inside, interned)
            theirs_of = engine
        elif engine is not theirs_of:
            return None
        src, dst = inside, inside
        if scope.match is not None:
            fields = dict(scope.match.fields)
            (field_name, fm), = fields.items() if len(fields) == 1 else ((None, None),)
            if field_name not in (F.SRC_ID, F.DST_ID) or not isinstance(fm, InSet):
                return None
            chosen = sorted(set(fm.values) & set(inside))
            src, dst = (chosen, inside) if field_name == F.SRC_ID else (inside, chosen)
        # Identities whose every address the scope leaves out with itself (a pod's traffic to itself):
        # with itself, such an identity's region is the flows between two of its addresses.
        exempt = frozenset(to_itself(m) for m in scope.excluded if len(m.fields) == 2 and to_itself(m) is not None)
        asked.append((scope.label, src, dst, exempt))
    # Scopes that together cover more than every pair once (the export's two, to and from the workloads)
    # share one pass over all pairs.
    shared = None
    if len({e for *_, e in asked}) == 1 and sum(len(s) * len(d) for _, s, d, _ in asked) > len(inside) ** 2:
        shared = _differing(policy, mine, theirs, inside, inside, asked[0][3])
    out: dict[str, list] = {}
    rests = None
    for label, src, dst, exempt in asked:
        if shared is None:
            pairs = _differing(policy, mine, theirs, src, dst, exempt)
        else:
            src_set, dst_set = set(src), set(dst)
            pairs = [p for p in shared if p[0] in src_set and p[1] in dst_set]
        regions_left, classes = [], set()
        for s, d, a, b, selfless in pairs:
            # A pair of an identity with itself is asked with its like only when the scope leaves out each
            # of its addresses with itself, or none of them (else what it leaves out differs from one to
            # another).
            if a is not None and b is not None and (s != d or selfless or not _touched(policy, s, exempt)):
                if (s == d, selfless, a, b) in classes:
                    continue  # asked for another pair of the class
                classes.add((s == d, selfless, a, b))
            regions_left.append(Block(Match.of({F.SRC_ID: InSet((s,)), F.DST_ID: InSet((d,))})))
        inside_t = tuple(inside)
        if rests is None:
            rests = _rest_parts(policy, theirs_of, mine, theirs, inside_t)
        out[label] = regions_left + rests
    return out


def _differing(policy: Program, mine: PairClasses, theirs: PairClasses, src: list[str], dst: list[str],
               exempt: frozenset) -> list[tuple]:
    """The pairs, in order, that the two programs may decide apart: (source, destination, the policy's
    key, the engine's key, whether the pair's flows are between two different addresses only)."""
    out = []
    prefixes = ownership(policy).prefixes
    # Blocks of pairs keyed alike in both programs are judged by one pair of each (verify/alike.py).
    space = PairSpace([mine, theirs], src, dst)
    for s, d in space.singles:
        selfless = s == d and _only_hosts(policy, s, exempt)
        if selfless and len(prefixes.get(s, ())) == 1:
            continue  # one address, left out with itself: nothing of the pair is in scope
        a, b = mine.key(s, d, selfless), theirs.key(s, d, selfless)
        if a is not None and a == b:
            continue  # decided alike by both
        out.append((s, d, a, b, selfless))
    for block in space.blocks:
        rep = space.representative(block)
        if rep is None:
            continue
        a, b = mine.key(*rep), theirs.key(*rep)
        if a is not None and a == b:
            continue
        out.extend((s, d, a, b, False) for s, d in space.members(block))
    out.sort(key=lambda p: (p[0], p[1]))
    return out


def _only_hosts(policy: Program, name: str, exempt: set) -> bool:
    """Whether every address of an identity is one the scope leaves out with itself."""
    prefixes = ownership(policy).prefixes.get(name, ())
    return bool(prefixes) and all(p in exempt for p in prefixes)


def _touched(policy: Program, name: str, exempt: set) -> bool:
    """Whether some address of an identity is one the scope leaves out with itself."""
    return any(p in exempt for p in ownership(policy).prefixes.get(name, ()))


@per_program
def _allows_all(p: Program) -> bool:
    """A program that allows every flow: default allow and no entry that denies."""
    return p.default == "allow" and all(e.action.verdict == "allow" for e in p.acl.entries)


@per_program
def _decisions(p: Program):
    """What decides a program's verdicts, in a form two programs can be compared by (once per program:
    every scope asks)."""
    return (p.default, {(r.prefix, r.identity) for r in p.endpoints},
            Counter((e.priority, e.action.verdict, e.match) for e in p.acl.entries))


def _settled(policy: Program, programs: list[Program]) -> bool:
    """Whether these engines together plainly decide like the policy: every one allows everything
    except at most one, which holds the policy's own entries (allow and rate limit alike) and default."""
    deciding = [p for p in programs if not _allows_all(p)]
    if not deciding:
        return _allows_all(policy)
    return len(deciding) == 1 and (deciding[0] is policy or _decisions(deciding[0]) == _decisions(policy))
