"""Figures for reading and writing cluster policies: import, map, export with its proof, and the peer.

    python bench/cluster.py [--pods 20,100,200] [--format json] [--no-nca]

A cluster of N pods in N/10 namespaces (apps web, api, db, cache, worker), each namespace with a
default-deny NetworkPolicy, an allow from the namespace's own web pods, an allow from a monitoring
namespace and an ipBlock egress; plus, for the Istio figures, Services (HTTP on 8080) and per
namespace an ALLOW AuthorizationPolicy (GET /api/* from the namespace's principals) and a DENY of
/admin/*. Each figure is one step in this process:

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
from anyplane.compiler.pipeline import compile_sources, load  # noqa: E402

APPS = ("web", "api", "db", "cache", "worker")
NCA = ROOT / ".nca" / "bin" / "nca"


def cluster(pods: int, mesh: bool) -> list[dict]:
    spaces = max(1, pods // 10)
    out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{k}", "labels": {"team": f"t{k % 3}"}}}
           for k in range(spaces)]
    out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring", "labels": {"team": "ops"}}})
    for n in range(pods):
        ns, app = f"ns{n % spaces}", APPS[n % len(APPS)]
        out.append({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"{app}-{n}", "namespace": ns, "labels": {"app": app}},
                    "spec": {"serviceAccountName": app, "containers": [{"name": "c", "ports": [
                        {"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}]},
                    "status": {"podIP": f"10.{1 + n // 250}.{n % 250}.10"}})
    out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prom", "namespace": "monitoring",
                                                                 "labels": {"app": "prometheus"}},
                "spec": {"containers": [{"name": "c"}]}, "status": {"podIP": "10.250.0.5"}})
    for k in range(spaces):
        ns = f"ns{k}"
        out += [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny-all", "namespace": ns},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "from-web", "namespace": ns},
             "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "db"]}]},
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                   "ports": [{"port": "http"}, {"port": 5432}]}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "scrape", "namespace": ns},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                                                      "ports": [{"port": 9090}]}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "egress", "namespace": ns},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"podSelector": {}}]},
                                 {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                                  "ports": [{"port": 443}]}]}},
        ]
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


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(pods: int, nca: bool) -> dict:
    row: dict = {"pods": pods}
    objects = cluster(pods, mesh=False)
    text = yaml.safe_dump_all(objects)
    row["networkpolicies"] = sum(o["kind"] == "NetworkPolicy" for o in objects)
    imported, row["import_s"] = _timed(lambda: convert([("cluster.yaml", text)]))
    compiled, t = _timed(lambda: api.Compiled(None, None, compile_sources([(IMPORTED, imported.text)]).program, None))
    row["import_s"] += t
    row["rules"] = len(compiled.program.rules)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / "cluster.yaml"
        path.write_text(text)
        for name, kinds in (("ns.yaml", ("Namespace",)), ("pods.yaml", ("Pod",)), ("policies.yaml", ("NetworkPolicy",))):
            (d / name).write_text(yaml.safe_dump_all([o for o in objects if o["kind"] in kinds]))
        loaded = load([str(path)])
        _, row["map_s"] = _timed(lambda: api.connectivity(loaded))
        done, row["redundancy_s"] = _timed(lambda: subprocess.run(
            [sys.executable, "-m", "anyplane.compiler", "verify", str(path)], capture_output=True))
        out, t = _timed(lambda: api.compile_target(compiled, "k8s"))
        proof, t2 = _timed(lambda: api.prove_export(compiled, "k8s", out))
        row["export_k8s_s"], row["export_k8s_proved"] = t + t2, proof.proved
        mesh_text = yaml.safe_dump_all(cluster(pods, mesh=True))
        mesh_imported, t = _timed(lambda: convert([("mesh.yaml", mesh_text)]))
        mesh_compiled, t2 = _timed(lambda: api.Compiled(None, None, compile_sources(
            [(IMPORTED, mesh_imported.text)]).program, None))
        row["import_istio_s"], row["istio_rules"] = t + t2, len(mesh_compiled.program.rules)
        if nca and NCA.exists():
            lists = ["--pod_list", str(d / "pods.yaml"), "--ns_list", str(d / "ns.yaml")]
            for name, args in (("nca_connectivity_s", ["--connectivity", str(d / "policies.yaml"), "--output_format",
                                                        "txt"]),
                               ("nca_redundancy_s", ["--sanity", str(d / "policies.yaml")])):
                done, row[name] = _timed(lambda: subprocess.run([str(NCA)] + args + lists, capture_output=True,
                                                                text=True, cwd=d))
                if done.returncode not in (0, 1) and not done.stdout:
                    row[name] = None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="20,100,200")
    ap.add_argument("--format", choices=("txt", "json"), default="txt")
    ap.add_argument("--no-nca", action="store_true")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.pods.split(",")):
        rows.append(run(n, not args.no_nca))
        if args.format == "txt":
            r = rows[-1]
            nca = (f"   nca connectivity {r['nca_connectivity_s']:.2f} s, sanity {r['nca_redundancy_s']:.2f} s"
                   if r.get("nca_connectivity_s") is not None else "")
            print(f"{r['pods']:>5} pods {r['networkpolicies']:>4} NetworkPolicies: import {r['import_s']:.2f} s "
                  f"({r['rules']} rules), map {r['map_s']:.2f} s, verify {r['redundancy_s']:.2f} s, "
                  f"-t k8s + proof {r['export_k8s_s']:.2f} s ({'proved' if r['export_k8s_proved'] else 'NOT PROVED'}); "
                  f"with Istio: import {r['import_istio_s']:.2f} s ({r['istio_rules']} rules){nca}", flush=True)
    if args.format == "json":
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
