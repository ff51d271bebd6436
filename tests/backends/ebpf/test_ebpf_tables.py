"""The kernel's tables in Python, against definitions: the IPv4 trie of arrays against a longest-prefix
search, and the blocked bit vectors against the interpreter on policies of several blocks.
(The kernel tests load the same tables; these check them on many more inputs, quickly.)"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyplane.backends.ebpf.addr4 import build_addr4
from anyplane.backends.ebpf.model import build
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.addr import Prefix
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.project import project_l4

prefixes = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(1, 9)), min_size=1,
                    max_size=40)


@settings(max_examples=150, deadline=None)
@given(prefixes, st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_the_ipv4_table_gives_every_address_its_longest_prefixs_class(raw, probes):
    by_side = [[], []]
    for k, (value, length, cls) in enumerate(raw):
        p = Prefix(4, value >> (32 - length) << (32 - length) if length else 0, length)
        by_side[k % 2].append((p, cls))
    for side in by_side:  # one class per prefix (the tables are built from distinct atoms)
        side[:] = list({p: (p, c) for p, c in side}.values())
    table = build_addr4(by_side)
    addresses = set(probes)
    for side in by_side:
        for p, _ in side:
            addresses |= {p.first, p.last, max(0, p.first - 1), min(2**32 - 1, p.last + 1)}
    for s, side in enumerate(by_side):
        for a in addresses:
            holding = [(p.length, c) for p, c in side if p.first <= a <= p.last]
            want = max(holding)[1] if holding else 0
            assert table.lookup(s, a) == want, (s, a)


@pytest.mark.parametrize("combine", [True, False])
def test_bit_vectors_of_several_blocks_decide_as_the_interpreter(combine):
    """9,000 entries: three blocks of 4,096. Rules overlap within and across blocks, so that the first
    entry holding a flow is in any block, and some flows are decided by no entry. `combine`: protocol,
    ports and ICMP as one field (three rows ANDed) or as four."""
    rng = random.Random(4)
    lines = ["default deny", "stateless"]
    for k in range(9000):
        src = str(Prefix(4, 0x0A000000 | rng.randrange(4) << 16 | rng.randrange(8) << 8, 24).supernet(
            rng.choice((16, 20, 24))))
        dst = str(Prefix(4, 0x0A000000 | rng.randrange(4) << 16 | rng.randrange(4) << 8 | rng.randrange(256), 32)
                  .supernet(rng.choice((24, 28, 32))))
        lo = rng.randrange(0, 2000)
        verb = rng.choice(("allow", "deny"))
        what = rng.choice((f"tcp {lo}-{lo + rng.randrange(300)}", f"udp {lo}", "tcp", "",  # some wildcards
                           f"icmp type {rng.choice((0, 3, 8))}", "proto 47"))
        lines.append(f"{verb} {src} -> {dst} {what}".rstrip())
    program = compile_sources([("big.ap", "\n".join(lines) + "\n")]).program
    model = build(program, combine=combine)
    assert model.bits.count >= 2 and len(model.entries) > 2 * model.bits.span
    assert len(model.fields) == (3 if combine else 6)
    projected = project_l4(program)
    flows = list(FlowGen(program, seed=2).flows(700))
    decided = set()
    for f in flows:
        f = f.without_http()
        verdict, entry = model.decide(f)
        want = evaluate(projected, f)
        assert ("allow" if verdict else "deny") == want.verdict, f.text
        if entry is not None:
            assert model.entries[entry].rule == want.entry.rule, f.text
            decided.add(entry // model.bits.span)
    assert len(decided) >= 2  # flows decided in more than one block


def test_compiled_objects_are_cached_by_source_and_toolchain(tmp_path, monkeypatch):
    """The second compile of a source is the cache's file, byte for byte what clang makes; another source
    is another file; a damaged file is compiled again."""
    from anyplane.backends.ebpf.emit import Layout, compile_c, render

    monkeypatch.setenv("ANYPLANE_CACHE_DIR", str(tmp_path / "a"))
    one, two = render(Layout(64, 512, 64, 64, 64, 262144, 0)), render(Layout(128, 512, 64, 64, 64, 262144, 0))
    first = compile_c(one)
    files = list((tmp_path / "a" / "bpf").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == first
    assert compile_c(one) == first
    compile_c(two)
    assert len(list((tmp_path / "a" / "bpf").iterdir())) == 2
    files[0].write_bytes(b"not an object")
    assert compile_c(one) == first
    monkeypatch.setenv("ANYPLANE_CACHE_DIR", str(tmp_path / "b"))  # a fresh compile: the same bytes
    assert compile_c(one) == first
