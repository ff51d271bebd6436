"""Kubernetes NetworkPolicy as an engine: what a cluster's network plugin enforces.

    emit(program) -> networkpolicies.yaml   a NetworkPolicy per workload whose traffic must be restricted
                     identities.yaml        which pods each identity stands for (the contract below)
                     report.txt

The contract: every identity that is not an external (a service, or a version of one) is a set of
pods, selected as backends/kube/selectors.py says (the deployment file's labels, an imported cluster's
own labels, or `anyplane.io/identity: NAME`); an external, a CIDR, and every address no identity owns
are outside the cluster. NetworkPolicy decides traffic to and from pods only, so the export is exact
for every flow with a pod at one end (the composition proof checks it, reading the output back
through the importer); traffic between two outside addresses is no cluster's to decide.

What passes is computed, not transliterated: for every pair of a workload and a region of addresses
(another workload, or a range of outside addresses cut where the policy's prefixes begin and end),
the reference interpreter judges one flow per protocol and port cell (the policy's port boundaries);
pairs whose entries are alike but for their addresses share one answer. Every pair that does not pass
everything gets an isolated end (`_isolation`), whose rules say the pair's answer (`_Peers`): denies
and priorities are thereby already applied. What NetworkPolicy cannot say is an error at the rule
that decides it: source ports, ICMP types, HTTP, rate limits, a protocol other than TCP and UDP
allowed where the rest is not, port 0, a part of a workload's addresses decided apart from the rest,
a pod's traffic to itself denied, and a stateless policy (NetworkPolicy lets replies through).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from contextvars import ContextVar
from dataclasses import replace
from functools import cached_property

from anyplane.ir import fields as F
from anyplane.ir.actions import RateLimit
from anyplane.ir.addr import Prefix
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate, match_holds, owner
from anyplane.ir.match import InSet, PrefixMatch, int_ranges, merge_ranges, options as alternatives, to_itself
from anyplane.ir.memo import per_program
from anyplane.ir.nodes import Program, Table, precedence
from anyplane.ir.owners import ownership
from anyplane.ir.space import complement, merge
from anyplane.ir.pairspace import PairSpace, bit_positions
from anyplane.ir import yaml11
from anyplane.ir.source import DiagnosticError, error

from .. import base
from .selectors import (LABEL, NAMESPACE_LABEL, Cover, collapse, declared, ip_blocks, k8s_name,
                        namespace_peer, placements, pod_peer, settle)
TCP, UDP = 6, 17
#: Protocols that stand for "every other protocol" when a pair is judged: ICMP echo, GRE, SCTP.
OTHER_PROBES = {4: ((1, 8), (47, None), (132, None)), 6: ((58, 128), (47, None), (132, None))}

CAPABILITY = base.Capability(
    engine="k8s", place="", fields=("src.ip", "dst.ip", "src.id", "dst.id", "proto", "dport"), families=(4, 6),
    actions=("allow", "deny"),
    capacity=None, protocols="any", state="connections")

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


class Region:
    """A set of addresses decided alike: a workload (its pods), or outside ranges."""

    def __init__(self, key: str, workload: str | None):
        self.key, self.workload = key, workload
        self.ranges: dict[int, list[tuple[int, int]]] = {}  # family -> inclusive address ranges

    def probe(self, family: int) -> int | None:
        return self.first.get(family)

    @cached_property
    def first(self) -> dict[int, int]:
        """Its first address in each IP version (asked once its ranges are all known)."""
        return {family: r[0][0] for family, r in self.ranges.items() if r}

    @cached_property
    def families(self) -> frozenset:
        """Its IP versions (asked once its ranges are all known)."""
        return frozenset(self.ranges)


def _cells(program: Program, field: str = F.DPORT, top: int = 65535) -> list[tuple[int, int]]:
    """A field's values 0..top (destination ports, ICMP types) cut where the entries' matches on it
    begin and end."""
    cuts = {0, top + 1}
    for e in program.acl.entries:
        fm = e.match.get(field)
        for lo, hi in (int_ranges(fm) or ()) if fm is not None else ():
            cuts |= {lo, min(hi, top) + 1}
    cuts = sorted(cuts)
    return list(zip(cuts, [c - 1 for c in cuts[1:]]))


def regions_of(program: Program) -> tuple[list[Region], dict[str, str]]:
    """Workload regions (one per identity that is not an external) and outside regions (elementary
    address ranges, cut at every prefix the policy names)."""
    own = ownership(program)
    kinds = {i.name: i.kind for i in program.identities}
    cuts: dict[int, set[int]] = {4: {0, 1 << 32}, 6: {0, 1 << 128}}
    prefixes = list(own.owner_of)
    for e in program.acl.entries:
        for side in (F.SRC_IP, F.DST_IP):
            fm = e.match.get(side)
            if fm is not None:
                prefixes += [o.prefix for o in alternatives(fm) if isinstance(o, PrefixMatch)]
    for p in prefixes:
        cuts[p.family] |= {p.first, p.last + 1}
    workloads: dict[str, Region] = {}
    outside: list[Region] = []
    for family, points in cuts.items():
        points = sorted(points)
        for lo, nxt in zip(points, points[1:]):
            owner = own.owner(family, lo)
            if owner is not None and kinds.get(owner) != "external":
                workloads.setdefault(owner, Region(owner, owner)).ranges.setdefault(family, []).append((lo, nxt - 1))
            else:
                region = Region(f"{family}:{lo}", None)
                region.ranges[family] = [(lo, nxt - 1)]
                outside.append(region)
    return list(workloads.values()) + outside, kinds


#: Whether the export says ICMP types apart (Cilium's `icmps`): then ICMP (ICMPv6) is judged per type,
#: as "icmp4" ("icmp6") cells, and is not one of the other protocols. Set by `export(icmp=True)`.
_ICMP: ContextVar[bool] = ContextVar("icmp_types", default=False)
#: Whether a subject's deny may name outside addresses as its sources (Cilium's `ingressDeny` takes CIDRs;
#: AdminNetworkPolicy has no ingress peer for them). Set by `export(cidr_denies=True)`.
_CIDR_DENIES: ContextVar[bool] = ContextVar("cidr_denies", default=False)
ICMP_PROTOCOL = {4: 1, 6: 58}


def _flows(family: int, src: int, dst: int, program: Program):
    """(key, flow) for each cell: ("tcp", lo, hi), ("udp", lo, hi), ("icmp4" or "icmp6", lo, hi) when
    ICMP types are said apart (`_ICMP`), ("other", proto)."""
    for proto, name in ((TCP, "tcp"), (UDP, "udp")):
        for lo, hi in _cells(program):
            yield (name, lo, hi), Flow(family, src, dst, proto, 49152, lo)
    probes = OTHER_PROBES[family]
    if _ICMP.get():
        for lo, hi in _cells(program, F.ICMP_TYPE, 255):
            yield (f"icmp{family}", lo, hi), Flow(family, src, dst, ICMP_PROTOCOL[family], icmp_type=lo, icmp_code=0)
        probes = tuple((p, t) for p, t in probes if p != ICMP_PROTOCOL[family])
    probed = {proto for proto, _ in OTHER_PROBES[family]}
    for proto, icmp in probes + tuple((p, None) for p in sorted(_protocols(program) - probed)):
        yield ("other", proto), Flow(family, src, dst, proto, icmp_type=icmp, icmp_code=0 if icmp is not None else None)


@per_program(keep=4)
def _protocols(program: Program) -> frozenset:
    """The protocols other than TCP and UDP that some entry names (each is judged with the others)."""
    out = set()
    for e in program.acl.entries:
        fm = e.match.get(F.PROTO)
        if fm is not None:
            out.update(v for lo, hi in int_ranges(fm) or () for v in range(lo, min(hi, 255) + 1))
    return frozenset(out - {TCP, UDP})


class _Blame:
    """Errors at the rules whose decisions NetworkPolicy cannot carry (one per rule)."""

    def __init__(self, program: Program):
        self.program, self.found = program, {}

    def add(self, decision, message: str) -> None:
        entry = decision.entry
        span = entry.origin if entry is not None else self.program.default_origin
        key = entry.rule if entry is not None else "<default>"
        self.found.setdefault(key, error(span, "k8s", message))

    def raise_any(self) -> None:
        if self.found:
            raise DiagnosticError(list(self.found.values()))


class _Narrow:
    """The program narrowed to one pair of addresses: only the entries whose source and destination
    sides hold for them (the same decisions for the pair's flows, without scanning every other pair's
    rules). Which entries hold for an address is worked out once per address and side."""

    def __init__(self, program: Program):
        self.program = program
        self.sides = [(i, e.match.only(F.SRC_IP, F.SRC_ID), e.match.only(F.DST_IP, F.DST_ID))
                      for i, e in enumerate(program.acl.entries)]
        self.memo: dict = {}
        self.pairs: dict = {}
        self.kinds: dict = {}  # (id of a region, side, family) -> (the region, its kinds of ranges)
        # Two pairs whose entries are alike but for their addresses and identities get the same answer:
        # each entry's shape is its precedence, verdict and the rest of its match (entries of equal
        # precedence decide alike, so the shapes of a pair are a set).
        ends = (F.SRC_IP, F.SRC_ID, F.DST_IP, F.DST_ID)
        shapes: dict = {}
        self.shape = [shapes.setdefault((precedence(e), e.action.verdict,
                                         tuple(f for f in e.match.fields if f[0] not in ends)), len(shapes))
                      for e in program.acl.entries]
        self.answers: dict = {}  # (family, selfless, shapes) -> (answer,)
        self.bits: dict = {}
        self.every_bits: dict = {}
        self.selves = sum(1 << i for i in _selfs(program))
        # Per side: entries that hold for every address, those that name identities only (looked up by
        # the address's owner) or one address only, and the rest (asked address by address).
        self.every: list[set] = [set(), set()]
        self.by_id: list[dict] = [{}, {}]
        self.by_address: list[dict] = [{}, {}]
        self.rest: list[list] = [[], []]
        for i, *parts in self.sides:
            for side, m in enumerate(parts):
                if not m.fields:
                    self.every[side].add(i)
                elif len(m.fields) == 1 and isinstance(m.fields[0][1], InSet) and m.fields[0][0] in (F.SRC_ID, F.DST_ID):
                    for name in m.fields[0][1].values:
                        self.by_id[side].setdefault(name, set()).add(i)
                elif len(m.fields) == 1 and isinstance(m.fields[0][1], PrefixMatch) and \
                        m.fields[0][1].prefix.length == m.fields[0][1].prefix.width:
                    p = m.fields[0][1].prefix
                    self.by_address[side].setdefault((p.family, p.value), set()).add(i)
                else:
                    self.rest[side].append((i, m))

    def _holding(self, side: int, family: int, address: int) -> frozenset:
        """The entries that hold for an address on a side."""
        return self.every[side] | self._own(side, family, address)

    def _own(self, side: int, family: int, address: int) -> frozenset:
        """The entries that hold for an address on a side, but those that hold for every address."""
        key = (side, family, address)
        hit = self.memo.get(key)
        if hit is None:
            probe = Flow(family, address, address, TCP, 49152, 1)
            who = owner(self.program, family, address)
            hit = self.memo[key] = frozenset(self.by_id[side].get(who, set()) |
                                             self.by_address[side].get((family, address), set()) |
                                             {i for i, m in self.rest[side] if match_holds(m, probe, who, who)})
        return hit

    def _bits(self, side: int, family: int, address: int) -> int:
        """`_holding` as a bit set (an int: pairs intersect them millions of times)."""
        key = (side, family, address)
        hit = self.bits.get(key)
        if hit is None:
            hit = self.bits[key] = self.every_mask(side) | sum(1 << i for i in self._own(side, family, address))
        return hit

    def every_mask(self, side: int) -> int:
        """The entries that hold for every address on a side, as a bit set (once per side)."""
        hit = self.every_bits.get(side)
        if hit is None:
            hit = self.every_bits[side] = sum(1 << i for i in self.every[side])
        return hit

    def shapes(self, family: int, src: int, dst: int, selfless: bool):
        """The key of a pair's answer: the entries that hold for it, then (on a miss) their shapes."""
        keep = self._bits(0, family, src) & self._bits(1, family, dst)
        if selfless:
            keep &= ~self.selves
        return family, selfless, frozenset(self.shape[i] for i in bit_positions(keep))

    def __call__(self, family: int, src: int, dst: int) -> Program:
        key = (family, src, dst)
        if key not in self.pairs:
            keep = self._holding(0, family, src) & self._holding(1, family, dst)
            entries = tuple(self.program.acl.entries[i] for i in sorted(keep))
            self.pairs[key] = replace(self.program, acl=Table(self.program.acl.name, entries))
        return self.pairs[key]


