"""The flow generator and the fast LPM table used beside the interpreter."""

from __future__ import annotations

import random

import pytest

from anyplane.ir.addr import Prefix
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate, owner
from anyplane.ir.lpm import LpmTable
from anyplane.ir.owners import owned_addresses, ownership

from ..conftest import EXAMPLES, compile_text, load_example


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_generated_flows_reach_every_rule_that_can_decide(name):
    program = load_example(name).program
    decided = {evaluate(program, f).entry.rule for f in FlowGen(program, seed=7).flows(4000)
               if evaluate(program, f).entry}
    # Rules that decide no flow at all are the verifier's business (dead rules); the
    # examples have a few, and the generator must find all the others.
    assert len(decided) >= 0.8 * len(program.rules)


def test_flows_cover_both_families_and_http():
    program = load_example("bookinfo").program
    flows = FlowGen(program, seed=3).flows(2000)
    assert {f.family for f in flows} == {4, 6}
    assert any(f.http is not None for f in flows)
    assert any(f.is_icmp for f in flows)


def test_the_generator_is_deterministic_for_a_seed():
    program = load_example("edge-firewall").program
    assert [f.text for f in FlowGen(program, 5).flows(300)] == [f.text for f in FlowGen(program, 5).flows(300)]


def test_generated_flows_hit_prefix_and_port_boundaries():
    c = compile_text("allow 10.1.2.0/24 -> any tcp 1000-2000\n")
    texts = {f.text.split(" ")[0] for f in FlowGen(c.program, seed=1).flows(3000)}
    assert {"10.1.2.0", "10.1.2.255", "10.1.1.255", "10.1.3.0"} <= texts
    ports = {f.dport for f in FlowGen(c.program, seed=1).flows(3000) if f.dport is not None}
    assert {999, 1000, 2000, 2001} <= ports


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_ownership_agrees_with_the_interpreters_linear_scan(example):
    """`ir.owners` is the one fast form of ownership every engine and the verifier use; the interpreter's
    linear scan is the definition."""
    program = load_example(example).program
    owners = ownership(program)
    rng = random.Random(0)
    for f in FlowGen(program, seed=11).flows(3000):
        assert owners.owner(f.family, f.src) == owner(program, f.family, f.src)
    for _ in range(2000):
        a = rng.getrandbits(32)
        assert owners.owner(4, a) == owner(program, 4, a)
    for identity, addresses in owned_addresses(program).items():
        assert all(owner(program, fam, a) == identity for fam, a in addresses)
    for p, parent in owners.parent.items():
        assert parent is None or (parent.covers(p) and parent != p and p in owners.children[parent])
    assert {p for ps in owners.prefixes.values() for p in ps} == {row.prefix for row in program.endpoints}


def test_lpm_prefers_the_longest_prefix():
    t = LpmTable([(Prefix.parse("10.0.0.0/8"), "a"), (Prefix.parse("10.1.0.0/16"), "b"),
                  (Prefix.parse("0.0.0.0/0"), "c"), (Prefix.parse("::/0"), "d")])
    assert t.lookup(4, int.from_bytes(bytes([10, 1, 2, 3]), "big")) == "b"
    assert t.lookup(4, int.from_bytes(bytes([10, 2, 2, 3]), "big")) == "a"
    assert t.lookup(4, 5) == "c" and t.lookup(6, 5) == "d"
