"""An engine registered from the test suite gets compile, placement and the proof for free.

tests/acl_engine.py is a first-match text ACL written against the engine
interface only; nothing in compiler/ or verify/ knows it. Once registered,
`compile -t textacl` writes it, `compile -t all --path firewall,...` places
denies and the default on it, and the composition proof checks what it emitted
(read back from its text) together with the other engines.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from anyplane.backends import registry
from anyplane.compiler import api
from anyplane.compiler.cli import cli
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate

from .. import acl_engine
from ..conftest import load_example


@pytest.fixture(autouse=True)
def _registered():
    registry.register(acl_engine.ENGINE)
    yield
    registry.unregister("textacl")


def test_compile_writes_the_new_engine_through_the_cli(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/edge-firewall.ap", "-t", "textacl", "-o", str(tmp_path / "o"),
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "o" / "acl.txt").read_text()
    program = load_example("edge-firewall").program
    for f in FlowGen(program, seed=4).flows(2000):
        assert acl_engine.run(text, f) == evaluate(program, f.without_http()).verdict, f.text
    # Options another engine reads are usage errors for this one.
    bad = CliRunner().invoke(cli, ["compile", "examples/edge-firewall.ap", "-t", "textacl", "--no-range", "-o",
                                   str(tmp_path / "p")])
    assert bad.exit_code == 2 and "-t textacl takes no --no-range" in bad.output


@pytest.mark.parametrize("prefer", ["early", "late"])
def test_placement_and_the_proof_take_the_new_engine(tmp_path, prefer):
    out_dir = tmp_path / "all"
    out = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "all", "--path", "firewall,kernel,sidecar",
                                   "--prefer", prefer, "-o", str(out_dir)])
    assert out.exit_code == 0, out.output
    assert "proved: firewall + kernel + sidecar" in out.output
    placement = json.loads((out_dir / "placement.json").read_text())
    assert placement["places"] == ["firewall", "kernel", "sidecar"]
    held = {r["rule"]: r["engines"] for r in placement["rules"]}
    # The text ACL sees every flow and meters nothing: it takes the default deny under early
    # placement, never a packet rate limit.
    if prefer == "early":
        assert held["examples/bookinfo.ap:27"]["firewall"] == "enforces"
    assert (out_dir / "textacl" / "acl.txt").exists()
    proof = json.loads((out_dir / "proof.json").read_text())
    assert proof["proved"] and "firewall" in proof["engines"]


def test_a_wrong_read_back_from_the_new_engine_is_caught(monkeypatch):
    """The proof reads what the engine emitted: an ACL that loses a line is a counterexample."""
    compiled = api.load(["examples/bookinfo.ap"])
    real = acl_engine.render

    def lossy(program):  # every permit of one rule lost (a rule whose flows nothing else admits)
        lines = real(program).splitlines()
        rule = next(line.split()[-1] for line in lines if line.startswith("permit") and "dport=range:3306" in line)
        return "\n".join(line for line in lines if not line.endswith(" " + rule)) + "\n"
    monkeypatch.setattr(acl_engine, "render", lossy)
    built = api.compile_paths(compiled, "firewall,kernel,sidecar")
    cex = built.proof.counterexample
    assert not built.proof.proved and cex["together"] == "deny" and cex["policy"]["verdict"] == "allow"
    assert cex["engines"]["firewall"]["verdict"] == "deny"
