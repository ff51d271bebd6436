"""The engine-conformance harness: every registered engine against the interpreter.

For random policies, each engine in the registry (the built-in ones and the
first-match text ACL of tests/acl_engine.py, registered from here) must:

1. read back, from what it emitted, a program that decides every flow class of
   the policy as the interpreter does for the traffic the engine sees (the L4
   projection below L7; the requests of its own service ports for the sidecar);
2. decide like the interpreter when its live runner executes the artifacts:
   BMv2 running the generated pipeline (and, faster, the P4Runtime evaluator
   over the entries a P4Runtime server received), the XDP program in the
   running kernel, a running Envoy, the text ACL read as a device would.

Generated policies that fail `check` are rejected with `assume`, and the
generator's share of valid policies is printed and held above 90%.
"""

from __future__ import annotations

from dataclasses import replace

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anyplane.backends import registry
from anyplane.backends.base import EngineError, Options
from anyplane.backends.ebpf import packet
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.nodes import Connections
from anyplane.ir.interp import evaluate
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError

from .. import acl_engine
from ..brute import universe
from ..conftest import examples
from ..strategies import policies

ENGINES = ["p4", "ebpf", "envoy", "textacl"]
EXAMPLES = examples(25)
HARNESS = settings(max_examples=EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def _text_acl_registered():
    registry.register(acl_engine.ENGINE)
    yield
    registry.unregister("textacl")


def _program(text: str):
    try:
        return compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        assume(False)


def expected(engine, program, flow) -> str:
    """What the engine must decide for a flow: the policy's verdict on what it sees, or allow for
    traffic that never crosses it."""
    if not engine.judges(program, flow):
        return "allow"
    if engine.capability.sees_http:
        return evaluate(program, flow).verdict
    return evaluate(project_l4(program), flow.without_http()).verdict


def test_the_generator_makes_valid_policies_nine_times_in_ten():
    valid = total = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(policies(small=True))
    def sample(text):
        nonlocal valid, total
        total += 1
        try:
            compile_sources([("p.ap", text)])
            valid += 1
        except DiagnosticError:
            pass
    sample()
    print(f"valid policies: {valid} of {total} ({100 * valid / total:.0f}%)")
    assert valid >= 0.9 * total


@pytest.mark.parametrize("name", ENGINES)
@HARNESS
@given(text=policies(small=True))
def test_read_back_decides_every_flow_class_like_the_interpreter(name, text):
    program = _program(text)
    engine = registry.get(name)
    try:
        out = engine.emit(program, Options())
    except (EngineError, DiagnosticError):
        assume(False)  # an engine may refuse a policy in words (the CLI fuzzing holds it to exit 1)
    back = out.read_back() if out.read_back is not None else engine.read_back(program, Options())
    bad = []
    for f in universe([program, back]):
        seen = f if engine.capability.sees_http else f.without_http()
        got = evaluate(back, seen).verdict
        want = expected(engine, program, f)
        if got != want:
            bad.append((f.text, want, got))
    assert not bad, bad[:5]


# -- live runners ---------------------------------------------------------------------------------

def _flows(program, n: int, seed: int):
    return FlowGen(program, seed=seed, http_share=0.5).flows(n)


def _live_textacl(program, flows):
    text = registry.get("textacl").emit(program, Options()).artifacts[0].data
    return [acl_engine.run(text, f) for f in flows]


def _live_p4(program, flows):
    from anyplane.backends.p4.pipeline import Features, p4info
    from anyplane.backends.p4.push import push

    from ..p4eval import Switch
    from ..p4server import Device, Server

    device = Device(p4info(Features()), None)
    with Server(device) as server:
        push(program, server.addr, 1, Features())
    switch = Switch(device.p4info, device)
    return [switch.verdict(packet.frame(f.without_http()))[0] for f in flows]


def _live_ebpf(program, flows):
    from ..kernel import kernel_verdicts, loaded, require_kernel

    require_kernel()
    # The harness judges packets one by one, so the kernel does too (`stateless`): its connection
    # state is held to the reference tracker in test_ebpf.py and test_conntrack.py.
    program = replace(program, connections=Connections(stateful=False))
    with loaded(program, "conformance") as (cl, _):
        got = kernel_verdicts(cl, [packet.frame(f.without_http()) for f in flows])
    return ["allow" if v == "pass" else "deny" for v in got]


LIVE = {"textacl": _live_textacl, "p4": _live_p4, "ebpf": _live_ebpf}


@pytest.mark.parametrize("name", sorted(LIVE))
@HARNESS
@given(text=policies(small=True), seed=st.integers(0, 1000))
def test_live_runner_decides_like_the_interpreter(name, text, seed):
    program = _program(text)
    engine = registry.get(name)
    try:
        engine.emit(program, Options())
    except (EngineError, DiagnosticError):
        assume(False)
    flows = _flows(program, 300, seed)
    got = LIVE[name](program, flows)
    bad = [(f.text, expected(engine, program, f), g) for f, g in zip(flows, got)
           if g != expected(engine, program, f) and not _metered(program, f)]
    assert not bad, bad[:5]


def _metered(program, flow) -> bool:
    """A flow a rate limit decides: a running engine may drop it once the bucket is empty (the rates
    themselves are measured in tests/backends/envoy/test_rates_live.py)."""
    return evaluate(project_l4(program), flow.without_http()).rate is not None


@pytest.fixture(scope="module")
def bmv2(tmp_path_factory):
    """One running BMv2 with anyplane's pipeline; each example pushes its policy."""
    from google.protobuf import text_format

    from anyplane.backends.p4.pipeline import Features, p4info, program_text

    from ..bmv2 import Bmv2, compile_program

    workdir = tmp_path_factory.mktemp("bmv2")
    config, _ = compile_program(program_text(Features()), workdir)
    info = workdir / "p4info.txt"
    info.write_text(text_format.MessageToString(p4info(Features())))
    with Bmv2() as sw:
        sw.pipeline = (str(info), str(config))
        yield sw


@settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(small=True), seed=st.integers(0, 1000))
@pytest.mark.switch
def test_the_real_switch_decides_like_the_interpreter(bmv2, text, seed):
    """The switch engine's live runner is BMv2: the policy pushed to it, frames forwarded or dropped."""
    from anyplane.backends.p4.pipeline import Features
    from anyplane.backends.p4.push import push

    program = _program(text)
    push(program, bmv2.addr, bmv2.device_id, Features(), pipeline_config=bmv2.pipeline)
    flows = [f.without_http() for f in _flows(program, 300, seed)]
    got = bmv2.send([packet.frame(f, payload=k.to_bytes(4, "big")) for k, f in enumerate(flows)], gap=0.0005)
    engine = registry.get("p4")
    bad = [(f.text, expected(engine, program, f)) for f, g in zip(flows, got)
           if (expected(engine, program, f) == "allow") != g and not _metered(program, f)]
    assert not bad, bad[:5]


