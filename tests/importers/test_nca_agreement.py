"""anyplane against network-config-analyzer on a corpus of Kubernetes policies (tests/nca/).

One cluster (tests/nca/namespaces.yaml, pods.yaml: 5 namespaces, 8 pods with named ports) and
34 scenarios of NetworkPolicies: the common recipes and tricky cases. For each scenario both
tools give the connectivity of every pair of endpoints (pods, and the address ranges outside the
cluster cut where ipBlocks begin and end); for pairs of scenarios, equivalence and the semantic
diff. Every answer must agree, except the differences docs/import.md states (DIFFERENCES below).

NCA is installed by `make nca` in a virtualenv of its own; in CI the test fails rather than skip.
"""

from __future__ import annotations

import ipaddress
import re
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anyplane.compiler.pipeline import load
from anyplane.compiler import api
from anyplane.ir.owners import ownership

from .. import nca_peer as peer
from ..nca_peer import Conns

HERE = Path(__file__).resolve().parents[1] / "nca"
PODS, NAMESPACES = HERE / "pods.yaml", HERE / "namespaces.yaml"
SCENARIOS = sorted((HERE / "scenarios").glob("*.yaml"))

#: Scenarios where the tools differ on purpose (each stated in docs/import.md): the reason, and what
#: the disagreements must be (None: NCA refuses the input).
DIFFERENCES = {
    "18-types-ignore-egress.yaml": (
        "NCA refuses an egress section that policyTypes leaves out; the API server accepts the policy and "
        "the section has no effect", None),
    "15-exists.yaml": (
        "NCA 2.1 reads a peer that pairs a namespaceSelector with a podSelector using Exists or DoesNotExist "
        "as if the namespaceSelector named the policy's own namespace; the API selects matching pods in "
        "every matching namespace",
        lambda lines: all(" -> data/db: anyplane tcp 5432, nca nothing" in x and not x.startswith("data/")
                          for x in lines)),
}

#: (old, new) pairs asked for equivalence and the semantic diff.
DIFF_PAIRS = [
    ("26-duplicate.yaml", "09-named-port-ingress.yaml"),      # equivalent: a copy, and a named port
    ("27-shadowed.yaml", "11-port-range.yaml"),
    ("19-union.yaml", "05-allow-from-namespace.yaml"),
    ("01-deny-all-ingress.yaml", "16-allow-all-ingress.yaml"),
    ("16-allow-all-ingress.yaml", "33-no-policies.yaml"),     # equivalent: isolation that admits all
    ("31-selector-matches-nothing.yaml", "01-deny-all-ingress.yaml"),
    ("07-egress-dns-only.yaml", "03-deny-all-both.yaml"),
    ("21-egress-internet.yaml", "10-named-port-egress.yaml"),
    ("08-ipblock-except.yaml", "22-ipblock-pod-address.yaml"),
    ("12-pod-and-namespace.yaml", "13-pod-or-namespace.yaml"),
    ("28-zero-trust.yaml", "02-deny-all-egress.yaml"),
    ("24-ports-any-peer.yaml", "30-overlapping-blocks.yaml"),
    ("14-notin.yaml", "06-namespace-expression.yaml"),
    ("33-no-policies.yaml", "31-selector-matches-nothing.yaml"),  # equivalent: the ghost selects nothing
]

pytestmark = pytest.mark.peer

if peer.nca_binary() is None:
    if os.environ.get("CI") == "true":
        pytest.fail("network-config-analyzer is not installed: `make nca` installs it", pytrace=False)
    pytest.skip("network-config-analyzer is not installed (make nca)", allow_module_level=True)


def _pods_at() -> dict:
    """Each pod's address -> NCA's "namespace/name"."""
    import yaml
    return {ipaddress.ip_address(pod["status"]["podIP"]): f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            for pod in yaml.safe_load(PODS.read_text())["items"]}


def _between_two(program, addresses: list) -> Conns:
    """What passes from one pod of an identity to another, by the interpreter on every port cell."""
    from anyplane.backends.kube.export import OTHER_PROBES, _cells
    from anyplane.ir.flow import Flow
    from anyplane.ir.interp import evaluate

    src, dst = (int(a) for a in addresses)
    tcp, udp = [], []
    for proto, out in ((6, tcp), (17, udp)):
        for lo, hi in _cells(program):  # destination ports, cut where the rules cut them
            if hi and evaluate(program, Flow(4, src, dst, proto, 49152, max(lo, 1))).verdict == "allow":
                out.append((lo, hi))
    other = any(evaluate(program, Flow(4, src, dst, number, icmp_type=icmp, icmp_code=0 if icmp is not None else None))
                .verdict == "allow" for number, icmp in OTHER_PROBES[4])
    return Conns(tcp=tuple(tcp), udp=tuple(udp), other=other)


