"""The language as users write it: groups, `name.*`, `except`, `assert only`, port ranges, ICMP names,
did-you-mean. Each test states the behaviour from outside: what check says, what the interpreter
decides, what verify reports (and that its witnesses hold in the interpreter)."""

from __future__ import annotations

import json

import pytest

from anyplane.compiler import api
from anyplane.compiler.flows import parse_flow
from anyplane.ir.interp import evaluate, owner
from anyplane.ir.source import DiagnosticError

from ..conftest import compile_text

MESH = """
external internet  { address 0.0.0.0/0 }
external partner-a { address 198.51.100.0/28 }
external partner-b { address 198.51.100.16/28 }
service  lb        { address 10.0.0.0/28 port 443 tcp }
service  checkout  { address 10.0.1.0/24 port 8080 http }
service  cart      { address 10.0.2.0/24 port 8080 http }
service  payments  { address 10.0.3.0/24 port 8443 http }
service  sip       { address 10.0.4.0/24 port 5060-5061 tcp }
default deny
"""


def decide(compiled, text: str) -> str:
    return evaluate(compiled.program, parse_flow(text, compiled.symbols, compiled.program)).verdict


def errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(DiagnosticError) as exc:
        compile_text(text)
    return [(d.code, d.message) for d in exc.value.diagnostics]


# -- groups ---------------------------------------------------------------------------------------
def test_a_group_stands_for_its_members_wherever_a_name_is():
    c = compile_text(MESH + "group partners { partner-a, partner-b }\nallow partners -> lb tcp 443\n"
                     "assert reachable partners -> lb tcp 443\n")
    assert decide(c, "198.51.100.5 -> lb tcp 443") == "allow"
    assert decide(c, "198.51.100.20 -> lb tcp 443") == "allow"
    assert decide(c, "203.0.113.9 -> lb tcp 443") == "deny"
    assert not [f for f in api.verify(c).findings if f.kind == "assertion-failed"]


def test_groups_nest_and_a_cycle_is_an_error_at_the_reference():
    c = compile_text(MESH + "group a { partner-a }\ngroup b { a, 10.0.2.0/24 }\nallow b -> lb tcp 443\n")
    assert decide(c, "198.51.100.5 -> lb tcp 443") == "allow"
    assert decide(c, "10.0.2.9 -> lb tcp 443") == "allow"
    got = errors(MESH + "group a { b }\ngroup b { a }\nallow a -> lb tcp 443\n")
    assert any(code == "group-cycle" and "a -> b -> a" in msg for code, msg in got)


def test_a_group_name_cannot_repeat_a_declaration():
    got = errors(MESH + "group lb { partner-a }\n")
    assert ("duplicate-name", "'lb' is declared twice") in got


# -- ownership made explicit: name.* --------------------------------------------------------------
def test_a_name_excludes_nested_declarations_and_name_star_includes_them():
    c = compile_text(MESH + "allow internet -> lb tcp 443\n")
    assert owner(c.program, 4, 0xC6336405) == "partner-a"
    assert decide(c, "198.51.100.5 -> lb tcp 443") == "deny"  # partner-a is not "internet"
    c = compile_text(MESH + "allow internet.* -> lb tcp 443\n")
    assert decide(c, "198.51.100.5 -> lb tcp 443") == "allow"  # everything inside internet's prefixes
    assert decide(c, "203.0.113.9 -> lb tcp 443") == "allow"


# -- except ---------------------------------------------------------------------------------------
def test_except_removes_names_by_owner_and_addresses_by_prefix():
    c = compile_text(MESH + "allow internet.* except partner-b, 203.0.113.0/24 -> lb tcp 443\n")
    assert decide(c, "198.51.100.5 -> lb tcp 443") == "allow"
    assert decide(c, "198.51.100.20 -> lb tcp 443") == "deny"
    assert decide(c, "203.0.113.9 -> lb tcp 443") == "deny"
    assert decide(c, "192.0.2.1 -> lb tcp 443") == "allow"


def test_any_except_a_name_keeps_the_names_declared_inside_its_network():
    text = MESH + "service vault { address 10.0.3.128/25 port 8200 tcp }\nallow any except payments -> lb tcp 443\n"
    c = compile_text(text)
    assert decide(c, "10.0.3.5 -> lb tcp 443") == "deny"      # payments
    assert decide(c, "10.0.3.200 -> lb tcp 443") == "allow"   # vault, inside payments' /24
    assert decide(c, "10.0.2.5 -> lb tcp 443") == "allow"


def test_an_except_that_leaves_nothing_is_an_error():
    got = errors(MESH + "allow partner-a except partner-a -> lb tcp 443\n")
    assert [code for code, _ in got] == ["empty-set"]
    got = errors(MESH + "allow 10.0.0.0/8 except any -> lb tcp 443\n")
    assert [code for code, _ in got] == ["empty-set"]


