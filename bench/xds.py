"""`anyplane serve` figures: how fast a policy change reaches a fleet of real Envoys, and what it costs
on the wire.

    python bench/xds.py [--sidecars 10,50,100] [--rules 10000] [--clients 100] [--streams 1000]
                        [--publish 1000,10000] [--rotate 100] [--format json]

1. Convergence: N Envoy sidecars (one per service) on loopback take their configuration from the
   server over ADS (state of the world). The policy changes one verdict on every service; the figure
   is the time from publishing to every sidecar having ACKed both listeners and clusters, and each
   Envoy's resident memory.
2. Bytes: a synthetic policy of `--rules` rules; `--clients` protocol clients (each a sidecar of one
   service that ACKs what it gets) per flavour. One rule changes; the figure is the bytes the server
   sends for it, state of the world against delta.

3. Streams: one server holding `--streams` ADS streams, its memory per stream.
4. Publish: `serve`'s first publish of a `--publish` rules policy, and of a one-rule change.
5. Rotation: `--rotate` real Envoys under `mtls strict`, each proving its identity with a bootstrap
   token and taking its SVID over SDS; every SVID is re-issued at once, and the figures are the signing,
   every sidecar's ACK, and every sidecar's admin showing the new certificate.

Anchor: istiod's `pilot_proxy_convergence_time` (the delay between a configuration change and all
proxies getting it), whose buckets run from 0.1 s to 30 s; Istio's own performance pages report
pushes of about 1 s at 1,000 services.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
# bench/envoy.py would shadow Envoy's API package (`envoy.service...`): leave the script's folder out.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from anyplane.backends.envoy.push import envoy_binary  # noqa: E402
from anyplane.compiler import api  # noqa: E402

from bench import report, synth  # noqa: E402


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy(services: int, verdict: str) -> str:
    lines = [f"service web{k} {{ address 127.{60 + k // 200}.{k % 200}.0/24 port 8080 http }}" for k in range(services)]
    lines += ["external alice { address 127.59.250.1/32 }", "default deny"]
    for k in range(services):
        lines += [f"{verdict} alice -> web{k} http GET /api/*", f"allow alice -> web{k} http GET /always/*"]
    return "\n".join(lines) + "\n"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


#: The peer's figure (Istio does not install on this machine, so it is the published one, not measured here).
ANCHOR = ("istiod anchor: pilot_proxy_convergence_time buckets 0.1-30 s; Istio's performance pages report "
          "pushes of about 1 s at 1,000 services")


def _envoy(bootstrap: Path, base_id: int) -> subprocess.Popen:
    """An Envoy on one core, quiet, from a bootstrap file."""
    return subprocess.Popen([envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--concurrency", "1",
                             "--log-level", "error", "--base-id", str(base_id)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(procs: list) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def convergence(sidecars: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="anyplane-xds-bench-"))
    procs = []
    try:
        (tmp / "policy").mkdir()
        (tmp / "policy" / "p.ap").write_text(_policy(sidecars, "allow"))
        dep = {"sidecars": {f"web{k}": {"inbound": f"127.{60 + k // 200}.{k % 200}.1",
                                        "app": f"127.{60 + k // 200}.{k % 200}.1",
                                        "admin": f"127.0.0.1:{_free_port()}",
                                        "outbound": f"127.{70 + k // 200}.{k % 200}.1:15001"}
                           for k in range(sidecars)}}
        (tmp / "deployment.yaml").write_text(yaml.safe_dump(dep))
        serving = api.Serving([str(tmp / "policy")], str(tmp / "deployment.yaml"))
        serving.check()
        port = serving.start("127.0.0.1:0")
        compiled = api.load([str(tmp / "policy")])
        out = api.compile_target(compiled, "envoy", api.Options(deployment=api.deployment(str(tmp / "deployment.yaml")),
                                                                xds=(("127.0.0.1", port),)))
        files = {a.path: a.data for a in out.artifacts}
        for k in range(sidecars):
            boot = tmp / f"web{k}.yaml"
            boot.write_text(files[f"web{k}/bootstrap.yaml"])
            procs.append(_envoy(boot, k + 1))
        _wait(serving, sidecars, 300)
        time.sleep(1)
        rss = [_rss_kib(p.pid) for p in procs]
        (tmp / "policy" / "p.ap").write_text(_policy(sidecars, "deny"))
        started = time.perf_counter()
        serving.check()
        _wait(serving, sidecars, 300)
        seconds = time.perf_counter() - started
        ready = sum(1 for k in range(sidecars) if _ready(dep["sidecars"][f"web{k}"]["admin"]))
        serving.stop()
        return {"case": f"converge_{sidecars}", "sidecars": sidecars, "seconds": round(seconds, 3),
                "rss_mib_per_envoy": round(sum(rss) / len(rss) / 1024, 1), "live": ready}
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def rotation(sidecars: int) -> dict:
    """N Envoy sidecars of N workloads under `mtls strict`, each proving its identity to `serve` with a
    bootstrap token over TLS and taking its SVID over SDS. Every SVID is then due (the server's clock moved
    past half their life): the figure is the time from `rotate()` to every sidecar having ACKed its new
    certificate, and the new serial as each sidecar's admin shows it."""
    import secrets as tokens_module


    from anyplane.backends.deployment import Deployment, Sidecar
    from anyplane.backends.envoy.ca import Authority
    from anyplane.backends.envoy.config import ads_bootstrap

    domain = "cluster.local"
    tmp = Path(tempfile.mkdtemp(prefix="anyplane-xds-rotate-"))
    procs = []
    try:
        (tmp / "policy").mkdir()
        lines = [f"workload w{k} {{ namespace mesh labels app=w{k} account w{k} port 8080 http }}"
                 for k in range(sidecars)]
        lines += ["mtls strict", "default deny"] + [f"allow w0 -> w{k} http GET /*" for k in range(1, sidecars)]
        (tmp / "policy" / "p.ap").write_text("\n".join(lines) + "\n")
        addr = {k: f"127.{90 + k // 200}.{k % 200}.1" for k in range(sidecars)}
        pods = [{"apiVersion": "v1", "kind": "Pod", "status": {"podIP": addr[k]}, "spec": {"serviceAccountName": f"w{k}"},
                 "metadata": {"name": f"w{k}-0", "namespace": "mesh", "labels": {"app": f"w{k}"}}}
                for k in range(sidecars)]
        (tmp / "pods.yaml").write_text(yaml.safe_dump_all(pods))
        admins = {k: _free_port() for k in range(sidecars)}
        dep = {"sidecars": {f"w{k}": {"inbound": addr[k], "app": addr[k], "admin": f"127.0.0.1:{admins[k]}",
                                      "outbound": f"{addr[k]}:15001"} for k in range(sidecars)}}
        (tmp / "deployment.yaml").write_text(yaml.safe_dump(dep))
        deployment = Deployment({f"w{k}": Sidecar(inbound=addr[k], app=addr[k], outbound=(addr[k], 15001),
                                                  admin=("127.0.0.1", admins[k])) for k in range(sidecars)})
        ca = Authority.generate(domain)
        cert, key = ca.pem()
        tokens = {tokens_module.token_urlsafe(32): f"spiffe://{domain}/ns/mesh/sa/w{k}" for k in range(sidecars)}
        by_spiffe = {v: t for t, v in tokens.items()}
        serving = api.Serving([str(tmp / "policy")], str(tmp / "deployment.yaml"), bind=[str(tmp / "pods.yaml")],
                              ca=(cert, key, b""), tokens=tokens)
        assert serving.check(), "the mesh policy was not published"
        server = ca.issue(f"spiffe://{domain}/ns/anyplane/sa/xds", 3600)
        (tmp / "ca.pem").write_bytes(ca.bundle)
        port = serving.start("127.0.0.1:0", (server.cert, server.key, None))
        for k in range(sidecars):
            boot = ads_bootstrap(f"w{k}", deployment, [("127.0.0.1", port)], tls={"ca": str(tmp / "ca.pem")},
                                 token=by_spiffe[f"spiffe://{domain}/ns/mesh/sa/w{k}"])
            path = tmp / f"w{k}.yaml"
            path.write_text(yaml.safe_dump(boot))
            procs.append(_envoy(path, 500 + k))
        try:
            _wait(serving, sidecars, 120)
        except SystemExit:
            print(json.dumps(serving.status(), indent=1, default=str)[:3000], file=sys.stderr)
            raise

        def serials() -> dict:
            out = {}
            for k in range(sidecars):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admins[k]}/certs", timeout=5) as resp:
                        certs = json.load(resp)["certificates"]
                except OSError:
                    continue
                out[k] = sorted(c["serial_number"] for entry in certs for c in entry.get("cert_chain") or [])
            return out
        deadline = time.time() + 120
        while len([v for v in serials().values() if v]) < sidecars:  # each listener holds its SVID
            if time.time() > deadline:
                raise SystemExit("not every sidecar holds its certificate")
            time.sleep(0.5)
        before = serials()

        def acked_secrets() -> dict:
            return {x["id"]: x["types"]["secrets"]["acked"] for x in serving.status()["nodes"]
                    if x["connected"] and "secrets" in x["types"]}
        held = acked_secrets()
        secrets = serving.plane.server.secrets
        secrets.clock = lambda: time.time() + secrets.ttl_s  # every SVID past half its life
        started = time.perf_counter()
        assert serving.rotate(), "nothing was due"
        signed = time.perf_counter() - started
        while True:  # every node has ACKed secrets of another version than it held
            now_acked = acked_secrets()
            if len(now_acked) >= sidecars and all(v is not None and v != held.get(n) for n, v in now_acked.items()):
                break
            if time.perf_counter() - started > 300:
                raise SystemExit("not every sidecar ACKed its new certificate")
            time.sleep(0.01)
        acked = time.perf_counter() - started
        while True:  # and the admin of every sidecar shows the new serial
            now = serials()
            if all(now.get(k) and now[k] != before.get(k) for k in range(sidecars)):
                break
            if time.perf_counter() - started > 120:
                raise SystemExit("not every sidecar shows its new certificate")
            time.sleep(0.2)
        shown = time.perf_counter() - started
        serving.stop()
        return {"case": f"rotate_{sidecars}", "sidecars": sidecars, "signed_s": round(signed, 3),
                "acked_s": round(acked, 3), "in_use_s": round(shown, 3)}
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _current(status, n: int, timeout: float, what: str, flavour: str | None = None) -> dict:
    """Poll `status()` until `n` connected nodes (of one flavour) are all current; the last status."""
    deadline = time.time() + timeout
    while True:
        st = status()
        live = [x for x in st["nodes"] if x["connected"] and flavour in (None, x["flavour"])]
        if len(live) >= n and all(x["current"] for x in live):
            return st
        if time.time() > deadline:
            raise SystemExit(f"only {sum(x['current'] for x in live)} of {n} {what} current")
        time.sleep(0.05)


