"""The kernel's read-back: its maps' bytes decoded into IR (backends/ebpf/decode.py).

The composition proof of the kernel is only as good as this decoding, so: every example and ClassBench
sets, built with one combined protocol-and-port field and with four, decode to programs that decide
every flow as the policy's L4 projection does, rule by rule; a change to any region of the bytes (an
action, a port class, an address slot, a row's bit) makes the proof fail with a flow that shows it; and
bytes the builder never writes are an error, not a guess."""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

import pytest

from anyplane.backends.ebpf.decode import DecodeError, decode
from anyplane.backends.ebpf.engine import labels
from anyplane.backends.ebpf.loader import META, tables
from anyplane.backends.ebpf.model import build
from anyplane.compiler.pipeline import compile_sources, load
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.lpm import lpm_ranges
from anyplane.ir.project import project_l4
from anyplane.verify.compose import prove
from anyplane.verify.refine import refines

from bench import classbench

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.ap")) + \
    [str(ROOT / "examples" / d) for d in ("kubernetes", "zero-trust", "mesh")]


def _image(program, combine: bool = True):
    """The regions one push writes for a program (as the loader writes them), and the IPv6 trie."""
    t = tables(build(program, combine=combine), labels(program), program.connections)
    return dict(t.image(), meta=t.meta), list(t.addr6)


def _decoded(program, image, addr6):
    return decode(program, image, addr6)


def _agrees(program, back, flows: int = 1500, seed: int = 3):
    policy = project_l4(program)
    bad = []
    for f in FlowGen(policy, seed=seed).flows(flows):
        f = f.without_http()
        if evaluate(back, f).verdict != evaluate(policy, f).verdict:
            bad.append(f.text)
    return bad


@pytest.mark.parametrize("combine", [True, False], ids=["combined", "four-fields"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).name)
def test_each_examples_maps_decode_to_what_its_policy_decides(path, combine):
    program = load([path]).program
    back = _decoded(program, *_image(program, combine))
    assert not _agrees(program, back)
    same, why = refines(back, project_l4(program))
    assert same is not None, why  # the proof compares rule by rule, without the solver
    assert prove(project_l4(program), {"ebpf": back}).proved


@pytest.mark.parametrize("combine", [True, False], ids=["combined", "four-fields"])
@pytest.mark.parametrize("name", ["acl1", "fw1", "ipc1"])
def test_classbench_maps_decode_to_what_the_rules_decide(name, combine):
    """2,000 rules of each set (with `stateless`, as bench/ebpf.py runs them): prefixes on both sides,
    port ranges, protocols, and wildcards that every class holds."""
    rules = classbench.read_rules(classbench.DATA / f"{name}_10k.rules")[:2000]
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    back = _decoded(program, *_image(program, combine))
    assert len(back.acl.entries) == len(project_l4(program).acl.entries)
    assert not _agrees(program, back, flows=800)
    same, why = refines(back, project_l4(program))
    assert same is not None, why


POLICY = """
service web { address 10.1.0.0/24, fd00:1::/64 }
service db { address 10.2.0.5/32, fd00:2::5/128 port 5432 tcp }
default deny
allow web -> db tcp 5432
allow web -> any icmp type 8
deny web -> 10.9.0.0/16
allow any -> web udp 53 rate 100/s burst 20
"""


def _mutated(region: str, change):
    program = compile_sources([("p.ap", POLICY)]).program
    image, addr6 = _image(program)
    data = bytearray(image[region])
    change(data, program, image)
    image[region] = bytes(data)
    return program, decode(program, image, addr6)


def _proof_fails(program, back, *, flow_has: str):
    result = prove(project_l4(program), {"ebpf": back})
    assert not result.proved and result.counterexample, result
    assert flow_has in result.counterexample["flow"], result.counterexample
    return result


def test_unchanged_maps_are_proved():
    program = compile_sources([("p.ap", POLICY)]).program
    assert prove(project_l4(program), {"ebpf": decode(program, *_image(program))}).proved


def test_a_flipped_verdict_in_the_actions_fails_the_proof():
    def change(data, program, image):
        at = next(k for k, e in enumerate(build(program).entries) if "5432" in str(e.match))
        struct.pack_into("=I", data, 16 * at, 0)  # web -> db tcp 5432 from allow to deny
    _proof_fails(*_mutated("act", change), flow_has="5432")


def test_a_port_given_another_class_fails_the_proof():
    def change(data, program, image):
        cls = array("I", bytes(data))
        cls[65536 + 5432] = cls[65536 + 5431]  # destination port 5432 takes 5431's class
        data[:] = cls.tobytes()
    _proof_fails(*_mutated("cls", change), flow_has="5432")


def test_an_address_slot_given_another_class_fails_the_proof():
    def change(data, program, image):
        table = array("I", bytes(data))
        side, top = 1, 0x0A02  # 10.2.x.x on the destination side, where db's /32 lies
        assert table[side * 65536 + top] & 1 << 31, "db's address sits below a pointer"
        table[side * 65536 + top] = 0  # the whole /16, db included, is in no class
        data[:] = table.tobytes()
    _proof_fails(*_mutated("addr4", change), flow_has="10.2.0.5")


