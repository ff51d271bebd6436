"""`anyplane push -t envoy`: a running Envoy switches policy through filesystem xDS, or keeps the old one."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from click.testing import CliRunner

from anyplane.backends.envoy import engine
from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.deployment import load as load_deployment
from anyplane.compiler.cli import cli

from ...conftest import compile_text
from ...envoyrun import Upstream, free_port, request, require_envoy, running, subnet

pytestmark = pytest.mark.envoy


@pytest.fixture(autouse=True)
def _envoy():
    require_envoy()


def _policy(n: int, verdict: str) -> str:
    return f"""service web {{ address 127.{n}.1.0/24  port 8080 http }}
external alice {{ address 127.{n}.9.1/32 }}
default deny
{verdict} alice -> web http GET /api/*
allow alice -> web http GET /always/*
"""


def _setup(tmp_path, n: int, inbound: str | None = None):
    admin = f"127.0.0.1:{free_port()}"
    dep = tmp_path / "deployment.yaml"
    dep.write_text(yaml.safe_dump({"sidecars": {"web": {
        "inbound": inbound or f"127.{n}.1.1", "app": f"127.{n}.1.1", "admin": admin,
        "outbound": f"127.{n}.2.1:15001"}}}))
    return admin, str(dep)


def _start_files(tmp_path, n: int, dep: str, verdict: str):
    """Policy v1 on disk, and the xDS files Envoy starts from."""
    v1 = tmp_path / "v1.ap"
    v1.write_text(_policy(n, verdict))
    xds = tmp_path / "xds"
    xds.mkdir()
    program = compile_text(v1.read_text(), str(v1)).program
    deployment = load_deployment(dep)
    listeners, clusters, _ = sidecar_resources(program, "web", deployment)
    for name, text in engine.xds_files(listeners, clusters, engine.content_version(listeners, clusters)).items():
        (xds / name).write_text(text)
    return bootstrap("web", deployment, str(xds), None, None), xds


def test_push_switches_verdicts_while_traffic_flows(tmp_path):
    n = subnet()
    admin, dep = _setup(tmp_path, n)
    config, xds = _start_files(tmp_path, n, dep, "allow")
    v2 = tmp_path / "v2.ap"
    v2.write_text(_policy(n, "deny"))
    web, alice = f"127.{n}.1.1", f"127.{n}.9.1"
    results: list[tuple[float, object]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                status = request(web, 8080, "GET", "/api/x", source=alice, timeout=5)[0]
            except OSError as exc:
                status = exc
            results.append((time.monotonic(), status))

    with Upstream(web, 18080, "web"), running(config, admin):
        worker = threading.Thread(target=traffic)
        worker.start()
        time.sleep(0.5)
        started = time.monotonic()
        out = CliRunner().invoke(cli, ["push", "-t", "envoy", str(v2), "--service", "web", "--dir", str(xds),
                                       "--deployment", dep, "--format", "json"])
        pushed = time.monotonic()
        time.sleep(1.0)
        stop.set()
        worker.join()
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["service"] == "web" and report["version"].startswith("anyplane-")
    statuses = [s for _, s in results]
    failures = [s for s in statuses if s not in (200, 403)]
    assert not failures, f"connections failed during the push: {failures[:5]}"
    before = [s for t, s in results if t < started]
    after = [s for t, s in results if t > pushed + 0.3]
    assert before and set(before) == {200}
    assert after and set(after) == {403}


def test_rejected_push_rolls_back_and_says_why(tmp_path):
    n = subnet()
    admin, dep = _setup(tmp_path, n)
    config, xds = _start_files(tmp_path, n, dep, "allow")
    old = {p.name: p.read_text() for p in xds.iterdir()}
    # The new deployment moves the listener to an address this host does not have: valid
    # configuration (envoy --mode validate accepts it), but the running Envoy cannot bind it.
    (tmp_path / "bad").mkdir()
    _, bad_dep = _setup(tmp_path / "bad", n, inbound="192.0.2.77")
    v2 = tmp_path / "v2.ap"
    v2.write_text(_policy(n, "deny"))
    web, alice = f"127.{n}.1.1", f"127.{n}.9.1"
    with Upstream(web, 18080, "web"), running(config, admin):
        bad = yaml.safe_load(open(bad_dep))
        bad["sidecars"]["web"]["admin"] = admin
        open(bad_dep, "w").write(yaml.safe_dump(bad))
        out = CliRunner().invoke(cli, ["push", "-t", "envoy", str(v2), "--service", "web", "--dir", str(xds),
                                       "--deployment", bad_dep])
        still = request(web, 8080, "GET", "/api/x", source=alice)[0]
    assert out.exit_code == 1, out.output
    assert "rejected" in out.output and "previous" in out.output
    assert "192.0.2.77" in out.output  # Envoy's own reason
    assert still == 200  # the old policy still serves
    assert {p.name: p.read_text() for p in xds.iterdir() if not p.name.startswith(".")} == old


def test_push_usage_errors_exit_2(tmp_path):
    v1 = tmp_path / "p.ap"
    v1.write_text(_policy(30, "allow"))
    out = CliRunner().invoke(cli, ["push", "-t", "envoy", str(v1)])
    assert out.exit_code == 2 and "--service" in out.output
    out = CliRunner().invoke(cli, ["push", "-t", "envoy", str(v1), "--service", "nope", "--dir", str(tmp_path),
                                   "--admin", "127.0.0.1:1"])
    assert out.exit_code == 1 and "'nope' is not a service" in out.output


def test_compile_cli_writes_configs_and_a_report(tmp_path):
    out = CliRunner().invoke(cli, ["compile", "examples/canary.ap", "-t", "envoy", "-o", str(tmp_path),
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert any(p.endswith("checkout/envoy.yaml") for p in data["artifacts"])
    assert {r["status"] for r in data["report"]} <= {"enforced", "not-enforced", "l4-projection"}
    cds = yaml.safe_load((tmp_path / "web" / "xds" / "cds.yaml").read_text())
    names = {r["name"] for r in cds["resources"]}
    assert {"out|checkout.v1|8080", "out|checkout.v2|8080"} <= names
    bad = CliRunner().invoke(cli, ["compile", "examples/canary.ap", "-t", "ir", "-o", str(tmp_path), "--dry-run"])
    assert bad.exit_code == 2


def test_push_from_a_compiled_output_checks_its_manifest(tmp_path):
    n = subnet()
    admin, dep = _setup(tmp_path, n)
    config, xds = _start_files(tmp_path, n, dep, "allow")
    v2 = tmp_path / "v2.ap"
    v2.write_text(_policy(n, "deny"))
    out = tmp_path / "out"
    runner = CliRunner()
    compiled = runner.invoke(cli, ["compile", str(v2), "-t", "envoy", "-o", str(out), "--deployment", dep])
    assert compiled.exit_code == 0, compiled.output
    web, alice = f"127.{n}.1.1", f"127.{n}.9.1"
    with Upstream(web, 18080, "web"), running(config, admin):
        assert request(web, 8080, "GET", "/api/x", source=alice)[0] == 200
        # A file changed after compile: refused before anything reaches the sidecar.
        lds = out / "web" / "xds" / "lds.yaml"
        good = lds.read_text()
        lds.write_text(good.replace("DENY", "ALLOW"))
        before = (xds / "lds.yaml").read_text()
        tampered = runner.invoke(cli, ["push", "-t", "envoy", "--from", str(out), "--service", "web", "--dir", str(xds)])
        assert tampered.exit_code == 2 and "was changed after anyplane wrote it" in tampered.output
        assert (xds / "lds.yaml").read_text() == before
        assert request(web, 8080, "GET", "/api/x", source=alice)[0] == 200
        lds.write_text(good)
        pushed = runner.invoke(cli, ["push", "-t", "envoy", "--from", str(out), "--service", "web", "--dir", str(xds),
                                     "--format", "json"])
        assert pushed.exit_code == 0, pushed.output
        assert json.loads(pushed.output)["version"] in (xds / "lds.yaml").read_text()
        assert request(web, 8080, "GET", "/api/x", source=alice)[0] == 403
        assert request(web, 8080, "GET", "/always/x", source=alice)[0] == 200