_ASK = object()
_NOBODY: frozenset = frozenset()


class _Blocks:
    """The pairs of regions of one IP version cut into blocks decided alike (ir/pairspace.py), so that
    one pair of a block is asked for all. A region is in a block on a side when the same entries hold
    for all its ranges there (`_one_kind`); each region's entries are those that hold at its first
    address (`_Narrow`), each entry's code is its shape. Pairs whose answers would differ only by the
    entries' order have the same shapes, so the same answer."""

    def __init__(self, program: Program, family: int, regions: list[Region]):
        narrow = _narrow(program)
        mine = [r for r in regions if family in r.ranges]
        self.code = narrow.shape
        self.everyone = {"src": narrow.every_mask(0), "dst": narrow.every_mask(1)}
        self.full = {"src": {}, "dst": {}}
        self.part = {"src": {}, "dst": {}}
        self.families = {}
        for r in mine:
            for n, side in enumerate(("src", "dst")):
                self.full[side][r.key] = narrow._bits(n, family, r.probe(family))
                self.part[side][r.key] = 0
            self.families[r.key] = family
        srcs = [r.key for r in mine if _one_kind(program, family, r, 0)]
        dsts = [r.key for r in mine if _one_kind(program, family, r, 1)]
        self.space = PairSpace([self], srcs, dsts)
        self.answers: dict = {}

    def of(self, src: str, dst: str):
        """The block of a pair (None: not in one; asked on its own)."""
        return None if src == dst else self.space.block_of(src, dst)


