"""`compile -t all`: placement of each part of the policy on the engines of its path, and the proof."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from anyplane.compiler import place as placement
from anyplane.compiler.cli import cli
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.nodes import Table
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError

from bench import classbench, synth

from ..conftest import EXAMPLES, ROOT, compile_text, load_example


def _compile(tmp_path, *args):
    return CliRunner().invoke(cli, ["compile", *args, "-t", "all", "-o", str(tmp_path)])


def _rows(tmp_path) -> dict:
    data = json.loads((tmp_path / "placement.json").read_text())
    return {r["rule"]: r for r in data["rules"]}


def test_bookinfo_early_sheds_l4_denies_at_the_fabric_and_refines_http_at_the_sidecar(tmp_path):
    out = _compile(tmp_path, "examples/bookinfo.ap", "--path", "fabric,kernel,sidecar")
    assert out.exit_code == 0, out.output
    assert "proved: fabric + kernel + sidecar" in out.output
    for name in ("p4/anyplane.p4", "p4/entries.txt", "ebpf/xdp.o", "envoy/productpage/envoy.yaml", "placement.txt"):
        assert (tmp_path / name).exists(), name
    data = json.loads((tmp_path / "placement.json").read_text())
    assert data["places"] == ["fabric", "kernel", "sidecar"] and data["prefer"] == "early"
    assert [c["place"] for c in data["capabilities"]] == ["fabric", "kernel", "sidecar"]
    assert [c["state"] for c in data["capabilities"]] == ["tcp-established", "connections", "connections"]
    rows = _rows(tmp_path)
    deny_mysql = rows["examples/bookinfo.ap:38"]       # deny internet -> mysql: it meets no reply
    assert deny_mysql["engines"] == {"fabric": "enforces", "kernel": "-", "sidecar": "-"}
    assert rows["examples/bookinfo.ap:40"]["engines"] == {"fabric": "-", "kernel": "-", "sidecar": "enforces"}
    assert rows["examples/bookinfo.ap:29"]["engines"] == {"fabric": "-", "kernel": "admits-l4", "sidecar": "admits"}
    # The default deny meets the replies of every allowed connection: the switch keeps no connections,
    # so it sits on the kernel, which does; the sidecar rechecks it beneath the HTTP allows.
    default = rows["examples/bookinfo.ap:27"]
    assert default["engines"] == {"fabric": "-", "kernel": "enforces", "sidecar": "rechecks"}
    assert "and keeps connections (the fabric keeps none" in default["why"]
    # What each engine emitted holds only what was placed on it.
    p4_report = (tmp_path / "p4/report.txt").read_text()
    assert "bookinfo.ap:38" in p4_report and "bookinfo.ap:40" not in p4_report
    assert "bookinfo.ap:38" not in (tmp_path / "envoy/report.txt").read_text()
    assert "bookinfo.ap:40" in (tmp_path / "envoy/productpage/envoy.yaml").read_text()
    assert "summary: 3 enforced, 6 l4-projection" in (tmp_path / "ebpf/report.txt").read_text()


def test_a_stateless_policy_sheds_the_default_at_the_fabric(tmp_path):
    policy = tmp_path / "bookinfo.ap"
    policy.write_text((ROOT / "examples/bookinfo.ap").read_text() + "stateless\n")
    out = _compile(tmp_path / "out", str(policy), "--path", "fabric,kernel,sidecar")
    assert out.exit_code == 0, out.output
    rows = _rows(tmp_path / "out")
    assert rows[f"{policy}:27"]["engines"] == {"fabric": "enforces", "kernel": "-", "sidecar": "rechecks"}


def test_where_only_the_switch_can_hold_a_deny_it_says_the_replies_are_dropped(tmp_path):
    out = _compile(tmp_path, "examples/bookinfo.ap", "--path", "fabric,sidecar")
    assert out.exit_code == 0, out.output
    why = _rows(tmp_path)["examples/bookinfo.ap:27"]["why"]
    assert ("the fabric keeps no connections: TCP segments shaped like replies of allowed connections (ACK or RST "
            "set) pass it whether or not a connection exists; UDP, ICMP and other replies") in why


def test_prefer_late_moves_l4_enforcement_next_to_the_workload(tmp_path):
    out = _compile(tmp_path, "examples/bookinfo.ap", "--prefer", "late")
    assert out.exit_code == 0, out.output
    rows = _rows(tmp_path)
    assert rows["examples/bookinfo.ap:38"]["engines"]["kernel"] == "enforces"
    assert rows["examples/bookinfo.ap:38"]["engines"]["fabric"] == "-"
    assert rows["examples/bookinfo.ap:27"]["placed"] == ["kernel", "sidecar"]
    assert _acl_entries(tmp_path / "p4") == 0 and "fabric 0" in (tmp_path / "placement.txt").read_text()


def test_prefer_everywhere_enforces_each_deny_on_every_engine_that_can(tmp_path):
    out = _compile(tmp_path, "examples/bookinfo.ap", "--prefer", "everywhere")
    assert out.exit_code == 0, out.output
    rows = _rows(tmp_path)
    assert rows["examples/bookinfo.ap:38"]["placed"] == ["fabric", "kernel"]
    assert rows["examples/bookinfo.ap:27"]["engines"] == {"fabric": "enforces", "kernel": "enforces",
                                                          "sidecar": "rechecks"}


def test_the_path_order_decides_where_rules_go(tmp_path):
    out = _compile(tmp_path, "examples/edge-firewall.ap", "--path", "kernel,fabric")
    assert out.exit_code == 0, out.output
    rows = json.loads((tmp_path / "placement.json").read_text())["rules"]
    enforced = {p for r in rows for p, role in r["engines"].items() if role == "enforces"}
    assert enforced == {"kernel"}


def test_paths_per_destination_from_the_deployment_file(tmp_path):
    dep = tmp_path / "deploy.yaml"
    dep.write_text("paths:\n  mysql: kernel\n  10.0.9.0/28: fabric,kernel\n  default: fabric,sidecar\n")
    out = _compile(tmp_path / "out", "examples/bookinfo.ap", "--deployment", str(dep))
    assert out.exit_code == 0, out.output
    assert "proved: fabric + kernel + sidecar" in out.output
    data = json.loads((tmp_path / "out/placement.json").read_text())
    assert data["paths"] == [{"destination": "mysql", "path": ["kernel"]},
                             {"destination": "10.0.9.0/28", "path": ["fabric", "kernel"]},
                             {"destination": "default", "path": ["fabric", "sidecar"]}]
    rows = {r["rule"]: r for r in data["rules"]}
    assert rows["examples/bookinfo.ap:38"]["regions"] == {"mysql": ["kernel"]}   # deny internet -> mysql
    assert rows["examples/bookinfo.ap:27"]["regions"]["mysql"] == ["kernel"]
    assert rows["examples/bookinfo.ap:27"]["regions"]["default"] == ["fabric"]


def test_bad_paths_are_errors_at_the_rule_or_usage_errors(tmp_path):
    dep = tmp_path / "deploy.yaml"
    dep.write_text("paths:\n  productpage: fabric,kernel\n")
    out = _compile(tmp_path / "a", "examples/bookinfo.ap", "--deployment", str(dep))
    assert out.exit_code == 1
    assert ("examples/bookinfo.ap:40:1: error: HTTP conditions need the sidecar on the path of productpage "
            "(fabric -> kernel)") in out.output
    assert "  ^~~~" in out.output
    dep.write_text("paths:\n  nosuch: fabric\n")
    out = _compile(tmp_path / "b", "examples/bookinfo.ap", "--deployment", str(dep))
    assert out.exit_code == 2 and "paths.nosuch: neither a service" in out.output
    dep.write_text("paths:\n  mysql: fabric,switch\n")
    assert _compile(tmp_path / "c", "examples/bookinfo.ap", "--deployment", str(dep)).exit_code == 2


def test_a_rule_no_engine_on_the_path_can_enforce_is_an_error_at_its_line(tmp_path):
    out = _compile(tmp_path, "examples/bookinfo.ap", "--path", "fabric,kernel")
    assert out.exit_code == 1
    assert "examples/bookinfo.ap:39:1: error: HTTP conditions need the sidecar on the path (fabric -> kernel)" \
        in out.output
    out = _compile(tmp_path, "examples/bookinfo.ap", "--path", "sidecar")
    assert out.exit_code == 1
    assert ("examples/bookinfo.ap:27:1: error: the default deny needs an engine every flow crosses (fabric or kernel)"
            in out.output)
    assert "examples/bookinfo.ap:38:1: error: no engine on the path (sidecar) can enforce this deny" in out.output
    assert _compile(tmp_path, "examples/bookinfo.ap", "--path", "fabric,fabric").exit_code == 2
    assert _compile(tmp_path, "examples/bookinfo.ap", "--capacity", "sidecar=10").exit_code == 2


@pytest.mark.parametrize("prefer", ["early", "late", "everywhere"])
def test_the_composition_is_proved_for_every_example(tmp_path, prefer):
    for example, files in EXAMPLES.items():
        out = _compile(tmp_path / example, *files, "--prefer", prefer)
        assert out.exit_code == 0, out.output
        assert "proved: fabric + kernel + sidecar" in out.output
        proof = json.loads((tmp_path / example / "proof.json").read_text())
        assert proof["proved"] is True
        # The switch and the kernel keep their programs' rule structure: checked rule by rule.
        assert proof["refined"] == {"fabric": "rule by rule", "kernel": "rule by rule",
                                    "sidecar": "whole read-back to the solver"}


def test_capacity_spills_what_does_not_fit_the_switch_to_the_kernel(tmp_path):
    rules = classbench.read_rules(classbench.DATA / "acl1_1k.rules")[:300]
    policy = tmp_path / "acl1.ap"
    policy.write_text(classbench.to_policy(rules, "acl1"))
    out = _compile(tmp_path / "out", str(policy), "--capacity", "fabric=30", "--path", "fabric,kernel")
    assert out.exit_code == 0, out.output
    assert "proved: fabric + kernel" in out.output
    data = json.loads((tmp_path / "out/placement.json").read_text())
    assert data["spilled"]
    assert 20 <= _acl_entries(tmp_path / "out/p4") <= 30  # filled, not emptied
    kernel_rows = [r for r in data["rules"] if r["engines"]["kernel"] == "enforces"]
    fabric_rows = [r for r in data["rules"] if r["engines"]["fabric"] == "enforces"]
    assert kernel_rows and fabric_rows
    # The switch keeps the highest denies (the least context): every one it enforces comes before every
    # deny that spilled (ClassBench priorities follow the file order).
    line = lambda r: int(r["rule"].rsplit(":", 1)[1])  # noqa: E731
    denies = [r for r in data["rules"] if r["rule"] != "default" and "deny" in r["text"].split()[:1]]
    kept = [line(r) for r in denies if r["engines"]["fabric"] == "enforces"]
    spilled = [line(r) for r in denies if r["engines"]["kernel"] == "enforces"]
    assert kept and spilled and max(kept) < min(spilled)
    # Nothing to spill to: an error, not a silent drop.
    out = _compile(tmp_path / "out2", str(policy), "--capacity", "fabric=50", "--path", "fabric")
    assert out.exit_code == 1
    assert "error: fabric holds 50 entries, this policy needs" in out.output
    assert "no other engine on the path (fabric) can take the default deny" in out.output


def test_a_small_switch_is_filled_with_the_highest_denies(tmp_path):
    """fw1's denies sit below hundreds of allows: spilling by a deny's own entries emptied the switch;
    keeping the longest run of highest denies that fits fills it."""
    rules = classbench.read_rules(classbench.DATA / "fw1_1k.rules")
    policy = tmp_path / "fw1.ap"
    policy.write_text(classbench.to_policy(rules, "fw1"))
    out = _compile(tmp_path / "out", str(policy), "--capacity", "fabric=300", "--path", "fabric,kernel")
    assert out.exit_code == 0, out.output
    assert "proved: fabric + kernel" in out.output
    assert 200 <= _acl_entries(tmp_path / "out/p4") <= 300
    data = json.loads((tmp_path / "out/placement.json").read_text())
    assert sum(1 for r in data["rules"] if r["engines"]["fabric"] == "enforces") >= 20


def test_a_full_kernel_spills_to_the_switch_under_prefer_late(tmp_path):
    rules = classbench.read_rules(classbench.DATA / "fw1_1k.rules")[:300]
    policy = tmp_path / "fw1.ap"
    policy.write_text(classbench.to_policy(rules, "fw1"))
    out = _compile(tmp_path / "out", str(policy), "--capacity", "kernel=150", "--path", "fabric,kernel",
                   "--prefer", "late")
    assert out.exit_code == 0, out.output
    assert "proved: fabric + kernel" in out.output
    data = json.loads((tmp_path / "out/placement.json").read_text())
    assert any(s.endswith(": kernel -> fabric") for s in data["spilled"])
    assert next(c for c in data["capabilities"] if c["place"] == "kernel")["capacity"] == 150
    tables = json.loads((tmp_path / "out/ebpf/tables.json").read_text())
    assert 0 < tables["entries"] <= 150
    assert any(r["engines"]["fabric"] == "enforces" for r in data["rules"])
    assert any(r["engines"]["kernel"] == "enforces" for r in data["rules"])


def _acl_entries(folder) -> int:
    """acl entries in an emitted WriteRequest (the ternary/range table's entries carry a priority)."""
    updates = json.loads((folder / "entries.json").read_text())["updates"]
    return sum(1 for u in updates if "priority" in u["entity"]["tableEntry"])


def _deciders(plan) -> dict:
    """Each engine's program as it decides: projected below L7; the sidecars' only where they receive traffic."""
    from anyplane.backends.envoy.engine import lifted as sidecar

    return {where: sidecar(sub) if where == "sidecar" else project_l4(sub) for where, sub in plan.programs.items()}


def _together(plan, deciders, f) -> str:
    """AND over the engines on the flow's path."""
    scope = next(r for r in plan.regions if r.match is None or _in(plan, r, f))
    verdicts = [evaluate(deciders[where], f).verdict for where in scope.path]
    return "allow" if all(v == "allow" for v in verdicts) else "deny"


def _in(plan, region, f) -> bool:
    from anyplane.ir.interp import match_holds, owner

    program = plan.programs[plan.places[0]]
    return match_holds(region.match, f, owner(program, f.family, f.src), owner(program, f.family, f.dst))


@pytest.mark.parametrize("prefer", ["early", "late", "everywhere"])
@pytest.mark.parametrize("seed,default", [(1, "deny"), (2, "allow"), (3, "deny"), (4, "allow")])
def test_placed_programs_together_decide_like_the_policy_on_random_flows(prefer, seed, default):
    """The planner alone, without the engines: on synthetic L7 policies with per-destination paths."""
    text = synth.generate(120, seed=seed)
    assert "default deny" in text
    program = compile_text(text.replace("default deny", f"default {default}"), "synth.ap").program
    services = sorted({i.service for i in program.identities if i.kind == "service"})
    spec = {services[0]: "fabric,kernel", services[1]: "kernel,sidecar", "10.0.0.0/16": "fabric,sidecar"}
    try:
        plan = placement.plan(program, placement.regions(program, ("fabric", "kernel", "sidecar"), spec), prefer)
    except DiagnosticError as exc:  # HTTP rules toward a destination without a sidecar: refused at the rule
        assert all("sidecar" in d.message for d in exc.diagnostics)
        spec = {services[0]: "kernel,sidecar", "10.0.0.0/16": "fabric,sidecar"}
        plan = placement.plan(program, placement.regions(program, ("fabric", "kernel", "sidecar"), spec), prefer)
    assert len(plan.regions) >= 3
    deciders = _deciders(plan)
    for f in FlowGen(program, seed=seed, http_share=0.6).flows(3000):
        assert _together(plan, deciders, f) == evaluate(program, f).verdict, f.text


def test_a_broken_placement_is_caught_with_a_counterexample():
    program = load_example("bookinfo").program
    plan = placement.plan(program, placement.regions(program, ("fabric", "kernel", "sidecar")))
    lost = "examples/bookinfo.ap:32"  # allow ratings -> mysql, taken out of every engine's share
    broken = replace(plan, programs={
        where: replace(sub, rules=tuple(r for r in sub.rules if r.origin.loc != lost),
                       acl=Table(sub.acl.name, tuple(e for e in sub.acl.entries if e.origin.loc != lost)))
        for where, sub in plan.programs.items()})
    result = placement.prove(program, broken)
    assert not result.proved and not result.unknown
    cex = result.counterexample
    assert cex["policy"] == {"verdict": "allow", "rule": lost} and cex["together"] == "deny"
    # The counterexample is a real flow: the interpreter gives the policy's verdict for it.
    explained = CliRunner().invoke(cli, ["explain", "examples/bookinfo.ap", "--flow", cex["flow"], "--format", "json"])
    assert json.loads(explained.output)["verdict"] == "allow"


def test_lifted_engines_decide_like_the_interpreter_on_random_flows():
    """The read-back programs the proof uses are themselves checked against the engines' own evaluators."""
    from anyplane.backends.ebpf import engine as kernel
    from anyplane.backends.p4 import engine as fabric

    program = load_example("edge-firewall").program
    p4_program, xdp_program = fabric.lifted(program), kernel.lifted(program)
    model = kernel.build_all(program).model
    for f in FlowGen(program, seed=9).flows(3000):
        f = f.without_http()
        want = evaluate(project_l4(program), f).verdict
        assert evaluate(p4_program, f).verdict == want, f.text
        assert evaluate(xdp_program, f).verdict == want, f.text
        assert ("allow" if model.decide(f)[0] else "deny") == want, f.text


@pytest.mark.parametrize("prefer", ["early", "late"])
@pytest.mark.parametrize("name,default", [("fw1_1k", "allow"), ("acl1_1k", "allow"), ("fw1_1k", "deny")])
def test_placed_classbench_programs_together_decide_like_the_policy(prefer, name, default):
    """First-match rule sets, where allows sit above the denies they carve out: the context allows matter.
    The switch is given a small capacity so that part of the policy spills to the kernel."""
    rules = classbench.read_rules(classbench.DATA / f"{name}.rules")[:400]
    text = classbench.to_policy(rules, name).replace("default deny", f"default {default}")
    program = compile_text(text, f"{name}.ap").program
    spec = {"128.0.0.0/1": "kernel,fabric"}
    plan = placement.plan(program, placement.regions(program, ("fabric", "kernel"), spec), prefer,
                          {"fabric": 25})
    assert plan.spilled
    deciders = _deciders(plan)
    for f in FlowGen(program, seed=5).flows(3000):
        assert _together(plan, deciders, f) == evaluate(program, f).verdict, f.text


def test_many_artifacts_are_listed_by_folder(tmp_path, monkeypatch):
    from anyplane.compiler.commands import engines

    monkeypatch.setattr(engines, "LIST_UP_TO", 5)
    out = _compile(tmp_path, "examples/bookinfo.ap")
    assert out.exit_code == 0, out.output
    sidecars = sum(1 for p in (tmp_path / "envoy").rglob("*") if p.is_file())
    assert f"wrote {tmp_path / 'envoy'}/ ({sidecars} files)" in out.output
    assert f"wrote {tmp_path / 'proof.json'}" in out.output
