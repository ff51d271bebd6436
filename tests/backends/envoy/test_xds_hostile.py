"""`anyplane serve` against clients that do not play by the rules: a thousand streams at once, streams
that never say who they are, one address opening too many, a client reusing a running sidecar's node
id, NACKs of megabytes, hundreds of short connections, and a check that fails in a way nobody planned.
The clients speak gRPC directly (no Envoy): what is tested is the server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from anyplane.compiler import api

from ...conftest import ROOT
from ...envoyrun import free_port

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SERVICES = 4


def _serving(tmp_path, **limits) -> tuple[api.Serving, str]:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "p.ap").write_text("".join(f"service web{k} {{ address 127.77.{k}.0/24 port 8080 http }}\n"
                                         for k in range(SERVICES)) + "default allow\n")
    serving = api.Serving([str(policy)], None, limits=api.xds_limits(**limits))
    assert serving.check()
    port = serving.start("127.0.0.1:0")
    return serving, f"127.0.0.1:{port}"


def _hello(node_id: str, cluster: str, **kw) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id, cluster=cluster), type_url=CDS, **kw)


async def _configured(channel, node_id: str, cluster: str, timeout: float = 60) -> discovery_pb2.DiscoveryResponse:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    await call.write(_hello(node_id, cluster))
    resp = await asyncio.wait_for(call.read(), timeout)
    call.cancel()
    return resp


def _poll(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_thousand_sidecars_on_one_replica_get_their_configuration(tmp_path):
    """1,000 streams over 63 connections (16 each, Envoy's one per connection being the usual case):
    every one gets its service's clusters, while the server holds no thread per stream."""
    serving, address = _serving(tmp_path, per_peer=2_000)

    async def fleet():
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(63)]
        try:
            return await asyncio.gather(*(_configured(channels[n % 63], f"sidecar-{n}", f"web{n % SERVICES}")
                                          for n in range(1000)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
    import threading

    before = threading.active_count()
    try:
        answers = asyncio.run(fleet())
        assert len(answers) == 1000 and all(a.type_url == CDS and a.resources for a in answers)
        assert all(a.version_info == serving.version for a in answers)
        assert threading.active_count() - before < 50
    finally:
        serving.stop()


def test_silent_streams_starve_no_one_and_are_closed(tmp_path):
    """300 streams that never send a request (what held every worker thread of the old server): a real
    sidecar connecting meanwhile gets its configuration at once, and the silent ones are closed after
    the hello timeout."""
    serving, address = _serving(tmp_path, hello_s=1.0, per_peer=1_000)

    async def scene():
        hostile = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(20)]
        calls = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(hostile[n % 20]).StreamAggregatedResources()
                 for n in range(300)]
        for call in calls:
            await call.wait_for_connection()
        good = grpc.aio.insecure_channel(address)
        started = time.monotonic()
        resp = await _configured(good, "real", "web1", timeout=20)
        took = time.monotonic() - started
        codes = await asyncio.gather(*(call.code() for call in calls))
        await asyncio.gather(good.close(), *(c.close() for c in hostile))
        return resp, took, codes
    try:
        resp, took, codes = asyncio.run(scene())
        assert resp.resources and took < 10
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        status = serving.status()
        assert status["streams"]["refused"]["named no node in time"] == 300
        _poll(lambda: serving.status()["streams"]["open"] == 0, what="every stream closed")
    finally:
        serving.stop()