@per_program(keep=4)
def _narrow(program: Program) -> _Narrow:
    return _Narrow(program)


def _answer(program: Program, family: int, src: int, dst: int, blame: _Blame, selfless: bool = False):
    """What NetworkPolicy must allow for one pair of addresses: "all", or {"tcp": ranges, "udp": ranges}
    (None: nothing). `selfless`: without the entries for one address to itself (the answer between two
    pods of an identity, asked at one address)."""
    narrow = _narrow(program)
    key = narrow.shapes(family, src, dst, selfless) + (_ICMP.get(),)
    hit = narrow.answers.get(key)
    if hit is not None:
        return hit[0]
    blamed = len(blame.found)
    got = _judge(narrow(family, src, dst), family, src, dst, blame, selfless)
    if len(blame.found) == blamed:  # an answer that blamed a rule is asked again, to blame it there too
        narrow.answers[key] = (got,)
    return got


def _judge(program: Program, family: int, src: int, dst: int, blame: _Blame, selfless: bool):
    if selfless:
        program = replace(program, acl=Table(program.acl.name, tuple(e for e in program.acl.entries
                                                                       if not _self_entry(e))))
    allowed: dict[str, list] = {"tcp": [], "udp": []}
    types = f"icmp{family}"
    if _ICMP.get():
        allowed[types] = []
    other: dict[int, object] = {}
    denied = []
    for key, flow in _flows(family, src, dst, program):
        d = evaluate(program, flow)
        if key[0] == "other":
            other[key[1]] = d
        elif d.verdict == "allow":
            allowed[key[0]].append((key[1], key[2]))
        else:
            denied.append(d)
    verdicts = {d.verdict for d in other.values()}
    if len(verdicts) > 1:
        odd = next(d for d in other.values() if d.entry is not None) if any(d.entry for d in other.values()) \
            else next(iter(other.values()))
        blame.add(odd, "NetworkPolicy allows TCP and UDP ports, or every protocol: it cannot tell ICMP or "
                       "another protocol apart from the rest")
        return None
    everything = all(_usable(merge_ranges(r)) == [(1, 65535)] for name, r in allowed.items() if name in ("tcp", "udp"))
    every_type = types not in allowed or merge_ranges(allowed[types]) == [(0, 255)]
    if verdicts == {"allow"}:
        if not (everything and every_type):
            # Every protocol but some ports (or ICMP types): NetworkPolicy allows all, an AdminNetworkPolicy
            # (or Cilium's deny) denies the rest.
            missing = {name: _gaps(_usable(merge_ranges(r))) for name, r in allowed.items() if name != types}
            if not every_type:
                missing[types] = list(complement(merge(allowed[types]), 0, 255))
            return Except({name: gaps for name, gaps in missing.items() if gaps},
                          next((d for d in denied if d.entry is not None), denied[0]))
        return "all"
    out = {}
    for name, ranges in allowed.items():
        merged = merge_ranges(ranges)
        if name == types:
            if merged:
                out[name] = merged
            continue
        if merged and merged[0][0] == 0 and merged != [(0, 65535)]:
            if merged[0][1] == 0:
                merged = merged[1:]  # port 0 alone: no port a connection uses
            else:
                merged[0] = (1, merged[0][1])
        if merged:
            out[name] = merged
    return out or None


class Except:
    """A pair's answer when every protocol passes but some TCP or UDP ports: NetworkPolicy allows all and
    an AdminNetworkPolicy denies `ports` ({"tcp": ranges, "udp": ranges}); `why` decided one of them."""

    def __init__(self, ports: dict, why):
        self.ports, self.why = ports, why

    def __eq__(self, other) -> bool:
        return isinstance(other, Except) and other.ports == self.ports

    def __repr__(self) -> str:
        return f"Except({self.ports!r})"


def _usable(ranges: list) -> list:
    """Ranges without port 0 (reserved: no connection uses it)."""
    return [(max(lo, 1), hi) for lo, hi in ranges if hi >= 1]


def _gaps(ranges: list) -> list:
    """The ports 1-65535 that sorted ranges leave out."""
    return list(complement(merge(ranges), 1, 65535))


def _differing(program: Program, family: int, one: tuple[int, int], other: tuple[int, int]):
    """The decision to blame where two pairs of addresses are judged apart: in the first cell where they
    differ, the one a rule (rather than the default) made, preferring the second pair's."""
    for (_, a), (_, b) in zip(_flows(family, *one, program), _flows(family, *other, program)):
        da, db = evaluate(program, a), evaluate(program, b)
        if da.verdict != db.verdict:
            return db if db.entry is not None or da.entry is None else da
    return evaluate(program, Flow(family, *other, TCP, 49152, 80))


def _first_denied(program: Program, family: int, src: int, dst: int):
    """A denied flow's decision between two addresses, one a rule made if there is one."""
    denied = [d for _, f in _flows(family, src, dst, program) if (d := evaluate(program, f)).verdict == "deny"]
    return next((d for d in denied if d.entry is not None), denied[0])


def _blame_self_deny(program: Program, a: Region, fam: int, blame: _Blame) -> None:
    """A rule that denies a workload's pod some traffic to itself is an error at the rule: Kubernetes
    always lets a pod reach itself (a default that does is left out of the proof)."""
    if _answer(program, fam, a.probe(fam), a.probe(fam), _Blame(program)) != "all":
        denied = _first_denied(program, fam, a.probe(fam), a.probe(fam))
        if denied.entry is not None:
            blame.add(denied, f"Kubernetes lets a pod reach itself: the policy cannot deny {a.workload} -> {a.workload}")


def _check_rules(program: Program) -> None:
    """Errors at the rules NetworkPolicy cannot express at all (fields and actions outside its capability)."""
    errors = {}
    for e in program.acl.entries:
        why = None
        fields = {name for name, _ in e.match.fields}
        if _ICMP.get():
            fields.discard(F.ICMP_TYPE)
        if fields - set(CAPABILITY.fields):
            extra = sorted(fields - set(CAPABILITY.fields))
            why = f"NetworkPolicy cannot match {', '.join(extra)}: it matches peers, protocols and destination ports"
            if F.HTTP in fields:
                why += " (HTTP conditions need a mesh: -t envoy)"
        elif isinstance(e.action, RateLimit):
            why = "NetworkPolicy cannot limit rates"
        if why and e.rule not in errors:
            errors[e.rule] = error(e.origin, "k8s", why)
    if not program.connections.stateful:
        errors["<stateless>"] = error(program.default_origin, "k8s", "NetworkPolicy lets the replies of allowed "
                                                                    "connections through: it cannot be stateless")
    if errors:
        raise DiagnosticError(list(errors.values()))


