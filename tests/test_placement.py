"""`compile -t all`: every engine's artifacts and a placement report from capabilities and reports."""

from __future__ import annotations

import json

from click.testing import CliRunner

from anyplane.compiler.cli import cli


def test_all_engines_and_placement_for_bookinfo(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "all", "-o", str(tmp_path),
                                   "--path", "fabric,kernel,sidecar"])
    assert out.exit_code == 0, out.output
    for name in ("p4/anyplane.p4", "p4/entries.txt", "ebpf/xdp.o", "envoy/productpage/envoy.yaml", "placement.txt"):
        assert (tmp_path / name).exists(), name
    data = json.loads((tmp_path / "placement.json").read_text())
    assert data["path"] == ["fabric", "kernel", "sidecar"]
    assert [c["place"] for c in data["capabilities"]] == ["fabric", "kernel", "sidecar"]
    placed = {r["rule"]: r["placed"] for r in data["rules"]}
    assert placed["examples/bookinfo.ap:32"] == "fabric"        # allow ratings -> mysql tcp 3306
    assert placed["examples/bookinfo.ap:34"] == "fabric"        # ICMP: never the sidecar
    assert placed["examples/bookinfo.ap:40"] == "sidecar"       # deny with an HTTP path
    row = next(r for r in data["rules"] if r["rule"] == "examples/bookinfo.ap:29")
    assert row["engines"] == {"fabric": "l4-projection", "kernel": "l4-projection", "sidecar": "enforced"}


def test_the_path_order_decides_where_rules_go(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/edge-firewall.ap", "-t", "all", "-o", str(tmp_path),
                                   "--path", "kernel,fabric", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "placement.json").read_text())
    assert {r["placed"] for r in data["rules"]} == {"kernel"}


def test_a_rule_no_engine_on_the_path_can_enforce_is_an_error_at_its_line(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "all", "-o", str(tmp_path),
                                   "--path", "fabric,kernel"])
    assert out.exit_code == 1
    assert "examples/bookinfo.ap:40: error: no engine on this path can enforce it" in out.output
    bad = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "all", "-o", str(tmp_path),
                                   "--path", "fabric,fabric"])
    assert bad.exit_code == 2


def test_the_composition_is_proved_for_every_example(tmp_path):
    for example in ("examples/bookinfo.ap", "examples/edge-firewall.ap", "examples/canary.ap",
                    "examples/zero-trust"):
        out = CliRunner().invoke(cli, ["compile", example, "-t", "all", "-o", str(tmp_path / example.split("/")[-1]),
                                       "--path", "fabric,kernel,sidecar"])
        assert out.exit_code == 0, out.output
        assert "proved: fabric + kernel + sidecar" in out.output
        proof = json.loads((tmp_path / example.split("/")[-1] / "proof.json").read_text())
        assert proof["proved"] is True


def test_a_broken_placement_is_caught_with_a_counterexample(tmp_path, monkeypatch):
    from anyplane.compiler.commands import placement

    monkeypatch.setattr(placement, "DROP_FOR_TESTS", "examples/bookinfo.ap:32")  # allow ratings -> mysql
    out = CliRunner().invoke(cli, ["compile", "examples/bookinfo.ap", "-t", "all", "-o", str(tmp_path)])
    assert out.exit_code == 1
    assert "compiler bug" in out.output
    assert "policy    allow (examples/bookinfo.ap:32)" in out.output
    assert "together  deny" in out.output
    flow = next(line.split(None, 1)[1] for line in out.output.splitlines() if line.strip().startswith("flow"))
    # The counterexample is a real flow: the interpreter gives the policy's verdict for it.
    explained = CliRunner().invoke(cli, ["explain", "examples/bookinfo.ap", "--flow", flow, "--format", "json"])
    assert json.loads(explained.output)["verdict"] == "allow"


def test_lifted_engines_decide_like_the_interpreter_on_random_flows():
    """The read-back programs the proof uses are themselves checked against the engines' own evaluators."""
    from anyplane.backends.ebpf import engine as kernel
    from anyplane.backends.p4 import engine as fabric
    from anyplane.ir.flowgen import FlowGen
    from anyplane.ir.interp import evaluate
    from anyplane.ir.project import project_l4

    from .conftest import load_example

    program = load_example("edge-firewall").program
    p4_program, xdp_program = fabric.lifted(program), kernel.lifted(program)
    model = kernel.build_all(program).model
    for f in FlowGen(program, seed=9).flows(3000):
        f = f.without_http()
        want = evaluate(project_l4(program), f).verdict
        assert evaluate(p4_program, f).verdict == want, f.text
        assert evaluate(xdp_program, f).verdict == want, f.text
        assert ("allow" if model.decide(f)[0] else "deny") == want, f.text
