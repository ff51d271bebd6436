"""What each NetworkPolicy, and each of its rules, adds to a cluster's connectivity.

    NetworkPolicy (or AdminNetworkPolicy, BaselineAdminNetworkPolicy) P selects no pod
                                                        it has no effect
    ingress rule N of P admits no peer                  its selectors select no pod
    NetworkPolicy P is redundant given Q                without it, every flow is decided the same;
                                                        without Q too, not (Q covers it)
    NetworkPolicy P is redundant                        the same, and no one policy covers it alone
    NetworkPolicy P is equivalent to Q here             each is redundant while the other stays, and
                                                        removing both changes the cluster: keep one
    ingress rule N of P is redundant                    without it, every flow is decided the same

"Decided the same" is the semantic diff the caller passes (`same(program, program)`: the API
gives Z3's, verify/diff.py) between the import with and without the policy or rule: the question
network-config-analyzer's sanity check answers. When the import is per rule, a rule (or a policy
whose isolations other policies make too) is asked without re-importing: the import less the lines
it alone writes (`_Lines`), through the caller's `same_without`. Two policies that each make the other
redundant (two copies, or two that contain each other) are one finding, at the later one: either can
go, not both. A policy that selects some of a redundant one's pods, without which the redundant one
adds something, is named as what covers it (asked of a few such policies, the most overlapping first).
The API
makes them findings of kind `redundant` (a warning unless `--fail-on
redundant`), at the policy's or rule's position in the YAML.
"""

from __future__ import annotations

from typing import Callable

from anyplane.ir.nodes import Program
from anyplane.ir.source import Span

from . import IMPORTED
from .k8s import convert


def _program(texts, drop=frozenset(), partition=(frozenset(), ()), parsed=None) -> tuple[Program, object]:
    from ..pipeline import compile_sources

    imported = convert(texts, drop, partition=partition, parsed=parsed)
    return compile_sources([(IMPORTED, imported.text)]).program, imported


class _Lines:
    """Which entries of the import each NetworkPolicy rule writes, when the import is per rule
    (`Imported.depends`), indexed once for every question."""

    def __init__(self, base: Program, depends: dict):
        self.depends = depends
        self.by_rule: dict[tuple, set[int]] = {}  # a rule key -> the lines some writer of which it is in
        for line, sets in depends.items():
            for s in sets:
                for key in s:
                    self.by_rule.setdefault(key, set()).add(line)
        ids = {r.origin.line: r.id for r in base.rules if r.origin.file == IMPORTED}
        self.entries: dict[int, list] = {}  # a line -> the acl entries its rule lowered to
        by_id: dict[str, list] = {}
        for e in base.acl.entries:
            by_id.setdefault(e.rule, []).append(e)
        for line, rule_id in ids.items():
            self.entries[line] = by_id.get(rule_id, [])

    def only(self, rules: set) -> list:
        """The entries of the lines that these NetworkPolicy rules write and no other rule (or pair of
        rules) writes too. Without the rules, the import is the same less these, as long as the
        isolations stay: every other line depends only on them and its own rules."""
        lines = {line for key in rules for line in self.by_rule.get(key, ())
                 if all(s & rules for s in self.depends[line])}
        return [e for line in sorted(lines) for e in self.entries.get(line, ())]


