"""`anyplane map`: who can reach whom, against brute force over the flow classes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.interp import evaluate, owner
from anyplane.ir.source import DiagnosticError
from anyplane.verify.connectivity import connectivity

from ..brute import universe
from ..conftest import CI, ROOT, example_cluster, examples, run
from ..strategies import policies


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=5, small=True))
def test_edges_are_exactly_the_pairs_some_flow_connects(text):
    try:
        program = compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        assume(False)
    graph = connectivity(program)
    flows_by_pair: dict[tuple, list] = {}
    for f in universe([program]):
        pair = (owner(program, f.family, f.src), owner(program, f.family, f.dst))
        if None not in pair:
            flows_by_pair.setdefault(pair, []).append(evaluate(program, f).verdict == "allow")
    kinds = {i.name: i.kind for i in program.identities}
    some = {p for p, v in flows_by_pair.items() if any(v) and not kinds[p[0]] == kinds[p[1]] == "external"}
    assert set(graph.edges) == some
    for src, dst in graph.edges:
        edge = graph.edges[src, dst]
        assert edge["everything"] == all(flows_by_pair[(src, dst)])
        assert edge["rules"] or edge["default"]
    # The protocols and ports on each edge: every allowed flow lies in a cell, and a cell said to be
    # all allowed holds no denied flow.
    for f in universe([program]):
        pair = (owner(program, f.family, f.src), owner(program, f.family, f.dst))
        if pair not in graph.edges:
            continue
        cell = _cell(graph.edges[pair]["flows"], f)
        allowed = evaluate(program, f).verdict == "allow"
        assert cell is not None or not allowed, (f.text, graph.edges[pair]["flows"])
        assert cell is None or not cell["all"] or allowed, (f.text, cell)


def _cell(flows: list[dict], f) -> dict | None:
    """The cell of an edge's flows a flow lies in."""
    for c in flows:
        if c["protocol"] == "any":
            return c
        if c["protocol"] == "other" and f.proto not in c["except"]:
            return c
        if c["protocol"] == f.proto and ("ports" not in c or any(lo <= f.dport <= hi for lo, hi in c["ports"])):
            return c
    return None


