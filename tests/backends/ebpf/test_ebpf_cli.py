"""The kernel engine's commands: compile -t ebpf, replay (flows and pcap), status, push errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from anyplane.backends.ebpf import packet
from anyplane.ir.flow import Flow

from ...conftest import ROOT
from ...kernel import require_kernel

pytestmark = pytest.mark.kernel


def run(*args):
    return subprocess.run([sys.executable, "-m", "anyplane.compiler", *args], capture_output=True, text=True, cwd=ROOT)


def test_compile_writes_program_object_tables_and_report(tmp_path):
    require_kernel()
    proc = run("compile", "examples/bookinfo.ap", "-t", "ebpf", "-o", str(tmp_path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (tmp_path / "xdp.o").read_bytes()[:4] == b"\x7fELF"
    source = (tmp_path / "xdp.c").read_text()
    assert "productpage" not in source and "bookinfo" not in source  # policy content travels as map data
    statuses = {r["rule"]: r["status"] for r in data["report"]}
    assert statuses["examples/bookinfo.ap:32"] == "enforced"          # ratings -> mysql tcp 3306
    assert statuses["examples/bookinfo.ap:30"] == "l4-projection"     # an HTTP allow
    assert statuses["examples/bookinfo.ap:39"] == "not-enforced"      # an HTTP deny
    assert "l4-projection" in (tmp_path / "report.txt").read_text()


def test_replay_flows_file_json(tmp_path):
    require_kernel()
    flows = tmp_path / "flows.txt"
    flows.write_text("# one flow per line\nproductpage -> reviews http GET /reviews/1\n"
                     "internet -> mysql tcp 3306\n\noffice -> 10.0.0.7 icmp\n")
    proc = run("replay", "-t", "ebpf", "examples/bookinfo.ap", "--flows", str(flows), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["verdict"], r["expected"], r["rule"]) for r in rows] == [
        ("pass", "pass", "examples/bookinfo.ap:30"), ("drop", "drop", "examples/bookinfo.ap:38"),
        ("pass", "pass", "examples/bookinfo.ap:34")]
    assert rows[1]["flow"] == "203.0.113.1 -> 10.0.5.10 tcp 3306 sport 49152"


def test_replay_pcap(tmp_path):
    require_kernel()
    capture = tmp_path / "c.pcap"
    frames = [packet.frame(Flow(4, 0xC0A80001, 0x0A000105, 1, icmp_type=8, icmp_code=0)),   # office -> productpage
              packet.frame(Flow(4, 0x08080808, 0x0A00050A, 6, 1234, 3306)),                # internet -> mysql
              packet.MACS + b"\x08\x06" + bytes(28)]                                       # ARP
    packet.write_pcap(str(capture), frames)
    rows = json.loads(run("replay", "-t", "ebpf", "examples/bookinfo.ap", "--pcap", str(capture), "--format", "json").stdout)
    assert [r["verdict"] for r in rows] == ["pass", "drop", "pass"]
    assert rows[2]["flow"] == "not-ip"
    bad = run("replay", "-t", "ebpf", "examples/bookinfo.ap", "--pcap", str(tmp_path / "missing.pcap"))
    assert bad.returncode == 2


def test_replay_needs_exactly_one_input():
    assert run("replay", "-t", "ebpf", "examples/bookinfo.ap").returncode == 2


def test_status_of_an_unknown_classifier_says_so():
    require_kernel()
    proc = run("status", "-t", "ebpf", "--name", "no-such-classifier")
    assert proc.returncode == 1 and "no classifier named 'no-such-classifier'" in proc.stderr


def test_push_to_a_missing_interface_fails_cleanly():
    require_kernel()
    proc = run("push", "-t", "ebpf", "examples/bookinfo.ap", "--iface", "no-such-if0", "--name", "cli-missing")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    from anyplane.backends.ebpf.loader import Classifier
    Classifier("cli-missing").remove()
