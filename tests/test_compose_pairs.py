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
from anyplane.ir.owners import ownership
from anyplane.ir import fields as F
from anyplane.verify.compose import Scope, _allows_all, _by_pairs, prove

from .conftest import CI
from .test_import_k8s import replicated


def _cluster(data):
    namespaces, pods, nps = replicated(data)
    text = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))]).text
    return compile_sources([("<kubernetes>", text)]).program


@settings(max_examples=40 if CI else 12, deadline=None, suppress_health_check=list(HealthCheck))
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
    engine = dataclasses.replace(policy, acl=dataclasses.replace(policy.acl, entries=tuple(entries)))
    pods = tuple(sorted(i.name for i in policy.identities if i.kind == "service"))
    scopes = [Scope("everything", None, (), ("e",))]
    if pods and data.draw(st.booleans()):
        to = Match.of({F.DST_ID: InSet(pods)})
        # As the export's proof: each pod's address with itself left out (Kubernetes always passes it), so
        # a pair of an identity with itself is the flows between two of its pods.
        selves = () if data.draw(st.booleans()) else tuple(
            Match.of({F.SRC_IP: PrefixMatch(p), F.DST_IP: PrefixMatch(p)})
            for n in pods for p in ownership(policy).prefixes.get(n, ()) if p.length == p.width)
        scopes = [Scope("to pods", to, selves, ("e",)),
                  Scope("from pods", Match.of({F.SRC_ID: InSet(pods)}), (to,) + selves, ("e",))]
    # The cut applies whenever the engine decides something: one engine, the policy's endpoints.
    assert _allows_all(engine) or _by_pairs(policy, {"e": engine}, scopes) is not None
    by_pairs = prove(policy, {"e": engine}, scopes)
    by_blocks = prove(policy, {"e": engine}, scopes, pairs=False)
    event(f"{change}: {'proved' if by_blocks.proved else 'refuted'}")
    assert by_pairs.proved == by_blocks.proved, (change, by_pairs.counterexample, by_blocks.counterexample)
