"""The fabric engine: P4 program, P4Info IDs, entries, pushes (read back by p4runtime-shell too), table semantics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from anyplane.backends.ebpf import packet
from anyplane.backends.p4 import engine
from anyplane.backends.p4.engine import P4Error
from anyplane.backends.p4.entries import canonical, merge_prefixes, prefix_cover
from anyplane.backends.p4.ids import ACTION, TABLE, Ids, jenkins_one_at_a_time
from anyplane.backends.p4.pipeline import Features, p4info, program_text
from anyplane.backends.p4.proto import p4runtime_pb2
from anyplane.backends.p4.push import push
from anyplane.compiler.cli import cli
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.addr import Prefix
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.conn import established
from anyplane.ir.interp import evaluate
from anyplane.ir.match import merge_ranges
from anyplane.ir.project import project_l4

from bench import classbench

from ...conftest import CI, EXAMPLES, compile_text, load_example
from ...p4eval import Switch
from ...p4server import Device, Server

ROOT = Path(__file__).resolve().parents[3]


def test_ids_are_the_ones_p4c_assigns():
    # From the P4Info p4c writes for the P4 tutorial's basic.p4.
    ids = Ids()
    assert ids.get(TABLE, "MyIngress.ipv4_lpm") == 37375156
    assert ids.get(ACTION, "MyIngress.drop") == 25652968
    assert ids.get(ACTION, "MyIngress.ipv4_forward") == 28792405
    assert ids.get(ACTION, "NoAction") == 21257015
    # Collisions probe linearly inside the prefix.
    ids.used.add((ACTION << 24) | (jenkins_one_at_a_time("x") & 0xFFFFFF))
    assert ids.get(ACTION, "x") == ((ACTION << 24) | (jenkins_one_at_a_time("x") & 0xFFFFFF)) + 1


def test_range_helpers():
    assert len(prefix_cover(1024, 65535, 16)) == 6
    assert len(prefix_cover(1, 65534, 16)) == 30
    assert prefix_cover(80, 80, 16) == [(80, 0xFFFF)]
    for lo, hi in [(0, 0), (3, 17), (1000, 2000), (0, 65535), (65535, 65535)]:
        covered = set()
        for v, m in prefix_cover(lo, hi, 16):
            covered |= {x for x in range(max(0, lo - 300), min(65536, hi + 300)) if x & m == v}
        assert covered == set(range(lo, hi + 1)) & set(range(max(0, lo - 300), min(65536, hi + 300)))
    assert merge_ranges([(5, 9), (1, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]
    a, b = Prefix(4, 0x0A000000, 25), Prefix(4, 0x0A000080, 25)
    assert merge_prefixes([a, b, Prefix(4, 0x0A000010, 28)]) == [Prefix(4, 0x0A000000, 24)]
    assert canonical(0) == b"\x00" and canonical(256) == b"\x01\x00"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_entries_json_is_the_same_request(example):
    out = engine.emit(load_example(example).program)
    files = {a.path: a.data for a in out.artifacts}
    request = json.loads(files["entries.json"])
    assert len(request["updates"]) == files["entries.txt"].count("updates {")


def _push_and_switch(program, features=Features(), atomic=True, capacity=None):
    device = Device(p4info(features), capacity)
    with Server(device, atomic=atomic) as server:
        result = push(program, server.addr, 1, features)
        writes = list(server.servicer.writes)
    return device, result, writes


def _flows(program, n, seed):
    out = []
    for f in FlowGen(program, seed=seed).flows(n):
        out.append(f.without_http())
    return out


def _assert_agree(program, device, flows):
    switch = Switch(device.p4info, device)
    projected = project_l4(program)
    bad = []
    for f in flows:
        got, action = switch.verdict(packet.frame(f))
        want = evaluate(projected, f).verdict
        if got != want:
            bad.append((f.text, want, got, action))
    assert not bad, bad[:10]


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_entries_pushed_through_p4runtime_agree_with_the_interpreter(example):
    program = load_example(example).program
    device, result, writes = _push_and_switch(program)
    # The server received one batch, checked against the P4Info, and holds what we computed.
    assert len(writes) == 1 and result["updates"] == len(writes[0].updates)
    _, _, entries = engine.build_all(program)
    assert len(device.entries("acl")) == len(entries.acl)
    _assert_agree(program, device, _flows(program, 10000, seed=21))


def test_no_range_targets_get_ternary_ports_and_the_same_verdicts():
    program = load_example("edge-firewall").program
    features = Features(range_match=False)
    assert "meta.dport: ternary;" in program_text(features)
    device, _, _ = _push_and_switch(program, features)
    ranged, _, _ = _push_and_switch(program)
    assert len(device.entries("acl")) >= len(ranged.entries("acl"))
    _assert_agree(program, device, _flows(program, 10000, seed=4))


@pytest.mark.parametrize("name", ["acl1_1k", "fw1_1k", "ipc1_1k"])
def test_classbench_traces_agree_with_interpreter_and_first_match(name):
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    device, _, _ = _push_and_switch(program)
    switch = Switch(device.p4info, device)
    projected = project_l4(program)
    trace = classbench.read_trace(classbench.DATA / f"{name}.trace")
    sample = random.Random(1).sample(trace, min(3000, len(trace)))
    for src, dst, sport, dport, proto in sample:
        if proto in (6, 17):
            f = Flow(4, src, dst, proto, sport, dport)
        elif proto == 1:
            f = Flow(4, src, dst, proto, icmp_type=8, icmp_code=0)
        else:
            f = Flow(4, src, dst, proto)
        first = classbench.first_match(rules, src, dst, sport, dport, proto)
        oracle = "deny" if first is None or classbench.is_deny(first) else "allow"
        got, _ = switch.verdict(packet.frame(f))
        assert got == oracle == evaluate(projected, f).verdict, f.text


def test_fewer_entries_than_naive_expansion():
    # fw1 has wide port ranges: native range match needs far fewer entries than prefix expansion.
    rules = classbench.read_rules(classbench.DATA / "fw1_1k.rules")
    program = compile_sources([("fw1.ap", classbench.to_policy(rules, "fw1"))]).program
    _, _, ranged = engine.build_all(program)
    _, _, ternary = engine.build_all(program, Features(range_match=False))
    assert len(ranged.acl) <= len(rules)
    assert len(ranged.acl) * 2 <= ranged.naive
    assert len(ternary.acl) <= ternary.naive
    assert sum(ranged.per_rule.values()) == len(ranged.acl)


def test_rejected_batch_rolls_back_and_names_the_rule():
    small = compile_text("service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n"
                         "allow 10.1.0.0/16 -> db tcp 5432\n", "v1.ap").program
    big_text = "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n" + "".join(
        f"allow 10.{i}.0.0/16 -> db tcp 5432\n" for i in range(1, 9))
    big = compile_text(big_text, "v2.ap").program
    for atomic in (True, False):
        device = Device(p4info(Features()), capacity={"acl": 5})
        with Server(device, atomic=atomic) as server:
            push(small, server.addr)
            before = sorted(text_format.MessageToString(e) for e in device.entries("acl"))
            with pytest.raises(P4Error) as err:
                push(big, server.addr)
            after = sorted(text_format.MessageToString(e) for e in device.entries("acl"))
        assert after == before, "the target must keep the old entries"
        message = str(err.value)
        assert "RESOURCE_EXHAUSTED" in message and "v2.ap:" in message
        assert ("rolled the batch back" if atomic else "were undone") in message


def test_second_push_writes_only_the_difference():
    v1 = compile_text("service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n"
                      "allow 10.1.0.0/16 -> db tcp 5432\nallow 10.2.0.0/16 -> db tcp 5432\n", "p.ap").program
    v2 = compile_text("service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n"
                      "allow 10.1.0.0/16 -> db tcp 5432\nallow 10.2.0.0/16 -> db tcp 5433\n",
                      "p.ap").program
    device = Device(p4info(Features()))
    with Server(device) as server:
        first = push(v1, server.addr)
        second = push(v2, server.addr)
        third = push(v2, server.addr)
        assert [w.atomicity for w in server.servicer.writes] == [p4runtime_pb2.WriteRequest.DATAPLANE_ATOMIC] * 2
    assert first["inserted"] > 0
    # One rule's port changes: its entry and the reflexive entry for its replies are replaced, nothing
    # else is touched.
    assert (second["modified"], second["inserted"], second["deleted"]) == (0, 2, 2)
    assert third["updates"] == 0
    _assert_agree(v2, device, _flows(v2, 2000, seed=2))


def test_status_reads_the_switchs_tables_back_and_proves_them(tmp_path):
    """`status -t p4 --prove POLICY` reads every entry of a running switch (here the suite's P4Runtime
    server, as a reader that writes nothing), lifts it into IR and proves it: the pushed policy is proved,
    another policy is refuted at a flow that shows the difference, and so is the pushed policy once an
    entry on the switch was changed behind anyplane's back."""
    from ...conftest import run

    text = "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\nallow 10.1.0.0/16 -> db tcp 5432\n"
    pushed, other = tmp_path / "v1.ap", tmp_path / "v2.ap"
    pushed.write_text(text + "allow 10.2.0.0/16 -> db tcp 5432\n")
    other.write_text(text + "allow 10.2.0.0/16 -> db tcp 5433\n")
    device = Device(p4info(Features()))
    with Server(device) as server:
        push(compile_sources([(str(pushed), pushed.read_text())]).program, server.addr)
        writes = len(server.servicer.writes)
        ok = run("status", "-t", "p4", "--grpc-addr", server.addr, "--prove", str(pushed))
        assert ok.returncode == 0 and "proved: the live tables decide exactly what" in ok.stdout, ok
        bad = run("status", "-t", "p4", "--grpc-addr", server.addr, "--prove", str(other), "--format", "json")
        assert bad.returncode == 1, bad
        flow = json.loads(bad.stdout)["proof"]["counterexample"]["flow"]
        assert flow.startswith("10.2.") and "tcp 543" in flow, flow
        assert len(server.servicer.writes) == writes, "a status wrote to the switch"
        # An allow turned into a deny on the switch itself: the pushed policy no longer proves.
        acl = next(t for t in device.p4info.tables if t.preamble.alias == "acl")
        deny = next(a for a in device.p4info.actions if a.preamble.alias == "acl_deny")
        established = next(f.id for f in acl.match_fields if f.name == "meta.tcp_established")
        key, entry = next((k, e) for k, e in device.tables[acl.preamble.id].items()
                          if not e.is_default_action and all(m.field_id != established for m in e.match))
        changed = p4runtime_pb2.TableEntry()
        changed.CopyFrom(entry)
        changed.action.action.action_id = deny.preamble.id
        del changed.action.action.params[:]
        device.tables[acl.preamble.id][key] = changed
        tampered = run("status", "-t", "p4", "--grpc-addr", server.addr, "--prove", str(pushed))
        assert tampered.returncode == 1 and "the live tables do not decide what" in tampered.stderr + tampered.stdout
    usage = run("status", "-t", "p4", "--prove", str(pushed))
    assert usage.returncode == 2 and "--grpc-addr" in usage.stderr


