"""Connections as the language defines them: the reference tracker, explain, query and diff.

The kernel engine is compared with the tracker in tests/backends/ebpf/test_ebpf.py (sequences
of packets through BPF_PROG_TEST_RUN) and tests/backends/ebpf/test_conntrack.py (real traffic).
"""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anyplane.compiler.pipeline import compile_sources
from anyplane.compiler.whatif import query_pattern
from anyplane.ir.conn import Packet, Tracker, as_reply, key, opens, reverse, reverse_matches
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate, match_holds, owner
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError
from anyplane.verify.reach import reply_reachability

from ..brute import universe
from ..conftest import examples, run
from ..strategies import patterns, policies

POLICY = """
external internet { address 0.0.0.0/0 }
service web { address 10.1.2.0/24 port 443 tcp }
default deny
allow web -> internet tcp 443
allow web -> internet udp 53
allow web -> internet icmp type echo-request
"""
WEB, DNS = 0x0A010205, 0x08080808


def program(text: str = POLICY, name: str = "p.ap"):
    return compile_sources([(name, text)]).program


def tcp(src, dst, sport, dport):
    return Flow(4, src, dst, 6, sport, dport)


def test_replies_of_allowed_connections_pass_and_nothing_else():
    t = Tracker(program())
    out = tcp(WEB, DNS, 50000, 443)
    assert t.judge(Packet(reverse(out), "SA"), 0).verdict == "deny"  # nothing opened yet
    assert t.judge(Packet(out, "S"), 0).why == "rule"
    assert t.judge(Packet(reverse(out), "SA"), 0.1).why == "reply"
    assert t.judge(Packet(tcp(DNS, WEB, 443, 50001), "A"), 0.1).verdict == "deny"  # another port: no connection
    assert t.judge(Packet(tcp(DNS, WEB, 50000, 443), "S"), 0.1).verdict == "deny"  # the other way round
    echo = Flow(4, WEB, DNS, 1, icmp_type=8, icmp_code=0)
    assert t.judge(Packet(echo), 1).verdict == "allow"
    assert t.judge(Packet(reverse(echo)), 1.1).why == "reply"


def test_related_errors_pass_only_for_a_known_connection():
    t = Tracker(program())
    out = Flow(4, WEB, DNS, 17, 40000, 53)
    error = Flow(4, DNS, WEB, 1, icmp_type=3, icmp_code=4)
    assert t.judge(Packet(error, quoted=out), 0).verdict == "deny"
    t.judge(Packet(out), 0)
    assert t.judge(Packet(error, quoted=out), 0.1).why == "related"
    assert t.judge(Packet(error, quoted=replace(out, sport=40001)), 0.1).verdict == "deny"


def test_timeouts_fin_rst_and_a_full_table():
    p = program(POLICY + "connections { udp 2s tcp-closing 1s max 1024 }\n")
    t = Tracker(p)
    dns = Flow(4, WEB, DNS, 17, 40000, 53)
    t.judge(Packet(dns), 0)
    assert t.judge(Packet(reverse(dns)), 1.9).why == "reply"
    assert t.judge(Packet(reverse(dns)), 4.0).verdict == "deny"  # idle 2.1 s
    out = tcp(WEB, DNS, 50000, 443)
    t.judge(Packet(out, "S"), 10)
    t.judge(Packet(reverse(out), "SA"), 10)
    t.judge(Packet(out, "FA"), 11)
    assert t.judge(Packet(reverse(out), "A"), 11.5).why == "reply"
    assert t.judge(Packet(reverse(out), "A"), 13).verdict == "deny"  # closing for more than 1 s
    t.judge(Packet(out, "S"), 20)
    t.judge(Packet(reverse(out), "R"), 20)
    assert t.judge(Packet(reverse(out), "A"), 20).verdict == "deny"  # reset
    for port in range(1024 + 1):
        t.judge(Packet(Flow(4, WEB, DNS, 17, 10000 + port, 53)), 30)
    assert len(t.table) == 1024
    assert t.judge(Packet(reverse(Flow(4, WEB, DNS, 17, 10000, 53))), 30).verdict == "deny"  # the oldest went
    assert t.judge(Packet(reverse(Flow(4, WEB, DNS, 17, 11024, 53))), 30).why == "reply"


def test_a_new_policy_cuts_the_connections_it_denies():
    t = Tracker(program())
    web, dns = tcp(WEB, DNS, 50000, 443), Flow(4, WEB, DNS, 17, 40000, 53)
    t.judge(Packet(web, "S"), 0)
    t.judge(Packet(dns), 0)
    t.program = program(POLICY.replace("allow web -> internet tcp 443\n", ""))
    cut = t.judge(Packet(reverse(web), "A"), 1)
    assert (cut.verdict, cut.why) == ("deny", "cut")
    assert t.judge(Packet(reverse(web), "A"), 1).why == "rule"  # forgotten: judged by the rules
    assert t.judge(Packet(reverse(dns)), 1).why == "reply"