def _wait(serving, nodes: int, timeout: float) -> None:
    _current(serving.status, nodes, timeout, "sidecars")


class _Client:
    """One sidecar's side of ADS, without Envoy: subscribe to clusters then listeners, ACK everything."""

    def __init__(self, port: int, service: str, delta: bool):
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        self.d, self.delta, self.service = discovery_pb2, delta, service
        # A connection of its own, as each sidecar has (channels to one address share one otherwise).
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.out: queue.Queue = queue.Queue()
        call = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.stream = call(iter(self.out.get, None))
        for type_url in ("type.googleapis.com/envoy.config.cluster.v3.Cluster",
                         "type.googleapis.com/envoy.config.listener.v3.Listener"):
            self.out.put(self._request(type_url, first=True))
        threading.Thread(target=self._ack, daemon=True).start()

    def _request(self, type_url, first=False, resp=None):
        req = (self.d.DeltaDiscoveryRequest if self.delta else self.d.DiscoveryRequest)(type_url=type_url)
        if first:
            req.node.id, req.node.cluster = f"bench~{self.service}", self.service
        if resp is not None:
            req.response_nonce = resp.nonce
            if not self.delta:
                req.version_info = resp.version_info
        return req

    def _ack(self):
        try:
            for resp in self.stream:
                self.out.put(self._request(resp.type_url, resp=resp))
        except grpc.RpcError:
            pass

    def close(self):
        self.out.put(None)
        self.channel.close()