def test_the_cli_formats(tmp_path):
    done = run("map", "examples/bookinfo.ap", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    edges = {(e["src"], e["dst"]): e for e in data["edges"]}
    assert ("internet", "productpage") in edges and ("internet", "mysql") not in edges
    assert edges["ratings", "mysql"]["rules"] == ["examples/bookinfo.ap:32 allow ratings -> mysql tcp 3306"]
    assert ["reviews", "reviews.v1", "reviews.v2", "reviews.v3"] in data["groups"]
    rows = list(csv.reader(io.StringIO(run("map", "examples/bookinfo.ap", "--format", "csv").stdout)))
    assert rows[0] == ["source", "destination", "flows", "all flows", "rules", "witness"] and len(rows) == len(edges) + 1
    assert edges["ratings", "mysql"]["label"] == "tcp 3306" and edges["ratings", "mysql"]["flows"] == [
        {"protocol": 6, "name": "tcp", "ports": [[3306, 3306]], "all": True}]
    assert edges["productpage", "details"]["label"] == "tcp 9080 (some)"
    assert edges["productpage", "details"]["http"] == ["http GET /details/*"]
    dot = run("map", "examples/bookinfo.ap", "--format", "dot").stdout
    assert dot.startswith("digraph anyplane {") and '"ratings" -> "mysql"' in dot
    text = run("map", "examples/bookinfo.ap").stdout
    assert "alike (the same connections in and out): reviews, reviews.v1, reviews.v2, reviews.v3" in text


def test_map_diff_marks_added_removed_and_changed_edges(tmp_path):
    old, new = tmp_path / "old.ap", tmp_path / "new.ap"
    base = ("service postgres { address 10.3.0.10/32 port 5432 tcp }\nservice web { address 10.1.0.0/24 port 80 http }\n"
            "external monitoring { address 10.4.0.0/24 }\ndefault deny\n")
    old.write_text(base + "allow web -> postgres tcp 5432\nallow monitoring -> web tcp 80\n")
    new.write_text(base + "allow monitoring -> postgres\nallow monitoring -> web\n")
    done = run("map", "--diff", str(old), str(new), "--format", "json")
    assert done.returncode == 1, done.stderr
    changes = {(e["src"], e["dst"]): e["change"] for e in json.loads(done.stdout)["edges"]}
    assert changes == {("monitoring", "postgres"): "added", ("web", "postgres"): "removed",
                       ("monitoring", "web"): "changed"}
    assert run("map", "--diff", str(old), str(old)).returncode == 0
    assert run("map", "--diff", str(old)).returncode == 2
    dot = run("map", "--diff", str(old), str(new), "--format", "dot").stdout
    assert 'color=red' in dot and 'color=darkgreen' in dot


def test_svg_is_drawn_by_graphviz():
    done = run("map", "examples/canary.ap", "--format", "svg")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<svg") and done.stdout.rstrip().endswith("</svg>")
    for name in ("testers", "web", "checkout.v1", "checkout.v2"):
        assert f"<title>{name}</title>" in done.stdout
    assert "http GET,POST /api/* header &quot;x&#45;canary&quot; present" in done.stdout


def _chromium() -> str:
    import shutil
    import pytest
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if CI:
            pytest.fail("chromium is not installed: make test installs it", pytrace=False)
        pytest.skip("chromium is not installed")
    return found


@pytest.mark.browser
def test_html_page_loads_in_chromium_and_shows_every_identity(tmp_path):
    """One self-contained page: headless Chromium runs it without a console message, and every
    identity and edge is on it (the filter script has counted the edges)."""
    import subprocess
    chromium = _chromium()
    page = tmp_path / "map.html"
    # The Kubernetes example: names with '-' and '.', labels with ranges; bookinfo: quotes in labels.
    for example in ("examples/kubernetes", "examples/bookinfo.ap"):
        done = run("map", example, "--format", "html")
        assert done.returncode == 0, done.stderr
        page.write_text(done.stdout)
        data = json.loads(run("map", example, "--format", "json").stdout)
        browser = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                                  "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
        assert browser.returncode == 0, browser.stderr[-2000:]
        console = [line for line in browser.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, console
        dom = browser.stdout
        assert f"{len(data['edges'])} of {len(data['edges'])} edges" in dom
        for node in data["nodes"]:
            assert f"<li>{node['name']} <small>" in dom and f"<title>{node['name']}</title>" in dom, node["name"]


def test_every_example_has_its_map_in_docs():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    examples = {p.stem if p.suffix == ".ap" else p.name for p in (root / "examples").iterdir()
                if p.suffix == ".ap" or p.is_dir()}
    pictures = {p.stem for p in (root / "docs" / "maps").glob("*.svg")}
    assert examples <= pictures, f"make maps draws {sorted(examples - pictures)}"


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_alike_pairs_are_answered_as_if_each_were_asked(data):
    """A cluster of replicas in several namespaces: pairs of identities alike (verify/connectivity.py)
    are asked once per class. The map equals the one asked pair by pair, and every rule an edge lists
    decides some allowed flow of that pair (brute force over the pods' addresses and ports)."""
    import ipaddress

    import yaml

    from anyplane.compiler.importers.k8s import convert
    from anyplane.ir.flow import Flow

    from ..importers.test_import_k8s import replicated

    namespaces, pods, nps = replicated(data)
    text = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + nps))]).text
    program = compile_sources([("<kubernetes>", text)]).program
    alike, each = connectivity(program), connectivity(program, alike=False)
    event("some pairs alike" if alike.graph["asked"] < alike.graph["pairs"] else "every pair asked")
    assert set(alike.edges) == set(each.edges)
    texts = {r.id: f"{r.origin.loc} {r.text}" for r in program.rules}
    kinds = {i.name: i.kind for i in program.identities}
    deciding: dict[tuple, set] = {}
    ips = [int(ipaddress.ip_address(p["status"]["podIP"])) for p in pods]
    # Every end of every port range the generator writes, and the named ports' numbers.
    ports = (53, 80, 5000, 5100, 5432, 6000, 8000, 8080, 8100, 9000)
    for src in ips:
        for dst in ips:
            for proto in (6, 17):
                for port in ports:
                    d = evaluate(program, Flow(4, src, dst, proto, 40000, port))
                    if d.verdict == "allow" and d.entry is not None:
                        deciding.setdefault((d.src_id, d.dst_id), set()).add(texts[d.entry.rule])
    for pair in alike.edges:
        mine, theirs = dict(alike.edges[pair]), dict(each.edges[pair])
        if kinds[pair[0]] == kinds[pair[1]] == "service":
            assert set(mine["rules"]) <= deciding.get(pair, set()), (pair, mine["rules"])
            assert mine["rules"] or mine["default"]
        for edge in (mine, theirs):
            del edge["witness"], edge["rules"]
        assert mine == theirs, pair


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_blocks_of_pairs_are_keyed_as_each_of_their_pairs(data):
    """verify/alike.py PairSpace cuts the pairs into blocks without visiting each: on random clusters
    (one program, and two over the same pods as the proof of an export compares), every pair is a
    single or in exactly one block, and every pair of a block has the block's keys, never None."""
    import yaml

    from anyplane.compiler.importers.k8s import convert
    from anyplane.ir.owners import owned_addresses
    from anyplane.ir.pairspace import PairSpace
    from anyplane.verify.alike import PairClasses

    from ..importers.test_import_k8s import policies as k8s_policies
    from ..importers.test_import_k8s import replicated

    namespaces, pods, nps = replicated(data)
    programs = []
    for chosen in (nps, data.draw(k8s_policies(data.draw(st.integers(1, 4))))):
        text = convert([("c.yaml", yaml.safe_dump_all(namespaces + pods + chosen))]).text
        programs.append(compile_sources([("<kubernetes>", text)]).program)
    # the identities both imports have (policies that read other labels split pods otherwise)
    names = sorted(set.intersection(*({i.name for i in p.identities if owned_addresses(p).get(i.name)}
                                      for p in programs)))
    assume(names)
    interned: dict = {}
    tables = [PairClasses(p, names, interned) for p in programs]
    srcs = sorted(data.draw(st.sets(st.sampled_from(names), min_size=1)))
    for chosen in ([tables[0]], tables):
        space = PairSpace(chosen, srcs, names)
        seen = {pair: "single" for pair in space.singles}
        for n, block in enumerate(space.blocks):
            keys = set()
            for pair in space.members(block):
                assert pair not in seen, pair
                seen[pair] = n
                keys.add(tuple(t.key(*pair) for t in chosen))
            assert len(keys) <= 1 and None not in next(iter(keys), ()), (block, keys)
        assert set(seen) == {(s, d) for s in srcs for d in names}
        event(f"{len(space.blocks)} blocks, {len(space.singles)} singles of {len(srcs) * len(names)} pairs")