def _pod_names() -> dict[str, str]:
    """anyplane's service name of each pod -> NCA's "namespace/name"."""
    import yaml
    out = {}
    for pod in yaml.safe_load(PODS.read_text())["items"]:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        out[f"{ns}_{name.replace('.', '__')}"] = f"{ns}/{name}"
    return out


def _flows_to_conns(flows: list[dict]) -> Conns:
    out = Conns()
    for f in flows:
        assert f["all"], f"a pod pair must be all-or-nothing per cell, got {f}"
        if f["protocol"] == "any":
            return Conns.everything()
        if f["protocol"] == "other":
            out = out.union(Conns(other=True))
            continue
        ports = tuple(tuple(r) for r in f.get("ports", [[0, 65535]]))
        assert f["protocol"] in (6, 17), f"the importer names only TCP and UDP, got {f}"
        out = out.union(Conns(tcp=ports) if f["protocol"] == 6 else Conns(udp=ports))
    return out


class Ours:
    """anyplane's answers on one scenario (pods + namespaces + policies). An identity may stand for
    several pods that no policy tells apart: its edges hold for each of its pods, and between two of
    its pods the interpreter answers, cell by cell (the edge to itself also carries each pod's traffic
    to itself, which Kubernetes always allows)."""

    def __init__(self, *scenarios: Path):
        compiled = load([str(NAMESPACES), str(PODS)] + [str(s) for s in scenarios])
        program = compiled.program
        result = api.connectivity(compiled)
        at = _pods_at()
        prefixes = ownership(program).prefixes
        self.kind = {n["name"]: n["kind"] for n in result["nodes"]}
        self.endpoint, self.members = {}, {}
        for node in self.kind:
            nets = sorted(ipaddress.ip_network(str(p)) for p in prefixes[node])
            if self.kind[node] != "external" and all(n.num_addresses == 1 and n.network_address in at for n in nets):
                self.members[node] = [at[n.network_address] for n in nets]
                for pod in self.members[node]:
                    self.endpoint[pod] = pod
            else:
                assert self.kind[node] == "external" and all(n.version == 4 for n in nets), node
                self.endpoint[node] = ("range", nets[0].network_address, nets[-1].broadcast_address)
        self.addresses = {a: name for a, name in at.items()}
        self.pairs = {}
        for e in result["edges"]:
            srcs = self.members.get(e["src"], [self.endpoint.get(e["src"])])
            dsts = self.members.get(e["dst"], [self.endpoint.get(e["dst"])])
            if e["src"] == e["dst"] and len(srcs) > 1:
                conns = _between_two(program, [a for a, n in at.items() if n in srcs][:2])
            elif e["src"] == e["dst"]:
                continue  # one pod to itself
            else:
                conns = _flows_to_conns(e["flows"])
            for s in srcs:
                for d in dsts:
                    if s != d:
                        self.pairs[(s, d)] = conns

    def blocks(self, rng) -> list:
        """Our outside blocks that one of NCA's ranges meets (NCA cuts its ranges where the policies'
        ipBlocks and, for exported policies, the pods' addresses fall; ours fall where the imported
        ipBlocks do)."""
        _, lo, hi = rng
        if lo == hi and self.pod_at(lo) is not None:
            return []  # a range that is one pod's address: the pod owns it (a pod is never an ipBlock peer)
        met = [e for e in self.endpoint.values() if isinstance(e, tuple) and e[1] <= hi and lo <= e[2]]
        assert met, f"NCA's range {lo}-{hi} meets none of anyplane's outside blocks"
        return met

    def pod_at(self, address):
        return self.addresses.get(address)

    def expand(self, theirs: dict) -> dict:
        """NCA's pairs over our endpoints: each of its ranges stands for the blocks it meets, and every
        part of a block must be answered alike."""
        out, parts = {}, {}
        for (s, d), conns in theirs.items():
            for ss in self.blocks(s) if isinstance(s, tuple) else [s]:
                for dd in self.blocks(d) if isinstance(d, tuple) else [d]:
                    out[(ss, dd)] = out.get((ss, dd), Conns()).union(conns)
                    parts.setdefault((ss, dd), set()).add(conns.normal())
        split = {k: v for k, v in parts.items() if len(v) > 1}
        assert not split, f"NCA answers parts of one of anyplane's outside blocks apart: {split}"
        return out

    def compared_pairs(self):
        """Every ordered pair NCA speaks about: two endpoints, not a pod to itself, not outside to outside."""
        ends = sorted(set(self.endpoint.values()), key=str)
        return [(s, d) for s in ends for d in ends
                if s != d and not (isinstance(s, tuple) and isinstance(d, tuple))]