# -- assert only ----------------------------------------------------------------------------------
PCI = MESH + """
allow checkout -> payments http POST /charge
allow cart     -> checkout http POST /checkout
assert only checkout -> payments
"""


def test_assert_only_holds_when_no_other_source_reaches_the_destination():
    report = api.verify(compile_text(PCI))
    assert not [f for f in report.findings if f.kind == "assertion-failed"]


def test_assert_only_fails_with_a_witness_from_another_source_that_the_interpreter_confirms():
    c = compile_text(PCI + "allow cart -> payments tcp 8443\n")
    failed = [f for f in api.verify(c).findings if f.kind == "assertion-failed"]
    assert len(failed) == 1
    f = failed[0]
    assert "only checkout -> payments" in f.message and "another source" in f.message
    w = f.witness
    decision = evaluate(c.program, w)
    assert decision.verdict == "allow"
    assert decision.src_id == "cart" and decision.dst_id == "payments"


def test_assert_only_keeps_up_when_a_service_is_added():
    # Written once, the intent covers services that do not exist yet.
    c = compile_text(PCI + "service fraud { address 10.0.5.0/24 port 80 http }\n"
                     "allow fraud -> payments http POST /charge\n")
    failed = [f for f in api.verify(c).findings if f.kind == "assertion-failed"]
    assert len(failed) == 1 and evaluate(c.program, failed[0].witness).src_id == "fraud"


def test_assert_only_with_except_counts_the_excepted_sources_as_others():
    text = PCI.replace("assert only checkout -> payments", "assert only 10.0.0.0/16 except cart -> payments")
    c = compile_text(text + "allow cart -> payments tcp 8443\n")
    failed = [f for f in api.verify(c).findings if f.kind == "assertion-failed"]
    assert len(failed) == 1 and evaluate(c.program, failed[0].witness).src_id == "cart"


def test_assert_only_any_is_an_error():
    got = errors(MESH + "assert only any -> payments\n")
    assert [code for code, _ in got] == ["empty-set"]


# -- ports and ICMP -------------------------------------------------------------------------------
def test_a_service_declares_a_port_range_and_each_port_is_a_listener():
    c = compile_text(MESH + "allow lb -> sip tcp 5060-5061\n")
    assert [p.number for p in c.program.identity("sip").ports] == [5060, 5061]
    assert decide(c, "lb -> sip tcp 5061") == "allow"
    got = errors(MESH.replace("5060-5061", "5061-5060"))
    assert [code for code, _ in got] == ["empty-range"]
    got = errors(MESH.replace("5060-5061", "5000-6000"))
    assert got[0][0] == "bad-port" and "at most 64 ports" in got[0][1]


def test_icmp_names_and_families():
    got = errors(MESH + "allow lb -> cart icmp type echo-requets\n")
    assert got == [("bad-number", "unknown icmp type 'echo-requets'; did you mean 'echo-request'?")]
    got = errors(MESH + "allow lb -> cart icmp type packet-too-big\n")
    assert any("icmp6 only" in msg for _, msg in got)
    got = errors(MESH + "allow lb -> cart icmp6 type 128\n")
    assert [code for code, _ in got] == ["family-mismatch"]


# -- names ----------------------------------------------------------------------------------------
def test_an_unknown_name_gets_a_did_you_mean():
    got = errors(MESH + "allow chekout -> payments tcp 8443\n")
    assert got == [("unknown-name", "unknown endpoint 'chekout'; did you mean 'checkout'?")]
    got = errors(MESH + "allow checkout -> payments.v1 tcp 8443\n")
    assert got[0][0] == "unknown-version"


# -- rules no engine can enforce are refused at check ----------------------------------------------
def test_http_conditions_toward_a_port_without_an_http_listener_fail_at_check_with_the_fix():
    text = MESH + "allow checkout -> payments tcp 8444 http POST /charge\n"
    got = errors(text)
    assert got[0][0] == "http-unenforceable"
    assert "'payments' has no port 8444" in got[0][1] and "declare 'port 8444 http' in service payments" in got[0][1]
    got = errors(MESH + "allow checkout -> sip tcp 5060 http POST /x\n")
    assert "declares port 5060 as tcp" in got[0][1]
    got = errors(MESH + "allow checkout -> 10.0.3.0/24 tcp 8443 http POST /charge\n")
    assert "destination is addresses" in got[0][1]
    # With the port declared http, the same rule checks, verifies and compiles for every engine.
    fixed = compile_text(MESH.replace("port 8443 http", "port 8443 http port 8444 http")
                         + "allow checkout -> payments tcp 8444 http POST /charge\n")
    built = api.compile_paths(fixed)
    assert built.proof is not None and built.proof.proved