def _ports(answer) -> list[dict] | None:
    if answer == "all" or isinstance(answer, Except):
        return None
    out = []
    for name in ("tcp", "udp"):
        for lo, hi in answer.get(name, ()):
            item = {"protocol": name.upper()}
            if (lo, hi) not in ((0, 65535), (1, 65535)):
                item["port"] = lo
                if hi != lo:
                    item["endPort"] = hi
            out.append(item)
    return out


def _icmps(answer) -> list[dict]:
    """The ICMP types an answer lets through (when they are said apart), as Cilium's ICMP fields."""
    if not isinstance(answer, dict):
        return []
    return [{"type": t, "family": family} for key, family in (("icmp4", "IPv4"), ("icmp6", "IPv6"))
            for lo, hi in answer.get(key, ()) for t in range(lo, hi + 1)]


def _decide(program: Program, blocks: dict, a: Region, b: Region, blame: _Blame):
    """What NetworkPolicy must let through from region `a` to region `b` (`_answer`'s values; None:
    nothing). A pair in a block in every IP version both have takes the blocks' answers once asked."""
    if a is not b:  # the pairs in blocks: the block's answer, once asked, per IP version
        found = _ASK
        for family, kind in blocks.items():
            if family not in a.first or family not in b.first:
                continue
            block = kind.of(a.key, b.key)
            ans = _ASK if block is None else kind.answers.get(block, _ASK)
            if ans is _ASK or (found is not _ASK and ans != found):
                break  # not in a block, or not asked yet, or the versions disagree: below
            found = ans
        else:
            if found is not _ASK:
                return found
    if a is b and a.workload and _single(a):
        # Kubernetes lets a pod reach itself: the default may say otherwise (that flow is left out
        # of the proof), a rule may not.
        fam = next(iter(a.ranges))
        _blame_self_deny(program, a, fam, blame)
        # Between two of its pods (one created later with its labels) the rules decide.
        return _answer(program, fam, a.probe(fam), a.probe(fam), blame, selfless=True)
    hosts = a is b and a.workload is not None and _hosts(a)
    if hosts:  # pods at one address each: each reaches itself (Kubernetes'), the pairs are the policy's
        _blame_self_deny(program, a, next(iter(a.ranges)), blame)
    seen = None
    for family in (4, 6):
        s, d = a.probe(family), b.probe(family)
        if hosts:  # two of its pods
            d = a.ranges[family][1][0] if len(a.ranges.get(family, ())) > 1 else None
        if s is None or d is None:
            continue
        block = None if hosts else blocks[family].of(a.key, b.key)
        if block is not None:  # a pair of one kind of range each, in a block of pairs decided alike
            ans = blocks[family].answers.get(block, _ASK)
            if ans is _ASK:
                blamed = len(blame.found)
                ans = _answer(program, family, s, d, blame)
                if len(blame.found) == blamed:  # one that blames a rule is asked pair by pair
                    blocks[family].answers[block] = ans
            seen = _versions(program, seen, family, ans, s, d, blame)
            continue
        ans = _answer(program, family, s, d, blame)
        seen = _versions(program, seen, family, ans, s, d, blame)
        # Every range of a workload must be decided alike (a label selects all its pods). Two
        # pairs of ranges that the same entries hold for are decided alike: one pair is asked
        # per kind of range on each side, not every pair of ranges (pods of one identity).
        if not hosts and _one_kind(program, family, a, 0) and _one_kind(program, family, b, 1):
            continue  # the pair asked is the only one
        for ps, pd in _representative_pairs(program, family, a, b, hosts):
            if (ps, pd) != (s, d) and _answer(program, family, ps, pd, blame) != ans:
                which = a.workload if len(a.ranges[family]) > 1 else b.workload
                blame.add(_differing(program, family, (s, d), (ps, pd)),
                          f"part of {which}'s addresses is decided apart from the rest; "
                          f"a NetworkPolicy selects all of its pods alike")
    return None if seen is None else seen[1]


def _versions(program: Program, seen, family: int, ans, s: int, d: int, blame: _Blame):
    """(family, the pair's answer) once IPv4's and IPv6's are both in: they must be the same (a peer is
    the same for both), but for ICMP types, which are each version's own (`icmp4`, `icmp6`)."""
    if seen is None or ans == seen[1]:
        return family, ans
    a, b = ({} if x is None else x for x in (seen[1], ans))
    icmp = ("icmp4", "icmp6")
    if isinstance(a, dict) and isinstance(b, dict) and \
            {k: v for k, v in a.items() if k not in icmp} == {k: v for k, v in b.items() if k not in icmp}:
        return family, {**a, **b} or None
    blame.add(evaluate(program, Flow(family, s, d, TCP, 49152, 80)),
              "IPv4 and IPv6 are decided apart here; a NetworkPolicy peer is the same for both")
    return family, ans


