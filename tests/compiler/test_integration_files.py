"""What CI systems and users' tools read: SARIF fingerprints, the policy on standard input, the
pre-commit hooks, the composite action and the Dockerfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ..conftest import ROOT, run

POLICY = ("service db { address 10.0.5.0/24 port 5432 tcp }\nexternal office { address 192.168.0.0/16 }\n"
          "default deny\nallow office -> db tcp 5432\nallow office -> db tcp 5432 priority 0\n"
          "deny office -> db tcp 5432 priority 5\n")


def _sarif(path) -> list[dict]:
    done = run("verify", str(path), "--format", "sarif")
    return json.loads(done.stdout)["runs"][0]["results"]


def test_sarif_fingerprints_survive_lines_moving(tmp_path):
    policy = tmp_path / "p.ap"
    policy.write_text(POLICY)
    before = _sarif(policy)
    assert before and all(r["partialFingerprints"]["anyplaneFinding/v1"] for r in before)
    assert len({r["partialFingerprints"]["anyplaneFinding/v1"] for r in before}) == len(before)
    policy.write_text("# a comment moves every line down\n\n" + POLICY)
    after = _sarif(policy)
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in after] != \
        [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in before]
    assert sorted(r["partialFingerprints"]["anyplaneFinding/v1"] for r in after) == \
        sorted(r["partialFingerprints"]["anyplaneFinding/v1"] for r in before)


def test_the_policy_on_standard_input():
    text = (ROOT / "examples" / "bookinfo.ap").read_text()
    done = run("check", "-", input=text)
    assert done.returncode == 0 and "12 rules" in done.stdout
    bad = run("check", "-", input="allow a -> b\n")
    assert bad.returncode == 1 and "<stdin>:1:7: error: unknown endpoint 'a'" in bad.stderr
    assert run("fmt", "-", input="default   deny\n").stdout == "default deny\n"
    assert run("fmt", "--check", "-", input="default   deny\n").returncode == 1
    assert run("check", "-", "-", input=text).returncode == 2


def test_the_pre_commit_hooks_run_the_commands_they_name(tmp_path):
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"anyplane-fmt", "anyplane-verify"}
    assert hooks["anyplane-verify"]["pass_filenames"] is False
    messy = tmp_path / "messy.ap"
    messy.write_text("default   deny\n")
    for hook, files, want in (("anyplane-fmt", [str(ROOT / "examples" / "bookinfo.ap")], 0),
                              ("anyplane-fmt", [str(messy)], 1),
                              ("anyplane-verify", [str(ROOT / "examples" / "bookinfo.ap")], 0)):
        entry = hooks[hook]["entry"].split()
        assert entry[0] == "anyplane"
        done = subprocess.run([sys.executable, "-m", "anyplane.compiler", *entry[1:], *files], capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == want, (hook, done.stdout, done.stderr)


def test_the_action_verifies_and_uploads_sarif():
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite" and "policy" in action["inputs"]
    steps = action["runs"]["steps"]
    verify = next(s for s in steps if s.get("id") == "verify")
    assert "anyplane verify $POLICY" in verify["run"] and "--format sarif" in verify["run"]
    assert "${{" not in verify["run"], "inputs reach the shell through the environment, never spliced into it"
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in steps)
    assert steps[-1]["run"] == 'exit "$STATUS"'


def test_the_dockerfile_installs_the_package_and_runs_the_command():
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    assert "RUN pip install --no-cache-dir . && rm -rf /src" in lines
    assert lines[-2:] == ['ENTRYPOINT ["anyplane"]', 'CMD ["--help"]']
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


def test_the_action_writes_what_a_pull_request_changes_to_the_job_summary(tmp_path):
    """The diff step's own script, run as the runner would (bash, inputs in the environment), on a
    repository whose policy changed since its base revision."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    step = next(s for s in action["runs"]["steps"] if "diff-base" in s.get("if", ""))
    assert "${{" not in step["run"] and "diff-base" in action["inputs"]
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "p.ap").write_text("service db { address 10.0.5.0/24 }\nexternal office { address 192.0.2.0/24 }\n"
                               "default deny\nallow office -> db tcp 5432\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    (repo / "p.ap").write_text((repo / "p.ap").read_text().replace("5432", "5432, 22"))
    summary = tmp_path / "summary.md"
    env = dict(os.environ, POLICY="p.ap", BASE="HEAD", GITHUB_STEP_SUMMARY=str(summary),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # GitHub runs a step's bash with -e and pipefail.
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    assert "### anyplane: the policy against HEAD" in text and "newly allowed (1):" in text
    assert "old: the default   new: p.ap:4" in text, text