def test_check_on_the_command_line_reports_the_unenforceable_rule_at_its_line(tmp_path):
    from ..compiler.test_cli import run

    f = tmp_path / "p.ap"
    f.write_text(MESH + "allow checkout -> payments tcp 8444 http POST /charge\n")
    proc = run("check", str(f))
    assert proc.returncode == 1
    line = MESH.count("\n") + 1
    assert f"{f}:{line}:1: error: no engine can enforce this rule's HTTP conditions" in proc.stderr


# -- ownership is visible ---------------------------------------------------------------------------
def test_verify_notes_a_name_that_loses_addresses_to_a_declaration_inside_it():
    c = compile_text(MESH + "allow internet -> lb tcp 443\nallow lb -> checkout http GET /\n")
    notes = [f for f in api.verify(c).findings if f.kind == "ownership"]
    assert len(notes) == 1
    assert "'internet'" in notes[0].message and "partner-a (198.51.100.0/28)" in notes[0].message
    assert "internet.*" in notes[0].message
    # Services carved out of an external network are expected, and not reported.
    assert "checkout" not in notes[0].message
    # Written with name.*, nothing is lost.
    c = compile_text(MESH + "allow internet.* -> lb tcp 443\n")
    assert not [f for f in api.verify(c).findings if f.kind == "ownership"]


def test_explain_says_which_wider_declaration_an_address_sits_inside():
    c = compile_text(MESH + "allow internet -> lb tcp 443\n")
    x = api.explain(c, "198.51.100.5 -> lb tcp 443")
    assert x["src"]["identity"] == "partner-a"
    assert x["src"]["inside"] == [{"identity": "internet", "prefix": "0.0.0.0/0"}]
    assert x["dst"]["inside"] == []


def test_witnesses_carry_their_owners_names():
    c = compile_text(PCI + "allow cart -> payments tcp 8443\n")
    report = api.verify(c)
    f = next(f for f in report.findings if f.kind == "assertion-failed")
    data = f.to_json()["witness"]
    assert (data["src_owner"], data["dst_owner"]) == ("cart", "payments")
    assert "(cart) -> " in f.message and "(payments)" in f.message
    result, _ = api.query(c, "cart -> payments tcp 8443")
    assert result.to_json()["witness"]["src_owner"] == "cart"


# -- suppression --------------------------------------------------------------------------------------
SUPPRESSED = MESH + """
allow checkout -> payments http POST /charge
deny any -> payments http DELETE /*  # anyplane: allow redundant
# anyplane: allow dead
allow cart -> payments tcp 8443 priority 0
deny cart -> payments tcp 8443 priority 1
"""


def test_a_rule_accepts_a_finding_on_purpose_and_verify_reports_it_as_suppressed(tmp_path):
    from ..compiler.test_cli import run

    c = compile_text(SUPPRESSED)
    report = api.verify(c)
    kinds = {(f.kind, f.suppressed) for f in report.findings if f.kind in ("redundant", "dead")}
    assert ("redundant", True) in kinds and ("dead", True) in kinds
    assert report.ok  # the dead rule would fail the run; the author accepted it
    f = tmp_path / "p.ap"
    f.write_text(SUPPRESSED)
    proc = run("verify", str(f), "--format", "json")
    assert proc.returncode == 0
    found = json.loads(proc.stdout)["findings"]
    assert any(x["kind"] == "dead" and x["suppressed"] for x in found)
    sarif = json.loads(run("verify", str(f), "--format", "sarif").stdout)
    results = sarif["runs"][0]["results"]
    assert any(r["ruleId"] == "dead" and r["suppressions"][0]["kind"] == "inSource" for r in results)
    text = run("verify", str(f)).stdout
    assert "suppressed" in text and "[dead" not in text  # hidden from the text output without -v
    # Without the comment, the same policy fails.
    f.write_text(SUPPRESSED.replace("# anyplane: allow dead\n", ""))
    assert run("verify", str(f)).returncode == 1


def test_a_malformed_or_misplaced_directive_is_an_error():
    got = errors(MESH + "allow lb -> cart tcp 8080  # anyplane: allow redundnat\n")
    assert got[0][0] == "bad-directive" and "redundnat" in got[0][1]
    got = errors(MESH + "# anyplane: allow redundant\nservice x { address 10.9.0.0/24 }\n")
    assert got[0][0] == "bad-directive"


# -- compile says when a rule is dead ------------------------------------------------------------------
def test_compile_warns_about_dead_rules(tmp_path):
    from ..compiler.test_cli import run

    f = tmp_path / "p.ap"
    f.write_text(MESH + "deny cart -> payments tcp 8443 priority 1\nallow cart -> payments tcp 8443\n")
    proc = run("compile", str(f), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0
    line = MESH.count("\n") + 2
    assert f"{f}:{line}:1: warning: this rule never decides a flow" in proc.stderr
    proc = run("compile", str(f), "-o", str(tmp_path / "out"), "--format", "json")
    assert json.loads(proc.stdout)["dead_rules"] == [f"{f}:{line}:1"]