def test_the_server_rejects_what_the_spec_forbids():
    info = p4info(Features())
    device = Device(info)
    acl = next(t for t in info.tables if t.preamble.alias == "acl")
    allow = next(a for a in info.actions if a.preamble.alias == "acl_allow")

    def entry(**kw):
        te = p4runtime_pb2.TableEntry(table_id=acl.preamble.id, priority=kw.get("priority", 1))
        m = te.match.add(field_id=8)
        m.ternary.value, m.ternary.mask = kw.get("value", b"\x06"), kw.get("mask", b"\xff")
        te.action.action.action_id = allow.preamble.id
        return p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT, entity=p4runtime_pb2.Entity(table_entry=te))

    from ...p4server import Invalid

    for bad in (entry(priority=0), entry(value=b"\x00\x06"), entry(value=b"\x07", mask=b"\x06"),
                entry(mask=b"\x00")):
        with pytest.raises(Invalid):
            device.apply(bad)
    device.apply(entry())
    with pytest.raises(Invalid):
        device.apply(entry())  # duplicate


def test_program_parses_with_the_p4_16_grammar():
    from lark import Lark

    grammar = (ROOT / "tests" / "p4_16_subset.lark").read_text()
    parser = Lark(grammar, start="p4program", parser="earley")
    for features in (Features(), Features(range_match=False)):
        text = program_text(features)
        source = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        tree = parser.parse(source)
        tables = {t.children[1].children[0].value for t in tree.find_data("table_declaration")}
        assert tables == {"src_endpoint_v4", "src_endpoint_v6", "dst_endpoint_v4", "dst_endpoint_v6", "acl"}
    # And the grammar is not a catch-all: broken programs fail.
    from lark.exceptions import LarkError

    with pytest.raises(LarkError):
        parser.parse("control C() { apply { x = ; } }")


