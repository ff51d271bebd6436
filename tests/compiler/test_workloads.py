"""`workload NAME { namespace NS  labels k=v, ... }`: identities the policy selects by label, their
addresses a binding of the moment (`--bind PODS.yaml`), or placeholders only the analyses see.

What must hold (compiler/binding.py):
- answers over the identities are the pods' answers: for random policies and random pods, the
  interpreter decides every flow between pods (and outside addresses) of the bound policy as it decides
  the same flow between the workloads of the unbound one, and `verify`'s assertions come out alike;
- the kernel, given a binding, decides those flows as the interpreter (BPF_PROG_TEST_RUN);
- `-t k8s` writes the labels the policy wrote, and its NetworkPolicies, applied to the binding's
  pods (and to pods created later with the same labels), decide as the bound policy;
- engines that match addresses refuse unbound workloads; nothing of a placeholder reaches an export;
- bad workloads and bad bindings are errors with a position, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import random

import pytest
import yaml

from anyplane.compiler import api, binding
from anyplane.compiler.pipeline import compile_sources, load
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate
from anyplane.ir.source import DiagnosticError

from ..conftest import ROOT, run, stop_watcher

OUTSIDE = ("192.0.2.7", "198.51.100.9", "203.0.113.200", "8.8.8.8")
CIDRS = ("192.0.2.0/24", "198.51.100.0/25", "203.0.113.192/26", "0.0.0.0/0")
PORTS = ((6, 80), (6, 443), (6, 5432), (17, 53), (6, 9090))


def _workloads(rnd: random.Random) -> list[tuple[str, str, dict]]:
    """3-5 workloads, pairwise disjoint: each its own `app` value, or its own namespace."""
    out = []
    for k in range(rnd.randint(3, 5)):
        ns = rnd.choice(["shop", "shop", "data", "ops"])
        labels = {"app": f"a{k}"}
        if rnd.random() < 0.4:
            labels["tier"] = rnd.choice(["front", "back"])
        out.append((f"w{k}", ns, labels))
    if rnd.random() < 0.3:  # a whole namespace of its own
        out.append(("everyone", "jobs", {}))
    if rnd.random() < 0.4:  # one app, its canary pods apart: `labels app=c, !canary` and `app=c, canary=yes`
        ns = rnd.choice(["shop", "data"])
        out += [("stable", ns, {"app": "c", "canary": None}), ("canary", ns, {"app": "c", "canary": "yes"})]
    return out


def _label_words(labels: dict) -> str:
    """`labels` of a workload: None is a key its pods lack (`!key`)."""
    return ", ".join(f"!{k}" if v is None else f"{k}={v}" for k, v in labels.items())


def _carried(labels: dict) -> dict:
    return {k: v for k, v in labels.items() if v is not None}


def _selects(labels: dict, carried: dict) -> bool:
    return all(carried.get(k) == v if v is not None else k not in carried for k, v in labels.items())


def _policy(rnd: random.Random, workloads) -> str:
    lines = []
    for name, ns, labels in workloads:
        label_text = _label_words(labels)
        lines.append(f"workload {name} {{ namespace {ns}" + (f" labels {label_text}" if labels else "")
                     + " port 80 http port 5432 tcp }")
    lines.append("external partners { address 198.51.100.0/25 }")
    lines.append(f"default {rnd.choice(['allow', 'deny'])}")
    names = [w[0] for w in workloads]
    ends = names + ["partners", "any"] + list(CIDRS)
    for _ in range(rnd.randint(2, 9)):
        src, dst = rnd.choice(ends), rnd.choice(ends)
        if rnd.random() < 0.2:
            src = f"any except {rnd.choice(names)}"
        l4 = rnd.choice(["", " tcp 80", " tcp 5432", " udp 53", " tcp 80-443", " tcp"])
        prio = f" priority {rnd.randint(1, 3)}" if rnd.random() < 0.4 else ""
        lines.append(f"{rnd.choice(['allow', 'deny'])} {src} -> {dst}{l4}{prio}")
    for _ in range(rnd.randint(0, 3)):
        a, b = rnd.choice(names), rnd.choice(names + ["partners"])
        lines.append(f"assert {rnd.choice(['', 'not '])}reachable {a} -> {b} tcp {rnd.choice([80, 5432])}")
    return "\n".join(lines) + "\n"


def _pods(rnd: random.Random, workloads, later: bool = False) -> list[dict]:
    """Two or three pods per workload (labels beyond the selector's too), and pods no workload selects."""
    pods, n = [], 0
    base = 200 if later else 1

    def pod(ns, name, labels, dual):
        nonlocal n
        n += 1
        ip = f"10.2.{base + n // 200}.{n % 200 + 1}"
        status = {"podIP": ip, "podIPs": [{"ip": ip}] + ([{"ip": f"fd00:2::{base:x}:{n:x}"}] if dual else [])}
        return {"apiVersion": "v1", "kind": "Pod", "status": status,
                "metadata": {"name": name, "namespace": ns, "labels": labels}}
    for name, ns, labels in workloads:
        for k in range(rnd.randint(2, 3)):
            extra = {"pod-template-hash": f"h{k}"} if rnd.random() < 0.5 else {}
            pods.append(pod(ns, f"{name}-{k}{'-later' if later else ''}", {**_carried(labels), **extra},
                            rnd.random() < 0.5))
    if not later:
        pods.append(pod("shop", "stray", {"app": "stray"}, False))
    return pods


def _write_pods(tmp_path, pods, name="pods.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
    return str(path)


def _compiled(text: str, pods_file: str | None):
    return compile_sources([("p.ap", text)], binding=binding.read([pods_file]) if pods_file else None)


def _address(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _stand_in(unbound, pods, workloads) -> dict:
    """Each pod's address (either family) -> an address of its workload's placeholder (a pod per
    address)."""
    owner = {}
    for p in pods:
        meta = p["metadata"]
        for name, ns, labels in workloads:
            if meta["namespace"] == ns and _selects(labels, meta["labels"]):
                owner.update({entry["ip"]: name for entry in p["status"]["podIPs"]})
    seen: dict = {}
    out = {}
    place = {(r.identity, r.prefix.family): r.prefix for r in unbound.endpoints}
    for ip, name in owner.items():
        family = ipaddress.ip_address(ip).version
        seen[(name, family)] = seen.get((name, family), 0) + 1
        out[ip] = place[(name, family)].first + seen[(name, family)]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_answers_over_workloads_are_the_answers_over_their_pods(tmp_path, seed):
    rnd = random.Random(seed)
    workloads = _workloads(rnd)
    text = _policy(rnd, workloads)
    pods = _pods(rnd, workloads)
    bound = _compiled(text, _write_pods(tmp_path, pods)).program
    unbound = _compiled(text, None).program
    assert not bound.unbound and {i.name for i in unbound.unbound} == {w[0] for w in workloads}
    stand_in = _stand_in(unbound, pods, workloads)
    addresses = [e["ip"] for p in pods for e in p["status"]["podIPs"]] + list(OUTSIDE) + ["2001:db8::7"]
    checked = 0
    for a in addresses:
        for b in addresses:
            family = ipaddress.ip_address(a).version
            if ipaddress.ip_address(b).version != family:
                continue
            for proto, port in PORTS:
                flow = Flow(family, _address(a), _address(b), proto, 40000, port)
                twin = Flow(family, stand_in.get(a, _address(a)), stand_in.get(b, _address(b)), proto, 40000, port)
                assert evaluate(bound, flow).verdict == evaluate(unbound, twin).verdict, (text, a, b, proto, port)
                checked += 1
    assert checked > 500


@pytest.mark.parametrize("seed", range(4))
def test_verify_answers_alike_with_and_without_the_binding(tmp_path, seed):
    rnd = random.Random(100 + seed)
    workloads = _workloads(rnd)
    text = _policy(rnd, workloads) + f"assert reachable {workloads[0][0]} -> {workloads[1][0]} tcp 80\n"
    pods_file = _write_pods(tmp_path, _pods(rnd, workloads))

    def outcome(compiled):
        findings = api.verify(compiled).findings
        return sorted((f.kind, f.span) for f in findings if f.kind.startswith("assert"))
    assert outcome(_compiled(text, pods_file)) == outcome(_compiled(text, None)), text


def test_the_kernel_decides_a_bound_policy_as_the_interpreter(tmp_path):
    from anyplane.backends.ebpf import packet

    from ..kernel import kernel_verdicts, loaded, require_kernel
    from ..backends.ebpf.test_ebpf import assert_agree

    require_kernel()
    rnd = random.Random(7)
    workloads = _workloads(rnd)
    text = _policy(rnd, workloads)
    pods = _pods(rnd, workloads)
    program = _compiled(text, _write_pods(tmp_path, pods)).program
    addresses = [p["status"]["podIP"] for p in pods] + list(OUTSIDE)
    flows = [Flow(4, _address(a), _address(b), proto, 40000 + k, port)
             for k, (a, b) in enumerate((a, b) for a in addresses for b in addresses) for proto, port in PORTS]
    with loaded(program, "workloads") as (cl, _):
        frames = [packet.frame(f) for f in flows]
        got = kernel_verdicts(cl, frames)
        assert_agree(cl, program, frames, got)
    assert {"pass", "drop"} <= set(got) or len(set(got)) == 1


@pytest.mark.parametrize("seed", range(6))
def test_the_k8s_export_selects_the_workloads_labels_for_todays_and_later_pods(tmp_path, seed):
    for attempt in range(50):  # a policy Kubernetes cannot say (some denials) is refused: the next
        rnd = random.Random(1000 * seed + attempt)
        workloads = _workloads(rnd)
        text = _policy(rnd, workloads)
        compiled = _compiled(text, None)
        try:
            out = api.compile_target(compiled, "k8s")
            break
        except DiagnosticError:
            continue
    proof = api.prove_export(compiled, "k8s", out)
    assert proof.proved, proof.counterexample
    files = {a.path: a.data for a in out.artifacts}
    policies = [name for name in files if name.endswith(".yaml") and name != "identities.yaml"]
    text_out = "".join(files[name] for name in policies)
    exported = [d for name in policies for d in yaml.safe_load_all(files[name]) if d]
    assert "240." not in text_out and "100::" not in text_out and "anyplane.io/identity" not in text_out

    def selectors(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "podSelector":
                    yield v.get("matchLabels", {})
                yield from selectors(v)
        elif isinstance(node, list):
            for v in node:
                yield from selectors(v)
    written = [_carried(w[2]) for w in workloads]
    assert all(labels in written or labels == {} for labels in selectors(exported))
    _applied_alike(tmp_path, rnd, text, workloads, {name: files[name] for name in policies})


def _applied_alike(tmp_path, rnd, text, workloads, exported: dict) -> None:
    """The exported objects, applied to the pods of a binding and to pods created later with the same
    labels, decide every flow between them (and outside addresses) as the bound policy."""
    pods = _pods(rnd, workloads) + _pods(rnd, workloads, later=True)
    pods = [p for p in pods if p["metadata"]["name"] != "stray"]
    pods_file = _write_pods(tmp_path, pods)
    for name, data in exported.items():
        (tmp_path / name).write_text(data)
    applied = load([pods_file] + [str(tmp_path / name) for name in exported]).program
    bound = _compiled(text, pods_file).program
    addresses = [p["status"]["podIP"] for p in pods] + list(OUTSIDE)
    for a in addresses:
        for b in addresses:
            if a == b or (a in OUTSIDE and b in OUTSIDE):
                continue
            for proto, port in PORTS:
                flow = Flow(4, _address(a), _address(b), proto, 40000, port)
                assert evaluate(applied, flow).verdict == evaluate(bound, flow).verdict, (text, a, b, proto, port)


@pytest.mark.parametrize("target", ["k8s", "cilium"])
def test_a_workload_of_pods_without_a_label_exports_as_does_not_exist(tmp_path, target):
    """`labels app=c, !canary` beside `labels app=c, canary=yes`: the stable pods' policy selects no canary
    pod, today's or later ones; Istio's matchLabels cannot say it and is refused at the workload."""
    workloads = [("stable", "shop", {"app": "c", "canary": None}), ("canary", "shop", {"app": "c", "canary": "yes"}),
                 ("db", "shop", {"app": "db"})]
    text = _policy(random.Random(0), workloads).split("default")[0] + (
        "default deny\nallow stable -> db tcp 5432\nallow canary -> stable tcp 80\n")
    compiled = _compiled(text, None)
    out = api.compile_target(compiled, target)
    assert api.prove_export(compiled, target, out).proved
    files = {a.path: a.data for a in out.artifacts if a.path.endswith(".yaml") and a.path != "identities.yaml"}
    assert "DoesNotExist" in "".join(files.values())
    _applied_alike(tmp_path, random.Random(1), text, workloads, files)
    with pytest.raises(DiagnosticError) as refused:
        api.compile_target(compiled, "istio")
    assert "workload stable selects pods without the label canary" in str(refused.value.diagnostics[0].message)
    assert refused.value.diagnostics[0].span.line == 1


def test_engines_that_match_addresses_refuse_unbound_workloads_and_take_bound_ones(tmp_path):
    (tmp_path / "p.ap").write_text("workload web { namespace shop labels app=web port 80 http }\n"
                                   "default deny\nallow 192.0.2.0/24 -> web tcp 80\n")
    pods = _write_pods(tmp_path, [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": "10.2.0.4"},
                                   "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}}}])
    for target in ("ebpf", "p4", "envoy", "all"):
        done = run("compile", str(tmp_path / "p.ap"), "-t", target, "-o", str(tmp_path / target))
        assert done.returncode == 1, done.stderr
        assert "p.ap:1:10: error: workload 'web' has no addresses" in done.stderr
        assert "--bind" in done.stderr and "Traceback" not in done.stderr
    done = run("compile", str(tmp_path / "p.ap"), "--bind", pods, "-t", "ebpf", "-o", str(tmp_path / "bound"))
    assert done.returncode == 0, done.stderr
    done = run("compile", str(tmp_path / "p.ap"), "--bind", pods, "-t", "ir", "-o", str(tmp_path / "ir"))
    ir = (tmp_path / "ir" / "ir.txt").read_text()
    assert "10.2.0.4/32 -> web  @" in ir and "240." not in ir and "pods.yaml:" in ir
    for command in (["check"], ["verify"], ["query", "any -> web"]):
        done = run(command[0], str(tmp_path / "p.ap"), *command[1:])
        assert done.returncode == 0, (command, done.stderr)


def test_a_witness_names_the_pod_with_a_binding_and_the_workload_without(tmp_path):
    text = ("workload web { namespace shop labels app=web }\nworkload db { namespace shop labels app=db }\n"
            "default deny\nallow web -> db tcp 5432\nassert not reachable web -> db tcp 5432\n")
    (tmp_path / "p.ap").write_text(text)
    pods = _write_pods(tmp_path, [
        {"apiVersion": "v1", "kind": "Pod", "status": {"podIP": f"10.2.0.{k}"},
         "metadata": {"name": f"{app}-{k}", "namespace": "shop", "labels": {"app": app}}}
        for k, app in ((1, "web"), (2, "web"), (3, "db"))])
    unbound = run("verify", str(tmp_path / "p.ap"))
    assert unbound.returncode == 1
    assert "(web: a pod of the workload, unbound) -> " in unbound.stdout + unbound.stderr
    bound = run("verify", str(tmp_path / "p.ap"), "--bind", pods)
    assert bound.returncode == 1
    out = bound.stdout + bound.stderr
    assert "(web: pod shop/web-" in out and "one of 2)" in out and "(db: pod shop/db-3, one of 1)" in out


BAD = [
    ("workload w { namespace Shop }\n", "1:24", "is not a Kubernetes namespace name"),
    ("workload w { labels app=-x }\n", "1:21", "label value '-x'"),
    ("workload w { labels a.b_/app=x }\n", "1:21", "label key prefix 'a.b_'"),
    ("workload w { labels app=x, app=y }\n", "1:28", "label 'app' is given twice"),
    ("workload w { namespace a namespace b }\n", "1:26", "has one namespace"),
    ("workload a { namespace s labels app=x }\nworkload b { namespace s labels tier=y }\n", "2:10",
     "workloads 'a' and 'b' can select the same pod"),
    ("workload a { namespace s labels app=x }\nservice r { address 240.1.0.0/16 }\n", "2:21",
     "lies inside 240.0.0.0/4 or 100::/64"),
    ("workload a { namespace s }\ndefault deny\nallow 100::5 -> a\n", "3:7", "lies inside 240.0.0.0/4 or 100::/64"),
    ("workload a { namespace s }\ndefault deny\nallow a.* -> a\n", "3:7", "is a workload"),
    ("workload service { namespace s }\n", "1:10", "is a keyword"),
    ("workload a { labels app }\n", "1:21", "expected a label such as app=web"),
    ("workload a { labels !app, app=x }\n", "1:27", "label 'app' is given twice"),
    ("workload a { namespace s labels app=x, !tier }\nworkload b { namespace s labels app=x, !canary }\n", "2:10",
     "can select the same pod (one in namespace s labelled app=x,!canary,!tier)"),
]


@pytest.mark.parametrize("text,where,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_workloads_are_errors_at_their_place(tmp_path, text, where, message):
    (tmp_path / "p.ap").write_text(text)
    done = run("check", str(tmp_path / "p.ap"))
    assert done.returncode == 1, done.stderr
    assert f"p.ap:{where}: error:" in done.stderr and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_bad_bindings_are_errors_in_the_binding(tmp_path):
    (tmp_path / "p.ap").write_text("workload a { namespace s labels app=x }\n"
                                   "workload b { namespace s labels app=x, tier=z }\n")
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: s, labels: {app: x, tier: z}}\n"
                    "status: {podIP: 10.0.0.1}\n")
    done = run("check", str(tmp_path / "p.ap"), "--bind", str(pods))
    assert done.returncode == 1
    # The two can select one pod: refused in the policy, before any binding.
    assert "p.ap:2:10: error: workloads 'a' and 'b' can select the same pod" in done.stderr
    (tmp_path / "p.ap").write_text("workload a { namespace s labels app=x }\nworkload b { namespace s labels app=w }\n")
    pods.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: s, labels: {app: x}}\n"
                    "status: {podIP: 10.0.0.1}\n---\n"
                    "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: s, labels: {app: w}}\n"
                    "status: {podIP: 10.0.0.1}\n---\n"
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: s}\n"
                    "spec: {podSelector: {}}\n")
    done = run("check", str(tmp_path / "p.ap"), "--bind", str(pods))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pods.yaml:11:1: error: a binding gives pods and their addresses; this NetworkPolicy is policy" \
        in done.stderr, done.stderr
    pods.write_text(pods.read_text().rsplit("---", 1)[0])
    done = run("check", str(tmp_path / "p.ap"), "--bind", str(pods))
    assert done.returncode == 1
    assert "10.0.0.1/32 is declared by both 'a' and 'b'" in done.stderr and "pods.yaml:" in done.stderr, done.stderr
    done = run("check", str(tmp_path / "p.ap"), "--bind", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    manifest = tmp_path / "np.yaml"
    manifest.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n"
                        "spec: {podSelector: {}}\n")
    done = run("check", str(manifest), "--bind", str(pods))
    assert done.returncode == 2 and "manifests bring their own" in done.stderr


def test_a_workload_formats_and_round_trips(tmp_path):
    text = "workload web {\n  namespace shop\n  labels app=web, app.kubernetes.io/tier=frontend\n  port 8080 http\n}\n"
    (tmp_path / "p.ap").write_text(text)
    done = run("fmt", "--check", str(tmp_path / "p.ap"))
    assert done.returncode == 0, done.stdout + done.stderr
    program = compile_sources([("p.ap", text)]).program
    web = program.identity("web")
    assert web.selector.namespace == "shop" and not web.selector.bound
    assert dict(web.selector.labels) == {"app": "web", "app.kubernetes.io/tier": "frontend"}


def test_serve_publishes_again_when_the_binding_changes(tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.ap").write_text("workload web { namespace shop labels app=web port 8080 http }\n"
                                 "default deny\nallow 192.0.2.0/24 -> web http GET /\n")
    pods = [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": "127.0.0.5"},
             "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}}}]
    pods_file = _write_pods(tmp_path, pods)
    serving = api.Serving([str(policy)], None, bind=[pods_file])
    try:
        assert serving.check()
        first = serving.version
        assert not serving.check()  # nothing changed
        pods[0]["status"]["podIP"] = "127.0.0.6"
        _write_pods(tmp_path, pods)
        assert serving.check() and serving.version != first
    finally:
        serving.stop()


def test_placeholders_are_disjoint_and_inside_the_reserved_ranges():
    seen = set()
    for k in (1, 2, 255, 256, 4096, binding.MAX_WORKLOADS - 1):
        for p in binding.placeholders(k):
            assert binding.reserved(p) and p not in seen
            seen.add(p)
    with pytest.raises(DiagnosticError):
        compile_sources([("p.ap", "workload a { namespace s }\nexternal x { address 240.0.0.0/8 }\n")])
    # A prefix that covers a whole range holds every workload's stand-ins, as it holds every pod.
    compile_sources([("p.ap", "workload a { namespace s }\nexternal x { address 0.0.0.0/0, ::/0, 240.0.0.0/4 }\n")])


def test_the_example_verifies_unbound_exports_as_its_selectors_and_compiles_bound(tmp_path):
    policy, pods = "examples/workloads/shop.ap", "examples/workloads/pods.yaml"
    done = run("verify", policy)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run("compile", policy, "-t", "k8s", "-o", str(tmp_path / "k8s"))
    assert done.returncode == 0 and "proved: k8s" in done.stdout + done.stderr, done.stderr
    exported = [d for d in yaml.safe_load_all((tmp_path / "k8s" / "networkpolicies.yaml").read_text()) if d]
    assert {(d["metadata"]["namespace"], json.dumps(d["spec"]["podSelector"], sort_keys=True)) for d in exported} \
        >= {("shop", '{"matchLabels": {"app": "frontend"}}'), ("data", '{"matchLabels": {"app": "postgres"}}')}
    done = run("compile", policy, "--bind", pods, "-t", "ebpf", "-o", str(tmp_path / "ebpf"))
    assert done.returncode == 0, done.stderr
    done = run("explain", policy, "--bind", pods, "--flow", "10.8.1.99 -> 10.8.3.5 tcp 5432")
    assert done.returncode == 0 and "deny" in done.stdout  # the debug pod is no workload's


def test_diff_names_workloads_by_their_selectors(tmp_path):
    old = "examples/workloads/shop.ap"
    new = tmp_path / "shop.ap"
    text = (ROOT / old).read_text()
    new.write_text(text.replace("allow checkout -> postgres tcp 5432", "allow checkout, frontend -> postgres tcp 5432"))
    done = run("diff", old, str(new))
    assert done.returncode == 1, done.stderr
    line = next(x for x in done.stdout.splitlines() if "-> postgres" in x and "e.g." not in x)
    assert "frontend (pods of shop app=frontend)" in line and "postgres (pods of data app=postgres)" in line
    assert "240." not in line and "100::" not in line


def a_pod_replaced(tmp_path) -> tuple:
    """(the bound policy before, after, the pods after, the moved pod): a random policy over random pods,
    then one pod of w1 replaced by a pod at 10.2.9.9."""
    rnd = random.Random(5)
    workloads = _workloads(rnd)
    text = _policy(rnd, workloads)
    pods = _pods(rnd, workloads)
    before = _compiled(text, _write_pods(tmp_path, pods, "before.yaml")).program
    moved = next(p for p in pods if p["metadata"]["name"].startswith("w1-"))
    moved["status"] = {"podIP": "10.2.9.9", "podIPs": [{"ip": "10.2.9.9"}]}
    after = _compiled(text, _write_pods(tmp_path, pods, "after.yaml")).program
    return before, after, pods, moved


def test_a_new_binding_of_the_same_policy_shares_its_rules_with_the_last(tmp_path):
    """Pods that came and went: the program compiled with the new binding holds the very rule objects of
    the last one (an engine then tells a change of pods alone at once), its own endpoints, and decides
    as a compile that shares nothing."""
    from anyplane.backends.classes import endpoint_rows, rules_alike
    from anyplane.compiler import pipeline

    before, after, pods, moved = a_pod_replaced(tmp_path)
    rnd = random.Random(5)  # a_pod_replaced's policy
    text = _policy(rnd, _workloads(rnd))
    assert after.acl is before.acl and after.rules is before.rules
    assert endpoint_rows(after) != endpoint_rows(before) and rules_alike(before, after)
    pipeline._BOUND_RULES.clear()
    fresh = _compiled(text, _write_pods(tmp_path, pods, "fresh.yaml")).program
    assert fresh.acl is not before.acl and fresh.acl == after.acl
    assert [(r.prefix, r.identity) for r in fresh.endpoints] == [(r.prefix, r.identity) for r in after.endpoints]
    other = _compiled(text + "deny any -> 10.99.0.0/16 priority 9\n",
                      _write_pods(tmp_path, pods, "other.yaml")).program
    assert other.acl is not after.acl, "another policy text shares nothing"


def test_a_switch_follows_pods_with_endpoint_entries_alone(tmp_path):
    """A pod replaced by another: the push writes the switch's endpoint tables (address to class, its
    ipcache) in one atomic write, as received by the P4Runtime server; the ACL is untouched, and the
    device decides as the interpreter for the new binding."""
    from anyplane.backends.p4.pipeline import Features, p4info
    from anyplane.backends.p4.proto import p4runtime_pb2
    from anyplane.backends.p4.push import push

    from ..p4server import Device, Server
    from ..backends.p4.test_p4 import _assert_agree, _flows

    before, after, pods, _ = a_pod_replaced(tmp_path)
    device = Device(p4info(Features()))
    with Server(device) as server:
        push(before, server.addr)
        result = push(after, server.addr)
        last = server.servicer.writes[-1]
    assert (result["inserted"], result["deleted"], result["modified"]) == (2, 2, 0), result
    assert last.atomicity == p4runtime_pb2.WriteRequest.DATAPLANE_ATOMIC
    acl = next(t.preamble.id for t in device.p4info.tables if t.preamble.alias == "acl")
    assert all(u.entity.table_entry.table_id != acl for u in last.updates)
    flows = _flows(after, 1500, seed=4)
    flows += [Flow(4, _address("10.2.9.9"), _address(p["status"]["podIP"]), 6, 40000, port)
              for p in pods for port in (80, 5432)]
    _assert_agree(after, device, flows)


def test_a_binding_larger_than_the_switchs_endpoint_tables_is_refused_before_any_write(tmp_path):
    from anyplane.backends.p4.engine import P4Error, build_all
    from anyplane.backends.p4.pipeline import Features

    text = "workload web { namespace shop labels app=web }\ndefault deny\nallow web -> web tcp 80\n"
    pods = [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": f"10.3.{k // 250}.{k % 250 + 1}"},
             "metadata": {"name": f"web-{k}", "namespace": "shop", "labels": {"app": "web"}}} for k in range(40)]
    program = _compiled(text, _write_pods(tmp_path, pods)).program
    build_all(program, Features(endpoint_size=64))
    with pytest.raises(P4Error, match="the policy needs 40 entries in .*endpoint.*the table holds 32"):
        build_all(program, Features(endpoint_size=32))


def test_the_kernels_tables_follow_a_new_binding_as_tables_built_afresh(tmp_path):
    """Pods leave, start, move to another address or take over one another's: the push's path when only
    the binding changed (backends/ebpf/rebind.py) writes the address tables alone, and the tables then
    decide every flow as tables built afresh for the new binding do, and classify every pod's address
    as they do (the kernel's three-level IPv4 array included)."""
    import copy

    from anyplane.backends.ebpf.addr4 import Addr4Table
    from anyplane.backends.ebpf.engine import build_all
    from anyplane.backends.ebpf.rebind import rebind
    from anyplane.ir.flowgen import FlowGen

    rebound = 0
    for seed in range(32):
        rnd = random.Random(seed)
        workloads = _workloads(rnd)
        text = _policy(rnd, workloads)
        if seed % 4:  # `any except W` is written as W's complement in addresses: rules that change with pods
            text = text.replace("any except ", "")
        pods = _pods(rnd, workloads)
        before = _compiled(text, _write_pods(tmp_path, pods, "before.yaml")).program
        later = [copy.deepcopy(p) for p in pods]
        rnd.shuffle(later)
        later = later[rnd.randint(0, 2):]  # some leave
        def moved(p, k):  # new addresses, of the families it had
            ip = f"10.2.77.{k}"
            p["status"] = {"podIP": ip, "podIPs": [{"ip": ip}] + (
                [{"ip": f"fd00:77::{k:x}"}] if len(p["status"]["podIPs"]) > 1 else [])}
            return p
        for k, p in enumerate(later[:2]):  # some move
            moved(p, k + 1)
        if len(later) > 3:  # one takes over another's addresses, which leaves
            later[2]["status"] = copy.deepcopy(later[3]["status"])
            del later[3]
        for k, p in enumerate(rnd.sample(later, min(2, len(later)))):  # some start: replicas of others
            twin = moved(copy.deepcopy(p), k + 10)
            twin["metadata"]["name"] += "-twin"
            later.append(twin)
        after = _compiled(text, _write_pods(tmp_path, later, "after.yaml")).program
        got = rebind(before, build_all(before), after)
        if got is None:
            # The rules changed with the binding (`any except W` is written as W's complement, in
            # addresses), or a pod has a class the tables do not have: the push builds afresh.
            continue
        rebound += 1
        fresh = build_all(after)
        flows = FlowGen(after, seed=seed).flows(400)
        addresses = {(4 if ":" not in a else 6, _address(a)) for p in pods + later
                     for a in [p["status"]["podIP"]] + [x["ip"] for x in p["status"].get("podIPs", [])]}
        flows += [Flow(f, a, b, 6, 40000, port) for f, a in addresses for g, b in addresses if f == g
                  for port in (80, 5432)][:3000]
        assert len(flows) > 400
        for f in flows:
            assert got.model.decide(f) == fresh.model.decide(f), (seed, f.text)
        table = Addr4Table.__new__(Addr4Table)
        table.data = got.tables.addr4
        for side, (mine, theirs) in enumerate(((got.model.src, fresh.model.src), (got.model.dst, fresh.model.dst))):
            for f, a in addresses | {(4, _address("10.2.77.200")), (4, _address("198.51.100.9"))}:
                cls = mine.lookup(f, a)
                assert mine.keys[cls] == theirs.keys[theirs.lookup(f, a)], (seed, side, a)
                if f == 4:
                    assert table.lookup(side, a) == cls, (seed, side, a)
        def trie(c):  # the IPv6 trie's keys, each with its class (as owner and CIDRs: numbers may differ)
            return sorted((key, (c.model.src, c.model.dst)[key[4]].keys[cls]) for key, cls in c.tables.addr6)
        assert trie(got) == trie(fresh), seed
        back = rebind(after, got, before)  # and back again, from what the first rebind worked out
        if back is not None:
            old = build_all(before)
            assert all(back.model.decide(f) == old.model.decide(f) for f in flows), seed
            assert trie(back) == trie(old), seed
    assert rebound >= 16, f"only {rebound} of 32 new bindings were written as address tables alone"


def test_push_watch_follows_pods_through_one_session_with_endpoint_entries_alone(tmp_path):
    """`push -t p4 --watch`: the first push reads the target and writes the policy; a pod replaced then
    takes one atomic write of endpoint entries alone, as received by the P4Runtime server, with no read
    of the target in between (the session remembers it); a broken policy is reported and leaves the
    target as it was; SIGTERM stops it cleanly. The device decides as the interpreter for the new pods."""
    import os
    import queue
    import subprocess
    import sys
    import threading

    from anyplane.backends.p4.pipeline import Features, p4info
    from anyplane.backends.p4.proto import p4runtime_pb2

    from ..p4server import Device, Server
    from ..backends.p4.test_p4 import _assert_agree, _flows

    before, after, pods, moved = a_pod_replaced(tmp_path)
    rnd = random.Random(5)
    text = _policy(rnd, _workloads(rnd))  # the text a_pod_replaced compiled
    assert _compiled(text, str(tmp_path / "after.yaml")).program.acl == after.acl
    policy = tmp_path / "policy.ap"
    policy.write_text(text)
    moved_ip = moved["status"]["podIP"]
    pods_file = tmp_path / "watched.yaml"
    pods_file.write_text((tmp_path / "before.yaml").read_text())
    device = Device(p4info(Features()))
    lines: queue.Queue = queue.Queue()
    with Server(device) as server:
        proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "push", str(policy), "--bind",
                                 str(pods_file), "-t", "p4", "--grpc-addr", server.addr, "--watch", "--interval",
                                 "0.05", "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

        def event(deadline_s: float = 120) -> dict:
            return json.loads(lines.get(timeout=deadline_s))
        try:
            first = event()
            assert first["event"] == "pushed" and first["inserted"] > 0 and not first["endpoints_only"], first
            reads = server.servicer.reads
            assert reads > 0 and len(server.servicer.writes) == 1
            swap = tmp_path / "swap.yaml"
            swap.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
            os.replace(swap, pods_file)  # the pods after: one replaced by a pod at a new address
            second = event()
            assert second["event"] == "pushed" and second["endpoints_only"], second
            assert (second["inserted"], second["deleted"], second["modified"]) == (2, 2, 0), second
            assert server.servicer.reads == reads  # no read: the session remembers the target
            last = server.servicer.writes[-1]
            assert last.atomicity == p4runtime_pb2.WriteRequest.DATAPLANE_ATOMIC
            tables = {t.preamble.id: t.preamble.alias for t in device.p4info.tables}
            assert {tables[u.entity.table_entry.table_id] for u in last.updates} <= \
                {"src_endpoint_v4", "dst_endpoint_v4", "src_endpoint_v6", "dst_endpoint_v6"}
            flows = _flows(after, 600, seed=4)
            flows += [Flow(4, _address(moved_ip), _address(p["status"]["podIP"]), 6, 40000, port)
                      for p in pods for port in (80, 5432)]
            _assert_agree(after, device, flows)
            writes = len(server.servicer.writes)
            policy.write_text(text + "allow ->\n")  # broken: reported, nothing written
            bad = event()
            assert bad["event"] == "error" and "policy.ap" in bad["message"], bad
            assert len(server.servicer.writes) == writes
            _assert_agree(after, device, flows[:200])
        finally:
            rc = stop_watcher(proc)
    assert rc == 0, proc.stderr.read()


def test_a_watcher_tries_a_target_that_was_down_again_and_says_so_once(tmp_path, monkeypatch):
    """`push --watch` started before its switch: the failed push is reported once, tried at every look
    although the files did not change, and lands once the target answers."""
    import socket

    from anyplane.backends.p4.pipeline import Features, p4info

    from ..p4server import Device, Server

    monkeypatch.setattr("anyplane.backends.p4.client.CONNECT_TIMEOUT_S", 2.0)  # how long a look waits for the target
    (tmp_path / "p.ap").write_text("service a { address 10.0.0.1/32 }\nservice b { address 10.0.0.2/32 }\n"
                                   "default deny\nallow a -> b tcp 80\n")
    with socket.socket() as s:  # a port nobody listens on, for now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    heard = []
    following = api.Following([str(tmp_path / "p.ap")], "p4", [], lambda kind, detail: heard.append((kind, detail)),
                              grpc_addr=f"127.0.0.1:{port}")
    try:
        assert not following.check() and not following.check()
        assert [kind for kind, _ in heard] == ["error"] and "no P4Runtime server" in str(heard[0][1])
        with Server(Device(p4info(Features())), port=port) as server:
            assert following.check()
            assert heard[-1][0] == "pushed" and heard[-1][1]["inserted"] > 0 and server.servicer.writes
            assert not following.check()  # nothing changed: nothing sent
    finally:
        following.close()