class _Answers:
    """What each pair of regions with a workload at one end passes (`_decide`; None: nothing), without
    a visit per pair. A region's groups are its block groups (`_Blocks`) in each of its IP versions, per
    side; the pairs of a source's groups and a destination's fall in one block in every IP version both
    have, so one pair answers for all. Asked one by one (`one`): each region with itself, every pair of
    a region in no block on its side, and the pairs ir/pairspace.py keys one by one in some version."""

    def __init__(self, regions: list[Region], blocks: dict):
        self.regions = regions
        self.by_key = {r.key: r for r in regions}
        self.index = {r.key: n for n, r in enumerate(regions)}
        self.one: dict[tuple[str, str], object] = {}
        self.mine: tuple[dict, dict] = ({}, {})  # per side: region key -> {other end: answer} of `one`
        self.block: dict = {}  # (source's groups, destination's groups) -> answer
        self.groups: tuple[dict, dict] = ({}, {})  # per side: region key -> its groups (None: in no block)
        self.members: tuple[dict, dict] = ({}, {})  # per side: groups -> their regions, in order
        for r in regions:
            for side, of in ((0, "src_group"), (1, "dst_group")):
                groups = tuple((f, getattr(blocks[f].space, of).get(r.key)) for f in sorted(r.first))
                if any(g is None for _, g in groups):
                    groups = None
                else:
                    self.members[side].setdefault(groups, []).append(r)
                self.groups[side][r.key] = groups

    def fill(self, program: Program, blocks: dict, blame: _Blame) -> bool:
        """Ask the pairs asked one by one and one pair of each block, in the order of the regions (as
        the pairs would be asked one by one). False when something is blamed (then nothing is kept)."""
        by_key, regions = self.by_key, self.regions
        alone: set[tuple[str, str]] = {(r.key, r.key) for r in regions if r.workload}
        for side in (0, 1):
            for r in regions:
                if self.groups[side][r.key] is None:
                    alone.update(((r.key, o.key) if side == 0 else (o.key, r.key))
                                 for o in regions if r.workload or o.workload)
        for kind in blocks.values():
            alone.update((s, d) for s, d in kind.space.singles if by_key[s].workload or by_key[d].workload)
        asked: dict[tuple[str, str], tuple] = {}  # a block's pair -> its block
        for sg, srcs in self.members[0].items():
            for dg, dsts in self.members[1].items():
                if {f for f, _ in sg}.isdisjoint(f for f, _ in dg):
                    continue  # no flow joins them
                pair = next(((a.key, b.key) for a in srcs for b in dsts
                             if (a.workload or b.workload) and (a.key, b.key) not in alone), None)
                if pair is not None:
                    asked[pair] = (sg, dg)
        index = self.index
        for pair in sorted(alone | set(asked), key=lambda p: (index[p[0]], index[p[1]])):
            ans = _decide(program, blocks, by_key[pair[0]], by_key[pair[1]], blame)
            if blame.found:
                return False
            if pair in asked:
                self.block[asked[pair]] = ans
            else:
                self[pair] = ans
        return True

    def __setitem__(self, pair: tuple[str, str], ans) -> None:
        self.one[pair] = ans
        self.mine[0].setdefault(pair[0], {})[pair[1]] = ans
        self.mine[1].setdefault(pair[1], {})[pair[0]] = ans

    def get(self, pair: tuple[str, str]):
        hit = self.one.get(pair, _ASK)
        if hit is not _ASK:
            return hit
        a, b = self.by_key[pair[0]], self.by_key[pair[1]]
        if not (a.workload or b.workload):
            return None
        return self.block.get((self.groups[0][pair[0]], self.groups[1][pair[1]]))

    def peers(self, w: Region, side: int) -> list[tuple[Region, object]]:
        """(region, answer) for every region `w` passes something with, in the regions' order: its
        sources (side 0: `w` is the destination) or its destinations (side 1)."""
        out = [(self.by_key[k], ans) for k, ans in self.mine[1 - side].get(w.key, {}).items() if ans is not None]
        mine = self.groups[1 - side][w.key]
        if mine is not None:
            for groups, rs in self.members[side].items():
                ans = self.block.get((groups, mine) if side == 0 else (mine, groups))
                if ans is not None:
                    out += [(r, ans) for r in rs if ((r.key, w.key) if side == 0 else (w.key, r.key)) not in self.one]
        index = self.index
        out.sort(key=lambda p: index[p[0].key])
        return out

    def excepts(self):
        """((source key, destination key), answer) for every pair whose answer is an `Except`."""
        for pair, ans in self.one.items():
            if isinstance(ans, Except):
                yield pair, ans
        for (sg, dg), ans in self.block.items():
            if isinstance(ans, Except):
                for a in self.members[0][sg]:
                    for b in self.members[1][dg]:
                        if (a.workload or b.workload) and (a.key, b.key) not in self.one:
                            yield (a.key, b.key), ans


def export(program: Program, kubernetes: dict | None = None, expressions: bool = True,
           exact: bool = False, sidecars: bool = False, icmp: bool = False,
           cidr_denies: bool = False) -> tuple[list[dict], dict]:
    """(NetworkPolicy objects, identities: {name: {"namespace", "labels", "addresses"}}). `kubernetes`
    (the deployment's section, with an imported cluster's `selectors`) places each workload in a
    namespace and says how its pods are selected (backends/kube/selectors.py). `expressions`: the
    selectors may use matchExpressions (False where another resource reuses them with matchLabels).
    `exact`: ingress rules admit exactly what each pair passes, as egress rules do (Cilium reads requests
    at the destination: an ingress rule that admitted more would let them through unread). `sidecars`:
    every workload runs an Istio sidecar, so a workload that takes no TCP from outside the cluster (and
    the rest of what the policy lets it take from there) leaves that TCP to its sidecar's STRICT mutual
    TLS (identities then say `"mtls": "STRICT"`): NetworkPolicy cannot deny some ports to outside
    addresses while letting other protocols through. `icmp`: ICMP types are said apart (Cilium's `icmps`):
    answers carry the ICMP (ICMPv6) types that pass as "icmp4" ("icmp6"), and rules as "icmps".
    `cidr_denies`: the denies of ports (and types) a pair leaves out of everything else may come from
    outside addresses (written as AdminNetworkPolicy-shaped rules with ingress `networks`, which only
    `-t cilium` reads)."""
    token, token2 = _ICMP.set(icmp), _CIDR_DENIES.set(cidr_denies)
    try:
        return _export(program, kubernetes, expressions, exact, sidecars)
    finally:
        _ICMP.reset(token)
        _CIDR_DENIES.reset(token2)


def _export(program: Program, kubernetes: dict | None, expressions: bool, exact: bool,
            sidecars: bool) -> tuple[list[dict], dict]:
    """`export`, with the ICMP mode set."""
    kubernetes = declared(program, kubernetes)
    mapped = kubernetes.get("workloads", {})
    _check_rules(program)
    regions, kinds = regions_of(program)
    blame = _Blame(program)
    workloads = [r for r in regions if r.workload]
    blocks = {family: _Blocks(program, family, regions) for family in (4, 6)}
    answers = _Answers(regions, blocks)
    if not answers.fill(program, blocks, blame):
        # Something NetworkPolicy cannot say: every pair is asked, in order, so that each rule it comes
        # from is blamed, with the message of the first pair that shows it.
        blame = _Blame(program)
        for a in regions:
            for b in regions:
                if a.workload or b.workload:
                    _decide(program, blocks, a, b, blame)
    blame.raise_any()
    by_key = {r.key: r for r in regions}
    strict = _strict_sidecars(regions, answers) if sidecars else set()
    unknown = sorted(set(mapped) - {w.workload for w in workloads})
    if unknown:
        raise DiagnosticError([error(program.default_origin, "k8s", f"the deployment's kubernetes.workloads names "
                                                                   f"{', '.join(unknown)}: no workload of the policy")])
    placed, problems = placements([w.workload for w in workloads], kubernetes, expressions)
    share = settle(placed, lambda a, b: _alike(by_key[a], by_key[b], regions, answers), expressions)
    problems += [(name, f"identity {name!r} is not a Kubernetes label value") for name, p in placed.items()
                 if p.labels.get(LABEL) == name and not _NAME.fullmatch(name)]
    if problems:
        name, message = problems[0]
        where = next((i.origin for i in program.identities if i.name == name and i.origin is not None),
                     program.default_origin)
        raise DiagnosticError([error(where, "k8s", message)])
    peers = _Peers(regions, placed, frozenset(i.name for i in program.unbound))
    into, out_of = _isolation(regions, answers)
    for isolated in (into, out_of):  # identities that share a selector share its policy
        for k, rep in share.items():
            if k in isolated or rep in isolated:
                isolated |= {k, rep}
    policies = []
    for w in sorted(workloads, key=lambda r: r.key):
        if w.workload in share:
            continue
        spec: dict = {"podSelector": placed[w.workload].selector(), "policyTypes": []}
        for direction, side, end in (("Ingress", "from", 0), ("Egress", "to", 1)):
            if w.key not in (into if direction == "Ingress" else out_of):
                continue  # the direction stays open: the other ends' policies say what it may not
            spec["policyTypes"].append(direction)
            # The egress rules are exact; an ingress rule may admit more from a source whose egress is isolated.
            rules = peers.rules(w, answers.peers(w, end), side,
                                out_of if direction == "Ingress" and not exact else _NOBODY)
            if rules:
                spec[direction.lower()] = rules
        if not spec["policyTypes"]:
            continue
        policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": f"anyplane-{k8s_name(w.workload)}", "namespace": placed[w.workload].namespace,
                                      "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                         "spec": spec})
    names = Counter(p["metadata"]["name"] for p in policies)
    for i, p in enumerate(policies):  # two names that sanitise alike get a number
        if names[p["metadata"]["name"]] > 1:
            p["metadata"]["name"] += f"-{i}"
    policies += _admin(answers, by_key, placed, program)
    identities = {}
    for w in workloads:
        p = placed[w.workload]
        identities[w.workload] = {"namespace": p.namespace, "labels": dict(p.labels),
                                  "addresses": [str(x) for x in _prefixes(w)]}
        if p.unset:
            identities[w.workload]["unset"] = list(p.unset)
        if w.workload in strict:
            identities[w.workload]["mtls"] = "STRICT"
    return policies, identities


