"""The switch engine against the P4 reference toolchain: p4c compiles every program, BMv2 runs it.

- p4test and p4c-bm2-ss accept the program with and without range match, and p4c's P4Info equals
  anyplane's field by field;
- `push` sets the pipeline of a running simple_switch_grpc and inserts, modifies and deletes entries;
  a repeated push sends nothing; a rejected batch leaves the switch's entries and defaults as they were;
- packets through the switch (IPv4, IPv6, VLAN-tagged, fragments, ICMP) get the interpreter's L4
  verdict: forwarded from port 0 to port 1, or dropped;
- a meter forwards the rule's burst and rate, within 10%.
"""

from __future__ import annotations

import random
import subprocess
import time

import pytest
from google.protobuf import text_format

from anyplane.backends.ebpf import packet
from anyplane.backends.p4.pipeline import Features, p4info, program_text
from anyplane.backends.p4.proto import p4info_pb2
from anyplane.backends.p4.push import current_state, push
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flow import Flow
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.project import project_l4

from bench import classbench

from ...bmv2 import Bmv2, compile_program, tool
from ...conftest import EXAMPLES, load_example

pytestmark = pytest.mark.switch

FEATURES = {"range": Features(), "no-range": Features(range_match=False)}


@pytest.fixture(scope="module", params=sorted(FEATURES))
def switch(request, tmp_path_factory):
    """A running BMv2 with anyplane's program as its pipeline (one per feature set)."""
    features = FEATURES[request.param]
    workdir = tmp_path_factory.mktemp(f"bmv2-{request.param}")
    config, _ = compile_program(program_text(features), workdir)
    info = workdir / "anyplane.p4info.txt"
    info.write_text(text_format.MessageToString(p4info(features)))
    with Bmv2() as sw:
        sw.features, sw.pipeline = features, (str(info), str(config))
        yield sw


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_p4c_accepts_the_program_and_writes_the_same_p4info(name, tmp_path):
    features = FEATURES[name]
    source = program_text(features)
    (tmp_path / "anyplane.p4").write_text(source)
    proc = subprocess.run([tool("p4test"), str(tmp_path / "anyplane.p4")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _, info_file = compile_program(source, tmp_path)
    theirs = text_format.Parse(info_file.read_text(), p4info_pb2.P4Info())
    ours = p4info(features)
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)


def _push(sw, program, **kw):
    return push(program, sw.addr, sw.device_id, sw.features, **kw)


def _frames(program, n: int, seed: int) -> tuple[list[Flow], list[bytes]]:
    """Flows aimed at the policy's edges, and their frames: plain, VLAN-tagged (one and two tags), and for
    TCP/UDP a non-first fragment too; a tag in the payload makes every frame unique."""
    rng = random.Random(seed)
    flows, frames = [], []
    for f in FlowGen(program, seed=seed, http_share=0.0).flows(n):
        f = f.without_http()
        variants = [(f, 0)]
        if rng.random() < 0.2:
            variants.append((f, rng.choice((1, 2))))
        if f.sport is not None and rng.random() < 0.15:
            variants.append((Flow(f.family, f.src, f.dst, f.proto, fragment=True), 0))
        for flow, vlans in variants:
            flows.append(flow)
            frames.append(packet.frame(flow, vlans=vlans, payload=len(frames).to_bytes(4, "big")))
    return flows, frames


def _forwarded(sw, frames: list[bytes], allowed: list[bool]) -> list[bool]:
    """Per frame, whether the switch forwarded it. BMv2 queues 64 packets per port, so frames go at its
    pace; on a loaded machine the queue may still overflow. A frame the policy allows that did not come
    out is sent again, slowly, up to twice (the switch keeps no state: a verdict repeats, a lost frame
    does not). A frame that came out when it should not is never sent again."""
    got = sw.send(frames, gap=0.0005)
    for gap in (0.01, 0.05):
        lost = [k for k, (forwarded, allow) in enumerate(zip(got, allowed)) if allow and not forwarded]
        if not lost:
            break
        for k, again in zip(lost, sw.send([frames[k] for k in lost], gap=gap)):
            got[k] = again
    return got


def _agree(sw, program, n: int = 1000, seed: int = 1) -> int:
    """Send frames of the policy's flows through the switch; every verdict is the interpreter's."""
    projected = project_l4(program)
    flows, frames = _frames(program, n, seed)
    got = _forwarded(sw, frames, [evaluate(projected, f).verdict == "allow" for f in flows])
    bad = []
    for f, forwarded in zip(flows, got):
        d = evaluate(projected, f)
        if d.rate is not None:  # a meter may drop once its bucket is empty (tested below)
            continue
        if forwarded != (d.verdict == "allow"):
            bad.append((f.text, d.verdict, "forwarded" if forwarded else "dropped"))
    assert not bad, (len(bad), bad[:10])
    return len(frames)


def test_push_sets_the_pipeline_and_changes_only_what_differs(switch):
    v1 = compile_sources([("v1.ap", "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n"
                          "allow 10.1.0.0/16 -> db tcp 5432\nallow 10.2.0.0/16 -> db tcp 5432\n")]).program
    v2 = compile_sources([("v2.ap", "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault allow\n"
                          "allow 10.1.0.0/16 -> db tcp 5432\ndeny 10.2.0.0/16 -> db tcp 5433\n")]).program
    first = _push(switch, v1, pipeline_config=switch.pipeline)
    assert first["inserted"] > 0
    _agree(switch, v1, 300)
    assert _push(switch, v1)["updates"] == 0
    second = _push(switch, v2)
    assert second["modified"] >= 1 and second["deleted"] >= 1  # the default changes, one entry goes
    _agree(switch, v2, 300)
    assert _push(switch, v2)["updates"] == 0
    # What BMv2 holds, read back from it and lifted, is proved against v2 and refuted against v1.
    from anyplane.backends.p4.engine import FabricEngine
    from anyplane.verify.compose import prove

    live = FabricEngine().read_live(v2, grpc_addr=switch.addr, device_id=switch.device_id,
                                    range_match=switch.features.range_match)
    assert prove(project_l4(v2), {"p4": live}).proved
    assert not prove(project_l4(v1), {"p4": FabricEngine().read_live(
        v1, grpc_addr=switch.addr, device_id=switch.device_id, range_match=switch.features.range_match)}).proved


def test_a_rejected_batch_leaves_entries_and_defaults_as_they_were(tmp_path):
    """A switch whose acl holds 8 entries refuses a policy that needs more; what it held stays, the
    default entry included."""
    small = Features(acl_size=8)
    config, _ = compile_program(program_text(small), tmp_path)
    info = tmp_path / "p4info.txt"
    info.write_text(text_format.MessageToString(p4info(small)))
    fits = compile_sources([("a.ap", "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault allow\n"
                            "deny 10.1.0.0/16 -> db tcp 5432\n")]).program
    too_big = compile_sources([("b.ap", "service db { address 10.0.5.0/24 port 5432 tcp }\ndefault deny\n" + "".join(
        f"allow 10.{i}.0.0/16 -> db tcp {5000 + i}\n" for i in range(1, 20)))]).program
    from anyplane.backends.p4.engine import P4Error
    from anyplane.backends.p4.pipeline import Names
    from anyplane.backends.p4.client import Client

    with Bmv2() as sw:
        push(fits, sw.addr, sw.device_id, small, pipeline_config=(str(info), str(config)))

        def state():
            client = Client(sw.device_id, sw.addr, (0, 9))
            try:
                return sorted(e.SerializeToString(deterministic=True) for e in current_state(client, Names(p4info(small))))
            finally:
                client.close()
        before = state()
        with pytest.raises(P4Error) as err:  # pushed as if the table were the usual size: the switch refuses
            push(too_big, sw.addr, sw.device_id, Features())
        assert "b.ap:" in str(err.value)
        assert state() == before
        _agree_with(sw, fits, small)


def _agree_with(sw, program, features):
    sw.features = features
    _agree(sw, program, 200, seed=3)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_through_the_switch_get_the_interpreters_verdict(switch, name):
    program = load_example(name).program
    _push(switch, program, pipeline_config=switch.pipeline)
    assert _agree(switch, program, 1000, seed=7) >= 1000


@pytest.mark.parametrize("name", ["acl1_1k", "fw1_1k", "ipc1_1k"])
def test_classbench_traces_through_the_switch(switch, name):
    """The whole 1k rule set, and 1,000 packets of its ClassBench trace: the switch forwards exactly those
    the set's first matching rule (and the interpreter) allows."""
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")
    program = compile_sources([(f"{name}.ap", classbench.to_policy(rules, name))]).program
    _push(switch, program, pipeline_config=switch.pipeline)
    projected = project_l4(program)
    trace = classbench.read_trace(classbench.DATA / f"{name}.trace")
    flows, frames, oracle = [], [], []
    for src, dst, sport, dport, proto in random.Random(2).sample(trace, 1000):
        if proto in (6, 17):
            f = Flow(4, src, dst, proto, sport, dport)
        elif proto == 1:
            f = Flow(4, src, dst, proto, icmp_type=8, icmp_code=0)
        else:
            f = Flow(4, src, dst, proto)
        first = classbench.first_match(rules, src, dst, sport, dport, proto)
        verdict = "deny" if first is None or classbench.is_deny(first) else "allow"
        assert evaluate(projected, f).verdict == verdict, f.text
        flows.append(f)
        oracle.append(verdict)
        frames.append(packet.frame(f, payload=len(frames).to_bytes(4, "big")))
    got = _forwarded(switch, frames, [want == "allow" for want in oracle])
    bad = [(f.text, want) for f, want, fwd in zip(flows, oracle, got) if fwd != (want == "allow")]
    assert not bad, (len(bad), bad[:10])
    assert {"allow", "deny"} <= set(oracle)


@pytest.mark.timing
def test_a_meter_forwards_the_burst_and_the_rate(switch):
    program = compile_sources([("m.ap", "external a { address 10.1.0.0/16 }\nexternal b { address 10.2.0.0/16 }\n"
                               "default deny\nallow a -> b udp 5000 rate 50/s burst 20\n")]).program
    _push(switch, program, pipeline_config=switch.pipeline)
    time.sleep(1.0)  # a full bucket
    flow = Flow(4, 0x0A010101, 0x0A020202, 17, 1234, 5000)
    frames = [packet.frame(flow, payload=k.to_bytes(4, "big")) for k in range(400)]
    got = switch.send(frames, gap=0.01)  # 100 packets/s for 4 s: twice the rate
    expected = 20 + 50 * switch.sending_s
    assert abs(sum(got) - expected) <= expected / 10, (sum(got), expected)


@pytest.mark.parametrize("stateless", [False, True])
def test_established_tcp_segments_through_the_switch(switch, stateless):
    """Under a stateful policy the switch lets TCP segments with ACK or RST set through when they are shaped
    like replies of an allowed connection (it keeps no connections); UDP replies and reply-shaped SYNs
    are judged by the rules. Stateless: every packet by the rules."""
    from ...backends.p4.test_p4 import REPLIES, reply_probes, switch_expected

    program = compile_sources([("r.ap", REPLIES + ("stateless\n" if stateless else ""))]).program
    _push(switch, program, pipeline_config=switch.pipeline)
    probes = reply_probes()
    frames = [packet.frame(f, tcp=flags, payload=n.to_bytes(4, "big")) for n, (f, flags) in enumerate(probes)]
    got = ["allow" if fwd else "deny" for fwd in switch.send(frames, gap=0.001)]
    assert got == [switch_expected(program, f, flags) for f, flags in probes]
    assert got.count("allow") == (2 if stateless else 6)


def test_bmv2_follows_pods_with_endpoint_entries_alone(switch, tmp_path):
    """A bound policy on the real switch, then one of its pods replaced by a pod at another address: the
    push writes only the endpoint tables (two inserts, two deletes), and the frames BMv2 forwards are the
    interpreter's for the new binding, the new pod's connections included."""
    from ...compiler.test_workloads import _address, a_pod_replaced

    before, after, pods, moved = a_pod_replaced(tmp_path)
    _push(switch, before, pipeline_config=switch.pipeline)
    _agree(switch, before, 300, seed=3)
    result = _push(switch, after)
    assert (result["inserted"], result["deleted"], result["modified"]) == (2, 2, 0), result
    _agree(switch, after, 600, seed=4)
    projected = project_l4(after)
    flows = [Flow(4, _address("10.2.9.9"), _address(p["status"]["podIP"]), proto, 40000, port)
             for p in pods if p is not moved for proto, port in ((6, 80), (6, 5432), (17, 53))]
    flows += [Flow(4, f.dst, f.src, f.proto, 40000, f.dport) for f in flows]
    verdicts = [evaluate(projected, f).verdict == "allow" for f in flows]
    assert any(verdicts) and not all(verdicts)  # the new pod's place in the policy shows both ways
    got = _forwarded(switch, [packet.frame(f, payload=k.to_bytes(4, "big")) for k, f in enumerate(flows)], verdicts)
    assert got == verdicts


def test_a_session_follows_pods_and_reads_again_once_another_controller_was_primary(switch, tmp_path):
    """`push --watch`'s session on the real switch: after the first push, a pod replaced is two inserts
    and two deletes of endpoint entries, with no read. When another controller becomes primary, BMv2 says
    so on the session's stream: its memory is dropped, a push while the other is primary is refused, and
    once it has gone the session connects, reads the switch again and restores the policy."""
    from anyplane.backends.p4.client import Client
    from anyplane.backends.p4.engine import P4Error
    from anyplane.backends.p4.push import Session

    from ...compiler.test_workloads import a_pod_replaced

    before, after, _, _ = a_pod_replaced(tmp_path)
    session = Session(switch.addr, switch.device_id)
    try:
        _push(switch, before, pipeline_config=switch.pipeline, session=session)
        result = _push(switch, after, session=session)
        assert result["endpoints_only"] and (result["inserted"], result["deleted"], result["modified"]) == (2, 2, 0)
        _agree(switch, after, 300, seed=4)
        other = Client(switch.device_id, switch.addr, election_id=(0, 5))
        try:
            deadline = time.monotonic() + 30
            while session.ready():
                assert time.monotonic() < deadline, "the session did not hear that another controller is primary"
                time.sleep(0.05)
            with pytest.raises(P4Error, match="primary"):
                _push(switch, before, session=session)
        finally:
            other.close()
        deadline = time.monotonic() + 30
        while True:  # the switch lets the session be primary again once the other stream has closed
            try:
                again = _push(switch, before, session=session)
                break
            except P4Error:
                assert time.monotonic() < deadline, "the session could not become primary again"
                time.sleep(0.1)
        assert not again["endpoints_only"] and (again["inserted"], again["deleted"]) == (2, 2), again
        _agree(switch, before, 300, seed=3)
    finally:
        session.close()
