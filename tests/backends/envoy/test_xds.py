"""`anyplane serve`: real Envoy sidecars on loopback take their listeners and clusters over xDS (ADS).

A fleet switches policy with zero failed requests on paths allowed before and after; a snapshot one
node rejects is NACKed by that node only, which keeps serving its old configuration; the sidecars
keep serving while the server is down and resync when it is back; with two replicas, the sidecars
of a killed one fail over to the other; the incremental flavour sends only what changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest
import yaml

from anyplane.backends.envoy import config as envoy_config
from anyplane.backends.envoy import push as envoy_push
from anyplane.compiler import api

from ...conftest import run
from ...envoyrun import Upstream, free_port, request, require_envoy, running, subnet

pytestmark = pytest.mark.envoy
FLEET = 20


@pytest.fixture(autouse=True)
def _envoy():
    require_envoy()


def _policy(n: int, services: int, api_verdict: str = "allow", only: int | None = None) -> str:
    """`services` web services; alice may GET /always/* everywhere, /api/* as `api_verdict` (on every
    service, or on service `only`)."""
    lines = [f"service web{k} {{ address 127.{n}.{k}.0/24 port 8080 http }}" for k in range(services)]
    lines += [f"external alice {{ address 127.{n}.250.1/32 }}", "default deny"]
    for k in range(services):
        verdict = api_verdict if only is None or only == k else "allow"
        lines += [f"{verdict} alice -> web{k} http GET /api/*", f"allow alice -> web{k} http GET /always/*"]
    return "\n".join(lines) + "\n"


def _deployment(n: int, services: int, inbound: dict | None = None) -> dict:
    return {"sidecars": {f"web{k}": {"inbound": (inbound or {}).get(k, f"127.{n}.{k}.1"), "app": f"127.{n}.{k}.1",
                                     "admin": f"127.0.0.1:{free_port()}", "outbound": f"127.{n}.{100 + k}.1:15001"}
                         for k in range(services)}}


class Fleet:
    """A policy directory, `anyplane serve` replicas (in-process), and Envoy sidecars with upstreams."""

    def __init__(self, tmp_path, services: int, delta: bool = False, replicas: int = 1):
        self.n, self.services, self.delta = subnet(), services, delta
        self.dir = tmp_path / "policy"
        self.dir.mkdir()
        self.dep_file = tmp_path / "deployment.yaml"
        self.deployment = _deployment(self.n, services)
        self.dep_file.write_text(yaml.safe_dump(self.deployment))
        self.write(_policy(self.n, services))
        self.ports = [free_port() for _ in range(replicas)]
        self.replicas: list[api.Serving | None] = [None] * replicas
        self.tmp = tmp_path

    def write(self, text: str) -> None:
        (self.dir / "policy.ap").write_text(text)

    def start_replica(self, k: int, **limits) -> api.Serving:
        serving = api.Serving([str(self.dir)], str(self.dep_file), limits=api.xds_limits(**limits))
        assert serving.check(), "the policy was not published"
        serving.start(f"127.0.0.1:{self.ports[k]}")
        self.replicas[k] = serving
        return serving

    def stop_replica(self, k: int) -> None:
        self.replicas[k].stop()
        self.replicas[k] = None

    def bootstrap(self, k: int) -> dict:
        out = self.tmp / f"out{k}"
        done = run("compile", str(self.dir), "-t", "envoy", "--deployment", str(self.dep_file), "-o", str(out),
                   "--xds", ",".join(f"127.0.0.1:{p}" for p in self.ports), *(["--xds-delta"] if self.delta else []))
        assert done.returncode == 0, done.stderr
        return yaml.safe_load((out / f"web{k}" / "bootstrap.yaml").read_text())

    def admin(self, k: int) -> str:
        return self.deployment["sidecars"][f"web{k}"]["admin"]

    def get(self, k: int, path: str) -> int | OSError:
        try:
            return request(f"127.{self.n}.{k}.1", 8080, "GET", path, source=f"127.{self.n}.250.1", timeout=5)[0]
        except OSError as exc:
            return exc

    def wait_current(self, serving: api.Serving, nodes: int, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            st = serving.status()
            live = [x for x in st["nodes"] if x["connected"]]
            if len(live) >= nodes and all(x["current"] for x in live):
                return st
            if time.time() > deadline:
                behind = [x["id"] for x in live if not x["current"]]
                raise AssertionError(f"{len(live)} of {nodes} nodes connected, behind: {behind}; version "
                                     f"{st.get('version')}\n" + json.dumps(st, indent=1)[-3000:])
            time.sleep(0.1)


def _traffic(fleet: Fleet, path: str, stop: threading.Event, results: list) -> threading.Thread:
    def loop():
        k = 0
        while not stop.is_set():
            results.append((k % fleet.services, fleet.get(k % fleet.services, path)))
            k += 1
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.slow
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_fleet_switches_policy_with_no_failed_request(tmp_path, delta):
    fleet = Fleet(tmp_path, FLEET, delta=delta)
    serving = fleet.start_replica(0)
    try:
        with ExitStack() as stack:
            for k in range(FLEET):
                stack.enter_context(Upstream(f"127.{fleet.n}.{k}.1", 18080, f"web{k}"))
            for k in range(FLEET):
                stack.enter_context(running(fleet.bootstrap(k), fleet.admin(k)))
            first = fleet.wait_current(serving, FLEET, timeout=180)  # 20 Envoys starting on 2 cores
            assert {x["service"] for x in first["nodes"]} == {f"web{k}" for k in range(FLEET)}
            assert all(fleet.get(k, "/api/x") == 200 for k in range(FLEET))
            stop, results = threading.Event(), []
            worker = _traffic(fleet, "/always/x", stop, results)
            time.sleep(0.5)
            fleet.write(_policy(fleet.n, FLEET, "deny"))
            started = time.time()
            assert serving.check()
            after = fleet.wait_current(serving, FLEET)
            converged = time.time() - started
            time.sleep(0.5)
            stop.set()
            worker.join()
            assert after["version"] != first["version"]
            assert all(fleet.get(k, "/api/x") == 403 for k in range(FLEET)), "a sidecar kept the old policy"
            failed = [r for r in results if r[1] != 200]
            assert len(results) > 50 and not failed, (len(results), failed[:5])
            # Every sidecar kept the stream it opened: none was sent away (its pings too frequent for
            # the server, say) and came back while the fleet started, idled and switched. A stream that
            # comes back holding the current version is sent nothing.
            again = [x["id"] for x in first["nodes"] if not x["types"]["clusters"]["responses"]]
            assert not again, f"these sidecars reconnected: {again}"
            assert {x["id"]: x["peer"] for x in after["nodes"]} == {x["id"]: x["peer"] for x in first["nodes"]}
            print(f"{FLEET} sidecars converged in {converged:.2f} s")
    finally:
        serving.stop()


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_the_sidecars_keepalive_pings_are_ones_the_server_takes(tmp_path):
    """Envoy pings the xDS server (to find a dead one); the server sends away a peer that pings faster
    than its floor while it is sent nothing. The bootstrap's interval, over the server's floor, is
    kept at a tenth of the scale: a sidecar idles on its first stream; pinging faster than the floor,
    it is sent away (what the check would miss)."""
    fleet = Fleet(tmp_path, 1)
    serving = fleet.start_replica(0, ping_floor_s=1)
    keepalive = fleet.bootstrap(0)["static_resources"]["clusters"][0]["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"][
        "http2_protocol_options"]["connection_keepalive"]
    ratio = _seconds(keepalive["interval"]) / envoy_config.PING_FLOOR_S
    assert ratio >= 1.5, keepalive

    def sidecar(interval: float):
        boot = fleet.bootstrap(0)
        boot["static_resources"]["clusters"][0]["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"][
            "http2_protocol_options"]["connection_keepalive"] = {"interval": f"{interval}s", "timeout": "5s"}
        return running(boot, fleet.admin(0))
    try:
        with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"):
            def peers():
                return [x["peer"] for x in serving.status()["nodes"] if x["connected"]]
            with sidecar(ratio * 1):
                first = fleet.wait_current(serving, 1)["nodes"][0]["peer"]
                deadline = time.monotonic() + 5 * ratio + 2   # five pings or more
                while time.monotonic() < deadline:
                    assert peers() in ([first], []), f"sent away: {first} became {peers()}"
                    time.sleep(0.1)
                assert peers() == [first]
            with sidecar(0.25):
                first = fleet.wait_current(serving, 1)["nodes"][0]["peer"]
                deadline = time.monotonic() + 30
                while peers() in ([first], []):
                    assert time.monotonic() < deadline, "a sidecar pinging 4 times a second was kept"
                    time.sleep(0.1)
    finally:
        serving.stop()


def test_a_snapshot_one_node_rejects_is_nacked_by_that_node_only(tmp_path):
    fleet = Fleet(tmp_path, 2)
    serving = fleet.start_replica(0)
    try:
        with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"), Upstream(f"127.{fleet.n}.1.1", 18080, "web1"), \
                running(fleet.bootstrap(0), fleet.admin(0)), running(fleet.bootstrap(1), fleet.admin(1)):
            good = fleet.wait_current(serving, 2)["version"]
            # v2: web1's listener on an address this host does not have, and /api/* denied everywhere.
            fleet.deployment["sidecars"]["web1"]["inbound"] = "192.0.2.77"
            fleet.dep_file.write_text(yaml.safe_dump(fleet.deployment))
            fleet.write(_policy(fleet.n, 2, "deny"))
            assert serving.check()
            deadline = time.time() + 30
            while True:
                nodes = {x["service"]: x for x in serving.status()["nodes"]}
                lst = nodes["web1"]["types"]["listeners"]
                if nodes["web0"]["current"] and lst["nacked"]:
                    break
                assert time.time() < deadline, json.dumps(nodes, indent=1)
                time.sleep(0.1)
            assert lst["nacked"] == serving.version and "192.0.2.77" in lst["error"], lst
            assert lst["acked"] == good  # its last good version
            assert fleet.get(0, "/api/x") == 403          # web0 took v2
            assert fleet.get(1, "/api/x") == 200          # web1 still runs v1
            sent = lst["responses"]
            time.sleep(2)
            again = {x["service"]: x for x in serving.status()["nodes"]}["web1"]["types"]["listeners"]
            assert again["responses"] == sent, "the NACKed snapshot was sent again"
    finally:
        serving.stop()


def test_sidecars_keep_serving_while_the_server_restarts_and_resync(tmp_path):
    fleet = Fleet(tmp_path, 2)
    serving = fleet.start_replica(0)
    with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"), Upstream(f"127.{fleet.n}.1.1", 18080, "web1"), \
            running(fleet.bootstrap(0), fleet.admin(0)), running(fleet.bootstrap(1), fleet.admin(1)):
        version = fleet.wait_current(serving, 2)["version"]
        stop, results = threading.Event(), []
        worker = _traffic(fleet, "/always/x", stop, results)
        fleet.stop_replica(0)
        time.sleep(2)
        down = len(results)
        again = fleet.start_replica(0)
        try:
            st = fleet.wait_current(again, 2)
            time.sleep(0.5)
            stop.set()
            worker.join()
            assert st["version"] == version
            # Reconnected with the version they hold: nothing was sent again.
            assert all(t["responses"] == 0 for x in st["nodes"] for t in x["types"].values()), st
            assert down > 10 and all(r[1] == 200 for r in results), [r for r in results if r[1] != 200][:5]
        finally:
            again.stop()


def test_with_two_replicas_the_sidecars_of_a_killed_one_fail_over(tmp_path):
    fleet = Fleet(tmp_path, 2, replicas=2)
    first, second = fleet.start_replica(0), fleet.start_replica(1)
    try:
        with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"), Upstream(f"127.{fleet.n}.1.1", 18080, "web1"), \
                running(fleet.bootstrap(0), fleet.admin(0)), running(fleet.bootstrap(1), fleet.admin(1)):
            deadline = time.time() + 30
            while sum(len([x for x in r.status()["nodes"] if x["connected"]]) for r in (first, second)) < 2:
                assert time.time() < deadline
                time.sleep(0.1)
            assert first.version == second.version  # the snapshot is a function of the policy
            on_first = len([x for x in first.status()["nodes"] if x["connected"]])
            victim, survivor = (0, second) if on_first else (1, first)
            fleet.stop_replica(victim)
            st = fleet.wait_current(survivor, 2, timeout=60)
            assert {x["service"] for x in st["nodes"] if x["connected"]} == {"web0", "web1"}
            assert fleet.get(0, "/api/x") == 200 and fleet.get(1, "/api/x") == 200
            # A change now reaches both through the survivor.
            fleet.write(_policy(fleet.n, 2, "deny"))
            assert survivor.check()
            fleet.wait_current(survivor, 2)
            assert fleet.get(0, "/api/x") == 403 and fleet.get(1, "/api/x") == 403
    finally:
        for r in fleet.replicas:
            if r is not None:
                r.stop()


def test_delta_sends_only_the_resources_that_changed(tmp_path):
    fleet = Fleet(tmp_path, 3, delta=True)
    serving = fleet.start_replica(0)
    try:
        with ExitStack() as stack:
            for k in range(3):
                stack.enter_context(Upstream(f"127.{fleet.n}.{k}.1", 18080, f"web{k}"))
                stack.enter_context(running(fleet.bootstrap(k), fleet.admin(k)))
            before = {x["service"]: x for x in fleet.wait_current(serving, 3)["nodes"]}
            fleet.write(_policy(fleet.n, 3, "deny", only=1))  # one rule, on web1
            assert serving.check()
            after = {x["service"]: x for x in fleet.wait_current(serving, 3)["nodes"]}
            kinds = ("clusters", "endpoints", "listeners", "routes")
            assert all(set(after[s]["types"]) == set(kinds) for s in after), after
            sent = {s: {t: after[s]["types"][t]["responses"] - before[s]["types"][t]["responses"] for t in kinds}
                    for s in after}
            assert sent["web1"] == {"clusters": 0, "endpoints": 0, "listeners": 1, "routes": 0}, sent
            assert sent["web0"] == sent["web2"] == dict.fromkeys(kinds, 0), sent
            assert fleet.get(1, "/api/x") == 403 and fleet.get(0, "/api/x") == 200
    finally:
        serving.stop()


def test_serve_command_and_status(tmp_path):
    """The command line: serve a directory, a sidecar connects, `status -t xds` lists it; a broken
    policy is reported and not published."""
    fleet = Fleet(tmp_path, 1)
    listen, admin = fleet.ports[0], free_port()
    proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "serve", str(fleet.dir), "--deployment",
                             str(fleet.dep_file), "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                             "--interval", "0.2"], stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"), running(fleet.bootstrap(0), fleet.admin(0)):
            deadline = time.time() + 30
            while True:
                done = run("status", "-t", "xds", "--admin", f"127.0.0.1:{admin}", "--format", "json")
                if done.returncode == 0 and json.loads(done.stdout)["nodes"] and \
                        all(x["current"] for x in json.loads(done.stdout)["nodes"]):
                    break
                assert time.time() < deadline, done.stdout + done.stderr
                time.sleep(0.2)
            text = run("status", "-t", "xds", "--admin", f"127.0.0.1:{admin}").stdout
            assert "1 sidecars" in text and "web0" in text and "current" in text
            version = json.loads(done.stdout)["version"]
            fleet.write("service web0 { address 127.0.0.0/24 port 8080 http }\nallow nobody -> web0\n")
            time.sleep(1.5)
            st = json.loads(run("status", "-t", "xds", "--admin", f"127.0.0.1:{admin}", "--format", "json").stdout)
            assert st["version"] == version  # not published
            assert fleet.get(0, "/api/x") == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "published anyplane-" in err and "not published" in err and "nobody" in err, err
    assert run("status", "-t", "xds", "--admin", f"127.0.0.1:{admin}").returncode == 2


def _pki(d) -> dict:
    """A CA, a server certificate for 127.0.0.1, and client certificates for the sidecars of web0 (a DNS
    name) and web1 (a SPIFFE ID), made with openssl."""
    def sh(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=anyplane test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:web0"),
                      ("other", "extendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://anyplane.test/ns/default/sa/web1")):
        sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {k: d / k for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other.pem",
                               "other.key")}


def test_tls_with_client_certificates_on_the_xds_channel(tmp_path):
    """A sidecar whose certificate names its service gets its configuration; one without a certificate
    never connects; one whose certificate names web1 but which claims to be web0 is refused, and
    nothing of web0's configuration reaches it."""
    pki = _pki(tmp_path)
    fleet = Fleet(tmp_path, 2)
    serving = api.Serving([str(fleet.dir)], str(fleet.dep_file))
    assert serving.check()
    serving.start(f"127.0.0.1:{fleet.ports[0]}", tuple(pki[k].read_bytes() for k in ("server.pem", "server.key", "ca.pem")))

    def bootstrap(cert: str, key: str, out: str) -> dict:
        done = run("compile", str(fleet.dir), "-t", "envoy", "--deployment", str(fleet.dep_file), "-o",
                   str(tmp_path / out), "--xds", f"127.0.0.1:{fleet.ports[0]}",
                   "--xds-tls", f"{pki[cert]},{pki[key]},{pki['ca.pem']}")
        assert done.returncode == 0, done.stderr
        return yaml.safe_load((tmp_path / out / "web0" / "bootstrap.yaml").read_text())

    def background(boot: dict, name: str, base_id: int) -> subprocess.Popen:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(boot))
        return subprocess.Popen([envoy_push.envoy_binary(), "-c", str(path), "--disable-hot-restart",
                                 "--concurrency", "1", "--log-level", "error", "--base-id", str(base_id)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with_cert = bootstrap("client.pem", "client.key", "tls-out")
        impostor = bootstrap("other.pem", "other.key", "impostor-out")
        impostor["node"]["id"] = "impostor"
        impostor["admin"]["address"]["socket_address"]["port_value"] = free_port()
        for listener in impostor.get("static_resources", {}).get("listeners", []):
            listener["address"]["socket_address"]["port_value"] = free_port()
        without = fleet.bootstrap(1)  # plaintext: the server must not let it in
        with Upstream(f"127.{fleet.n}.0.1", 18080, "web0"), running(with_cert, fleet.admin(0)):
            fleet.wait_current(serving, 1)
            assert fleet.get(0, "/api/x") == 200
            procs = [background(without, "plain", 7), background(impostor, "impostor", 8)]
            try:
                deadline = time.time() + 60
                while serving.status()["streams"]["refused"].get("certificate names another service", 0) < 1:
                    assert time.time() < deadline, serving.status()
                    time.sleep(0.2)
                assert {x["id"] for x in serving.status()["nodes"]} == {with_cert["node"]["id"]}
                assert isinstance(fleet.get(1, "/api/x"), OSError)  # it never got a listener
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(10)
    finally:
        serving.stop()


def test_resources_convert_to_the_messages_json_format_makes():
    """The direct dict-to-protobuf conversion (xds.fill) gives, byte for byte, what json_format.ParseDict
    gives, on every sidecar resource of the examples, under mutual TLS, dry run and rate limits included."""
    from google.protobuf import json_format

    from anyplane.backends.deployment import Deployment
    from anyplane.backends.envoy import xds
    from anyplane.backends.envoy.engine import build
    from anyplane.compiler.pipeline import load

    from ...conftest import EXAMPLES, ROOT

    programs = [load(paths).program for paths in EXAMPLES.values()]
    mesh = ROOT / "examples" / "mesh"
    programs.append(load([str(mesh / "mesh.ap")], bind=[str(mesh / "pods.yaml")]).program)
    compared = 0
    for program in programs:
        for dry_run in (False, True):
            built, _ = build(program, Deployment(), dry_run)
            for listeners, clusters in built.values():
                before = json.dumps([listeners, clusters], sort_keys=True)
                split = xds.split(listeners, clusters)
                assert json.dumps([listeners, clusters], sort_keys=True) == before  # split copies what it changes
                for type_url, resources in split.items():
                    for resource in resources.values():
                        for name in xds._types_in(resource):
                            xds._import_type(name)
                        direct, parsed = xds._MESSAGES[type_url](), xds._MESSAGES[type_url]()
                        xds.fill(direct, resource)
                        json_format.ParseDict(resource, parsed)
                        assert direct.SerializeToString(deterministic=True) == \
                            parsed.SerializeToString(deterministic=True), (type_url, resource.get("name"))
                        compared += 1
    assert compared > 100


def test_the_proof_worker_proves_as_the_server_would_and_a_dead_one_is_replaced(tmp_path):
    """serve proves large policies in a worker process (compiler/prover.py) while it builds the messages:
    the worker's outcome is the in-process one on every example, a version is published only once the
    worker proved it, and a worker that dies mid-proof is replaced by a proof made in the server."""
    from anyplane.compiler.pipeline import load
    from anyplane.compiler.prover import Worker, WorkerError

    from ...conftest import EXAMPLES

    worker = Worker()
    try:
        for paths in EXAMPLES.values():
            compiled = load(paths)
            here, there = api.prove_sidecars(compiled), worker.prove(compiled.program)()
            assert (there.proved, there.counterexample, there.questions, there.engines) == \
                (here.proved, here.counterexample, here.questions, here.engines), paths
        assert worker.sent == len(EXAMPLES)
        worker.proc.kill()
        worker.proc.wait()
        with pytest.raises(WorkerError):
            worker.prove(compiled.program)()
    finally:
        worker.stop()
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "p.ap").write_text(_policy(9, 3, "allow"))
    serving = api.Serving([str(tmp_path / "policy")])
    serving.parallel_above = 0
    serving.warm()
    try:
        assert serving.check() and serving.version is not None
        assert serving._prover.sent == 1
        serving._prover.proc.kill()  # dies: the next version is proved here, and a new worker starts
        (tmp_path / "policy" / "p.ap").write_text(_policy(9, 3, "deny"))
        assert serving.check()
        assert serving._prover is None
        serving.warm()
        (tmp_path / "policy" / "p.ap").write_text(_policy(9, 3, "allow"))
        assert serving.check() and serving._prover.sent == 1
    finally:
        serving.stop()
