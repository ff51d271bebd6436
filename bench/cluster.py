"""Figures for reading and writing cluster policies: import, map, export with its proof, and the peer.

    python bench/cluster.py [--pods 200,1000,5000] [--verify-up-to 5000] [--nca-sanity-up-to 1000]
                            [--export-up-to 5000] [--istio-up-to 5000]
                            [--format json] [--no-nca]

A cluster of N pods in N/20 namespaces (tiers web, api, db, cache, worker; namespaces in teams of
three, prod and dev), each namespace with twelve NetworkPolicies in the usual shapes (default deny,
DNS egress to kube-system, tier to tier on named ports both ways, monitoring by namespace labels,
ipBlocks with `except`, a cross-namespace peer by namespace and pod labels); plus, for the Istio
figures, Services (HTTP on 8080) and per namespace an ALLOW AuthorizationPolicy (GET /api/* from the
namespace's principals) and a DENY of /admin/*. Each figure is one step in this process:

    import      manifests -> policy text -> IR (compiler/importers, parse, check, lower)
    map         who-can-reach-whom between every pair of identities (Z3 per pair class)
    redundancy  `verify` on the manifests: what each NetworkPolicy and rule adds
    export      compile -t k8s of the imported policy, read back and proved
    istio       the same cluster with Istio resources: import, then compile -t istio and the proof
    nca         network-config-analyzer's connectivity and redundancy on the same NetworkPolicies
                (from .nca/, the side environment `make nca` installs), for comparison

Anchor: NCA answered the issue's 5-pod scenario in about 0.4 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anyplane.compiler import api  # noqa: E402
from anyplane.compiler.importers import IMPORTED  # noqa: E402
from anyplane.compiler.importers.k8s import convert  # noqa: E402
from anyplane.compiler.launch import tune_gc  # noqa: E402
from anyplane.compiler.pipeline import compile_sources, load  # noqa: E402

APPS = ("web", "api", "db", "cache", "worker")
PORTS = {"web": ("http", 8080), "api": ("http", 8080), "db": ("pg", 5432), "cache": ("redis", 6379),
         "worker": ("http", 8080)}
NCA = ROOT / ".nca" / "bin" / "nca"
PODS_PER_NAMESPACE = 20


def _np(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _app(*apps: str) -> dict:
    if len(apps) == 1:
        return {"matchLabels": {"app": apps[0]}}
    return {"matchExpressions": [{"key": "app", "operator": "In", "values": list(apps)}]}


def _namespace_policies(ns: str, team: str) -> list[dict]:
    """Twelve NetworkPolicies in the shapes clusters have: default deny both ways, DNS egress, tier to
    tier on named ports (both directions), monitoring from a namespace by its labels, an ipBlock with
    `except`, and a cross-namespace peer (namespace and pod selectors together)."""
    outside = {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}
    return [
        _np(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _np(ns, "allow-dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        _np(ns, "web-from-outside", {"podSelector": _app("web"), "ingress": [{
            "from": [outside], "ports": [{"port": "http"}]}]}),
        _np(ns, "api-from-web", {"podSelector": _app("api"), "ingress": [{
            "from": [{"podSelector": _app("web")}], "ports": [{"port": "http"}]}]}),
        _np(ns, "db-from-api-worker", {"podSelector": _app("db"), "ingress": [{
            "from": [{"podSelector": _app("api", "worker")}], "ports": [{"port": "pg"}]}]}),
        _np(ns, "cache-from-api", {"podSelector": _app("cache"), "ingress": [{
            "from": [{"podSelector": _app("api")}], "ports": [{"port": "redis"}]}]}),
        _np(ns, "web-egress", {"podSelector": _app("web"), "policyTypes": ["Egress"], "egress": [{
            "to": [{"podSelector": _app("api")}], "ports": [{"port": 8080}]}]}),
        _np(ns, "api-egress", {"podSelector": _app("api"), "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": _app("db")}], "ports": [{"port": 5432}]},
            {"to": [{"podSelector": _app("cache")}], "ports": [{"port": 6379}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": _app("api")}],
             "ports": [{"port": 8080}]}]}),
        _np(ns, "worker-egress", {"podSelector": _app("worker"), "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": _app("db")}], "ports": [{"port": 5432}]},
            {"to": [outside], "ports": [{"port": 443}]}]}),
        _np(ns, "monitoring", {"podSelector": {}, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}], "ports": [{"port": 9090}]}]}),
        _np(ns, "api-from-team", {"podSelector": _app("api"), "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"team": team, "env": "prod"}},
                      "podSelector": _app("api")}], "ports": [{"port": "http"}]}]}),
        _np(ns, "partner-blocks", {"podSelector": _app("api"), "ingress": [{
            "from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
            "ports": [{"port": 8080}]}]}),
    ]


def cluster(pods: int, mesh: bool) -> list[dict]:
    """N pods in N/20 namespaces (teams of three namespaces, prod and dev), five tiers each, twelve
    NetworkPolicies per namespace; kube-system (DNS) and monitoring (prometheus) beside them."""
    spaces = max(1, pods // PODS_PER_NAMESPACE)
    out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{k}", "labels": {
        "team": f"t{k // 3}", "env": "prod" if k % 2 == 0 else "dev"}}} for k in range(spaces)]
    out += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring", "labels": {"team": "ops"}}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}]
    for n in range(pods):
        k, i = n // PODS_PER_NAMESPACE % spaces, n % PODS_PER_NAMESPACE
        app = APPS[i % len(APPS)]
        port_name, port = PORTS[app]
        out.append({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"{app}-{n}", "namespace": f"ns{k}",
                                 "labels": {"app": app, "version": f"v{1 + i % 2}", "pod-template-hash": f"h{i}"}},
                    "spec": {"serviceAccountName": app, "containers": [{"name": "c", "ports": [
                        {"name": port_name, "containerPort": port}, {"name": "metrics", "containerPort": 9090}]}]},
                    "status": {"podIP": f"10.{n // 60000}.{n // 250 % 240}.{1 + n % 250}"}})
    out += [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prom", "namespace": "monitoring",
                                                              "labels": {"app": "prometheus"}},
             "spec": {"containers": [{"name": "c"}]}, "status": {"podIP": "10.250.0.5"}}]
    out += [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"coredns-{j}", "namespace": "kube-system",
                                                              "labels": {"k8s-app": "kube-dns"}},
             "spec": {"containers": [{"name": "c", "ports": [{"name": "dns", "containerPort": 53,
                                                               "protocol": "UDP"}]}]},
             "status": {"podIP": f"10.250.1.{10 + j}"}} for j in range(2)]
    for k in range(spaces):
        ns = f"ns{k}"
        out += _namespace_policies(ns, f"t{k // 3}")
        if mesh:
            out += [
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                 "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                              {"name": "tcp-metrics", "port": 9090}]}}
                for app in APPS]
            out += [
                {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "api-get", "namespace": ns},
                 "spec": {"selector": {"matchLabels": {"app": "api"}}, "rules": [
                     {"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/web"]}}],
                      "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"]}}]},
                     {"from": [{"source": {"namespaces": ["monitoring"]}}], "to": [{"operation": {"ports": ["9090"]}}]}]}},
                {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "no-admin", "namespace": ns},
                 "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"],
                                                                                "ports": ["8080"]}}]}]}}]
    return out


def _timed(fn, what: str = ""):
    t = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t
    if what:
        print(f"  {what}: {took:.2f} s", file=sys.stderr, flush=True)
    return out, took


def _nca(args: list[str], cwd: Path, timeout: float) -> float | None:
    """Seconds network-config-analyzer took (None when it failed; -timeout when it ran out of time)."""
    t = time.perf_counter()
    try:
        done = subprocess.run([str(NCA)] + args, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -timeout
    if done.returncode not in (0, 1) and not done.stdout:
        return None
    return time.perf_counter() - t


def run(pods: int, nca: bool, verify_up_to: int, nca_timeout: float, export_up_to: int = 5000,
        sanity_up_to: int = 1000, istio_up_to: int = 5000) -> dict:
    row: dict = {"pods": pods}
    objects = cluster(pods, mesh=False)
    text = yaml.safe_dump_all(objects)
    row["networkpolicies"] = sum(o["kind"] == "NetworkPolicy" for o in objects)
    row["namespaces"] = sum(o["kind"] == "Namespace" for o in objects)
    imported, row["import_s"] = _timed(lambda: convert([("cluster.yaml", text)]), f"{pods} pods: read and convert")
    compiled, t = _timed(lambda: api.Compiled(None, None, compile_sources([(IMPORTED, imported.text)]).program, None,
                                              selectors=imported.selectors), "compile")
    row["import_s"] += t
    row["rules"] = len(compiled.program.rules)
    row["identities"] = sum(1 for i in compiled.program.identities if i.kind == "service")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / "cluster.yaml"
        path.write_text(text)
        for name, kinds in (("ns.yaml", ("Namespace",)), ("pods.yaml", ("Pod",)), ("policies.yaml", ("NetworkPolicy",))):
            (d / name).write_text(yaml.safe_dump_all([o for o in objects if o["kind"] in kinds]))
        loaded = load([str(path)])
        graph, row["map_s"] = _timed(lambda: api.connectivity(loaded), "map")
        row["map_pairs"], row["map_asked"] = graph["pairs"]["all"], graph["pairs"]["asked"]
        row["redundancy_s"] = None
        if pods <= verify_up_to:
            _, row["redundancy_s"] = _timed(lambda: subprocess.run(
                [sys.executable, "-m", "anyplane.compiler", "verify", str(path)], capture_output=True), "verify")
        row.update(export_k8s_s=None, export_k8s_lines=None, export_k8s_proved=None, import_istio_s=None,
                   istio_rules=None)
        row["networkpolicies_lines"] = (d / "policies.yaml").read_text().count("\n")
        if pods <= export_up_to:  # the export and its proof, read back through the importer
            out, t = _timed(lambda: api.compile_target(compiled, "k8s"), "-t k8s")
            row["export_k8s_lines"] = sum(a.data.count("\n") for a in out.artifacts
                                          if a.path.endswith(".yaml") and isinstance(a.data, str))
            proof, t2 = _timed(lambda: api.prove_export(compiled, "k8s", out), "its proof")
            row["export_k8s_s"], row["export_k8s_proved"] = t + t2, proof.proved
        # As workloads (`import --workloads`): selected by the cluster's labels, no addresses, then -t k8s.
        wl, t = _timed(lambda: convert([("cluster.yaml", text)], workloads=True), "import --workloads")
        wl_compiled, t2 = _timed(lambda: api.Compiled(None, None, compile_sources([(IMPORTED, wl.text)]).program, None),
                                 "compile")
        row["import_workloads_s"] = t + t2
        row["workloads"] = sum(1 for i in wl_compiled.program.identities if i.selector is not None)
        if pods <= export_up_to:
            out, t = _timed(lambda: api.compile_target(wl_compiled, "k8s"), "workloads -t k8s")
            row["workloads_k8s_lines"] = sum(a.data.count("\n") for a in out.artifacts
                                             if a.path.endswith(".yaml") and a.path != "identities.yaml")
            proof, t2 = _timed(lambda: api.prove_export(wl_compiled, "k8s", out), "its proof")
            row["workloads_k8s_s"], row["workloads_k8s_proved"] = t + t2, proof.proved
        if pods <= istio_up_to:  # the Istio import still visits every pair of identities once
            mesh_text = yaml.safe_dump_all(cluster(pods, mesh=True))
            mesh_imported, t = _timed(lambda: convert([("mesh.yaml", mesh_text)]))
            mesh_compiled, t2 = _timed(lambda: api.Compiled(None, None, compile_sources(
                [(IMPORTED, mesh_imported.text)]).program, None))
            row["import_istio_s"], row["istio_rules"] = t + t2, len(mesh_compiled.program.rules)
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if nca and NCA.exists():
            lists = ["--pod_list", str(d / "pods.yaml"), "--ns_list", str(d / "ns.yaml")]
            row["nca_connectivity_s"] = _nca(["--connectivity", str(d / "policies.yaml"), "--output_format", "txt"]
                                             + lists, d, nca_timeout)
            row["nca_redundancy_s"] = _nca(["--sanity", str(d / "policies.yaml")] + lists, d, nca_timeout) \
                if pods <= sanity_up_to else None
    return row


def _s(value) -> str:
    if value is None:
        return "-"
    return f">{-value:.0f} s" if value < 0 else f"{value:.2f} s"


def _proved(value) -> str:
    return "not exported" if value is None else "proved" if value else "NOT PROVED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="200,1000,5000")
    ap.add_argument("--format", choices=("txt", "json"), default="txt")
    ap.add_argument("--no-nca", action="store_true")
    ap.add_argument("--export-up-to", type=int, default=5000,
                    help="export (-t k8s) with its proof up to so many pods")
    ap.add_argument("--istio-up-to", type=int, default=5000,
                    help="import the Istio cluster up to so many pods")
    ap.add_argument("--nca-sanity-up-to", type=int, default=1000,
                    help="run NCA's sanity check (the peer of `verify`) on clusters of at most so many pods")
    ap.add_argument("--verify-up-to", type=int, default=5000,
                    help="run `verify` on clusters of at most so many pods")
    ap.add_argument("--nca-timeout", type=float, default=900, help="seconds each NCA run may take")
    args = ap.parse_args()
    tune_gc()  # as the CLI runs
    rows = []
    for n in (int(x) for x in args.pods.split(",")):
        rows.append(run(n, not args.no_nca, args.verify_up_to, args.nca_timeout, args.export_up_to,
                        args.nca_sanity_up_to, args.istio_up_to))
        if args.format == "txt":
            r = rows[-1]
            nca = (f"\n      nca: connectivity {_s(r['nca_connectivity_s'])}, sanity {_s(r.get('nca_redundancy_s'))}"
                   if "nca_connectivity_s" in r else "")
            print(f"{r['pods']:>5} pods, {r['namespaces']} namespaces, {r['networkpolicies']} NetworkPolicies: "
                  f"import {r['import_s']:.2f} s ({r['identities']} identities, {r['rules']} rules), "
                  f"map {r['map_s']:.2f} s ({r['map_asked']} of {r['map_pairs']} pairs asked), "
                  f"verify {_s(r['redundancy_s'])}, -t k8s + proof {_s(r['export_k8s_s'])} "
                  f"({r['export_k8s_lines']} lines for {r['networkpolicies_lines']}, {_proved(r['export_k8s_proved'])}); "
                  f"with Istio: import {_s(r['import_istio_s'])} ({r['istio_rules']} rules); "
                  f"as workloads: import {_s(r['import_workloads_s'])} ({r['workloads']} workloads), -t k8s + proof "
                  f"{_s(r.get('workloads_k8s_s'))} ({r.get('workloads_k8s_lines')} lines, "
                  f"{_proved(r.get('workloads_k8s_proved'))}); "
                  f"peak {r['peak_rss_mib']} MiB{nca}", flush=True)
    if args.format == "json":
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