def wire_bytes(rules: int, clients: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="anyplane-xds-bytes-"))
    try:
        (tmp / "policy").mkdir()
        text = synth.generate(rules)
        (tmp / "policy" / "p.ap").write_text(text)
        serving = api.Serving([str(tmp / "policy")])
        serving.warm()  # as `serve` runs: its proof worker up
        t0 = time.perf_counter()
        assert serving.check(), "the synthetic policy was not published"
        publish_s = time.perf_counter() - t0
        port = serving.start("127.0.0.1:0")
        old = serving.plane.server.snapshot.resources
        lines = text.splitlines()
        # One rule changes: the first HTTP allow becomes a deny (its service's sidecar holds it).
        k = next(i for i, line in enumerate(lines) if line.startswith("allow ") and " http" in line)
        changed = "\n".join(lines[:k] + [lines[k].replace("allow ", "deny ", 1)] + lines[k + 1:]) + "\n"
        (tmp / "policy" / "p.ap").write_text(changed)
        serving.check()
        new = serving.plane.server.snapshot.resources
        touched = sorted(s for s in new if new[s] != old.get(s))
        services = touched + [s for s in sorted(new) if s not in touched][:max(clients - len(touched), 0)]
        out = {"case": f"bytes_{rules}", "rules": rules, "clients": len(services), "publish_s": round(publish_s, 2),
               "sidecars_changed": len(touched), "sidecars_total": len(new)}
        for flavour, delta in (("sotw", False), ("delta", True)):
            (tmp / "policy" / "p.ap").write_text(text)
            serving.check()
            cs = [_Client(port, s, delta) for s in services]
            _wait_clients(serving, len(services), flavour)
            before = _sent(serving, flavour)
            (tmp / "policy" / "p.ap").write_text(changed)
            serving.check()
            _wait_clients(serving, len(services), flavour)
            out[f"{flavour}_bytes"] = _sent(serving, flavour) - before
            for c in cs:
                c.close()
            serving.seen = None
        serving.stop()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(rules: int) -> dict:
    """`serve`'s first publish of a policy of so many rules (compile, build, messages, proof), and of a
    one-rule change (the first HTTP allow becomes a deny), with its proof worker running."""
    tmp = Path(tempfile.mkdtemp(prefix="anyplane-xds-publish-"))
    try:
        (tmp / "policy").mkdir()
        text = synth.generate(rules)
        (tmp / "policy" / "p.ap").write_text(text)
        serving = api.Serving([str(tmp / "policy")])
        serving.warm()
        time.sleep(1.0)  # the worker's imports done, as in a server that has been up a while
        t0 = time.perf_counter()
        assert serving.check(), "the synthetic policy was not published"
        first = time.perf_counter() - t0
        lines = text.splitlines()
        k = next(i for i, line in enumerate(lines) if line.startswith("allow ") and " http" in line)
        (tmp / "policy" / "p.ap").write_text("\n".join(lines[:k] + [lines[k].replace("allow ", "deny ", 1)]
                                                      + lines[k + 1:]) + "\n")
        t0 = time.perf_counter()
        assert serving.check(), "the changed policy was not published"
        change = time.perf_counter() - t0
        serving.stop()
        return {"case": f"publish_{rules}", "rules": rules, "first_publish_s": round(first, 2),
                "one_rule_change_s": round(change, 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sent(serving, flavour: str) -> int:
    return sum(t["bytes"] for x in serving.status()["nodes"] if x["flavour"] == flavour and x["connected"]
               for t in x["types"].values())


def _wait_clients(serving, n: int, flavour: str, timeout: float = 300) -> None:
    _current(serving.status, n, timeout, f"{flavour} clients", flavour)


def streams(n: int) -> dict:
    """`anyplane serve` in a process of its own holding `n` ADS streams (protocol clients, one connection
    each, every one subscribed to clusters and listeners and ACKing): the server's resident memory before
    and with them, per stream, and how long it took every stream to be brought current."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 256)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="anyplane-xds-streams-"))
    port, admin = _free_port(), _free_port()
    (tmp / "policy").mkdir()
    (tmp / "policy" / "p.ap").write_text(_policy(10, "allow"))
    proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "serve", str(tmp / "policy"),
                             "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
                             "--max-streams-per-peer", str(n + 10), "--max-streams", str(n + 10)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
    clients = []
    try:
        deadline = time.time() + 60
        while not _ready(f"127.0.0.1:{admin}"):
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("anyplane serve did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        before = _rss_kib(proc.pid)
        started = time.perf_counter()
        clients = [_Client(port, f"web{k % 10}", False) for k in range(n)]
        status = _current(lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status",
                                                                    timeout=10).read()), n, 300, "streams")
        seconds = time.perf_counter() - started
        time.sleep(1)
        after = _rss_kib(proc.pid)
        return {"case": f"streams_{n}", "streams": status["streams"]["open"], "current_s": round(seconds, 2),
                "server_rss_mib": round(after / 1024, 1), "kib_per_stream": round((after - before) / n, 1)}
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sidecars", default="10,50,100")
    ap.add_argument("--rules", type=int, default=10000, help="policy size of the wire-bytes case (0: skip)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--streams", type=int, default=1000, help="ADS streams one server holds (0: skip)")
    ap.add_argument("--rotate", type=int, default=100, help="real sidecars whose SVIDs are rotated at once (0: skip)")
    ap.add_argument("--publish", default="1000,10000", help="policy sizes (rules) whose first publish and one-rule "
                                                            "change are timed ('': skip)")
    ap.add_argument("--format", choices=["text", "json"], default="text")
    args = ap.parse_args()
    cases = [("converge", int(n)) for n in args.sidecars.split(",") if n] + ([("bytes", args.rules)] if args.rules else [])
    cases += [("streams", args.streams)] if args.streams else []
    cases += [("publish", int(n)) for n in args.publish.split(",") if n]
    cases += [("rotate", args.rotate)] if args.rotate else []

    def measure(kind, n):
        return convergence(n) if kind == "converge" else streams(n) if kind == "streams" else \
            publish(n) if kind == "publish" else rotation(n) if kind == "rotate" else wire_bytes(n, args.clients)

    def line(r):
        if r["case"].startswith("rotate"):
            return (f"{r['sidecars']} sidecars under mtls strict (SVIDs over SDS): every SVID re-issued in "
                    f"{r['signed_s']} s, ACKed by all in {r['acked_s']} s, in use (admin /certs) in {r['in_use_s']} s"
                    f" [{ANCHOR}]")
        if r["case"].startswith("publish"):
            return (f"{r['rules']} rules: first publish {r['first_publish_s']} s, one-rule change "
                    f"{r['one_rule_change_s']} s (compile, build, messages, proof; the proof in serve's worker)"
                    f" [{ANCHOR}]")
        if r["case"].startswith("streams"):
            return (f"{r['streams']} ADS streams on one server: all current in {r['current_s']} s; server resident "
                    f"{r['server_rss_mib']} MiB, {r['kib_per_stream']} KiB per stream")
        if r["case"].startswith("converge"):
            return (f"{r['sidecars']:>4} sidecars: policy change -> all ACKed in {r['seconds']:.2f} s; "
                    f"{r['rss_mib_per_envoy']} MiB resident per Envoy; {r['live']} live [{ANCHOR}]")
        return (f"{r['rules']} rules, {r['clients']} sidecars of {r['sidecars_total']} ({r['sidecars_changed']} "
                f"configurations changed), one rule changed: state of the world "
                f"{r['sotw_bytes']:,} bytes, delta {r['delta_bytes']:,} bytes "
                f"({r['sotw_bytes'] / max(r['delta_bytes'], 1):.0f}x less); publish {r['publish_s']} s")
    report.run(cases, measure, line, args.format)


if __name__ == "__main__":
    main()
