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

from typing import Callable

from anyplane.ir.nodes import Program
from anyplane.ir.source import Span

from . import IMPORTED
from .k8s import convert


def _program(texts, drop=frozenset(), partition=(frozenset(), ()), parsed=None) -> Program:
    from ..pipeline import compile_sources

    return compile_sources([(IMPORTED, convert(texts, drop, partition=partition, parsed=parsed).text)]).program


def findings(texts: list[tuple[str, str]], same: Callable[[Program, Program], bool]) -> list[tuple[Span, str]]:
    """The redundancy findings of the NetworkPolicies and admin policies in these manifests:
    (position, message)."""
    parsed: dict = {}  # the YAML is read once
    whole = convert(texts, parsed=parsed)
    structure = whole.structure
    # Every version is told apart as the whole input is, so that all name the same identities and
    # addresses: the comparison is then of the entries that differ, not of every flow.
    base = _program(texts, partition=whole.partition, parsed=parsed)
    out = []

    def found(span, message):
        out.append((span, message))

    def _same(base, texts, drop):
        return same(base, _program(texts, drop, whole.partition, parsed))

    for policy in structure:
        label, key = policy["label"], policy["key"]
        if not policy["selects"]:
            found(policy["span"], f"{label} selects no pod: it has no effect")
            continue
        if _same(base, texts, frozenset({key})):
            found(policy["span"], f"{label} is redundant: without it every flow is decided the same")
            continue
        for r in policy["rules"]:
            what = f"{r['direction']} rule {r['number']} of {label}"
            if r["admits_none"]:
                found(r["span"], f"{what} admits no peer: its selectors select no pod")
            elif _same(base, texts, frozenset({key + (r["direction"], r["number"])})):
                found(r["span"], f"{what} is redundant: without it every flow is decided the same")
    return out