def test_program_and_p4info_agree_on_names():
    for features in (Features(), Features(range_match=False)):
        text = program_text(features)
        info = p4info(features)
        for t in info.tables:
            assert f"table {t.preamble.alias} " in text
            for mf in t.match_fields:
                assert f"{mf.name}: " in text
        for a in info.actions:
            assert f"action {a.preamble.alias}(" in text


def test_compile_and_push_from_the_cli(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "p4", "-o", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert {"anyplane.p4", "p4info.txt", "entries.txt", "entries.json", "report.txt"} <= \
        {p.name for p in tmp_path.iterdir()}
    dry = CliRunner().invoke(cli, ["push", "-t", "p4", "examples/bookinfo.ap", "--grpc-addr", "127.0.0.1:1",
                                   "--dry-run"])
    assert dry.exit_code == 0 and "updates {" in dry.output
    device = Device(p4info(Features()))
    with Server(device) as server:
        res = CliRunner().invoke(cli, ["push", "-t", "p4", "examples/bookinfo.ap", "--grpc-addr", server.addr,
                                       "--device-id", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["inserted"] == len(device.entries("acl")) + sum(
        len(device.entries(t)) for t in ("src_endpoint_v4", "dst_endpoint_v4", "src_endpoint_v6", "dst_endpoint_v6"))
    nobody = CliRunner().invoke(cli, ["push", "-t", "p4", "examples/bookinfo.ap", "--grpc-addr", "127.0.0.1:9"])
    assert nobody.exit_code == 1 and "no P4Runtime server answered" in nobody.output


def test_pipeline_config_is_pushed_when_asked(tmp_path):
    info_path = tmp_path / "p4info.txt"
    info_path.write_text(text_format.MessageToString(p4info(Features())))
    blob = tmp_path / "device.bin"
    blob.write_bytes(b"opaque target binary")
    device = Device(None)
    with Server(device) as server:
        with pytest.raises(P4Error):
            push(load_example("bookinfo").program, server.addr)  # no pipeline on the target yet
        from anyplane.backends.p4.push import push as push_fn

        push_fn(load_example("bookinfo").program, server.addr, pipeline_config=(str(info_path), str(blob)))
    assert device.entries("acl")


def test_a_rolled_back_push_restores_the_default_entry_too():
    """A whole-table read leaves the default entry out; the push reads it by itself, so a rejected batch
    that changed the default puts the old default back, and an unchanged default is never rewritten."""
    v1 = compile_text("service db { address 10.0.5.0/24 port 5432 tcp }\ndefault allow\n"
                      "deny 10.1.0.0/16 -> db tcp 5432\n", "v1.ap").program
    v2 = compile_text("service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n" + "".join(
        f"allow 10.{i}.0.0/16 -> db tcp 5432\n" for i in range(1, 9)), "v2.ap").program
    for atomic in (True, False):
        device = Device(p4info(Features()), capacity={"acl": 5})
        names = {a.preamble.id: a.preamble.alias for a in device.p4info.actions}
        acl = next(t.preamble.id for t in device.p4info.tables if t.preamble.alias == "acl")
        with Server(device, atomic=atomic) as server:
            assert names[device.default_entry(acl).action.action.action_id] == "acl_deny"  # the program's
            push(v1, server.addr)
            assert names[device.default_entry(acl).action.action.action_id] == "acl_allow"
            assert push(v1, server.addr)["updates"] == 0
            with pytest.raises(P4Error):
                push(v2, server.addr)
            assert names[device.default_entry(acl).action.action.action_id] == "acl_allow"


REPLIES = """
external internet { address 0.0.0.0/0 }
external web { address 10.1.2.0/24 }
default deny
allow web -> internet tcp 443
allow web -> internet udp 53
deny web -> 192.0.2.0/24 priority 10
"""


def reply_probes() -> list[tuple[Flow, str]]:
    """Packets around the connections of REPLIES: openings, replies with each flag, replies of nothing."""
    web, dns, doc = 0x0A010205, 0x08080808, 0xC0000205
    return [(Flow(4, web, dns, 6, 50000, 443), "S"),          # an opening
            (Flow(4, dns, web, 6, 443, 50000), "SA"),         # its reply
            (Flow(4, dns, web, 6, 443, 50000), "A"),
            (Flow(4, dns, web, 6, 443, 50000), "R"),
            (Flow(4, dns, web, 6, 443, 50000), "S"),          # reply-shaped, but a new connection
            (Flow(4, dns, web, 6, 443, 50000), "F"),
            (Flow(4, dns, web, 6, 444, 50000), "A"),          # no allow has this shape
            (Flow(4, doc, web, 6, 443, 50000), "A"),          # the opening is denied, the shape is allowed
            (Flow(4, dns, web, 17, 53, 40000), ""),           # UDP: the switch keeps no connections
            (Flow(4, web, dns, 17, 40000, 53), "")]


def switch_expected(program, f: Flow, flags: str) -> str:
    """The switch's documented behaviour: the L4 verdict, and established TCP reply shapes pass."""
    projected = project_l4(program)
    return "allow" if established(projected, f, flags) else evaluate(projected, f).verdict


@pytest.mark.parametrize("stateless", [False, True])
def test_established_tcp_segments_shaped_like_replies_pass_the_switch(stateless):
    program = compile_text(REPLIES + ("stateless\n" if stateless else ""), "r.ap").program
    device, _, _ = _push_and_switch(program)
    switch = Switch(device.p4info, device)
    got = [switch.verdict(packet.frame(f, tcp=flags))[0] for f, flags in reply_probes()]
    assert got == [switch_expected(program, f, flags) for f, flags in reply_probes()]
    if stateless:
        assert got == ["allow"] + ["deny"] * 8 + ["allow"]
    else:
        assert got == ["allow", "allow", "allow", "allow", "deny", "deny", "deny", "allow", "deny", "allow"]
    established_entries = [e for e in device.entries("acl") if any(m.field_id == 14 for m in e.match)]
    assert len(established_entries) == (0 if stateless else 1)


def _p4sh() -> str:
    binary = ROOT / ".p4sh" / "bin" / "python"
    if not binary.exists():
        if CI:
            pytest.fail("p4runtime-shell's environment is missing: make p4sh", pytrace=False)
        pytest.skip("p4runtime-shell's environment is missing (make p4sh)")
    return str(binary)


@pytest.mark.switch
@pytest.mark.parametrize("example", ["bookinfo", "edge-firewall"])
def test_p4runtime_shell_reads_back_what_anyplane_pushed(tmp_path, example):
    """The operator's tool on protobuf 3.20, anyplane on protobuf 6: p4runtime-shell connects to the
    suite's P4Runtime server with anyplane's emitted p4info.txt and reads the acl entries push wrote."""
    import json
    import subprocess

    program = load_example(example).program
    features = Features()
    (tmp_path / "p4info.txt").write_text(text_format.MessageToString(p4info(features)))
    device = Device(p4info(features))
    with Server(device) as server:
        push(program, server.addr, 1, features)
        done = subprocess.run([_p4sh(), str(ROOT / "tests" / "p4sh_read.py"), server.addr, "1",
                               str(tmp_path / "p4info.txt"), "acl"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    read = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    held = device.entries("acl")
    assert len(read) == len(held) > 0

    def norm(entry):
        e = p4runtime_pb2.TableEntry()
        e.CopyFrom(entry)
        matches = sorted(e.match, key=lambda m: m.field_id)
        del e.match[:]
        e.match.extend(matches)
        return e.SerializeToString(deterministic=True)
    theirs = sorted(norm(text_format.Parse(r["entry"], p4runtime_pb2.TableEntry())) for r in read)
    assert theirs == sorted(norm(e) for e in held)
    names = {a.preamble.name for a in p4info(features).actions}
    assert all(r["action"] in names for r in read) and all(r["fields"] for r in read)