def _disagreements(ours: Ours, theirs: dict) -> list[str]:
    theirs = ours.expand(theirs)
    out = []
    for pair in ours.compared_pairs():
        a, b = ours.pairs.get(pair, Conns()).normal(), theirs.get(pair, Conns()).normal()
        if a != b:
            out.append(f"{pair[0]} -> {pair[1]}: anyplane {a.text()}, nca {b.text()}")
    return out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_connectivity_agrees_with_nca(scenario: Path):
    ours = Ours(scenario)
    reason, expected = DIFFERENCES.get(scenario.name, (None, None))
    if reason and expected is None:
        r = peer.nca(["--connectivity", str(scenario), "--pod_list", str(PODS), "--ns_list", str(NAMESPACES)], HERE)
        assert "Error" in r.stdout + r.stderr, f"NCA now accepts {scenario.name}: {reason}"
        return
    theirs = peer.connectivity(scenario, PODS, NAMESPACES)
    assert theirs, "NCA listed no connection at all"
    lines = _disagreements(ours, theirs)
    if reason:
        assert lines and expected(lines), f"the known difference ({reason}) changed:\n" + "\n".join(lines)
    else:
        assert not lines, "\n".join(lines)


def _policy_dir(tmp_path: Path, scenario: str, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    for f in (NAMESPACES, PODS, HERE / "scenarios" / scenario):
        shutil.copy(f, d / f.name)
    return d


def _anyplane(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anyplane.compiler", *args], capture_output=True, text=True,
                          timeout=300)


def _changes(text: str) -> dict[str, dict]:
    """NCA's semantic diff as {"added"|"removed": {(src, dst): Conns}}."""
    out: dict[str, dict] = {"added": {}, "removed": {}}
    section = None
    for line in text.splitlines():
        if line.startswith("Added connections"):
            section = "added"
        elif line.startswith("Removed connections"):
            section = "removed"
        elif line.startswith(("New connections", "Lost connections")):
            raise AssertionError(f"NCA reports a change of topology, not compared here: {line}")
        elif section and " => " in line:
            src, rest = line.split(" => ", 1)
            dst, conns = rest.split(" : ", 1)
            key = (peer.endpoint(src.split("[")[0]), peer.endpoint(dst.split("[")[0]))
            out[section][key] = out[section].get(key, Conns()).union(peer.parse_conns(conns))
    return out


@pytest.mark.parametrize("old,new", DIFF_PAIRS, ids=lambda p: p.split("-")[0] if isinstance(p, str) else p)
def test_equivalence_and_diff_agree_with_nca(tmp_path: Path, old: str, new: str):
    old_dir, new_dir = _policy_dir(tmp_path, old, "old"), _policy_dir(tmp_path, new, "new")
    cluster = ["--pod_list", str(PODS), "--ns_list", str(NAMESPACES)]
    equiv = peer.nca(["--equiv", str(HERE / "scenarios" / new), "--base_np_list", str(HERE / "scenarios" / old)]
                     + cluster, HERE)
    ours = _anyplane("diff", str(old_dir), str(new_dir), "--format", "json")
    assert ours.returncode in (0, 1) and ours.stdout.startswith("{"), ours.stdout + ours.stderr
    report = json.loads(ours.stdout)
    assert (report["relation"] == "equivalent") == (equiv.returncode == 0), \
        f"anyplane: {report['relation']}; nca: {equiv.stdout}"
    assert (ours.returncode == 0) == (equiv.returncode == 0)

    # Every class anyplane reports: its witness is a flow NCA lists as added (or removed).
    diff = peer.nca(["--semantic_diff", str(HERE / "scenarios" / new), "--base_np_list",
                     str(HERE / "scenarios" / old), "--output_format", "txt_no_fw_rules"] + cluster, HERE)
    theirs = _changes(diff.stdout)
    scene = Ours(HERE / "scenarios" / old, HERE / "scenarios" / new)  # (for the cuts of both)
    expanded = {k: scene.expand(v) for k, v in theirs.items()}
    owner = _owner_of(scene)
    for section, key in (("added", "newly_allowed"), ("removed", "newly_denied")):
        for c in report[key]:
            w = c["witness"]
            pair = (owner(w["src"]), owner(w["dst"]))
            conns = expanded[section].get(pair, Conns()).normal()
            port = w.get("dport") or 0
            hit = (w["proto"] == 6 and any(lo <= port <= hi for lo, hi in conns.tcp)) or \
                  (w["proto"] == 17 and any(lo <= port <= hi for lo, hi in conns.udp)) or \
                  (w["proto"] not in (6, 17) and conns.other)
            assert hit, f"anyplane says {section}: {w['flow']}; NCA's {section} for {pair}: {conns.text()}"

    # The pairs of pods that change: anyplane's map --diff against NCA's semantic diff. (Outside
    # addresses are cut where each version's ipBlocks fall, so their nodes differ between versions.)
    mapped = _anyplane("map", "--diff", str(old_dir), str(new_dir), "--format", "json")
    assert mapped.returncode in (0, 1), mapped.stderr
    old_scene, new_scene = Ours(HERE / "scenarios" / old), Ours(HERE / "scenarios" / new)
    pods = {**old_scene.members, **new_scene.members}
    changed = {(s, d) for e in json.loads(mapped.stdout)["edges"] if e["change"] != "same"
               and e["src"] in pods and e["dst"] in pods for s in pods[e["src"]] for d in pods[e["dst"]] if s != d}
    compared = {(s, d) for s, d in scene.compared_pairs() if isinstance(s, str) and isinstance(d, str)}
    theirs_changed = {p for v in expanded.values() for p in v} & compared
    assert changed & compared == theirs_changed, (sorted(map(str, changed & compared ^ theirs_changed)))


def _owner_of(scene: Ours):
    pods = {}
    import yaml
    for pod in yaml.safe_load(PODS.read_text())["items"]:
        pods[ipaddress.ip_address(pod["status"]["podIP"])] = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    def owner(address: str):
        a = ipaddress.ip_address(address)
        if a in pods:
            return pods[a]
        return next(e for e in scene.endpoint.values() if isinstance(e, tuple) and e[1] <= a <= e[2])
    return owner


def _identity_of(identities: dict, address: str) -> str:
    """The identity of the export's contract whose addresses hold a pod's address."""
    a = ipaddress.ip_address(address)
    return next(name for name, spec in identities.items()
                if any(a in ipaddress.ip_network(n) for n in spec["addresses"]))


def _their_findings(scenario: Path) -> set:
    """NCA's sanity check as {("policy", "ns/name")} and {("rule", "ns/name", direction, number)}."""
    r = peer.nca(["--sanity", str(scenario), "--pod_list", str(PODS), "--ns_list", str(NAMESPACES)], HERE)
    out, vacuous = set(), False
    for line in (r.stdout + r.stderr).splitlines():
        line = line.strip()
        if m := re.match(r"NetworkPolicy (\S+) is (redundant|empty)", line):
            out.add(("policy", m.group(1)))
        elif m := re.match(r"(Ingress|Egress) rule no\. (\d+) in NetworkPolicy (\S+) (is redundant|does not select)", line):
            out.add(("rule", m.group(3), m.group(1).lower(), int(m.group(2))))
        elif "is vacuous" in line:
            vacuous = True
        elif re.match(r"(NetworkPolicy|Ingress rule|Egress rule) ", line):
            raise AssertionError(f"an NCA sanity finding not compared here: {line}")
    if vacuous:  # the whole configuration allows what no policy would: each of its policies can go
        import yaml
        out |= {("policy", f"{d['metadata'].get('namespace', 'default')}/{d['metadata']['name']}")
                for d in yaml.safe_load_all(scenario.read_text()) if d and d.get("kind") == "NetworkPolicy"}
    return out


def _our_findings(scenario: Path) -> set:
    done = _anyplane("verify", str(NAMESPACES), str(PODS), str(scenario), "--format", "json")
    assert done.returncode in (0, 1) and done.stdout.startswith("{"), done.stdout + done.stderr
    out = set()
    for f in json.loads(done.stdout)["findings"]:
        if m := re.match(r"(ingress|egress) rule (\d+) of NetworkPolicy (\S+) ", f["message"]):
            out.add(("rule", m.group(3), m.group(1), int(m.group(2))))
        elif m := re.match(r"NetworkPolicy (\S+) is equivalent to NetworkPolicy (\S+) here", f["message"]):
            out |= {("policy", m.group(1)), ("policy", m.group(2))}  # NCA calls each of the two redundant
        elif m := re.match(r"NetworkPolicy (\S+) ", f["message"]):
            out.add(("policy", m.group(1)))
        else:
            raise AssertionError(f"a finding on imported manifests that is not about a policy or rule: {f}")
    return out


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if DIFFERENCES.get(s.name, (0, 1))[1] is not None],
                         ids=lambda p: p.stem)
