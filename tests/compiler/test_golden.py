"""Goldens for every stage and engine, and byte-identical output across runs and hash seeds.

    tests/golden/<example>/ir.txt                the IR dump
    tests/golden/<example>/<engine>/...          each engine's artifacts for the whole policy
    tests/golden/<example>/all/placement.txt     compile -t all: the placement report and the proof
    tests/golden/exports/<input>/<engine>/...    the Kubernetes, Cilium and Istio resources of the inputs
                                                 each exporter can write
    tests/golden/<engine>/...                    what does not depend on the policy (the P4 program,
                                                 the XDP program per table layout): stored once

`pytest --update-golden` rewrites them; each starts with a line saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from anyplane.backends.base import Options
from anyplane.compiler import api
from anyplane.compiler.pipeline import load
from anyplane.ir import printer

from ..conftest import EXAMPLES, ROOT, load_example

#: Per engine: which artifacts are golden for each example (the rest repeat them in another form:
#: envoy.json and the xDS files hold the same resources as envoy.yaml; entries.json is entries.txt).
PER_EXAMPLE = {
    "p4": lambda path: path in ("p4info.txt", "entries.txt", "report.txt"),
    "ebpf": lambda path: path in ("tables.json", "report.txt"),
    "envoy": lambda path: path.endswith("/envoy.yaml") or path == "report.txt",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_ir_dump_matches_golden(name, golden):
    golden(f"{name}/ir.txt", printer.dump(load_example(name).program))


@pytest.mark.parametrize("engine", sorted(PER_EXAMPLE))
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_engine_artifacts_match_golden(name, engine, golden):
    out = api.compile_target(load_example(name), engine, Options(out_dir="out"))
    files = {a.path: a.data for a in out.artifacts}
    kept = [path for path in files if PER_EXAMPLE[engine](path)]
    assert kept
    for path in kept:
        golden(f"{name}/{engine}/{path}", files[path])
    if engine == "ebpf":  # the program depends only on the table layout: one golden per layout
        layout = json.loads(files["tables.json"])["layout"]
        golden("ebpf/xdp-" + "-".join(f"{k}{v}" for k, v in sorted(layout.items())) + ".c", files["xdp.c"])
    if engine == "p4" and name == "bookinfo":  # the program depends only on the features
        golden("p4/anyplane.p4", files["anyplane.p4"])
        plain = api.compile_target(load_example(name), "p4", Options(range_match=False))
        golden("p4/anyplane-no-range.p4", next(a.data for a in plain.artifacts if a.path == "anyplane.p4"))


#: The exporters' inputs: those of the examples (and the recipes) that each exporter can write.
EXPORTS = {
    "kubernetes": (["examples/kubernetes"], ("k8s", "cilium", "istio")),
    "istio": (["examples/istio"], ("istio",)),
    "workloads": (["examples/workloads"], ("k8s", "cilium", "istio")),
    "recipes": (["tests/recipes"], ("k8s", "cilium")),
    "canary": (EXAMPLES["canary"], ("cilium", "istio")),
}


@pytest.mark.parametrize("name,engine", [(n, e) for n, (_, engines) in sorted(EXPORTS.items()) for e in engines])
def test_exported_resources_match_golden(name, engine, golden):
    """Every resource file an exporter writes (and its report), for the inputs it can write: a change
    in what users apply to their clusters shows in review."""
    out = api.compile_target(load(EXPORTS[name][0]), engine, Options(out_dir="out"))
    files = {a.path: a.data for a in out.artifacts if isinstance(a.data, str) and a.data}
    assert any(path.endswith(".yaml") and path != "identities.yaml" for path in files)
    for path, data in sorted(files.items()):
        golden(f"exports/{name}/{engine}/{path}", data)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_placement_and_proof_match_golden(name, golden):
    built = api.compile_paths(load_example(name), options=Options(out_dir="out"))
    files = {a.path: a.data for a in built.output.artifacts}
    golden(f"{name}/all/placement.txt", files["placement.txt"])
    golden(f"{name}/all/proof.json", files["proof.json"])


def test_every_example_entry_points_back_at_its_policy_line():
    for name in EXAMPLES:
        program = load_example(name).program
        for entry in program.acl.entries + program.routes.entries:
            assert entry.origin.file.startswith("examples/") and entry.origin.line > 0


@pytest.mark.parametrize("target", ["ir", "p4", "ebpf", "envoy", "all"])
def test_every_target_is_byte_identical_across_runs_and_hash_seeds(target, tmp_path):
    """Two compiles in fresh interpreters with different PYTHONHASHSEED values write the same bytes."""
    runs = []
    out = tmp_path / "out"  # one directory: bootstraps name their xDS directory inside it
    for seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "anyplane.compiler", "compile", "examples/bookinfo.ap", "-t", target,
                        "-o", str(out)], check=True, capture_output=True, env=env, cwd=ROOT)
        runs.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert runs[0].keys() == runs[1].keys()
    assert [f for f in runs[0] if runs[0][f] != runs[1][f]] == []
