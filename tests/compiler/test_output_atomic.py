"""`compile -o DIR` leaves exactly the new output or exactly the old one, whatever happens.

A large policy is compiled over the output of another one, and the compile is
interrupted (SIGINT) or killed (SIGKILL) at random moments. Afterwards the
directory must hold one complete output: every file its manifest lists, with
the listed hashes, nothing else, and the manifest names one of the two
policies. Bad output paths and inputs are usage errors (exit 2), not crashes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from anyplane.compiler.cli import cli
from anyplane.compiler.output import MANIFEST, read_manifest
from anyplane.ir.source import SourceMap

from ..conftest import ROOT

ANYPLANE = [sys.executable, "-m", "anyplane.compiler"]


def _synth(n: int, seed: int) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.synth", str(n), str(seed)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _complete(root: Path) -> str:
    """The policy digest of the complete output in root (fails when it is partial or mixed)."""
    data = read_manifest(str(root))
    assert _files(root) == set(data["files"]) | {MANIFEST}, "files beside the manifest's"
    return data["policy"]


@pytest.mark.slow  # twenty interrupted compiles of a 2,000-rule policy: a soak test
def test_interrupted_or_killed_compiles_leave_the_old_or_the_new_output(tmp_path):
    old, new = tmp_path / "old.ap", tmp_path / "new.ap"
    old.write_text(_synth(2000, 1))
    new.write_text(_synth(2000, 2))
    digests = {p: SourceMap({str(p): p.read_text()}).digest for p in (old, new)}
    out = tmp_path / "out"
    started = time.monotonic()
    subprocess.run(ANYPLANE + ["compile", str(old), "-t", "envoy", "-o", str(out)], check=True, capture_output=True)
    full = time.monotonic() - started
    assert _complete(out) == digests[old]
    rng = random.Random(7)
    outcomes = {digests[old]: 0, digests[new]: 0}
    for trial in range(20):
        sig = signal.SIGINT if trial % 2 == 0 else signal.SIGKILL
        policy = new if trial % 4 < 2 else old
        proc = subprocess.Popen(ANYPLANE + ["compile", str(policy), "-t", "envoy", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, full * 2.0))  # after start-up (signals handled), up to past the end
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode in (0, 130), err
            assert b"Traceback" not in err
        outcomes[_complete(out)] += 1
        # An interrupted compile leaves no directory of its own behind (a killed one may; the next
        # compile clears it).
        if sig == signal.SIGINT:
            assert not [p for p in tmp_path.iterdir() if p.name.endswith(f"-{proc.pid}")]
    # Kill points before the swap leave the old output; those after it, the new one (how many of each
    # depends on the machine's load, so only the completeness of each outcome is asserted above).
    assert sum(outcomes.values()) == 20
    # A later compile clears what killed ones left.
    subprocess.run(ANYPLANE + ["compile", str(new), "-t", "envoy", "-o", str(out)], check=True, capture_output=True)
    assert _complete(out) == digests[new]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.anyplane-")]


def test_a_second_policy_replaces_every_file_of_the_first(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    assert runner.invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "envoy", "-o", str(out)]).exit_code == 0
    assert (out / "productpage").is_dir()
    assert runner.invoke(cli, ["compile", "examples/canary.ap", "-t", "envoy", "-o", str(out)]).exit_code == 0
    assert not (out / "productpage").exists()
    assert _complete(out) == SourceMap({"examples/canary.ap": Path("examples/canary.ap").read_text()}).digest


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "file.txt", "is a file"),
    (lambda d: d, "is not empty and holds no anyplane output"),
    (lambda d: d / ("x" * 300) / "out", "cannot write"),
    (lambda d: Path("/proc/anyplane-out"), "cannot write"),
])
def test_bad_output_paths_are_usage_errors(tmp_path, make, message):
    (tmp_path / "file.txt").write_text("mine")
    target = make(tmp_path)
    result = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "ir", "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_binary_deployment_file_is_a_usage_error(tmp_path):
    dep = tmp_path / "deployment.yaml"
    dep.write_bytes(bytes(range(256)) * 4)
    result = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "envoy", "-o", str(tmp_path / "o"),
                                      "--deployment", str(dep)])
    assert result.exit_code == 2, result.output
    assert "deployment" in result.output
