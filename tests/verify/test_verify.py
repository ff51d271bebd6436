"""Held-in tests for each finding kind, golden findings for the examples, and the commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from anyplane.ir.interp import evaluate
from anyplane.verify.diff import diff
from anyplane.verify.run import verify

from ..conftest import EXAMPLES, ROOT, compile_text, load_example

BASE = """
service web { address 10.0.1.0/24  port 80 http  version v1 address 10.0.1.0/25  version v2 address 10.0.1.128/25 }
service db  { address 10.0.2.0/24  port 5432 tcp }
external corp { address 10.0.0.0/8 }
external internet { address 0.0.0.0/0 }
default deny
"""
# BASE ends on line 6: the rules of each case start on line 7.


def findings(text: str, kind: str | None = None):
    program = compile_text(BASE + text).program
    out = verify(program).findings
    return [f for f in out if kind is None or f.kind == kind]


def lines(fs):
    return sorted(f.span.line for f in fs)


def test_dead_rule_with_the_rules_that_cover_it():
    fs = findings("allow corp -> db tcp 5000-6000 priority 5\ndeny corp -> db tcp 5432\n", "dead")
    assert lines(fs) == [8]
    assert [s.line for s in fs[0].related] == [7] and fs[0].severity == "error"


def test_a_rule_by_prefix_taken_by_a_rule_by_owner_is_redundant_not_dead():
    """`a.*` (a prefix) and `a` (its owner) hold the same addresses: a rule over the prefix that a rule
    over the owner outranks is taken alike, though the rate-limited rule below them meets the prefix.
    Walked as boxes, the prefix's flows less the owner's left flows of other owners at a's addresses,
    which cannot exist; those are cut away before a rule that decides otherwise is met."""
    program = compile_text("service a { address fd00::/64 port 80 http }\ndefault allow\n"
                           "allow fd00::/112 -> a.* rate 10/s priority 1\nallow a -> any priority 2\n"
                           "allow a.* -> a udp 79-82\n").program
    found = {(f.span.line, f.kind) for f in verify(program).findings if f.kind in ("dead", "redundant")}
    assert (5, "redundant") in found and (5, "dead") not in found, found
    assert (3, "dead") in found  # the rate-limited allow: taken by the plain allow, which decides otherwise


def test_dead_when_several_rules_together_cover_it():
    fs = findings("allow corp -> db tcp 0-5432 priority 2\ndeny corp -> db tcp 5433-65535 priority 2\n"
                  "deny corp -> db tcp 5000-6000 priority 1\n", "dead")
    assert lines(fs) == [9]
    assert sorted(s.line for s in fs[0].related) == [7, 8]


def test_a_rule_that_decides_only_fragments_is_said_so_not_dead():
    """Two rules cover every TCP port; `tcp` without ports still decides the non-first fragments, which
    carry no ports (as the interpreter, the kernel and the switch see them). An allow there is live only
    for them; a deny there repeats the default for them, so it is redundant."""
    rules = "deny corp -> db tcp 0-5432 priority 2\ndeny corp -> db tcp 5433-65535 priority 2\n"
    found = findings(rules + "allow corp -> db tcp priority 1\n")
    assert [(f.kind, f.span.line) for f in found if f.kind != "conflict"] == [("fragments-only", 9)], found
    (f,) = [f for f in found if f.kind == "fragments-only"]
    assert f.severity == "warning" and sorted(s.line for s in f.related) == [7, 8], f
    assert f.witness.fragment and f.witness.proto == 6
    assert [(f.kind, f.span.line) for f in findings(rules + "deny corp -> db tcp priority 1\n")
            if f.kind != "conflict"] == [("redundant", 7), ("redundant", 8), ("redundant", 9)]


def test_a_deny_that_only_repeats_the_default_is_redundant():
    fs = findings("deny internet -> db\n", "redundant")
    assert lines(fs) == [7] and "repeats the default" in fs[0].message and fs[0].severity == "warning"


def test_an_allow_covered_by_a_later_allow_is_redundant():
    fs = findings("allow corp -> db tcp 5432\nallow 10.0.0.0/8 -> db tcp\n", "redundant")
    assert lines(fs) == [7]
    assert [s.line for s in fs[0].related] == [8]


def test_a_rule_that_matters_is_not_redundant():
    assert findings("allow corp -> db tcp 5432\nallow 10.0.0.0/8 -> db udp\n", "redundant") == []


def test_a_rate_limited_allow_is_not_redundant_with_a_plain_allow():
    assert findings("allow corp -> db tcp 5432 rate 10/s\nallow corp -> db tcp\n", "redundant") == []


def test_overlapping_allow_and_deny_settled_by_priority_is_a_note_with_a_witness():
    (f,) = findings("allow corp -> web http * /*\ndeny any -> web http * /admin/* priority 5\n", "conflict")
    assert f.span.line == 7 and f.severity == "info" and [s.line for s in f.related] == [8]
    program = compile_text(BASE + "allow corp -> web http * /*\ndeny any -> web http * /admin/* priority 5\n").program
    assert evaluate(program, f.witness).rule.endswith(":8")


def test_same_priority_allows_with_different_rates_are_an_error():
    (f,) = findings("allow corp -> db tcp 5432 rate 10/s\nallow 10.0.0.0/16 -> db tcp rate 50/s\n", "rate-conflict")
    assert f.severity == "error" and f.witness is not None


def test_failed_assertions_say_why():
    fs = findings("deny corp -> db\nassert reachable corp -> db tcp 5432\nassert not reachable corp -> web\n"
                  "allow corp -> web tcp 80\n", "assertion-failed")
    assert lines(fs) == [8, 9]
    blocked = next(f for f in fs if f.span.line == 8)
    assert "blocked by" in blocked.message and [s.line for s in blocked.related] == [7]
    witnessed = next(f for f in fs if f.span.line == 9)
    program = compile_text(BASE + "deny corp -> db\nassert reachable corp -> db tcp 5432\n"
                                  "assert not reachable corp -> web\nallow corp -> web tcp 80\n").program
    assert evaluate(program, witnessed.witness).verdict == "allow"


def test_a_reachable_assert_blocked_by_the_default():
    (f,) = findings("assert reachable internet -> web\n", "assertion-failed")
    assert "the default" in f.message


def test_routes_never_taken_and_unused_versions():
    fs = findings("allow corp -> web http * /*\n"
                  "route web http /* { to v1 100%, v2 0% }\n"
                  "route web http /a/* { to v1 }\n"
                  "route web http /b/* header \"x\" = \"1\" { to v1 }\n"
                  "route web http /b/* header \"x\" = \"1\" header \"y\" present { to v1 }\n")
    unused = [f for f in fs if f.kind == "unused-version"]
    assert [f.message.split("'")[1] for f in unused] == ["v2"]
    assert not [f for f in fs if f.kind == "route-unreachable"]
    fs = findings("allow corp -> web http GET /*\nroute web http POST /x { timeout 1s }\n", "route-unreachable")
    assert lines(fs) == [8]


def test_fail_on_chooses_which_kinds_are_errors():
    program = compile_text(BASE + "deny internet -> db\n").program
    assert verify(program).ok
    report = verify(program, frozenset({"redundant"}))
    assert not report.ok and [f.severity for f in report.findings if f.kind == "redundant"] == ["error"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_findings_of_every_example_match_golden(name, golden):
    report = verify(load_example(name).program)
    text = "".join(f"{f.severity} {f.kind} {f.span} {f.message}\n"
                   + (f"    witness: {f.witness.text}\n" if f.witness else "") for f in report.findings)
    golden(f"{name}/findings.txt", text)


def test_bookinfo_has_exactly_its_real_findings():
    report = verify(load_example("bookinfo").program)
    assert report.ok
    assert {(f.kind, f.span.line) for f in report.findings if f.severity != "info"} == {
        ("redundant", 38),  # deny internet -> mysql: the default already denies
        ("redundant", 39),  # deny any -> reviews DELETE: no rule allows DELETE to reviews
    }


def run(*args):
    return subprocess.run([sys.executable, "-m", "anyplane.compiler", *args], capture_output=True, text=True, cwd=ROOT)


def test_verify_command_exit_codes_and_json():
    proc = run("verify", "examples/bookinfo.ap", "--format", "json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    kinds = {(f["kind"], f["location"]) for f in data["findings"]}
    assert ("redundant", "examples/bookinfo.ap:38:1") in kinds
    conflict = next(f for f in data["findings"] if f["kind"] == "conflict")
    assert conflict["witness"]["flow"] and conflict["related"]
    failing = run("verify", "examples/bookinfo.ap", "--fail-on", "redundant")
    assert failing.returncode == 1 and "FAILED" in failing.stdout
    assert run("verify", "examples/bookinfo.ap", "--fail-on", "nonsense").returncode == 2


def test_verify_sarif_points_at_policy_lines():
    data = json.loads(run("verify", "examples/bookinfo.ap", "--format", "sarif").stdout)
    assert data["version"] == "2.1.0"
    results = data["runs"][0]["results"]
    region = results[0]["locations"][0]["physicalLocation"]
    assert region["artifactLocation"]["uri"] == "examples/bookinfo.ap" and region["region"]["startLine"] > 0
    assert {r["level"] for r in results} <= {"error", "warning", "note"}


def test_query_witness_round_trips_through_explain():
    data = json.loads(run("query", "examples/bookinfo.ap", "internet -> productpage", "--format", "json").stdout)
    assert data["reachable"] is True and data["rule"] == "examples/bookinfo.ap:36"
    again = json.loads(run("explain", "examples/bookinfo.ap", "--flow", data["witness"]["flow"], "--format", "json").stdout)
    assert again["verdict"] == "allow" and again["rule"] == data["rule"]


def test_query_not_reachable_lists_blockers():
    data = json.loads(run("query", "examples/bookinfo.ap", "internet -> mysql tcp 3306", "--format", "json").stdout)
    assert data == {"reachable": False, "witness": None, "rule": None, "blocked_by": ["examples/bookinfo.ap:38"],
                    "as_reply": {"reachable": False, "witness": None, "connection": None, "rule": None}}


def test_query_what_if_edits_without_touching_files():
    before = (ROOT / "examples/bookinfo.ap").read_bytes()
    data = json.loads(run("query", "examples/bookinfo.ap", "internet -> mysql tcp 3306", "--without",
                          "examples/bookinfo.ap:38", "--with", "allow internet -> mysql tcp 3306",
                          "--format", "json").stdout)
    assert data["reachable"] is True and data["rule"] == "<with:1>:1"
    assert (ROOT / "examples/bookinfo.ap").read_bytes() == before
    bad = run("query", "examples/bookinfo.ap", "internet -> mysql", "--without", "examples/bookinfo.ap:1")
    assert bad.returncode == 2 and "--without examples/bookinfo.ap:1: no rule starts there" in bad.stderr
    bad = run("query", "examples/bookinfo.ap", "internet -> nowhere")
    assert bad.returncode == 1 and bad.stderr.startswith("<query>:1:13: error: unknown endpoint")


def test_diff_reports_classes_with_witnesses(tmp_path):
    new = tmp_path / "new.ap"
    text = (ROOT / "examples/bookinfo.ap").read_text()
    edits = ((r"(allow ratings +-> mysql +tcp 3306)", r"\1-3307"), (r"rate 100/s burst 20", "rate 50/s burst 20"),
             (r"allow office +-> 10\.0\.0\.0/16 icmp", ""))
    for old, replacement in edits:
        text, n = re.subn(old, replacement, text)
        assert n == 1, old
    new.write_text(text)
    proc = run("diff", "examples/bookinfo.ap", str(new), "--format", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["relation"] == "incomparable"
    assert {c["new_rule"] for c in data["newly_allowed"]} == {f"{new}:32"}
    assert all(c["new_rule"] is None for c in data["newly_denied"])
    assert [c["what"] for c in data["changed"]] == ["rate"]
    assert run("diff", "examples/bookinfo.ap", "examples/bookinfo.ap").returncode == 0


def test_a_diff_class_says_which_flows_changed_not_which_rule_decides(tmp_path):
    """The frontend's egress to the backend on its named port is taken away: the class is that pair and
    that port (NCA prints the same), not the backend's isolating deny that now decides it; its witness
    runs between two pods."""
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
        for name in ("namespaces.yaml", "pods.yaml", "policies.yaml"):
            (tmp_path / side / name).write_text((ROOT / "examples" / "kubernetes" / name).read_text())
    policies = tmp_path / "new" / "policies.yaml"
    text, n = re.subn(r"  - to: \[\{namespaceSelector: \{matchLabels: \{kubernetes.io/metadata.name: backend\}\}\}\]\n"
                      r"    ports: \[\{port: http\}\]\n", "", policies.read_text())
    assert n == 1
    policies.write_text(text)
    proc = run("diff", str(tmp_path / "old"), str(tmp_path / "new"), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    (closed,) = data["newly_denied"]
    assert not data["newly_allowed"] and closed["class"]["exact"]
    assert closed["class"]["text"] == "frontend_app-web -> backend_api tcp port 9090", closed["class"]
    assert closed["witness"]["src"] != closed["witness"]["dst"]
    shown = run("diff", str(tmp_path / "old"), str(tmp_path / "new")).stdout
    assert "  frontend_app-web -> backend_api tcp port 9090\n" in shown, shown


def test_diff_of_shuffled_policy_is_equivalent():
    program = load_example("edge-firewall").program
    report = diff(program, program)
    assert report.relation == "equivalent" and not report.changed