def test_redundancy_findings_agree_with_nca(scenario: Path):
    assert _our_findings(scenario) == _their_findings(scenario)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_exported_policies_read_by_nca_give_the_same_connectivity(tmp_path: Path, scenario: Path):
    """Import, export (`compile -t k8s`), and let NCA read the exported NetworkPolicies over the same
    pods labelled as the export's contract says: NCA's connectivity must be anyplane's of the original.
    The export selects with the cluster's own labels, `DoesNotExist` included, so NCA's misreading in
    15-exists (a namespaceSelector beside such a podSelector) arises in the export too, exactly there."""
    import yaml
    out = tmp_path / "out"
    done = _anyplane("compile", str(NAMESPACES), str(PODS), str(scenario), "-t", "k8s", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "proved: k8s (read back through the importer)" in done.stderr
    identities = yaml.safe_load((out / "identities.yaml").read_text())["identities"]
    cluster = yaml.safe_load(PODS.read_text())
    renamed = {}
    for pod in cluster["items"]:
        ident = _identity_of(identities, pod["status"]["podIP"])
        renamed[f"{identities[ident]['namespace']}/{pod['metadata']['name']}"] = \
            f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        pod["metadata"]["namespace"] = identities[ident]["namespace"]
        pod["metadata"]["labels"] = dict(identities[ident]["labels"])
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(cluster))
    spaces = yaml.safe_load(NAMESPACES.read_text())
    spaces["items"].append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    (tmp_path / "namespaces.yaml").write_text(yaml.safe_dump(spaces))
    theirs = peer.connectivity(out / "networkpolicies.yaml", tmp_path / "pods.yaml", tmp_path / "namespaces.yaml")
    theirs = {(renamed.get(s, s), renamed.get(d, d)): c for (s, d), c in theirs.items()}
    lines = _disagreements(Ours(scenario), theirs)
    if scenario.name == "15-exists.yaml":
        assert lines and DIFFERENCES[scenario.name][1](lines), "\n".join(lines)
    else:
        assert not lines, "\n".join(lines)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.name in ("28-zero-trust.yaml", "29-monitoring-scrape.yaml",
                                                                       "08-ipblock-except.yaml", "13-pod-or-namespace.yaml")],
                         ids=lambda p: p.stem)
