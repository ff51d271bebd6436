"""The command line as users run it: exit codes, text and JSON output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import EXAMPLES, ROOT

BOOKINFO = "examples/bookinfo.ap"


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "anyplane.compiler", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_check_accepts_every_example():
    for target in [path for paths in EXAMPLES.values() for path in paths]:
        proc = run("check", target)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("ok:")


def test_check_json_reports_diagnostics_as_fields(tmp_path):
    bad = tmp_path / "bad.ap"
    bad.write_text("service a { address 10.0.0.0/8 }\nallow a -> nowhere tcp 80\n")
    proc = run("check", str(bad), "--format", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    (d,) = data["diagnostics"]
    assert (d["code"], d["span"]["line"], d["span"]["col"]) == ("unknown-name", 2, 12)


def test_invalid_policy_exits_1_with_file_line_col_and_caret(tmp_path):
    bad = tmp_path / "bad.ap"
    bad.write_text("service a { address 10.0.0.0/8 }\nallow a -> a tcp 70000\n")
    proc = run("check", str(bad))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{bad}:2:18: error: port 70000 is out of range 0-65535"
    assert lines[1] == "  allow a -> a tcp 70000"
    assert lines[2] == "  " + " " * 17 + "^~~~~"


@pytest.mark.parametrize("args", [("check", "no/such/file.ap"), ("check",), ("compile", BOOKINFO),
                                  ("explain", BOOKINFO), ("frobnicate",), ("check", BOOKINFO, "--format", "xml")])
def test_bad_usage_exits_2(args):
    proc = run(*args)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr


def test_compile_ir_writes_deterministic_json_and_text(tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert run("compile", BOOKINFO, "-t", "ir", "-o", str(out1)).returncode == 0
    assert run("compile", BOOKINFO, "-t", "ir", "-o", str(out2)).returncode == 0
    for name in ("ir.json", "ir.txt"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    program = json.loads((out1 / "ir.json").read_text())
    assert program["kind"] == "Program" and len(program["rules"]) == 12


def test_compile_dump_after_lower_and_no_src(tmp_path):
    proc = run("compile", BOOKINFO, "-o", str(tmp_path), "--dump-after", "lower", "--no-src")
    assert proc.returncode == 0
    assert "table acl:" in proc.stdout
    assert "@examples" not in (tmp_path / "ir.txt").read_text()


def test_explain_text_names_the_deciding_rule():
    proc = run("explain", BOOKINFO, "--flow", "internet -> productpage http GET /admin/users")
    assert proc.returncode == 0
    assert "verdict   deny" in proc.stdout
    assert "examples/bookinfo.ap:40" in proc.stdout


def test_explain_json_shape():
    proc = run("explain", BOOKINFO, "--flow", "office -> productpage http GET /admin/x header \"x-admin-token\" = \"t\"",
               "--format", "json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["verdict"] == "allow" and data["rule"] == "examples/bookinfo.ap:41"
    assert data["src"]["identity"] == "office" and data["dst"]["identity"] == "productpage"
    assert [m["rule"] for m in data["matched"]] == ["examples/bookinfo.ap:41", "examples/bookinfo.ap:40",
                                                     "examples/bookinfo.ap:33"]


def test_explain_reports_the_route_and_the_rate():
    data = json.loads(run("explain", BOOKINFO, "--flow", "reviews.v2 -> ratings http GET /ratings/7",
                          "--format", "json").stdout)
    assert data["verdict"] == "allow" and data["rate"] == {"count": 100, "per_s": 1, "burst": 20}
    assert data["limits"].startswith("max-connections 100")
    data = json.loads(run("explain", BOOKINFO, "--flow", "productpage -> reviews http GET /reviews/1",
                          "--format", "json").stdout)
    assert data["route"]["split"] == [{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}]


def test_explain_flow_that_is_not_concrete_is_an_error():
    proc = run("explain", BOOKINFO, "--flow", "any -> productpage tcp 9080")
    assert proc.returncode == 1
    assert proc.stderr.startswith("<flow>:1:1: error: a flow needs a concrete endpoint")


def test_explain_witness_text_round_trips():
    first = json.loads(run("explain", BOOKINFO, "--flow", "office -> 10.0.3.7 icmp", "--format", "json").stdout)
    again = json.loads(run("explain", BOOKINFO, "--flow", first["flow"], "--format", "json").stdout)
    assert again["flow"] == first["flow"] and again["verdict"] == first["verdict"] == "allow"


def test_fmt_check_and_rewrite(tmp_path):
    f = tmp_path / "p.ap"
    f.write_text((ROOT / BOOKINFO).read_text().replace(" -> ", "   ->  "))
    assert run("fmt", "--check", str(f)).returncode == 1
    assert run("fmt", str(f)).returncode == 0
    assert run("fmt", "--check", str(f)).returncode == 0
    assert run("check", str(f)).returncode == 0


def test_a_directory_is_one_policy():
    proc = run("check", "examples/zero-trust", "--format", "json")
    assert json.loads(proc.stdout)["summary"]["files"] == 2


def test_verify_sarif_on_a_policy_that_does_not_parse_is_sarif(tmp_path):
    bad = tmp_path / "bad.ap"
    bad.write_text("service a { address 10.0.0.0/8 }\nallow a -> -> a\n")
    proc = run("verify", str(bad), "--format", "sarif")
    assert proc.returncode == 1
    log = json.loads(proc.stdout)
    assert log["version"] == "2.1.0"
    (result,) = log["runs"][0]["results"]
    assert result["level"] == "error"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 2


@pytest.mark.parametrize("without", ["foo", f"{BOOKINFO}:-1", f"{BOOKINFO}:1", "nowhere.ap:3"])
def test_query_without_something_that_is_no_rule_is_bad_usage(without):
    proc = run("query", BOOKINFO, "internet -> productpage tcp 9080", "--without", without)
    assert proc.returncode == 2, proc.stderr
    assert "--without" in proc.stderr and "Traceback" not in proc.stderr


def test_a_flow_naming_a_header_twice_is_an_error():
    proc = run("explain", BOOKINFO, "--flow",
               'internet -> productpage http GET / header "x-a" = "1" header "x-a" = "2"')
    assert proc.returncode == 1
    assert "given twice" in proc.stderr


def test_a_byte_order_mark_is_not_part_of_the_policy(tmp_path):
    bom = tmp_path / "bom.ap"
    bom.write_bytes(b"\xef\xbb\xbf" + open(ROOT / BOOKINFO, "rb").read())
    proc = run("check", str(bom))
    assert proc.returncode == 0, proc.stderr


def test_the_same_file_named_twice_is_read_once(tmp_path):
    one = tmp_path / "one.ap"
    one.write_text(open(ROOT / BOOKINFO).read())
    proc = run("check", "one.ap", "./one.ap", str(one), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_an_empty_path_is_bad_usage(tmp_path):
    proc = run("compile", BOOKINFO, "-t", "all", "--path", "", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130(tmp_path):
    import signal
    import time

    from bench import classbench

    policy = tmp_path / "acl.ap"  # work that takes longer than the second before Ctrl-C
    policy.write_text(classbench.to_policy(classbench.read_rules(classbench.DATA / "acl1_10k.rules"), "acl"))
    proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "compile", str(policy), "-t", "all", "-o",
                             str(tmp_path / "out")], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_late_ctrl_c_keeps_the_exit_status():
    from anyplane.compiler import launch
    import signal

    launch._finished()
    try:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("proto", [0, 43, 44, 60])
def test_an_ipv6_extension_header_as_a_protocol_is_an_error(proto):
    proc = run("explain", BOOKINFO, "--flow", f"fd00:0:0:2::1 -> fd00:0:0:2::2 proto {proto}")
    assert proc.returncode == 1 and "extension header" in proc.stderr and "Traceback" not in proc.stderr


def test_diff_against_a_git_revision_and_with_several_paths_a_side(tmp_path):
    """`diff --base REV PATHS`: a pull request's change, positions in the base read REV:PATH; `--old` and
    `--new` take several paths a side."""
    import subprocess

    repo = tmp_path / "repo"
    (repo / "policy").mkdir(parents=True)
    (repo / "policy" / "a.ap").write_text("service db { address 10.0.5.0/24 port 5432 tcp }\n"
                                          "external office { address 192.0.2.0/24 }\ndefault deny\n")
    (repo / "policy" / "b.ap").write_text("allow office -> db tcp 5432\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "v1"], check=True)
    (repo / "policy" / "b.ap").write_text("allow office -> db tcp 5433\n")
    done = run("diff", "--base", "HEAD", str(repo / "policy"))
    assert done.returncode == 1, done.stderr
    assert "old: HEAD:policy/b.ap:1" in done.stdout and f"new: {repo / 'policy' / 'b.ap'}:1" in done.stdout, done.stdout
    assert "anyplane-base-" not in done.stdout
    same = run("diff", "--base", "HEAD", str(repo / "policy" / "a.ap"), str(repo / "policy" / "b.ap"),
               "--format", "json")
    assert same.returncode == 1 and "HEAD:policy/b.ap" in same.stdout
    both = run("diff", "--old", str(repo / "policy" / "a.ap"), "--old", str(repo / "policy" / "b.ap"),
               "--new", str(repo / "policy"))
    assert both.returncode == 0 and "relation: equivalent" in both.stdout, both.stdout + both.stderr
    for bad in (["diff", "--base", "HEAD"], ["diff", "--old", "x.ap"], ["diff", "a.ap"]):
        assert run(*bad).returncode == 2
    missing = run("diff", "--base", "no-such-rev", str(repo / "policy"))
    assert missing.returncode == 2 and "is not in git revision 'no-such-rev'" in missing.stderr