# The sidecar's live runner needs sources and destinations on loopback: the policies are moved into
# 127.n/16 and each service gets its own Envoy.
def _loopback(text: str, n: int) -> str:
    return text.replace("10.0.0.0/8", "127.0.0.0/8").replace("10.0.", f"127.{n}.")


@pytest.mark.envoy
@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(small=True), seed=st.integers(0, 1000))
def test_live_sidecars_decide_like_the_interpreter(text, seed):
    from anyplane.backends.deployment import Deployment, Sidecar
    from anyplane.backends.envoy.config import bootstrap, sidecar_resources
    from anyplane.backends.envoy.engine import services

    from ..envoyrun import Upstream, free_port, request, require_envoy, running, subnet

    require_envoy()
    n = subnet()
    program = _program(_loopback(text, n))
    engine = registry.get("envoy")
    svcs = services(program)
    assume(svcs)
    flows = [f for f in _flows(program, 2000, seed) if f.family == 4 and f.http is not None
             and engine.judges(program, f) and ipaddress.ip_address(f.src).is_loopback
             and f.src & 0xFF not in (0, 255) and f.dst & 0xFF not in (0, 255)]
    assume(flows)
    flows = flows[:150]
    for svc in svcs:
        ident = program.identity(svc)
        ports = [p.number for p in ident.ports if p.protocol == "http"]
        mine = [f for f in flows if f.dport in ports and program.identity(
            __import__("anyplane.ir.interp", fromlist=["owner"]).owner(program, 4, f.dst)).service == svc]
        if not mine:
            continue
        admin = ("127.0.0.1", free_port())
        app = "127.0.0.1"
        dep = Deployment({svc: Sidecar(inbound="0.0.0.0", app=app, app_port_offset=20000 + n, admin=admin)})
        listeners, clusters, _ = sidecar_resources(program, svc, dep)
        ups = [Upstream(app, p + 20000 + n, svc) for p in ports]
        for u in ups:
            u.__enter__()
        try:
            with running(bootstrap(svc, dep, None, listeners, clusters), f"{admin[0]}:{admin[1]}"):
                for f in mine:
                    dst, src = str(ipaddress.ip_address(f.dst)), str(ipaddress.ip_address(f.src))
                    headers = dict(f.http.headers)
                    headers["host"] = f.http.host or svc
                    status = request(dst, f.dport, f.http.method, f.http.path, headers, source=src)[0]
                    got = {200: "allow", 403: "deny", 429: "allow"}.get(status, f"status {status}")
                    assert got == expected(engine, program, f), (f.text, status)
        finally:
            for u in ups:
                u.__exit__(None, None, None)