def test_one_address_cannot_take_more_than_its_share(tmp_path):
    serving, address = _serving(tmp_path, per_peer=5)

    async def scene():
        channel = grpc.aio.insecure_channel(address)
        calls = []
        for n in range(5):
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            await call.write(_hello(f"s{n}", "web0"))
            await call.read()
            calls.append(call)
        # The sixth stream is refused when it opens, before it says anything: writing to it would race
        # the refusal (a write to a stream the server has reset ends as INTERNAL on the client).
        extra = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            await extra.wait_for_connection()
        except grpc.aio.AioRpcError:
            pass
        code = await extra.code()
        for call in calls:
            call.cancel()
        await channel.close()
        return code
    try:
        assert asyncio.run(scene()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert serving.status()["streams"]["refused"]["too many streams"] == 1
    finally:
        serving.stop()


def test_a_client_reusing_a_running_sidecars_node_id_does_not_rewrite_its_status(tmp_path):
    serving, address = _serving(tmp_path)

    async def scene():
        channel = grpc.aio.insecure_channel(address)
        real = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await real.write(_hello("web0-pod", "web0"))
        first = await real.read()
        await real.write(_hello("web0-pod", "web0", version_info=first.version_info, response_nonce=first.nonce))
        fake = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await fake.write(_hello("web0-pod", "web2", response_nonce="x", error_detail=status_pb2.Status(
            code=3, message="forged")))
        await fake.read()
        for _ in range(100):
            nodes = serving.status()["nodes"]
            if len(nodes) == 2 and nodes[0]["types"]["clusters"]["acked"]:
                break
            await asyncio.sleep(0.05)
        real.cancel()
        fake.cancel()
        await channel.close()
        return nodes
    try:
        nodes = asyncio.run(scene())
        real = next(n for n in nodes if not n["duplicate"])
        fake = next(n for n in nodes if n["duplicate"])
        assert real["id"] == "web0-pod" and real["service"] == "web0" and real["current"]
        assert real["types"]["clusters"]["error"] is None
        assert fake["service"] == "web2"
    finally:
        serving.stop()


def test_short_connections_and_huge_nacks_leave_bounded_state(tmp_path):
    """400 connections, each naming a new node and NACKing with a 4 MiB message, then leaving: the
    server remembers at most `remembered` of them, each message cut to 1,024 characters."""
    serving, address = _serving(tmp_path, remembered=50)

    async def one(n: int) -> None:
        # A connection of its own (channels with equal options share one otherwise).
        channel = grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20),
                                                              ("grpc.use_local_subchannel_pool", 1)])
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(_hello(f"n{n}", "web0"))
        first = await call.read()
        await call.write(_hello(f"n{n}", "web0", response_nonce=first.nonce, error_detail=status_pb2.Status(
            code=3, message="x" * (4 << 20))))
        await call.done_writing()
        await call.code()
        await channel.close()

    async def scene():
        for batch in range(8):
            await asyncio.gather(*(one(batch * 50 + k) for k in range(50)))
    try:
        asyncio.run(scene())
        _poll(lambda: serving.status()["streams"]["open"] == 0, what="the streams to close")
        status = serving.status()
        assert len(status["nodes"]) <= 50
        assert all(len(n["types"]["clusters"]["error"] or "") <= 1024 for n in status["nodes"])
        assert len(json.dumps(status)) < 1_000_000
    finally:
        serving.stop()


def test_an_unexpected_failure_while_checking_is_reported_and_the_last_version_kept(tmp_path, monkeypatch):
    serving, address = _serving(tmp_path)
    try:
        published = serving.version
        heard = []
        serving.events = lambda kind, detail: heard.append((kind, str(detail)))
        (tmp_path / "policy" / "p.ap").write_text("default deny\n")

        def broken(paths, *a, **kw):
            raise RuntimeError("a bug nobody planned for")
        monkeypatch.setattr(api, "load", broken)
        assert serving.check() is False
        assert heard and heard[0][0] == "error" and "internal error: RuntimeError" in heard[0][1]
        assert serving.version == published and serving.status()["version"] == published
    finally:
        serving.stop()


def test_serve_starts_with_a_broken_policy_and_publishes_once_it_is_fixed(tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.ap").write_text("service web { address 10.0.0.0/24 port 80 http }\ndefault deny\nallow x -> web\n")
    admin = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler", "serve", str(policy), "--listen",
                             f"127.0.0.1:{free_port()}", "--admin", admin, "--interval", "0.2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ready() -> int | None:
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None
    try:
        _poll(lambda: ready() == 503 or proc.poll() is not None, what="the admin endpoint")
        assert proc.poll() is None, proc.stderr.read()
        (policy / "p.ap").write_text("service web { address 10.0.0.0/24 port 80 http }\ndefault deny\n")
        _poll(lambda: ready() == 200, what="the fixed policy to be published")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "not published" in err and "unknown endpoint 'x'" in err


@pytest.mark.parametrize("flavour", ["sotw", "delta"])
def test_a_stream_without_a_service_is_refused(tmp_path, flavour):
    serving, address = _serving(tmp_path)

    async def scene():
        channel = grpc.aio.insecure_channel(address)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if flavour == "sotw":
            call = stub.StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="x"), type_url=CDS))
        else:
            call = stub.DeltaAggregatedResources()
            await call.write(discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id="x"), type_url=CDS))
        code = await call.code()
        await channel.close()
        return code
    try:
        assert asyncio.run(scene()) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        serving.stop()
