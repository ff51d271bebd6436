"""Mutual TLS figures: what certificates cost a request between two sidecars, and what rotation costs.

    python bench/mtls.py [--duration 5] [--runs 3] [--connections 16] [--sidecars 100] [--format json]

Path: wrk -> web's sidecar (outbound listener) -> api's sidecar (inbound, RBAC) -> an Envoy that
answers 200. The same policy is compiled with `mtls off` (api's sidecar decides by web's address) and
`mtls strict` (web's sidecar opens TLS with web's SVID, api's checks it and decides by its SPIFFE ID).
Two loads: connections kept open between the sidecars (the request cost of TLS), and a new connection
for every request (max_requests_per_connection 1 on web's cluster: a full handshake each time).
Anchor: Istio's performance page reports the sidecar pair adding a few ms at p90 (with telemetry).

Rotation: the time to re-issue the SVIDs of `--sidecars` workloads (EC P-256, what serve does at half
of each certificate's life), and the SDS message bytes per sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This folder's envoy.py must not stand for the `envoy` package of Envoy's API (xds-protos).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.envoy import WEB as APP, start, upstream, wrk  # noqa: E402  (the application answers on APP)

from anyplane.backends.deployment import Deployment, Sidecar  # noqa: E402
from anyplane.backends.envoy.ca import Authority, write_sds  # noqa: E402
from anyplane.backends.envoy.config import bootstrap, sidecar_resources  # noqa: E402
from anyplane.compiler import binding  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

WEB, API = "127.78.1.1", "127.78.2.1"
POLICY = """\
workload web { namespace shop  labels app=web  account web  port 8080 http }
workload api { namespace shop  labels app=api  account api  port 9090 http }
mtls MODE
default deny
allow web -> api http GET /bench/*
"""
PODS = f"""\
apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Pod, metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}},
   spec: {{serviceAccountName: web}}, status: {{podIP: {WEB}}}}}
- {{apiVersion: v1, kind: Pod, metadata: {{name: api-1, namespace: shop, labels: {{app: api}}}},
   spec: {{serviceAccountName: api}}, status: {{podIP: {API}}}}}
"""


def sidecars(tmp: Path, mode: str, per_request: bool, ports: dict) -> tuple[dict, dict]:
    """Bootstraps of web's and api's sidecars for one mode."""
    (tmp / "pods.yaml").write_text(PODS)
    program = compile_sources([("bench.ap", POLICY.replace("MODE", mode))],
                              binding=binding.read([str(tmp / "pods.yaml")])).program
    ca = Authority.generate("cluster.local")
    out = {}
    for app, addr in (("web", WEB), ("api", API)):
        certs = tmp / mode / app
        write_sds(certs, ca.issue(f"spiffe://cluster.local/ns/shop/sa/{app}", 3600), "cluster.local", ca.bundle)
        deployment = Deployment({app: Sidecar(inbound=addr, app=APP, app_port_offset=10000,
                                              outbound=(addr, 15001), admin=("127.0.0.1", ports[app]))},
                                {"api": ((API, 9090),)})
        listeners, clusters, _ = sidecar_resources(program, app, deployment, sds=str(certs))
        for lst in listeners:  # measure the filters, not the access log's writes
            for chain in lst.get("filter_chains", []):
                for f in chain.get("filters", []):
                    f.get("typed_config", {}).pop("access_log", None)
        for c in clusters:
            if c["name"].startswith("out|"):
                c["upstream_bind_config"] = {"source_address": {"address": WEB, "port_value": 0}}  # web's pod
                if per_request:
                    c["typed_extension_protocol_options"] = {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "common_http_protocol_options": {"max_requests_per_connection": 1},
                            "explicit_http_config": {"http_protocol_options": {}}}}
        out[app] = bootstrap(app, deployment, None, listeners, clusters)
    return out["web"], out["api"]


def rotation(n: int) -> dict:
    from anyplane.backends.envoy.sds import Secrets
    from anyplane.ir.nodes import Identity, Mtls, Program, Table
    from anyplane.ir.source import Span

    span = Span("bench", 1, 1, 1, 2)
    idents = tuple(Identity(k + 1, f"w{k}", "service", f"w{k}", None, (), span,
                            principal=f"spiffe://cluster.local/ns/bench/sa/w{k}") for k in range(n))
    program = Program("deny", None, idents, (), Table("acl", ()), Table("routes", ()), (), (), (),
                      mtls=Mtls("strict", "cluster.local", span))
    clock = [0.0]
    secrets = Secrets(Authority.generate("cluster.local"), ttl_s=3600, clock=lambda: clock[0])
    secrets.update(program)
    started = time.perf_counter()
    sizes = [sum(len(v) for v in secrets.of(f"w{k}")[1].values()) for k in range(n)]
    first = time.perf_counter() - started
    clock[0] = 1801.0  # past half of the life of every certificate
    started = time.perf_counter()
    secrets.rotate()
    again = time.perf_counter() - started
    return {"sidecars": n, "first_issue_s": round(first, 3), "rotate_all_s": round(again, 3),
            "per_svid_ms": round(1000 * again / n, 2), "sds_bytes_per_sidecar": round(sum(sizes) / n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="wrk runs per case (the median is reported)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--sidecars", type=int, default=100, help="workloads whose SVIDs are rotated")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        app = start(upstream(19090, 19911), tmp, "app")  # api's application
        try:
            for per_request in (False, True):
                for mode in ("off", "strict"):
                    web, api = sidecars(Path(tmp), mode, per_request, {"web": 19912, "api": 19913})
                    procs = [start(api, tmp, f"api-{mode}"), start(web, tmp, f"web-{mode}")]
                    try:
                        url = f"http://{WEB}:15001/bench/x"
                        wrk(url, 1, args.connections, headers={"Host": "api:9090"})  # warm up
                        runs = sorted((wrk(url, args.duration, args.connections, headers={"Host": "api:9090"})
                                       for _ in range(args.runs)), key=lambda f: f["rps"])
                        figures = runs[len(runs) // 2]
                    finally:
                        for p in procs:
                            p.terminate()
                            p.wait()
                    load = "new connection per request" if per_request else "kept connections"
                    rows.append(dict(load=load, mtls=mode, **figures))
                    if args.format == "text":
                        print(f"{load:>28}, mtls {mode:<6}: {figures['rps']:>8.0f} req/s  p50 {figures['p50_ms']:.3f} ms"
                              f"  p90 {figures['p90_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms  "
                              f"non-2xx {figures['non_2xx']}", flush=True)
        finally:
            app.terminate()
            app.wait()
    rot = rotation(args.sidecars)
    if args.format == "json":
        print(json.dumps({"requests": rows, "rotation": rot}, indent=1))
        return
    for load in ("kept connections", "new connection per request"):
        off, strict = (next(r for r in rows if r["load"] == load and r["mtls"] == m) for m in ("off", "strict"))
        print(f"{load}: mTLS throughput {strict['rps'] / off['rps']:.1%} of plaintext, p90 +"
              f"{strict['p90_ms'] - off['p90_ms']:.3f} ms, p99 +{strict['p99_ms'] - off['p99_ms']:.3f} ms")
    print(f"rotation of {rot['sidecars']} sidecars: {rot['rotate_all_s']} s ({rot['per_svid_ms']} ms per SVID), "
          f"{rot['sds_bytes_per_sidecar']} SDS bytes per sidecar")


if __name__ == "__main__":
    main()
