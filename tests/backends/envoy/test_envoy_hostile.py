"""Hostile requests against a running sidecar: what the verifier proves is what Envoy enforces.

Each request is sent as raw bytes. The interpreter's answer comes from the same
request as the sidecar reads it (`Request.sent_as`: the normal form of
`anyplane.ir.http`). Envoy must give that verdict (200 allow, 403 deny), or
refuse the request (400) where the normal form refuses it, and when it forwards
a request the application must receive exactly the normalised path. A deny is
never bypassed: no denied or refused request reaches the application.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.deployment import Deployment, Sidecar
from anyplane.ir import http
from anyplane.ir.flow import Flow, Request
from anyplane.ir.interp import evaluate

from ...conftest import CI, compile_text
from ...envoyrun import Upstream, free_port, raw_request, require_envoy, running, subnet

pytestmark = pytest.mark.envoy

POLICY = """\
service web {{ address 127.{n}.1.0/24  port 8080 http }}
external clients {{ address 127.{n}.9.0/24 }}
default deny
allow clients -> web http * /*
allow clients -> web http GET /public/* host "www.example.com"
deny  clients -> web http * /admin/*, /admin priority 10
deny  clients -> web http * /files/caf%C3%A9/* priority 10
deny  clients -> web http DELETE /* priority 10
deny  clients -> web http * /* host "secret.example.com" priority 10
deny  clients -> web http * /* header "x-debug" present priority 10
"""
#: Ordinary headers a rule may test: the sidecar sees each as the client sent it.
HEADERS = ("authorization", "cookie", "user-agent", "accept", "x-forwarded-for", "forwarded", "via", "x-real-ip",
           "traceparent", "x-b3-traceid", "x-custom-token", "grpc-timeout", "sec-websocket-key", "date")
POLICY += "".join(f'deny  clients -> web http * /h/{h}/* header "{h}" = "v{k}" priority 10\n'
                  f'deny  clients -> web http * /p/{h}/* header "{h}" present priority 10\n'
                  f'deny  clients -> web http * /a/{h}/* header "{h}" absent priority 10\n'
                  for k, h in enumerate(HEADERS))
STATUS = {"allow": 200, "deny": 403}


class Sidecar1:
    """One running sidecar for the policy above, and its upstream application."""

    def __init__(self, n: int):
        self.n = n
        self.program = compile_text(POLICY.format(n=n), "hostile.ap").program
        self.web, self.client = f"127.{n}.1.1", f"127.{n}.9.7"

    def send(self, method: str, target: str, host: str | None = "web", headers: tuple = ()) -> tuple[int, list]:
        """(status, what the application received) for one raw request."""
        lines = [f"{method} {target} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else [])
        lines += [f"{k}: {v}" for k, v in headers]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        before = len(self.app.seen)
        status = raw_request(self.web, 8080, data, source=self.client)
        return status, self.app.seen[before:]

    def expect(self, method: str, target: str, host: str | None = "web", headers: tuple = ()) -> Request:
        """The request as the interpreter sees it."""
        return Request.sent_as(method, target, host, headers)

    def verdict(self, req: Request) -> str:
        """The interpreter's verdict for a request from the client to web."""
        flow = Flow(4, int(ipaddress.ip_address(self.client)), int(ipaddress.ip_address(self.web)), 6,
                    49152, 8080, http=req)
        return evaluate(self.program, flow).verdict

    def check(self, method: str, target: str, host: str | None = "web", headers: tuple = ()) -> str:
        """Send one request and hold Envoy to the interpreter; returns what happened, for messages."""
        req = self.expect(method, target, host, headers)
        status, seen = self.send(method, target, host, headers)
        shown = repr(target) if len(target) < 100 else repr(target[:60]) + f"... ({len(target)} bytes)"
        what = f"{method} {shown} host={host!r}: envoy {status}, model {req.refused or self.verdict(req)}"
        if req.refused is not None:
            # 400 from the codec or the refusing routes, 403 when a rule denies first, 431 past the size limit.
            assert status in (400, 403, 431), what
            assert not seen, what + " (reached the application)"
            return what
        expected = STATUS[self.verdict(req)]
        assert status == expected, what
        if expected == 200:
            assert len(seen) == 1, what
            t = http.parse_target(target)
            assert seen[0][1] == t.path + ("?" + t.query if t.query is not None else ""), what + f" app got {seen[0][1]!r}"
        else:
            assert not seen, what + " (reached the application)"
        return what


@pytest.fixture(scope="module")
def sidecar():
    require_envoy()
    n = subnet()
    s = Sidecar1(n)
    admin = ("127.0.0.1", free_port())
    deployment = Deployment({"web": Sidecar(inbound=s.web, app=s.web, admin=admin)})
    listeners, clusters, _ = sidecar_resources(s.program, "web", deployment)
    config = bootstrap("web", deployment, None, listeners, clusters)
    with Upstream(s.web, 18080, "web") as app, running(config, f"{admin[0]}:{admin[1]}"):
        s.app = app
        yield s


PATHS = [
    "/admin/x", "//admin/x", "///admin//x", "/x/../admin/y", "/x/./../admin/y", "/public/../admin/x",
    "/x/%2e%2e/admin/y", "/x/%2E%2E/admin/y", "/x/.%2e/admin", "/%2e%2e/admin/x", "/x/..%2fadmin",
    "/%61dmin/x", "/%41dmin/x", "/ADMIN/x", "/admin%2fx", "/admin%2Fx", "/admin%5cx", "/admin%5Cx",
    "/admin\\x", "/x\\..\\admin\\y", "/admin;x/y", "/admin/;/y", "/x/..;/admin/y", "/x/..;foo/admin",
    "/admin%3bx", "/admin%3Bx", "/admin?x=1", "/admin/x?q=/../../public", "/public?x=/admin/",
    "/admin/x#frag", "/public#/admin", "/admin/%00", "/public/%00", "/admin/%zz", "/admin/%2",
    "/files/caf%C3%A9/x", "/files/caf%c3%a9/x", "/files/caf%C3%a9/x", "/files/café/x", "/files/caf%25C3%25A9/x",
    "/public/" + "a" * 8000, "/admin/" + "a" * 8000, "/public/" + "a" * 100_000, "/admin/..", "/admin/.",
    "/admin", "/admin/", "/adminx", "/admin.", "/admin..", "/public/x", "/public/%7e%7Euser",
    '/public/"<>^`{|}', "/public/[x]", "/public/ x", "/public/\tx", "/public/\x7f", "*", "admin/x",
    "http://web/admin/x", "HTTP://web//admin", "http://secret.example.com/public", "/public/%%30%30",
]


def test_path_confusion_never_bypasses_a_deny(sidecar):
    results = [sidecar.check("GET", p) for p in PATHS]
    assert any("envoy 200" in r for r in results) and any("envoy 403" in r for r in results)
    assert any("envoy 400" in r for r in results)


HOSTS = ["secret.example.com", "SECRET.example.com", "secret.example.com.", "secret.example.com:8080",
         "Secret.Example.Com.:1", "secret.example.com..", "secret.example.com:", "secret.example.com:80:80",
         "[::1]", "[::1]:8080", "secret.example.com, web", "web", "", "secret.example.com@web", "www.example.com",
         "WWW.EXAMPLE.COM", "www.example.com.:443", "x_y.example.com"]


@pytest.mark.parametrize("path", ["/public/x", "/other"])
def test_host_spellings_are_one_host(sidecar, path):
    for host in HOSTS:
        sidecar.check("GET", path, host)
    status, _ = sidecar.send("GET", path, None)  # HTTP/1.1 without Host
    assert status == 400


def test_two_host_headers_are_refused(sidecar):
    status, seen = sidecar.send("GET", "/public/x", "www.example.com", (("Host", "secret.example.com"),))
    assert status in (400, 403) and not seen


METHODS = sorted(http.KNOWN_METHODS) + ["delete", "Delete", "FOO", "QUERY", "GET-X", "M-SEARCHX"]


def test_method_spellings(sidecar):
    for m in METHODS:
        sidecar.check(m, "/x")
    # Extra blanks in the request line do not change the method; a tab inside it is refused.
    assert sidecar.send("DELETE ", "/x")[0] == 403
    status, seen = sidecar.send("DE\tLETE", "/x")
    assert status == 400 and not seen


def test_duplicate_and_padded_headers(sidecar):
    sidecar.check("GET", "/x", headers=(("X-Debug", "1"),))
    sidecar.check("GET", "/x", headers=(("x-debug", ""),))
    status, seen = sidecar.send("GET", "/x", headers=(("X-Debug", "1"), ("X-DEBUG", "2")))
    assert status == 403 and not seen
    # A header the client names in Connection is removed before the policy sees it, as it is
    # removed before the application would: no rule can rely on it.
    status, seen = sidecar.send("GET", "/x", headers=(("Connection", "x-debug"), ("X-Debug", "1")))
    assert status == 200 and "x-debug" not in {k.lower() for k in seen[0][2]}


def test_ordinary_headers_are_seen_as_sent(sidecar):
    for k, h in enumerate(HEADERS):
        for path in (f"/h/{h}/x", f"/p/{h}/x", f"/a/{h}/x"):
            for headers in ((), ((h, f"v{k}"),), ((h.upper(), f"v{k}"),), ((h, f" v{k} "),), ((h, "other"),)):
                sidecar.check("GET", path, headers=headers)


def _h2(sidecar, target: str, host: str) -> int:
    """One request over HTTP/2 (prior knowledge, the path as given) with curl: the status."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge", "--globoff",
                          "--path-as-is", "--interface", sidecar.client, "-H", f"host: {host}",
                          f"http://{sidecar.web}:8080{target}"], capture_output=True, text=True, timeout=30)
    return int(out.stdout or 0)


def test_http2_requests_get_the_same_normal_form(sidecar):
    if shutil.which("curl") is None:
        (pytest.fail if CI else pytest.skip)("curl is not installed (make setup installs it)")
    sendable = [p for p in PATHS if p.startswith("/") and len(p) < 9000 and all(0x21 <= ord(c) < 0x7F for c in p)
                and "#" not in p]
    assert len(sendable) > 40
    for target in sendable:
        for host in ("web", "SECRET.example.com.:8080"):
            req = sidecar.expect("GET", target, host)
            before = len(sidecar.app.seen)
            status = _h2(sidecar, target, host)
            what = f"h2 {target!r} host={host!r}: envoy {status}, model {req.refused or sidecar.verdict(req)}"
            if req.refused is not None:
                assert status in (400, 403), what
            else:
                assert status == STATUS[sidecar.verdict(req)], what
            if status != 200:
                assert len(sidecar.app.seen) == before, what


SEGMENTS = ["a", "admin", "public", "files", "caf%C3%A9", "caf%c3%a9", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e",
            "..;", "..;x", ".;", ";", ";x", "%3b", "%2f", "%5C", "\\", "%", "%%", "%2", "%zz", "%25", "%00", "%41",
            "%61dmin", "%7e", "~", '"', "{", "|", "[", "]", "^", "`", "<", ">", "!$&'()*+,=:@", "%20", "x?y=/..",
            "#", "%%30%30", "%%414", "%%4%31", ""]


@st.composite
def targets(draw):
    parts = draw(st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=7))
    seps = draw(st.lists(st.sampled_from(["/", "/", "/", "\\", "//", ""]), min_size=len(parts), max_size=len(parts)))
    return "/" + "".join(s + p for s, p in zip(seps, parts))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "DELETE"]), target=targets(),
       host=st.sampled_from(["web", "SECRET.example.com.", "www.example.com:1", "www.example.com"]))
def test_random_hostile_requests_agree_with_the_interpreter(sidecar, method, target, host):
    sidecar.check(method, target, host)