def findings(texts: list[tuple[str, str]], same: Callable[[Program, Program], bool],
             same_without: Callable[[Program, list], bool] | None = None) -> list[tuple[Span, str, tuple]]:
    """The redundancy findings of the NetworkPolicies and admin policies in these manifests:
    (position, message, the positions of the policies it names). `same_without(program, entries)`: whether the program decides every flow
    alike without these acl entries (asked for each rule when the import is per rule); else `same`
    compares the import with the one made without the policy or rule."""
    parsed: dict = {}  # the YAML is read once
    whole = convert(texts, parsed=parsed)
    structure = whole.structure
    # Every version is told apart as the whole input is, so that all name the same identities and
    # addresses: the comparison is then of the entries that differ, not of every flow.
    # (Imported with its own partition, the whole input is that import: compiled once.)
    from ..pipeline import compile_sources
    base, imported = compile_sources([(IMPORTED, whole.text)]).program, whole
    lines = _Lines(base, imported.depends) if imported.depends is not None else None
    out = []

    def found(span, message, related=()):
        out.append((span, message, related))

    def _same(drop, policy):
        (key,) = drop
        # A rule, or a policy whose isolations other policies make too, leaves out lines and changes none.
        if imported.depends is not None and same_without is not None and (len(key) == 3 or not policy["alone"]):
            rules = {key} if len(key) == 3 else {key + (r["direction"], r["number"]) for r in policy["rules"]}
            return same_without(base, lines.only(rules))
        return same(base, _program(texts, drop, whole.partition, parsed)[0])

    redundant = []  # (index among the findings, policy)
    for policy in structure:
        label, key = policy["label"], policy["key"]
        if not policy["selects"]:
            found(policy["span"], f"{label} selects no pod: it has no effect")
            continue
        if _same(frozenset({key}), policy):
            redundant.append((len(out), policy))
            found(policy["span"], f"{label} is redundant: without it every flow is decided the same")
            continue
        for r in policy["rules"]:
            what = f"{r['direction']} rule {r['number']} of {label}"
            if r["admits_none"]:
                found(r["span"], f"{what} admits no peer: its selectors select no pod")
            elif _same(frozenset({key + (r["direction"], r["number"])}), policy):
                found(r["span"], f"{what} is redundant: without it every flow is decided the same")
    without: dict = {}  # policy keys left out -> the import without them

    def without_(*keys):
        drop = frozenset(keys)
        if drop not in without:
            without[drop] = _program(texts, drop, whole.partition, parsed)[0]
        return without[drop]

    # Policies that each make the other redundant (two copies, or two that contain each other): either
    # can go, not both; one finding, at the later. Asked of the redundant policies of one namespace (or
    # both cluster-wide), pair by pair.
    paired, gone = set(), set()
    if 1 < len(redundant) <= MAX_PAIRED:
        for i, (at_a, a) in enumerate(redundant):
            for at_b, b in redundant[i + 1:]:
                if _namespace(a) != _namespace(b) or at_a in gone or at_b in gone:
                    continue
                if not same(base, without_(a["key"], b["key"])):
                    out[at_b] = (out[at_b][0], f"{b['label']} is equivalent to {a['label']} here: each is redundant "
                                               "while the other stays, and removing both changes the cluster, so "
                                               "keep one", (a["span"],))
                    gone.add(at_a)
                    paired |= {at_a, at_b}
    # What covers a redundant policy: a policy selecting some of its pods, without which it adds something.
    if len(redundant) <= MAX_PAIRED:
        for at, policy in redundant:
            if at in paired:
                continue
            mine = policy.get("pods", frozenset())
            others = sorted((p for p in structure if p is not policy and p.get("selects") and p.get("pods", frozenset()) & mine),
                            key=lambda p: -len(p["pods"] & mine))[:MAX_COVERERS]
            for other in others:
                if not same(without_(other["key"]), without_(other["key"], policy["key"])):
                    out[at] = (out[at][0], f"{policy['label']} is redundant given {other['label']}: while "
                                           f"{other['label']} stays, every flow is decided the same without it",
                               (other["span"],))
                    break
    return [f for k, f in enumerate(out) if k not in gone]


#: Above this many redundant policies, their pairs and coverers are not asked (each is a comparison).
MAX_PAIRED = 40
#: The policies asked whether they cover a redundant one, the most overlapping first.
MAX_COVERERS = 6


def _namespace(policy) -> str | None:
    """A NetworkPolicy's namespace (from its label `NetworkPolicy NS/NAME`); None for a cluster-wide one."""
    kind, _, name = policy["label"].partition(" ")
    return name.split("/")[0] if kind == "NetworkPolicy" and "/" in name else None
