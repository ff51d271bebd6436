"""Rate limits mean the same on every engine: a table of rates and bursts, measured live.

A token bucket of rate R and burst B admits B + R*T of a flood lasting T
seconds. Each engine is flooded for two seconds or more, faster than R, and the rate it
admitted beyond the burst must be within 10% of R; the first B requests (or
packets) must all pass.

On a loaded machine the flood has gaps (the flooder is not scheduled): a full bucket
gains nothing, and a gap that starts when the bucket is nearly full loses nearly all
its time. The admitted rate is held to R over the time the flood really ran (each
batch's time beyond an unpreempted batch's left out) from below, and to R over the
whole time from above: never more than the policy admits. On an idle machine the
two are the same.
"""

from __future__ import annotations

import http.client
import time
from fractions import Fraction

import pytest

from anyplane.backends.ebpf import packet
from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.deployment import Deployment, Sidecar
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.actions import RateLimit
from anyplane.ir.flow import Flow

from ...envoyrun import Upstream, free_port, require_envoy, running, subnet
from ...kernel import kernel_verdicts, loaded, require_kernel

FLOOD_S = 2.0
UNITS = {"s": 1, "m": 60, "h": 3600}


def _admitted_rate(passed: int, burst: int, seconds: float) -> Fraction:
    return Fraction(passed - burst) / Fraction(seconds)


def _within(measured, rate: Fraction, what: str, lost: float = 0.0, took: float | None = None) -> None:
    """Within 10% of the rate; from below, over the time the flood ran (`took` less the `lost` gaps)."""
    low = measured * Fraction(took) / Fraction(max(took - lost, 1e-9)) if took else measured
    assert measured <= rate * Fraction(11, 10), f"{what}: admitted {float(measured):.1f}/s, policy {float(rate):.1f}/s"
    assert low >= rate * Fraction(9, 10), f"{what}: admitted {float(low):.1f}/s over the {took and took - lost:.2f}s " \
                                          f"the flood ran, policy {float(rate):.1f}/s"


HTTP_TABLE = [(10, "s", 5), (100, "s", 5), (100, "s", 50), (300, "m", 10), (50, "s", 100), (200, "s", 10)]


@pytest.mark.envoy
@pytest.mark.timing
def test_sidecar_request_rates_within_ten_percent():
    require_envoy()
    n = subnet()
    rules = "".join(f"allow clients -> web http GET /r{k}/* rate {c}/{u} burst {b}\n"
                    for k, (c, u, b) in enumerate(HTTP_TABLE))
    text = (f"service web {{ address 127.{n}.1.0/24 port 8080 http }}\n"
            f"external clients {{ address 127.{n}.9.0/24 }}\ndefault deny\n{rules}")
    program = compile_sources([("rates.ap", text)]).program
    web, client = f"127.{n}.1.1", f"127.{n}.9.3"
    admin = ("127.0.0.1", free_port())
    deployment = Deployment({"web": Sidecar(inbound=web, app=web, admin=admin)})
    listeners, clusters, _ = sidecar_resources(program, "web", deployment)
    config = bootstrap("web", deployment, None, listeners, clusters)
    with Upstream(web, 18080, "web"), running(config, f"{admin[0]}:{admin[1]}"):
        for k, (count, unit, burst) in enumerate(HTTP_TABLE):
            rate = Fraction(count, UNITS[unit])
            # The sidecar adds whole refills at fixed ticks: flood for at least 20 of them.
            flood = max(FLOOD_S, 20 * RateLimit(count, UNITS[unit], burst, "-").refill / rate)
            conn = http.client.HTTPConnection(web, 8080, timeout=5, source_address=(client, 0))
            codes, gaps = [], []
            start = last = time.monotonic()
            while last - start < flood:
                conn.request("GET", f"/r{k}/x", headers={"host": "web"})
                resp = conn.getresponse()
                resp.read()
                codes.append(resp.status)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            took = last - start
            conn.close()
            usual = sorted(gaps)[len(gaps) // 10]
            lost = sum(max(0.0, g - usual) for g in gaps)  # time the client stalled (the bucket may have been full)
            what = f"{count}/{unit} burst {burst}"
            assert set(codes) <= {200, 429}, what
            assert len(codes) / took > 1.5 * rate, f"{what}: the client sent only {len(codes) / took:.0f}/s"
            assert codes[:burst] == [200] * burst, what
            _within(_admitted_rate(codes.count(200), burst, took), rate, what, lost, took)


KERNEL_TABLE = [(100, "s", 1), (1000, "s", 10), (20000, "s", 100), (6000000, "h", 10), (7, "s", 7),
                (4294967295, "h", 4294967295)]


@pytest.mark.kernel
@pytest.mark.timing
def test_kernel_packet_rates_within_ten_percent():
    require_kernel()
    rules = "".join(f"allow a -> b udp {5000 + k} rate {c}/{u} burst {b}\n" for k, (c, u, b) in enumerate(KERNEL_TABLE))
    text = f"external a {{ address 10.1.0.0/16 }}\nexternal b {{ address 10.2.0.0/16 }}\ndefault deny\n{rules}"
    program = compile_sources([("rates.ap", text)]).program
    with loaded(program, "rates") as (cl, _):
        for k, (count, unit, burst) in enumerate(KERNEL_TABLE):
            frame = packet.frame(Flow(4, 0x0A010101, 0x0A020202, 17, 1234, 5000 + k))
            what = f"{count}/{unit} burst {burst}"
            if burst > 10**6:  # a burst no flood of two seconds exhausts: every packet passes
                assert kernel_verdicts(cl, [frame] * 5000) == ["pass"] * 5000, what
                continue
            first = kernel_verdicts(cl, [frame] * burst)
            assert first == ["pass"] * burst, what
            passed, sent = burst, burst
            rate = Fraction(count, UNITS[unit])
            start = last = time.monotonic()
            lost, batches = 0.0, []
            while last - start < FLOOD_S:
                got = kernel_verdicts(cl, [frame] * 200)
                now = time.monotonic()
                batches.append(now - last)
                last = now
                passed += got.count("pass")
                sent += len(got)
            took = last - start
            usual = sorted(batches)[len(batches) // 10]  # a batch the flooder ran through unpreempted
            lost = sum(max(0.0, b - usual) for b in batches)  # time the flooder was not sending
            assert sent / took > 1.5 * rate, f"{what}: sent only {sent / took:.0f}/s"
            _within(_admitted_rate(passed, burst, took), rate, what, lost, took)
