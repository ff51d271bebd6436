"""Sidecar-engine figures: requests/s and p50/p99 through Envoy with 10, 1k, 10k rules vs no policy.

    python bench/envoy.py [--sizes 10,1000,10000] [--duration 5] [--runs 3] [--format json]

Load: wrk on loopback against the sidecar's inbound listener; behind the
sidecar a second Envoy answers every request directly (a Python upstream
would be the bottleneck and hide the sidecar's cost). The no-policy
baseline is the same sidecar with the RBAC filter removed.

Policies: N rules toward one service, from N distinct source networks
(methods, path prefixes, headers, some denies), plus a handful from the
client's own network, so a request has to find its rules among all N.
Also: configuration bytes per rule, and compile time.
Target: at 10,000 rules within 10% of the no-policy throughput and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from anyplane.backends.envoy.config import bootstrap, sidecar_resources  # noqa: E402
from anyplane.backends.deployment import Deployment, Sidecar  # noqa: E402
from anyplane.backends.envoy.push import envoy_binary  # noqa: E402
from anyplane.compiler.pipeline import compile_sources  # noqa: E402

WEB = "127.77.1.1"
METHODS = ("GET", "POST", "PUT", "DELETE", "GET, HEAD")


def policy(n: int) -> str:
    """N rules toward web: N-4 from other networks, 4 from the client's (127.0.0.0/8)."""
    lines = ["service web { address 127.77.1.0/24  port 8080 http }", "external clients { address 127.0.0.0/8 }",
             "default deny",
             "deny  clients -> web http * /admin/* priority 5",
             "deny  clients -> web http DELETE /* priority 5",
             "allow clients -> web http POST /upload/* header \"x-token\" present",
             "allow clients -> web http GET /bench/*"]
    for i in range(max(0, n - 4)):
        src = f"10.{i // 250 % 250}.{i % 250}.0/24" if i < 62500 else f"11.{i // 250 % 250}.{i % 250}.0/24"
        verb = "deny " if i % 7 == 0 else "allow"
        header = f' header "x-tenant" = "t{i}"' if i % 5 == 0 else ""
        lines.append(f"{verb} {src} -> web http {METHODS[i % len(METHODS)]} /api/v{i % 3}/r{i}/*{header}")
    return "\n".join(lines) + "\n"


def sidecar(n: int, admin: int, app_port_offset: int) -> tuple[dict, int, float]:
    """(bootstrap, listener bytes, compile seconds) for a policy of n rules (0: no policy)."""
    started = time.perf_counter()
    program = compile_sources([("bench.ap", policy(max(n, 4)))]).program
    deployment = Deployment({"web": Sidecar(inbound=WEB, app=WEB, app_port_offset=app_port_offset,
                                            admin=("127.0.0.1", admin))})
    listeners, clusters, _ = sidecar_resources(program, "web", deployment)
    seconds = time.perf_counter() - started
    inbound = [lst for lst in listeners if lst["name"].startswith("in|")]
    if n == 0:
        hcm = inbound[0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    for lst in inbound:  # the benchmark measures the filters, not the access log's disk writes
        lst["filter_chains"][0]["filters"][0]["typed_config"].pop("access_log", None)
    size = len(json.dumps(inbound))
    return bootstrap("web", deployment, None, inbound, clusters), size, seconds


def upstream(port: int, admin: int) -> dict:
    """An Envoy that answers 200 to everything (the application behind the sidecar)."""
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "app", "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [{"name": "app", "address": {"socket_address": {
                "address": WEB, "port_value": port}}, "filter_chains": [{"filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]}}


def start(config: dict, workdir: str, name: str) -> subprocess.Popen:
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    proc = subprocess.Popen([envoy_binary(), "-c", path, "--disable-hot-restart", "--concurrency", "1",
                             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = config["admin"]["address"]["socket_address"]
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin['port_value']}/ready", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{name}: Envoy did not start")


def wrk(url: str, seconds: int, connections: int, headers: dict | None = None) -> dict:
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
                         capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": ms("50%"),
            "p90_ms": ms("90%"), "p99_ms": ms("99%"), "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3, help="wrk runs per size (the median run is reported)")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args()
    sizes = [0] + [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        app = start(upstream(18080, 19901), tmp, "app")
        try:
            for n in sizes:
                config, size, seconds = sidecar(n, 19900, 10000)
                proc = start(config, tmp, f"sidecar{n}")
                try:
                    wrk(f"http://{WEB}:8080/bench/x", 1, args.connections)  # warm up
                    runs = sorted((wrk(f"http://{WEB}:8080/bench/x", args.duration, args.connections)
                                   for _ in range(args.runs)), key=lambda f: f["rps"])
                    figures = runs[len(runs) // 2]
                finally:
                    proc.terminate()
                    proc.wait()
                rows.append(dict(rules=n, config_bytes=size, compile_s=round(seconds, 2), **figures))
                if args.format == "text":
                    print(f"{'no policy' if n == 0 else f'{n} rules':>12}: {figures['rps']:>9.0f} req/s  "
                          f"p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms  "
                          f"non-2xx {figures['non_2xx']}  config {size} B  compile {seconds:.2f} s",
                          flush=True)
        finally:
            app.terminate()
            app.wait()
    base = rows[0]
    for r in rows[1:]:
        r["rps_vs_no_policy"] = round(r["rps"] / base["rps"], 3)
        r["p99_vs_no_policy"] = round(r["p99_ms"] / base["p99_ms"], 3)
        r["bytes_per_rule"] = round((r["config_bytes"] - base["config_bytes"]) / r["rules"])
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return
    for r in rows[1:]:
        print(f"{r['rules']:>6} rules: throughput {r['rps_vs_no_policy']:.1%} of no policy, "
              f"p99 {r['p99_vs_no_policy']:.2f}x, {r['bytes_per_rule']} config bytes/rule")


if __name__ == "__main__":
    main()