def test_a_bit_cleared_in_a_row_fails_the_proof():
    def change(data, program, image):
        meta = META.unpack(image["meta"])
        assert meta[7] == 64  # one block of one word: a row is its summary, the block's, and the word
        entry = next(k for k, e in enumerate(build(program).entries) if "5432" in str(e.match))
        for row in range(meta[0], meta[1]):  # every source class: web -> db tcp 5432 is gone
            at = row * 24 + 16
            word = int.from_bytes(data[at:at + 8], "little")
            data[at:at + 8] = (word & ~(1 << entry)).to_bytes(8, "little")
    _proof_fails(*_mutated("row", change), flow_has="5432")


def test_a_rate_changed_in_its_bucket_is_an_error():
    """The proof compares verdicts (a rate limit's is allow), so the decoding holds each bucket to a rate
    its rule says."""
    def change(data, program, image):
        tokens, last, count, period, burst = struct.unpack_from("=QQQQQ", data, 0)
        struct.pack_into("=QQQQQ", data, 0, tokens, last, count * 2, period, burst)
    with pytest.raises(DecodeError, match="meters 200 a second, burst 20, where rule .* says 100/1s burst 20"):
        _mutated("tb", change)


@pytest.mark.parametrize("what", ["pointer past the table", "class without a row", "entry past the last",
                                  "verdict", "short actions"])
def test_bytes_the_builder_never_writes_are_an_error(what):
    program = compile_sources([("p.ap", POLICY)]).program
    image, addr6 = _image(program)
    meta = META.unpack(image["meta"])
    if what == "pointer past the table":
        table = array("I", image["addr4"])
        table[0x0A01] = 1 << 31 | 100_000
        image["addr4"] = table.tobytes()
    elif what == "class without a row":
        cls = array("I", image["cls"])
        cls[65536 + 80] = 10_000
        image["cls"] = cls.tobytes()
    elif what == "entry past the last":
        data = bytearray(image["row"])
        size = 24
        for row in range(len(data) // size):  # bit 63 in every row: an entry the actions do not hold
            at = row * size + 16
            word = int.from_bytes(data[at:at + 8], "little") | 1 << 63
            data[at:at + 8] = word.to_bytes(8, "little")
            data[row * size:row * size + 8] = (1).to_bytes(8, "little")
            data[row * size + 8:row * size + 16] = (1).to_bytes(8, "little")
        image["row"] = bytes(data)
    elif what == "verdict":
        data = bytearray(image["act"])
        struct.pack_into("=I", data, 0, 7)
        image["act"] = bytes(data)
    else:
        image["act"] = image["act"][:-16]
    assert meta[8] >= 4
    with pytest.raises(DecodeError):
        decode(program, image, addr6)


def test_maps_without_their_labels_decode_with_rules_named_by_slot():
    """The counters' labels are not in the maps (a host that did not write them reads the kernel): the
    entries decode all the same, each rule named by its counter slot, and still decide as the policy."""
    program = compile_sources([("p.ap", POLICY)]).program
    image, addr6 = _image(program)
    del image["labels"]
    back = decode(program, image, addr6)
    assert all(e.rule.startswith("kernel slot ") for e in back.acl.entries)
    assert not _agrees(program, back) and prove(project_l4(program), {"ebpf": back}).proved


def test_longest_prefix_ranges_cover_the_line_with_the_longest_holder():
    got = lpm_ranges([(0, 255, "a"), (16, 31, "b"), (20, 20, "c"), (100, 100, "d")], 8, None)
    assert got == [(0, 15, "a"), (16, 19, "b"), (20, 20, "c"), (21, 31, "b"), (32, 99, "a"), (100, 100, "d"),
                   (101, 255, "a")]
    assert lpm_ranges([], 4, 0) == [(0, 15, 0)]
    assert lpm_ranges([(4, 7, 1)], 4, 0) == [(0, 3, 0), (4, 7, 1), (8, 15, 0)]


def test_a_flow_the_decoding_lets_through_is_the_kernels_own():
    """The decoded program, evaluated, gives the verdict the tables' reference evaluation gives (what the
    C program computes: backends/ebpf/model.py), including ICMP and a TCP fragment without ports."""
    program = compile_sources([("p.ap", POLICY)]).program
    model = build(program)
    back = decode(program, *_image(program))
    a, b, x = (int.from_bytes(bytes(map(int, s.split("."))), "big") for s in ("10.1.0.9", "10.2.0.5", "10.9.1.1"))
    flows = [Flow(4, a, b, 6, 40000, 5432), Flow(4, a, b, 6, 40000, 5433), Flow(4, a, b, 6, fragment=True),
             Flow(4, a, x, 1, icmp_type=8, icmp_code=0), Flow(4, a, b, 1, icmp_type=0, icmp_code=0),
             Flow(4, b, a, 17, 1000, 53), Flow(4, x, a, 17, 1000, 53)]
    for f in flows:
        kernel = "allow" if model.decide(f)[0] else "deny"
        assert evaluate(back, f).verdict == kernel, f.text