@st.composite
def _one_sided(draw):
    """Eight services and rules mostly from one service to anything or from anything to one, of two
    verdicts and a few ports, at a few priorities: sources and destinations share profiles only where
    their rules' places allow it."""
    body = [f"service s{k} {{ address 10.0.0.{k}/32 port 80 tcp }}" for k in range(8)]
    body.append(f"default {draw(st.sampled_from(['allow', 'deny']))}")
    for _ in range(draw(st.integers(1, 14))):
        one = f"s{draw(st.integers(0, 7))}"
        src, dst = draw(st.sampled_from([(one, "any"), ("any", one), (one, f"s{draw(st.integers(0, 7))}"),
                                         ("any", "any")]))
        tail = draw(st.sampled_from(["", " tcp 80", " tcp 81", " udp 80"]))
        prio = draw(st.sampled_from(["", " priority 10", " priority 20"]))
        body.append(f"{draw(st.sampled_from(['allow', 'deny']))} {src} -> {dst}{tail}{prio}")
    return "\n".join(body) + "\n"


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(policies(max_rules=8, small=True), _one_sided()), st.data())
def test_blocks_of_pairs_hold_for_written_policies(text, data):
    """The same on policies written in the language, whose one-sided rules of different verdicts and
    ports interleave (the places in a profile matter)."""
    from anyplane.ir.owners import owned_addresses
    from anyplane.ir.pairspace import PairSpace
    from anyplane.verify.alike import PairClasses

    try:
        program = compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        assume(False)
    owns = owned_addresses(program)
    names = sorted(i.name for i in program.identities if owns.get(i.name))
    assume(names)
    table = PairClasses(program, names)
    srcs = sorted(data.draw(st.sets(st.sampled_from(names), min_size=1)))
    space = PairSpace([table], srcs, names)
    seen = set(space.singles)
    for block in space.blocks:
        keys = set()
        for pair in space.members(block):
            assert pair not in seen, pair
            seen.add(pair)
            keys.add(table.key(*pair))
        assert len(keys) <= 1 and None not in keys, (block, keys)
    assert seen == {(s, d) for s in srcs for d in names}
    event("some block of two or more pairs" if any(len(b[0]) * len(b[1]) > 1 for b in space.blocks) else "none")