def test_exported_with_the_clusters_own_labels_nca_reads_the_cluster_unchanged(tmp_path: Path, scenario: Path):
    """A deployment file maps each identity to its pods' own namespace and labels: the exported
    policies then apply to the cluster as it is (no relabelling), and NCA's connectivity over the
    original pods is anyplane's of the original policies."""
    import yaml
    workloads = {}
    scene = Ours(scenario)
    pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["metadata"]
            for p in yaml.safe_load(PODS.read_text())["items"]}
    for identity, members in scene.members.items():  # an identity's pods: the labels they all carry
        metas = [pods[m] for m in members]
        shared = {k: v for k, v in metas[0]["labels"].items() if all(m["labels"].get(k) == v for m in metas)}
        workloads[identity] = {"namespace": metas[0]["namespace"], "labels": shared}
    dep = tmp_path / "deployment.yaml"
    dep.write_text(yaml.safe_dump({"kubernetes": {"workloads": workloads}}))
    out = tmp_path / "out"
    done = _anyplane("compile", str(NAMESPACES), str(PODS), str(scenario), "-t", "k8s", "--deployment", str(dep),
                     "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "proved" in done.stderr
    nps = [d for d in yaml.safe_load_all((out / "networkpolicies.yaml").read_text()) if d]
    assert {d["metadata"]["namespace"] for d in nps} <= {w["namespace"] for w in workloads.values()}
    theirs = peer.connectivity(out / "networkpolicies.yaml", PODS, NAMESPACES)
    lines = _disagreements(Ours(scenario), theirs)
    assert not lines, "\n".join(lines)
