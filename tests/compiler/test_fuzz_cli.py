"""Fuzzing the whole command line: extreme policies through every command and target.

Policies are generated with extreme values (huge rates, bursts, ports and
priorities, hundreds of addresses in a rule, long names, odd paths, hosts and
headers) and run through check, compile (every target), verify (text, json,
sarif), query, explain, diff and fmt. Every run must end in exit 0, 1 or 2,
with no exception escaping: an internal error (exit 70) is a failure. In CI the
two tests run 1,150 examples together (the suite keeps to its time).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyplane.compiler.cli import cli

from ..conftest import examples

FAST = settings(max_examples=examples(900), deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])

def mostly(usual, odd):
    """`usual` 29 times in 30, `odd` (extreme or invalid) otherwise: a policy makes many choices, and
    most policies should still pass `check` so that every engine sees them."""
    return st.integers(0, 29).flatmap(lambda k: odd if k == 13 else usual)  # 0 and 29 come up too often


RESERVED = ["service", "any", "tcp", "http", "rate"]
EXTREME = st.sampled_from([0, 65535, 65536, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**30])
NAME = mostly(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(lambda n: n not in RESERVED),
              st.sampled_from(["a" * 63, "b" * 64, "c" * 500, "web-", "x_y"] + RESERVED))
PORT = mostly(st.integers(1, 65535), EXTREME)
COUNT = mostly(st.integers(1, 10**6), EXTREME)
UNIT = mostly(st.sampled_from(["s", "m", "h"]), st.just("d"))
ODD_PREFIX = st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.1/24", "300.0.0.0/8", "10.0.0.0/33", "fd00::1"])
PATH = mostly(st.sampled_from(["/", "/*", "/a", "/a/*", "/%C3%A9/*", "/api/v1/*", "/a/b/c/d/e/f/*"]),
              st.sampled_from(["/a/../b", "//a", "/%7e", "/a;b", "/a%2Fb", "/a?b", "/" + "x" * 3000]))
HOST = mostly(st.sampled_from(['"a.example"', '"b.example"', '"[::1]"']),
              st.sampled_from(['"A.example"', '"a:80"', '"a."', '""', '"a,b"', '"' + "h" * 300 + '"']))
HEADER = mostly(st.sampled_from(['"x-k"', '"authorization"', '"x-b"']),
                st.sampled_from(['"connection"', '"host"', '"x-envoy-x"', '"X-K"', '":path"', '"' + "k" * 200 + '"']))
METHODS = mostly(st.sampled_from(["*", "GET", "GET, POST", "DELETE, PATCH, OPTIONS"]), st.sampled_from(["CONNECT", "FETCH"]))


@st.composite
def policies(draw):
    """A policy text, valid more often than not, with extreme values here and there."""
    names = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    lines, http_services = [], []
    for k, name in enumerate(names):
        addrs = [f"10.{k}.0.0/16"] + [f"10.{k}.{draw(st.integers(0, 255))}.0/24" for _ in range(draw(st.integers(0, 1)))]
        if k % 2:
            addrs.append(f"fd00:{k}::/64")
        if draw(st.integers(0, 29)) == 13:
            addrs.append(draw(ODD_PREFIX))
        kind = draw(mostly(st.sampled_from(["http", "grpc", "tcp", "external"]), st.just("odd")))
        if kind == "external":
            lines.append(f"external {name} {{ address {', '.join(dict.fromkeys(addrs))} }}")
            continue
        port = 70000 if kind == "odd" else draw(st.integers(1, 65535))
        versions = ""
        if draw(st.booleans()):
            versions = f" version v1 address 10.{k}.0.0/17 version v2 address 10.{k}.128.0/17"
        lines.append(f"service {name} {{ address {', '.join(dict.fromkeys(addrs))} port {port} "
                     f"{'http' if kind == 'odd' else kind}{versions} }}")
        if kind in ("http", "grpc"):
            http_services.append(name)
    lines.append(f"default {draw(st.sampled_from(['allow', 'deny']))}")
    for _ in range(draw(st.integers(0, 6))):
        many = draw(st.integers(0, 9)) == 3
        pool = st.one_of(st.sampled_from(names + ["any"]),
                         st.builds(lambda a, b: f"10.{a}.{b}.0/24", st.integers(0, 255), st.integers(0, 255)))
        src = ", ".join(draw(st.lists(pool, min_size=1, max_size=400 if many else 2)))
        l7 = ""
        if http_services and draw(st.booleans()):
            dst = draw(st.sampled_from(http_services))
            l4 = draw(st.sampled_from(["", "", f"tcp {draw(PORT)}"]))
            l7 = f" http {draw(METHODS)} {draw(PATH)}"
            if draw(st.integers(0, 3)) == 0:
                l7 += f" host {draw(HOST)}"
            if draw(st.integers(0, 3)) == 0:
                l7 += f" header {draw(HEADER)} " + draw(st.sampled_from(["present", "absent", '= "v"']))
        else:
            dst = draw(st.sampled_from(names + ["any", "10.0.0.0/8"]))
            proto = draw(mostly(st.integers(0, 255), EXTREME))
            l4 = draw(st.sampled_from(["", "tcp", "udp", "icmp", "icmp type 8", "proto 47", f"proto {proto}"]))
            if l4 in ("tcp", "udp") and draw(st.booleans()):
                lo = draw(PORT)
                hi = draw(mostly(st.integers(lo, max(lo, min(65535, lo + 1000))), EXTREME))
                l4 += f" {lo}-{hi}" if draw(st.booleans()) else f" {lo}"
        verdict = draw(st.sampled_from(["allow", "allow", "deny"]))
        tail = ""
        if verdict == "allow" and draw(st.integers(0, 2)) == 0:
            count = draw(COUNT)
            tail += f" rate {count}/{draw(UNIT)}"
            if draw(st.booleans()):
                tail += f" burst {draw(mostly(st.integers(max(1, count // 10), max(1, count)), EXTREME))}"
        if draw(st.booleans()):
            tail += f" priority {draw(mostly(st.integers(0, 1000), EXTREME))}"
        lines.append(f"{verdict} {src} -> {dst} {l4}{l7}{tail}")
    if http_services and draw(st.booleans()):
        service = draw(st.sampled_from(http_services))
        backends = draw(mostly(st.just(""), st.sampled_from(["to v1 200%", "to v9"])))
        lines.append(f"route {service} http {draw(PATH)} {{ {backends} timeout {draw(st.integers(1, 10**4))}ms "
                     f"retry {draw(mostly(st.integers(0, 5), EXTREME))} on 5xx }}")
        lines.append(f"limits {service} {{ max-connections {draw(mostly(st.integers(1, 10**4), EXTREME))} "
                     f"eject {draw(st.integers(1, 10))} consecutive 5xx for {draw(st.integers(1, 600))}s }}")
    if draw(st.booleans()):
        lines.append(f"assert {draw(st.sampled_from(['', 'not ']))}reachable {names[0]} -> {names[-1]} tcp {draw(PORT)}")
    return "\n".join(lines) + "\n"


def _ok(result, what: str) -> None:
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{what}: {type(exc).__name__}: {exc}\n{result.output[-2000:]}"
    assert result.exit_code in (0, 1, 2), f"{what}: exit {result.exit_code}\n{result.output[-2000:]}"


def _run(text: str, commands: list[list[str]]) -> None:
    runner = CliRunner()
    work = Path(tempfile.mkdtemp(prefix="anyplane-fuzz-"))
    try:
        policy = work / "p.ap"
        policy.write_text(text)
        (work / "q.ap").write_text(text.replace("allow", "deny", 1))
        for k, args in enumerate(commands):
            args = [a.replace("{P}", str(policy)).replace("{Q}", str(work / "q.ap")).replace("{O}", str(work / f"o{k}"))
                    for a in args]
            _ok(runner.invoke(cli, args, catch_exceptions=True), " ".join(args)[:200] + "\n" + text[:3000])
    finally:
        shutil.rmtree(work, ignore_errors=True)


FAST_COMMANDS = [
    ["check", "{P}"], ["check", "{P}", "--format", "json"],
    ["compile", "{P}", "-t", "ir", "-o", "{O}"], ["compile", "{P}", "-t", "p4", "-o", "{O}"],
    ["compile", "{P}", "-t", "p4", "--no-range", "-o", "{O}"], ["compile", "{P}", "-t", "envoy", "-o", "{O}"],
    ["verify", "{P}"], ["verify", "{P}", "--format", "sarif"], ["verify", "{P}", "--format", "json"],
    ["query", "{P}", "any -> any tcp 80"], ["query", "{P}", "10.0.0.1 -> any http GET /a"],
    ["explain", "{P}", "--flow", "10.0.0.1 -> 10.0.1.1 tcp 80"],
    ["explain", "{P}", "--flow", '10.0.0.1 -> 10.0.1.1 tcp 80 http GET //a/../b host "A.example:1"'],
    ["diff", "{P}", "{Q}"], ["diff", "{P}", "{Q}", "--format", "json"], ["fmt", "{P}", "--check"],
]


@FAST
@given(policies(), st.lists(st.sampled_from(range(len(FAST_COMMANDS))), min_size=1, max_size=4, unique=True))
def test_extreme_policies_through_every_command(text, which):
    _run(text, [FAST_COMMANDS[k] for k in which])


@SLOW
@given(policies(), st.sampled_from([["compile", "{P}", "-t", "ebpf", "-o", "{O}"],
                                    ["compile", "{P}", "-t", "all", "-o", "{O}"],
                                    ["compile", "{P}", "-t", "all", "--prefer", "late", "--capacity", "fabric=3",
                                     "-o", "{O}"]]))
def test_extreme_policies_through_the_kernel_and_every_engine(text, command):
    _run(text, [command])