def _strict_sidecars(regions: list[Region], answers: _Answers) -> set[str]:
    """The workloads whose every outside source gets nothing over TCP and all of some other protocol
    (else nothing at all): their sidecars' STRICT mutual TLS refuses that TCP (a client outside the
    cluster has no mesh certificate), so NetworkPolicy lets it through (the pairs' answers become "all")."""
    out = set()
    for w in regions:
        if not w.workload:
            continue
        outside = [r for r in regions if not r.workload and _meet(r, w)]
        got = [answers.get((r.key, w.key)) for r in outside]
        tcp_only = [isinstance(a, Except) and not a.ports.get("udp") and
                    merge_ranges(list(a.ports.get("tcp", ()))) in ([(1, 65535)], [(0, 65535)]) for a in got]
        if any(tcp_only) and all(t or a is None for t, a in zip(tcp_only, got)):
            out.add(w.workload)
            for r, t in zip(outside, tcp_only):
                if t:
                    answers[(r.key, w.key)] = "all"
    return out


def _alike(a: Region, b: Region, regions: list[Region], answers: _Answers) -> bool:
    """Whether two workloads are decided alike: the same answers with every other region, both ways,
    and between their pods."""
    for r in regions:
        if r is not a and r is not b and (answers.get((r.key, a.key)) != answers.get((r.key, b.key)) or
                                          answers.get((a.key, r.key)) != answers.get((b.key, r.key))):
            return False
    inner = [answers.get((a.key, b.key)), answers.get((b.key, a.key))] + \
        [answers.get((x.key, x.key)) for x in (a, b)]
    return all(x == inner[0] for x in inner)


def _meet(a: Region, b: Region) -> bool:
    """Whether two regions share an IP version (else no flow joins them: either answer will do)."""
    return not a.families.isdisjoint(b.families)


def _isolation(regions: list[Region], answers: _Answers) -> tuple[set, set]:
    """(workloads isolated for ingress, for egress): enough that every pair that does not pass everything
    has an isolated end, its destination's ingress or its source's egress. Pairs with an outside end
    leave no choice; the others are covered greedily, the workload with the most pairs first (ingress
    on a tie), so that the directions users leave open stay open."""
    into, out_of = set(), set()

    def open_(a: Region, b: Region) -> bool:  # whether the pair passes everything (or no flow joins it)
        if a.families.isdisjoint(b.families):
            return True
        return passes(answers.get((a.key, b.key)))

    def passes(ans) -> bool:
        return ans == "all" or isinstance(ans, Except)
    work = [r for r in regions if r.workload]
    outside = [r for r in regions if not r.workload]
    for w in work:  # the pairs with an outside end, first: they leave no choice
        if any(not open_(o, w) for o in outside):
            into.add(w.key)
        if any(not open_(w, o) for o in outside):
            out_of.add(w.key)
    # Then the pairs of two workloads that neither of those covers: those asked one by one, and those of
    # each block that does not pass everything.
    sources, destinations = [a for a in work if a.key not in out_of], [b for b in work if b.key not in into]
    edges: dict = {}  # an end that could be isolated -> the ends that could cover its pairs instead

    def edge(a: str, b: str) -> None:
        edges.setdefault(("in", b), set()).add(("out", a))
        edges.setdefault(("out", a), set()).add(("in", b))
    ends = {b.key: b for b in destinations}
    for a in sources:
        for b, ans in answers.mine[0].get(a.key, {}).items():
            if b in ends and not a.families.isdisjoint(ends[b].families) and not passes(ans):
                edge(a.key, b)
    by_groups: tuple[dict, dict] = ({}, {})
    for side, rs in ((0, sources), (1, destinations)):
        for r in rs:
            groups = answers.groups[side][r.key]
            if groups is not None:
                by_groups[side].setdefault(groups, []).append(r)
    for sg, srcs in by_groups[0].items():
        for dg, dsts in by_groups[1].items():
            if {f for f, _ in sg}.isdisjoint(f for f, _ in dg) or passes(answers.block.get((sg, dg))):
                continue
            for a in srcs:
                for b in dsts:
                    if (a.key, b.key) not in answers.one:
                        edge(a.key, b.key)
    chosen = {"in": into, "out": out_of}
    for side, key in sorted(edges, key=lambda v: (-len(edges[v]), v[0] != "in", v[1])):
        if any(other[1] not in chosen[other[0]] for other in edges[(side, key)]):
            chosen[side].add(key)
    return into, out_of


