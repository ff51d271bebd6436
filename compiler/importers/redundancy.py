"""What each NetworkPolicy, and each of its rules, adds to a cluster's connectivity.

    NetworkPolicy (or AdminNetworkPolicy, BaselineAdminNetworkPolicy) P selects no pod
                                                        it has no effect
    ingress rule N of P admits no peer                  its selectors select no pod
    NetworkPolicy P is redundant                        without it, every flow is decided the same
    ingress rule N of P is redundant                    without it, every flow is decided the same

"Decided the same" is the semantic diff the caller passes (`same(program, program)`: the API
gives Z3's, verify/diff.py) between the import with and without the policy or rule: the question
network-config-analyzer's sanity check answers. Two copies of one policy are both redundant (either
can go, not both). The API makes them findings of kind `redundant` (a warning unless `--fail-on
redundant`), at the policy's or rule's position in the YAML.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from anyplane.ir.nodes import Program
from anyplane.ir.source import Span

from . import IMPORTED
from .k8s import convert


def _program(texts, drop=frozenset(), partition=(frozenset(), ()), parsed=None) -> tuple[Program, object]:
    from ..pipeline import compile_sources

    imported = convert(texts, drop, partition=partition, parsed=parsed)
    return compile_sources([(IMPORTED, imported.text)]).program, imported


def _only(base: Program, depends: dict, rules: set) -> set[str]:
    """The ids of the rules of the import that these NetworkPolicy rules write and no other rule (or
    pair of rules) writes too, when the import is per rule (`Imported.depends`). Without them, the
    import is the same less these, as long as the isolations stay: every other line depends only on
    them and its own rules."""
    lines = {line for line, sets in depends.items() if all(s & rules for s in sets)}
    return {r.id for r in base.rules if r.origin.file == IMPORTED and r.origin.line in lines}


def _without(base: Program, depends: dict, rules: set) -> Program:
    """The program imported without these NetworkPolicy rules, their isolations kept (see `_only`)."""
    gone = _only(base, depends, rules)
    return dataclasses.replace(base, acl=dataclasses.replace(base.acl, entries=tuple(
        e for e in base.acl.entries if e.rule not in gone)), rules=tuple(r for r in base.rules if r.id not in gone))


def findings(texts: list[tuple[str, str]], same: Callable[[Program, Program], bool],
             same_without: Callable[[Program, list], bool] | None = None) -> list[tuple[Span, str]]:
    """The redundancy findings of the NetworkPolicies and admin policies in these manifests:
    (position, message). `same_without(program, entries)`: whether the program decides every flow
    alike without these acl entries (asked for each rule when the import is per rule; else, and for
    whole policies, `same` compares the import with the one made without it)."""
    parsed: dict = {}  # the YAML is read once
    whole = convert(texts, parsed=parsed)
    structure = whole.structure
    # Every version is told apart as the whole input is, so that all name the same identities and
    # addresses: the comparison is then of the entries that differ, not of every flow.
    base, imported = _program(texts, partition=whole.partition, parsed=parsed)
    out = []

    def found(span, message):
        out.append((span, message))

    def _same(drop, policy):
        (key,) = drop
        # A rule, or a policy whose isolations other policies make too, leaves out lines and changes none.
        if imported.depends is not None and same_without is not None and (len(key) == 3 or not policy["alone"]):
            rules = {key} if len(key) == 3 else {key + (r["direction"], r["number"]) for r in policy["rules"]}
            gone = _only(base, imported.depends, rules)
            return same_without(base, [e for e in base.acl.entries if e.rule in gone])
        if len(key) == 3 and imported.depends is not None:
            return same(base, _without(base, imported.depends, {key}))
        return same(base, _program(texts, drop, whole.partition, parsed)[0])

    for policy in structure:
        label, key = policy["label"], policy["key"]
        if not policy["selects"]:
            found(policy["span"], f"{label} selects no pod: it has no effect")
            continue
        if _same(frozenset({key}), policy):
            found(policy["span"], f"{label} is redundant: without it every flow is decided the same")
            continue
        for r in policy["rules"]:
            what = f"{r['direction']} rule {r['number']} of {label}"
            if r["admits_none"]:
                found(r["span"], f"{what} admits no peer: its selectors select no pod")
            elif _same(frozenset({key + (r["direction"], r["number"])}), policy):
                found(r["span"], f"{what} is redundant: without it every flow is decided the same")
    return out
