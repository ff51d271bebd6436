"""The composition proof cut by pairs of identities (verify/compose.py `_by_pairs`) against the same
proof cut by destination blocks: on imported clusters with replicas, an engine that decides like the
policy is proved either way, and one with an entry left out or turned round gets a counterexample
either way (which the proof re-evaluates in the interpreter before it reports it)."""

from __future__ import annotations

import dataclasses

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anyplane.compiler.importers.k8s import convert
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.match import InSet, Match, PrefixMatch
from anyplane.ir.nodes import Entry
from anyplane.ir.source import Span
from anyplane.ir.owners import ownership
from anyplane.ir import fields as F
from anyplane.verify.compose import Scope, _allows_all, _by_pairs, prove

from ..conftest import examples
from ..importers.test_import_k8s import replicated


def _cluster(data):
    namespaces, pods, nps = replicated(data)
    text = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))]).text
    return compile_sources([("<kubernetes>", text)]).program


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_pairs_and_blocks_prove_and_refute_alike(data):
    policy = _cluster(data)
    entries = list(policy.acl.entries)
    change = data.draw(st.sampled_from(["none", "drop", "flip"]) if entries else st.just("none"))
    if change != "none":
        k = data.draw(st.integers(0, len(entries) - 1))
        if change == "drop":
            del entries[k]
        else:
            e = entries[k]
            entries[k] = dataclasses.replace(e, action=Deny() if e.action.verdict == "allow" else Allow())
    default = policy.default
    if change == "none" and data.draw(st.booleans()):
        default = "allow" if default == "deny" else "deny"  # the other default alone: decides otherwise
    elif data.draw(st.booleans()):
        # The other default under a last entry that decides like the policy's (as an export to Kubernetes:
        # default allow, with the isolation as denies): the pairs never share a key, but classes of pairs do.
        last = Entry(0, Match(()), Deny() if default == "deny" else Allow(), Span("<default>", 1, 1, 1, 2), "default")
        entries = [dataclasses.replace(e, priority=e.priority + 1) for e in entries] + [last]
        default = "allow" if default == "deny" else "deny"
    engine = dataclasses.replace(policy, default=default,
                                 acl=dataclasses.replace(policy.acl, entries=tuple(entries)))
    pods = tuple(sorted(i.name for i in policy.identities if i.kind == "service"))
    scopes = [Scope("everything", None, (), ("e",))]
    if pods and data.draw(st.booleans()):
        to = Match.of({F.DST_ID: InSet(pods)})
        # As the export's proof: each pod's address with itself left out (Kubernetes always passes it), so
        # a pair of an identity with itself is the flows between two of its pods.
        # Left out for all pods, for none, or for some (pairs with themselves asked alike only when each
        # leaves out all its addresses or none).
        some = data.draw(st.sampled_from(["all", "none", "some"]))
        chosen = set(pods) if some == "all" else set() if some == "none" else set(
            data.draw(st.lists(st.sampled_from(pods), unique=True)))
        selves = tuple(Match.of({F.SRC_IP: PrefixMatch(p), F.DST_IP: PrefixMatch(p)})
                       for n in sorted(chosen) for p in ownership(policy).prefixes.get(n, ()) if p.length == p.width)
        scopes = [Scope("to pods", to, selves, ("e",)),
                  Scope("from pods", Match.of({F.SRC_ID: InSet(pods)}), (to,) + selves, ("e",))]
    # The cut applies whenever the engine decides something: one engine, the policy's endpoints.
    assert _allows_all(engine) or _by_pairs(policy, {"e": engine}, scopes) is not None
    by_pairs = prove(policy, {"e": engine}, scopes)
    by_blocks = prove(policy, {"e": engine}, scopes, pairs=False)
    event(f"{change}: {'proved' if by_blocks.proved else 'refuted'}")
    assert by_pairs.proved == by_blocks.proved, (change, by_pairs.counterexample, by_blocks.counterexample)


def test_a_pair_is_alike_in_two_programs_only_under_the_same_default():
    """Pairs no entry holds for are decided by each program's default: with other defaults they differ,
    whatever their entries (a policy with default deny and its Kubernetes export, default allow)."""
    from anyplane.verify.alike import PairClasses
    from anyplane.verify.compose import _differing

    policy = compile_sources([("p.ap", "service a { address 10.0.0.1/32 }\nservice b { address 10.0.0.2/32 }\n"
                                       "default deny\nallow a -> b tcp 80\n")]).program
    names, interned = ["a", "b"], {}
    mine = PairClasses(policy, names, interned)
    same = _differing(policy, mine, PairClasses(policy, names, interned), names, names, frozenset())
    assert same == []
    other = dataclasses.replace(policy, default="allow")
    pairs = _differing(policy, mine, PairClasses(other, names, interned), names, names, frozenset())
    assert [(s, d) for s, d, *_ in pairs] == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