class _Peers:
    """A direction's peers as few selectors as say them exactly (see backends/kube/selectors.py)."""

    def __init__(self, regions: list[Region], placed: dict, unbound=frozenset()):
        self.regions, self.placed = regions, placed
        self.by_ns: dict[str, list[Region]] = {}
        for r in regions:
            if r.workload:
                self.by_ns.setdefault(placed[r.workload].namespace, []).append(r)
        self.whole = {ns: all(placed[r.workload].from_cluster for r in rs) for ns, rs in self.by_ns.items()}
        self.memo: dict = {}
        self.near: dict = {}
        # An imported cluster's blocks may span its pods' addresses, as the policies users write do; other
        # exports' blocks never hold a workload's address (the same under every reading of ipBlock). An
        # unbound workload's placeholders are no one's addresses: a block may span them or not.
        cluster = bool(placed) and all(p.from_cluster for p in placed.values())
        self.free = {f: merge_ranges(rng for r in regions if r.workload and (cluster or r.workload in unbound)
                                     for rng in r.ranges.get(f, ())) for f in (4, 6)}

    def rules(self, w: Region, pairs: list, side: str, loose=frozenset()) -> list[dict]:
        """The rules of one direction of `w`'s: peers grouped by what they are allowed. `pairs`: (region,
        answer) for the regions `w` passes something with; every other region near it gets nothing. A
        peer in `loose` (its own policy says exactly what this pair passes) may be admitted with more,
        which lets a rule name a whole namespace, or every peer: a loose peer that gets nothing may be
        admitted by every rule."""
        grouped: dict[str, tuple[object, list, list]] = {}
        spare = []
        texts: dict[int, str] = {}  # id of an answer -> its text (the pairs of a block share one answer)
        for region, ans in pairs:
            if region.key in loose:
                spare.append((region, ans))
            else:
                text = texts.get(id(ans))
                if text is None:
                    text = texts[id(ans)] = repr(ans)
                grouped.setdefault(text, (ans, [], []))[1].append(region)
        for region, ans in spare:  # admitted by one rule that passes at least its answer, allowed in the others
            fits = [g for g in grouped.values() if _covers(g[0], ans)]
            home = grouped.get(repr(ans)) or (fits[0] if fits else grouped.setdefault(repr(ans), (ans, [], [])))
            home[1].append(region)
            for g in fits:
                if g is not home:
                    g[2].append(region)
        # The loose peers near `w` that get nothing, counted (all of them and per namespace).
        near = self._near(w, loose)
        free = Counter(near.loose_ns)
        free.subtract(self.placed[r.workload].namespace for r, _ in spare)
        out = []
        for ans, group, extra in grouped.values():
            items = self.items(w, group, extra, near, (near.loose - len(spare), free))
            rule = {} if items is None else {side: items}
            ports, icmps = _ports(ans), _icmps(ans)
            if ports is not None and (ports or not icmps):
                rule["ports"] = ports
            if icmps:  # ICMP types said apart (-t cilium): its `icmps`, beside the ports
                rule["icmps"] = icmps
            out.append(rule)
        return out

    def _near(self, w: Region, loose) -> "_Near":
        """What is near `w` (shares an IP version with it), counted: regions, workloads, workloads per
        namespace, and those of `loose`."""
        key = (w.families, id(loose))
        hit = self.near.get(key)
        if hit is None or hit.loose_set is not loose:
            hit = self.near[key] = _Near([r for r in self.regions if _meet(r, w)], loose, self.placed)
        return hit

    def items(self, w: Region, group: list[Region], extra: list[Region], near: "_Near",
              free: tuple[int, Counter]) -> list[dict] | None:
        """The peers of one rule of `w`'s (None: every peer): `group` must be named, `extra` may be, and
        so may `free` more workloads near `w` (`near`): their number, and per namespace."""
        named = {r.key: r for r in group} | {r.key: r for r in extra}
        if len(named) + free[0] == near.regions:
            return None
        items = []
        work = [r for r in group if r.workload]
        per_ns = Counter(self.placed[r.workload].namespace for r in named.values() if r.workload)
        if work and all(self.whole.values()) and sum(per_ns.values()) + free[0] == near.workloads:
            items.append(namespace_peer(None))
        elif work:
            spaces: dict[str, list[Region]] = {}
            for r in work:
                spaces.setdefault(self.placed[r.workload].namespace, []).append(r)
            for ns, rs in sorted(spaces.items()):
                if self.whole[ns] and per_ns[ns] + free[1][ns] == near.per_ns[ns]:
                    items.append(namespace_peer(ns))
                else:
                    here = self.placed[w.workload].namespace
                    for r in sorted(rs, key=lambda r: r.workload):
                        peer = pod_peer(self.placed[r.workload], here)
                        if peer not in items:  # identities that share a selector
                            items.append(peer)
        wanted: dict[int, list] = {}
        for r in group:
            if not r.workload:
                for f, rng in r.ranges.items():
                    if f in w.ranges:
                        wanted.setdefault(f, []).extend(rng)
        return items + Cover(wanted, self.free, self.memo).blocks()


class _Near:
    """The regions that share an IP version with a workload, counted (`_Peers._near`)."""

    def __init__(self, near: list[Region], loose, placed: dict):
        work = [r for r in near if r.workload]
        self.regions, self.workloads = len(near), len(work)
        self.per_ns = Counter(placed[r.workload].namespace for r in work)
        self.loose_set = loose
        mine = [r for r in work if r.key in loose]
        self.loose, self.loose_ns = len(mine), Counter(placed[r.workload].namespace for r in mine)


def _covers(more, less) -> bool:
    """Whether the answer `more` passes at least what `less` does."""
    if less is None or more == "all" or isinstance(more, Except):
        return True
    if less == "all" or isinstance(less, Except):
        return False
    return all(any(a <= lo and hi <= b for a, b in merge_ranges(list(more.get(p, ()))))
               for p in ("tcp", "udp", "icmp4", "icmp6") for lo, hi in less.get(p, ()))


def _anp_ports(ports: dict) -> list[dict]:
    out = []
    for name in ("tcp", "udp"):
        for lo, hi in ports.get(name, ()):
            out.append({"portNumber": {"protocol": name.upper(), "port": lo}} if lo == hi else
                       {"portRange": {"protocol": name.upper(), "start": lo, "end": hi}})
    return out


def _admin(answers: _Answers, by_key: dict, placed: dict, program: Program) -> list[dict]:
    """AdminNetworkPolicies for the pairs that pass everything but some ports: a Deny of those ports at
    the destination's ingress (from a workload), or at the source's egress (to outside addresses).
    AdminNetworkPolicy has no ingress peer for outside addresses: such a pair is an error at its rule."""
    rules: dict = {}  # (subject workload, direction) -> {ports repr: (ports, [peers])}
    blame = _Blame(program)
    for (a_key, b_key), ans in sorted(answers.excepts()):
        a, b = by_key[a_key], by_key[b_key]
        if b.workload and a.workload:
            subject, direction, peer = b.workload, "ingress", _anp_pods(placed[a.workload])
        elif a.workload:
            subject, direction, peer = a.workload, "egress", {"networks": [i["ipBlock"]["cidr"]
                                                                           for i in collapse(ip_blocks(b))]}
        elif _CIDR_DENIES.get():  # Cilium denies from CIDRs
            subject, direction, peer = b.workload, "ingress", {"networks": [i["ipBlock"]["cidr"]
                                                                            for i in collapse(ip_blocks(a))]}
        else:
            blame.add(ans.why, "Kubernetes cannot deny some ports of an address outside the cluster while it lets "
                               "every other protocol through (AdminNetworkPolicy has no ingress peer for outside "
                               "addresses)")
            continue
        group = rules.setdefault((subject, direction), {}).setdefault(repr(ans.ports), (ans.ports, []))
        group[1].append(peer)
    blame.raise_any()
    # An unbound workload's placeholders are no one's addresses: a network may span them or not.
    unbound = {i.name for i in program.unbound}
    spare = [ipaddress.ip_network(str(r.prefix)) for r in program.endpoints if r.identity in unbound]
    out = []
    subjects = sorted({s for s, _ in rules})
    if len(subjects) > 1000:
        raise DiagnosticError([error(program.default_origin, "k8s", "more than 1000 workloads need an "
                                                                   "AdminNetworkPolicy (priorities are 0-1000)")])
    for n, subject in enumerate(subjects, start=1):
        spec: dict = {"priority": n, "subject": _anp_pods(placed[subject])}
        for direction, side in (("ingress", "from"), ("egress", "to")):
            for k, (ports, peers) in enumerate(rules.get((subject, direction), {}).values(), start=1):
                nets = [{"ipBlock": {"cidr": c}} for peer in peers for c in peer.get("networks", ())]
                merged = [p for p in peers if "networks" not in p]
                if nets:
                    merged.append({"networks": [i["ipBlock"]["cidr"] for i in collapse(nets, spare)]})
                rule = {"name": f"deny-{k}", "action": "Deny", side: merged, "ports": _anp_ports(ports)}
                if _icmps(ports):  # ICMP types said apart: only -t cilium reads them
                    rule["icmps"] = _icmps(ports)
                spec.setdefault(direction, []).append(rule)
        out.append({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                    "metadata": {"name": f"anyplane-{k8s_name(subject)}",
                                 "labels": {"app.kubernetes.io/managed-by": "anyplane"}},
                    "spec": spec})
    return out