def test_pairs_alike_are_cut_into_the_same_cells():
    """Two identities, each pod reaching itself by a rule of its own: their pairs with themselves are
    alike. One also sends to `outside` (every address) on TCP 443, a rule that cannot match its pair
    with itself: the cells of both pairs must be the same as when each pair is asked on its own."""
    text = """service a { address 10.0.0.1/32, 10.0.0.2/32 }
service b { address 10.0.1.1/32, 10.0.1.2/32 }
external outside { address 0.0.0.0/0 }
default allow
allow 10.0.0.1 -> 10.0.0.1 priority 90
allow 10.0.0.2 -> 10.0.0.2 priority 90
allow 10.0.1.1 -> 10.0.1.1 priority 90
allow 10.0.1.2 -> 10.0.1.2 priority 90
deny any -> a priority 10
deny any -> b priority 10
allow a -> a priority 20
allow b -> b priority 20
allow b -> outside tcp 443 priority 20
deny a -> a udp 53 priority 25
deny b -> b udp 53 priority 25
"""
    program = compile_sources([("p.ap", text)]).program
    alike, each = connectivity(program), connectivity(program, alike=False)
    assert alike.graph["asked"] < each.graph["asked"]
    assert set(alike.edges) == set(each.edges)
    for pair in alike.edges:
        mine, theirs = dict(alike.edges[pair]), dict(each.edges[pair])
        for edge in (mine, theirs):
            del edge["witness"], edge["rules"]
        assert mine == theirs, pair
    assert each.edges["b", "b"]["label"] == each.edges["a", "a"]["label"]


def test_the_map_can_leave_out_what_only_the_default_passes_self_edges_and_what_a_diff_keeps(tmp_path):
    whole = json.loads(run("map", "examples/kubernetes", "--format", "json").stdout)
    done = run("map", "examples/kubernetes", "--restricted", "--no-self", "--format", "json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["edges"] and all(e["rules"] and e["src"] != e["dst"] for e in shown["edges"])
    kept = [e for e in whole["edges"] if e["rules"] and e["src"] != e["dst"]]
    assert [(e["src"], e["dst"]) for e in shown["edges"]] == [(e["src"], e["dst"]) for e in kept]
    assert shown["left_out"]["edges"] == len(whole["edges"]) - len(kept)
    text = run("map", "examples/kubernetes", "--restricted").stdout
    assert "edges left out: only the default lets through)" in text
    assert "reaches nothing" not in text  # identities with only default edges still reach something
    # --diff --changed: only what changed between the versions.
    new = tmp_path / "policies.yaml"
    new.write_text((ROOT / "examples/kubernetes/policies.yaml").read_text().replace("{port: 8080}", "{port: 8081}"))
    example_cluster(tmp_path)
    diff = run("map", "--diff", "examples/kubernetes", str(tmp_path), "--changed", "--format", "json")
    assert diff.returncode == 1
    changes = json.loads(diff.stdout)["edges"]
    assert changes and all(e["change"] != "same" for e in changes)
    assert run("map", "examples/kubernetes", "--changed").returncode == 2


def test_group_namespace_folds_each_namespaces_identities_and_their_edges(tmp_path):
    """`map --group namespace`: a node per namespace (its identities and pods listed), outside addresses as
    they are, and an edge between two nodes exactly where some identity of the first reaches one of the
    second, with every rule of the edges it folds; for an imported cluster and for workloads alike."""
    for paths in ([str(ROOT / "examples" / "kubernetes")], [str(ROOT / "examples" / "workloads" / "shop.ap")]):
        plain = json.loads(run("map", *paths, "--format", "json").stdout)
        done = run("map", *paths, "--format", "json", "--group", "namespace")
        assert done.returncode == 0, done.stderr
        folded = json.loads(done.stdout)
        space = {n["name"]: n["namespace"] for n in plain["nodes"] if n.get("namespace")}
        assert space, paths
        node = lambda name: f"ns/{space[name]}" if name in space else name  # noqa: E731
        assert {n["name"] for n in folded["nodes"]} == {node(n["name"]) for n in plain["nodes"]}
        for n in folded["nodes"]:
            if n["kind"] == "namespace":
                assert sorted(n["identities"]) == sorted(k for k, v in space.items() if f"ns/{v}" == n["name"])
        want: dict = {}
        for e in plain["edges"]:
            want.setdefault((node(e["src"]), node(e["dst"])), set()).update(e["rules"])
        got = {(e["src"], e["dst"]): set(e["rules"]) for e in folded["edges"]}
        assert got == want, paths
        assert run("map", *paths, "--group", "namespace", "--format", "svg").returncode == 0
    bad = run("map", str(ROOT / "examples" / "kubernetes"), "--group", "team")
    assert bad.returncode == 2
