"""The rule-by-rule refinement check (verify.refine) that lets the composition proof stand a source
program in for an engine's read-back.

It must never say "decides alike" when some flow is decided otherwise: for
random policies and random compiler-like rewrites of their entries (drop,
split, widen, flip, reorder), whenever the check accepts, every class of
flows (tests/brute.py) gets the same verdict from both programs. It must
also accept what the real switch compiler emits, which leaves out many
entries, so that the proof stays fast.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anyplane.backends.p4 import engine as fabric
from anyplane.backends.p4.pipeline import Features
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.interp import evaluate
from anyplane.ir.addr import Prefix
from anyplane.ir.match import Match, PrefixMatch, Range
from anyplane.ir.nodes import Table
from anyplane.ir.source import DiagnosticError
from anyplane.verify.compose import prove
from anyplane.verify.refine import refines

from bench import classbench

from ..brute import universe
from ..conftest import examples
from ..strategies import policies

SETTINGS = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compile(text):
    try:
        return compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        return None


def _split(e, rng):
    """One entry as two with the same rule: its destination port range cut in two."""
    dport = e.match.get(F.DPORT)
    if not isinstance(dport, Range):
        return [e]
    cut = rng.randint(dport.lo, dport.hi - 1) if dport.hi > dport.lo else None
    if cut is None:
        return [e]
    fields = dict(e.match.fields)
    lo, hi = dict(fields), dict(fields)
    lo[F.DPORT], hi[F.DPORT] = Range(dport.lo, cut), Range(cut + 1, dport.hi)
    return [replace(e, match=Match.of(lo)), replace(e, match=Match.of(hi))]


def _halves(e, rng):
    """One entry as two with the same rule: an address prefix cut in halves, or the two families."""
    fields = dict(e.match.fields)
    name = rng.choice([F.SRC_IP, F.DST_IP])
    fm = fields.get(name)
    if fm is None:
        halves = [PrefixMatch(Prefix(4, 0, 0)), PrefixMatch(Prefix(6, 0, 0))]
    elif isinstance(fm, PrefixMatch) and fm.prefix.length < fm.prefix.width:
        p = fm.prefix
        halves = [PrefixMatch(Prefix(p.family, p.value | bit, p.length + 1))
                  for bit in (0, 1 << (p.width - p.length - 1))]
    else:
        return [e]
    return [replace(e, match=Match.of({**fields, name: h})) for h in halves]


def _widen(e, rng):
    dport = e.match.get(F.DPORT)
    if not isinstance(dport, Range) or dport.hi >= 65535:
        return [e]
    fields = dict(e.match.fields)
    fields[F.DPORT] = Range(dport.lo, dport.hi + rng.randint(1, 2))
    return [replace(e, match=Match.of(fields))]


def _flip(e, rng):
    return [replace(e, action=Allow() if e.action.verdict == "deny" else Deny())]


def _drop(e, rng):
    return []


def _shuffle_priority(e, rng):
    return [replace(e, priority=rng.randint(0, 3))]


REWRITES = (_split, _halves, _widen, _flip, _drop, _shuffle_priority)


def _rewritten(program, kind, seed):
    """The program with about half its entries rewritten by one kind of rewrite (None: any kind)."""
    rng = random.Random(seed)
    kinds = [kind] if kind else REWRITES
    out = []
    for e in program.acl.entries:
        out += rng.choice(kinds)(e, rng) if rng.random() < 0.5 else [e]
    return replace(program, acl=Table("engine", tuple(out)))


def _differences(a, b):
    return [f.text for f in universe([a, b]) if evaluate(a, f).verdict != evaluate(b, f).verdict]


@SETTINGS
@given(policies(max_rules=6, small=True), st.sampled_from((None, *REWRITES)), st.integers(0, 1 << 32))
def test_an_accepted_rewrite_decides_every_flow_class_alike(text, kind, seed):
    source = _compile(text)
    assume(source is not None)
    engine = _rewritten(source, kind, seed)
    assume(engine.acl.entries != source.acl.entries)
    same, why = refines(engine, source)
    if same is not None:
        assert same is source and why == ""
        assert _differences(engine, same) == []
    elif _differences(engine, source) == []:
        return  # a rewrite that changed nothing the check can see rule by rule: incomplete, never unsound
    else:
        assert why  # every refusal says why


@SETTINGS
@given(policies(max_rules=6, small=True))
def test_the_switch_compilers_entries_are_accepted_and_decide_alike(text):
    source = _compile(text)
    assume(source is not None and not any(e.match.layer == "L7" for e in source.acl.entries))
    try:
        lifted = fabric.lifted(source, Features(acl_size=1 << 20))
    except fabric.P4Error:  # a construct the switch refuses: its own tests cover that
        assume(False)
    same, why = refines(lifted, source)
    assert same is source, why
    assert _differences(lifted, source) == []


def _classbench(name, n):
    rules = classbench.read_rules(classbench.DATA / f"{name}_1k.rules")[:n]
    return compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program


@pytest.mark.parametrize("name", ["acl1", "fw1", "ipc1"])
def test_classbench_switch_entries_refine_their_rules_though_many_are_left_out(name):
    source = _classbench(name, 600)
    lifted = fabric.lifted(source, Features(acl_size=1 << 20))
    kept = {e.rule for e in lifted.acl.entries}
    assert len(kept) < len({e.rule for e in source.acl.entries})  # the switch compiler dropped some
    same, why = refines(lifted, source)
    assert same is source, why


def test_a_dropped_entry_that_mattered_is_refused_and_the_solver_finds_the_flow():
    source = _classbench("fw1", 300)
    lifted = fabric.lifted(source, Features(acl_size=1 << 20))
    entries = list(lifted.acl.entries)
    # Leave out kept entries one at a time until one whose absence changes a decision.
    for k in range(len(entries)):
        broken = replace(lifted, acl=Table("fabric", tuple(entries[:k] + entries[k + 1:])))
        same, why = refines(broken, source)
        if same is None:
            break
    else:
        pytest.fail("every kept entry could be left out")
    assert why
    result = prove(source, {"fabric": broken}, sources={"fabric": source})
    assert result.refined == {"fabric": why}
    if result.proved:  # the entry was redundant after all (the check is sufficient, not necessary)
        return
    flow = result.counterexample["flow"]
    assert result.counterexample["engines"]["fabric"]["verdict"] != result.counterexample["policy"]["verdict"]
    assert flow


def _leave_out(program, rule_id):
    return replace(program, acl=Table("engine", tuple(e for e in program.acl.entries if e.rule != rule_id)))


DECLS = "external a { address 10.0.1.0/24 }\nexternal b { address 10.0.2.0/24 }\n"


@pytest.mark.parametrize("body, rule, accepted", [
    # flows of the deny fall to the default, which denies too: leaving it out changes nothing
    ("default deny\ndeny a -> b\n", "r1", True),
    # ... but with an allow beneath it, they would be allowed
    ("default deny\ndeny a -> b\nallow any -> b tcp 80\n", "r1", False),
    # an earlier deny takes every flow of the later one
    ("default allow\ndeny any -> b\ndeny a -> b tcp 80 priority 0\n", "r2", True),
    # it takes only part of them; the rest reach the default allow
    ("default allow\ndeny any -> b tcp 80\ndeny a -> b tcp 79-81\n", "r2", False),
    # flows of an allow fall to a later allow that covers them
    ("default deny\nallow a -> b tcp 80\nallow a -> b tcp 79-81\n", "r1", True),
])
def test_left_out_rules_are_accepted_exactly_when_no_flow_changes(body, rule, accepted):
    source = _compile(DECLS + body)
    engine = _leave_out(source, rule)
    same, why = refines(engine, source)
    assert (same is not None) == accepted, why
    assert (_differences(engine, source) == []) == accepted


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=6, small=True), st.sampled_from(["early", "late", "everywhere"]))
def test_a_proved_composition_holds_for_every_flow_class(text, prefer):
    """The whole proof (rule-by-rule stand-ins, then the solver) against exhaustive enumeration: when it
    says proved, the engines' read-backs together give the policy's verdict on every class of flows."""
    from anyplane.compiler import place as placement

    source = _compile(text)
    assume(source is not None)
    try:
        plan = placement.plan(source, placement.regions(source, ("fabric", "kernel", "sidecar")), prefer)
        result = placement.prove(source, plan)
    except DiagnosticError:
        return  # a rule no engine can hold: refused at its line (tests/compiler/test_placement.py)
    assert result.proved, result.counterexample
    from anyplane.backends.ebpf import engine as kernel
    from anyplane.backends.envoy import engine as sidecar

    engines = [fabric.lifted(plan.programs["fabric"], Features(acl_size=1 << 20)),
               kernel.lifted(plan.programs["kernel"]), sidecar.lifted(plan.programs["sidecar"])]
    for f in universe([source, *engines]):
        together = "allow" if all(evaluate(e, f).verdict == "allow" for e in engines) else "deny"
        assert together == evaluate(source, f).verdict, f.text