def _anp_pods(p) -> dict:
    return {"pods": {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: p.namespace}}, "podSelector": p.selector()}}


def _self_entry(e) -> bool:
    """An entry from one address to that same address (a pod's traffic to itself)."""
    return to_itself(e.match) is not None


def _one_kind(program: Program, family: int, region: Region, side: int) -> bool:
    """Whether the same entries hold for every range of a region on one side (see `_representative_pairs`)."""
    hit = region.__dict__.get(("one", side, family))
    if hit is None:
        hit = region.__dict__[("one", side, family)] = len(_kinds(program, family, region, side)) == 1
    return hit


def _kinds(program: Program, family: int, region: Region, side: int) -> list[list[int]]:
    """The starts of a region's ranges, grouped by the entries that hold for them on one side (an entry
    for one address to itself aside, where each address is a pod)."""
    narrow = _narrow(program)
    key = (id(region), side, family)
    hit = narrow.kinds.get(key)
    if hit is not None and hit[0] is region:
        return hit[1]
    out: dict = {}
    # An entry for one address to itself is the importer's (a pod reaches itself) where each address is
    # a pod; elsewhere it decides part of the workload apart.
    mine = _selfs(program) if _hosts(region) or _single(region) else frozenset()
    for start, _ in region.ranges.get(family, ()):
        out.setdefault(narrow._own(side, family, start) - mine, []).append(start)
    narrow.kinds[key] = (region, list(out.values()))
    return narrow.kinds[key][1]


def _representative_pairs(program: Program, family: int, a: Region, b: Region, hosts: bool):
    """Pairs of a range start of `a` and one of `b` (two different addresses when `hosts`), one for each
    pair of kinds: ranges are of a kind when the same entries hold for them on that side (an entry for
    one pod's traffic to itself aside)."""
    def kinds(region: Region, side: int) -> list[list[int]]:
        return _kinds(program, family, region, side)
    for src_kind in kinds(a, 0):
        for dst_kind in kinds(b, 1):
            ps = src_kind[0]
            pd = next((x for x in dst_kind if not (hosts and x == ps)), None)
            if pd is None and hosts:
                ps = next((x for x in src_kind if x != dst_kind[0]), None)
                pd = dst_kind[0] if ps is not None else None
            if ps is not None and pd is not None:
                yield ps, pd


@per_program(keep=4)
def _selfs(program: Program) -> frozenset:
    return frozenset(i for i, e in enumerate(program.acl.entries) if _self_entry(e))


def _single(region: Region) -> bool:
    """A workload of one address (a pod): Kubernetes always lets it reach itself."""
    return sum(hi - lo + 1 for rs in region.ranges.values() for lo, hi in rs) == 1


def _hosts(region: Region) -> bool:
    """A workload of several single addresses (pods no policy tells apart, as the importer makes them):
    each pod reaches itself, whatever the policy says of the pairs."""
    ranges = [r for rs in region.ranges.values() for r in rs]
    return len(ranges) > 1 and all(lo == hi for lo, hi in ranges)


def _prefixes(region: Region) -> list[Prefix]:
    return [p for family, ranges in sorted(region.ranges.items()) for lo, hi in ranges
            for p in Prefix.range_of(family, lo, hi)]


def split(policies: list[dict]) -> tuple[list[dict], list[dict]]:
    """(NetworkPolicies, AdminNetworkPolicies)."""
    return ([p for p in policies if p["kind"] == "NetworkPolicy"],
            [p for p in policies if p["kind"] == "AdminNetworkPolicy"])


class KubernetesExporter(base.Engine):
    """What the Kubernetes exporters share: resources a cluster enforces, selecting workloads by their
    labels, read back through the importer (each engine names its importer: `reads_back_with`)."""

    place = ""
    capability = CAPABILITY
    options = frozenset({"out_dir", "deployment"})
    needs_addresses = False  # workloads are selected by their labels

    def workloads(self, program: Program) -> list[str]:
        """The identities that are pods (the others are outside the cluster)."""
        return sorted(r.workload for r in regions_of(program)[0] if r.workload)

    def exempt(self, program: Program) -> list[Prefix]:
        """Addresses whose traffic to themselves Kubernetes always lets through (a workload of one address
        is a pod; so is each address of a workload of single addresses): the proof leaves those flows out,
        each address with itself."""
        return [p for r in regions_of(program)[0] if r.workload and (_single(r) or _hosts(r)) for p in _prefixes(r)]

    def emit(self, program: Program, options: base.Options) -> base.Output:
        """NetworkPolicies (and AdminNetworkPolicies where the L4 projection needs the admin tier)."""
        base.refuse_mtls(program, self.name, "NetworkPolicy selects pods by label and peers by address: it has no "
                                             "certificates")
        policies, identities = export(program, getattr(options.deployment, "kubernetes", None))
        nps, anps = split(policies)
        text = yaml11.dump_all(nps, sort_keys=False)
        ident_text = yaml11.dump({"identities": identities}, sort_keys=True)
        rows = base.rule_rows(program, lambda r: (base.ENFORCED, "", 0))
        out = base.Output([base.Artifact("networkpolicies.yaml", text), base.Artifact("identities.yaml", ident_text)],
                          rows)
        if anps:
            out.artifacts.append(base.Artifact("adminnetworkpolicies.yaml", yaml11.dump_all(anps, sort_keys=False)))
        out.artifacts.append(base.Artifact("report.txt", out.report_text(self.name)))
        return out