def test_stateless_judges_every_packet_alone():
    t = Tracker(program(POLICY + "stateless\n"))
    out = tcp(WEB, DNS, 50000, 443)
    assert t.judge(Packet(out, "S"), 0).verdict == "allow"
    assert t.judge(Packet(reverse(out), "SA"), 0).verdict == "deny"
    assert as_reply(t.program, reverse(out)) is None


def test_explain_a_reply_names_the_rule_that_allowed_its_connection(tmp_path):
    path = tmp_path / "p.ap"
    path.write_text(POLICY)
    done = run("explain", str(path), "--flow", "8.8.8.8 -> 10.1.2.5 tcp 50000 sport 443", "--format", "json")
    x = json.loads(done.stdout)
    assert x["verdict"] == "allow" and x["rule"] == f"{path}:5" and x["l4_verdict"] == "allow"
    assert x["reply"] == {"connection": "10.1.2.5 -> 8.8.8.8 tcp 443 sport 50000"}
    assert x["as_new"]["verdict"] == "deny" and x["as_new"]["default"] is True
    text = run("explain", str(path), "--flow", "8.8.8.8 -> 10.1.2.5 tcp 50000 sport 443").stdout
    assert "as reply  of the connection 10.1.2.5 -> 8.8.8.8 tcp 443 sport 50000" in text
    path.write_text(POLICY + "stateless\n")
    x = json.loads(run("explain", str(path), "--flow", "8.8.8.8 -> 10.1.2.5 tcp 50000 sport 443",
                       "--format", "json").stdout)
    assert x["verdict"] == "deny" and x["reply"] is None


def test_query_answers_for_replies_too(tmp_path):
    path = tmp_path / "p.ap"
    path.write_text(POLICY)
    x = json.loads(run("query", str(path), "internet -> web udp sport 53", "--format", "json").stdout)
    assert x["reachable"] is False and x["as_reply"]["reachable"] is True
    assert x["as_reply"]["rule"] == f"{path}:6"
    reply = x["as_reply"]["witness"]
    assert reply["proto"] == 17 and reply["sport"] == 53 and reply["dst"].startswith("10.1.2.")
    assert x["as_reply"]["connection"]["dport"] == 53 and x["as_reply"]["connection"]["src_owner"] == "web"
    x = json.loads(run("query", str(path), "internet -> web tcp sport 22", "--format", "json").stdout)
    assert x["as_reply"]["reachable"] is False
    text = run("query", str(path), "internet -> web icmp type echo-reply").stdout
    assert "as replies: yes" in text and "icmp type 8" in text


def test_diff_reports_connection_settings(tmp_path):
    old, new = tmp_path / "old.ap", tmp_path / "new.ap"
    old.write_text(POLICY)
    new.write_text(POLICY + "stateless\n")
    done = run("diff", str(old), str(new), "--format", "json")
    x = json.loads(done.stdout)
    assert done.returncode == 1 and x["relation"] == "less-permissive" and x["identical"] is False
    assert x["connections"]["new"] == "connections stateless"
    new.write_text(POLICY + "connections { udp 30s }\n")
    x = json.loads(run("diff", str(old), str(new), "--format", "json").stdout)
    assert x["relation"] == "equivalent" and "udp 30s" in x["connections"]["new"]
    assert run("diff", str(old), str(old)).returncode == 0


SETTINGS = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.data())
def test_replies_match_brute_force(data):
    """Over every flow class: a packet of the pattern passes as a reply exactly when the reverse query
    finds an allowed opening, and every reply the reverse query claims passes in the tracker."""
    text = data.draw(policies(max_rules=5, small=True))
    try:
        c = compile_sources([("p.ap", text)])
        pattern = query_pattern(c, data.draw(patterns(text)))
    except DiagnosticError:
        assume(False)
    p = c.program
    openings = reverse_matches(pattern)
    ids = lambda f: (owner(p, f.family, f.src), owner(p, f.family, f.dst))  # noqa: E731
    flows = universe([p], tuple(pattern) + openings)
    below = project_l4(p)  # openings are judged as the engines that keep connections judge them
    allowed = [f for f in flows if any(match_holds(m, f, *ids(f)) for m in openings)
               and evaluate(below, f).verdict == "allow" and opens(f)]
    for f in allowed:  # every allowed opening answers some packet of the pattern
        assert as_reply(p, reverse(f)) is not None
    for f in flows:  # every packet of the pattern that passes as a reply answers an opening found above
        if any(match_holds(m, f, *ids(f)) for m in pattern) and as_reply(p, f) is not None:
            assert any(match_holds(m, reverse(f), *ids(reverse(f))) for m in openings)
    result = reply_reachability(p, pattern)
    if result is None:
        assert not openings
        return
    assert result.reachable == bool(allowed)
    if result.reachable:
        tracker = Tracker(below)
        assert tracker.judge(Packet(result.witness, "S"), 0).verdict == "allow"
        j = tracker.judge(Packet(result.answer, "SA"), 0)
        assert j.verdict == "allow"
        if key(result.answer) != key(result.witness):  # (a host talking to itself on one port is its own reply)
            assert j.why == "reply"
