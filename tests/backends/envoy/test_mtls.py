"""Mutual TLS on the sidecar against a running Envoy: the identity is the certificate.

Three workloads (web, api, db) in 127.n/16, each with a SPIFFE ID signed by a CA made for the test.
Clients connect with real TLS from chosen source addresses and present chosen certificates; every
outcome is compared with the interpreter's verdict for the flow the sidecar sees (the certificate it
verified, or none: a connection whose certificate it refuses never becomes a request).
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import tempfile
from pathlib import Path

import pytest

from anyplane.backends.deployment import Deployment, Sidecar
from anyplane.backends.envoy.ca import Authority, write_sds
from anyplane.backends.envoy.config import bootstrap, sidecar_resources
from anyplane.backends.envoy.push import validate
from anyplane.compiler import binding
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.addr import parse_address
from anyplane.ir.flow import Flow, Request
from anyplane.ir.interp import evaluate

from ...envoyrun import Upstream, free_port, request, require_envoy, running, subnet

pytestmark = pytest.mark.envoy

DOMAIN = "cluster.local"
WEB, API, DB = (f"spiffe://{DOMAIN}/ns/shop/sa/{sa}" for sa in ("web", "api", "db"))


@pytest.fixture(autouse=True)
def _envoy():
    require_envoy()


def policy(mode: str) -> str:
    return f"""\
workload web {{ namespace shop  labels app=web  account web  port 8080 http }}
workload api {{ namespace shop  labels app=api  account api  port 9090 http }}
workload db  {{ namespace shop  labels app=db   account db   port 5432 tcp }}
mtls {mode}
default deny
allow web -> api http GET /items/*
allow api -> db tcp 5432
"""


def pods(n: int) -> str:
    return "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {app}-1, namespace: shop, labels: {{app: {app}}}}}
spec: {{serviceAccountName: {app}}}
status: {{podIP: 127.{n}.{k}.1}}
""" for k, app in enumerate(("web", "api", "db"), start=1))


class Mesh:
    """A compiled policy, its CA, and per workload a directory of SDS files."""

    def __init__(self, tmp: Path, mode: str, text: str | None = None):
        self.n = n = subnet()
        (tmp / "pods.yaml").write_text(pods(n))
        self.compiled = compile_sources([("mesh.ap", text or policy(mode))],
                                        binding=binding.read([str(tmp / "pods.yaml")]))
        self.program = self.compiled.program
        self.ca = Authority.generate(DOMAIN)
        self.tmp = tmp
        self.addr = {"web": f"127.{n}.1.1", "api": f"127.{n}.2.1", "db": f"127.{n}.3.1"}
        for app, spiffe in (("web", WEB), ("api", API), ("db", DB)):
            write_sds(tmp / app, self.ca.issue(spiffe, 3600), DOMAIN, self.ca.bundle)

    def sidecar(self, app: str) -> tuple[dict, str]:
        admin = ("127.0.0.1", free_port())
        own = self.addr[app]
        deployment = Deployment({app: Sidecar(inbound=own, app=own, outbound=(own, 15001), admin=admin)})
        listeners, clusters, _ = sidecar_resources(self.program, app, deployment, sds=str(self.tmp / app))
        config = bootstrap(app, deployment, None, listeners, clusters)
        validate(config)
        return config, f"{admin[0]}:{admin[1]}"

    def client(self, svid=None, ca: Authority | None = None) -> ssl.SSLContext:
        """A TLS client context presenting `svid` (none: no certificate) and trusting the mesh CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # SPIFFE: the server is checked by its URI SAN below, not a DNS name
        ctx.load_verify_locations(cadata=(ca or self.ca).bundle.decode())
        if svid is not None:
            d = Path(tempfile.mkdtemp(dir=self.tmp))
            (d / "c.pem").write_bytes(svid.cert)
            (d / "k.pem").write_bytes(svid.key)
            ctx.load_cert_chain(str(d / "c.pem"), str(d / "k.pem"))
        return ctx

    def verdict(self, src: str, dst: str, port: int, peer: str | None, path: str | None = "/items/1") -> str:
        family, s = parse_address(src)
        _, d = parse_address(dst)
        req = Request("GET", path) if path is not None else None
        return evaluate(self.program, Flow(family, s, d, 6, 49152, port, http=req, peer=peer)).verdict


def https(host: str, port: int, ctx: ssl.SSLContext, source: str, path: str = "/items/1") -> int | str:
    """One request over TLS from `source`: the status, or "refused" when the TLS connection fails. The
    server must prove the api's SPIFFE ID."""
    return https_to(host, port, ctx, source, API, path)


def plain(host: str, port: int, source: str, path: str = "/items/1") -> int | str:
    try:
        return request(host, port, "GET", path, source=source)[0]
    except (ConnectionError, http.client.RemoteDisconnected, OSError):
        return "refused"


def agrees(outcome, verdict: str) -> bool:
    """A 2xx is an allow; a 403 or a refused connection a deny."""
    return (verdict == "allow") == (outcome == 200)


def test_strict_the_certificate_decides_and_nothing_else_gets_in(tmp_path):
    mesh = Mesh(tmp_path, "strict")
    api, web, stranger = mesh.addr["api"], mesh.addr["web"], f"127.{mesh.n}.9.9"
    expired = mesh.ca.issue(WEB, 60, not_before=datetime.datetime.now(datetime.timezone.utc)
                            - datetime.timedelta(hours=2))
    other_domain = Authority.generate("other.example")
    impostor = Authority.generate(DOMAIN)  # another CA that claims the trust domain
    cases = [
        # (what, client context, source, the certificate the sidecar verifies)
        ("web's certificate from web", mesh.client(mesh.ca.issue(WEB)), web, WEB),
        ("web's certificate from elsewhere", mesh.client(mesh.ca.issue(WEB)), stranger, WEB),
        ("db's certificate from web's address", mesh.client(mesh.ca.issue(DB)), web, DB),
        ("no certificate from web's address", mesh.client(None), web, None),
        ("an expired certificate of web", mesh.client(expired), web, None),
        ("web's name from another trust domain", mesh.client(other_domain.issue(
            "spiffe://other.example/ns/shop/sa/web")), web, None),
        ("web's name from a CA the mesh does not trust", mesh.client(impostor.issue(WEB)), web, None),
    ]
    config, admin = mesh.sidecar("api")
    with Upstream(api, 19090, "api") as app, running(config, admin):
        outcomes = {what: https(api, 9090, ctx, src) for what, ctx, src, _ in cases}
        outcomes["plaintext from web's address"] = plain(api, 9090, web)
    assert outcomes == {
        "web's certificate from web": 200,
        "web's certificate from elsewhere": 200,
        "db's certificate from web's address": 403,
        "no certificate from web's address": "refused",
        "an expired certificate of web": "refused",
        "web's name from another trust domain": "refused",
        "web's name from a CA the mesh does not trust": "refused",
        "plaintext from web's address": "refused",
    }
    assert len(app.seen) == 2
    for what, _, src, peer in cases:
        assert agrees(outcomes[what], mesh.verdict(src, api, 9090, peer)), what
    assert mesh.verdict(web, api, 9090, None) == "deny"


def test_permissive_takes_plaintext_by_address_and_tls_by_certificate(tmp_path):
    mesh = Mesh(tmp_path, "permissive")
    api, web, stranger = mesh.addr["api"], mesh.addr["web"], f"127.{mesh.n}.9.9"
    config, admin = mesh.sidecar("api")
    with Upstream(api, 19090, "api"), running(config, admin):
        got = {"plaintext from web": plain(api, 9090, web),
               "plaintext from elsewhere": plain(api, 9090, stranger),
               "web's certificate from elsewhere": https(api, 9090, mesh.client(mesh.ca.issue(WEB)), stranger),
               "db's certificate from web": https(api, 9090, mesh.client(mesh.ca.issue(DB)), web)}
    assert got == {"plaintext from web": 200, "plaintext from elsewhere": 403,
                   "web's certificate from elsewhere": 200, "db's certificate from web": 403}
    assert mesh.verdict(web, api, 9090, None) == "allow"
    assert mesh.verdict(stranger, api, 9090, None) == "deny"
    assert mesh.verdict(stranger, api, 9090, WEB) == "allow"
    assert mesh.verdict(web, api, 9090, DB) == "deny"


def test_three_sidecars_connect_by_identity(tmp_path):
    """web's application sends to its own sidecar, which opens mutual TLS to api's sidecar with web's
    certificate; api's sidecar lets GET /items/* in by that certificate. db's TCP port admits api's
    certificate and not web's."""
    mesh = Mesh(tmp_path, "strict")
    web, api, db = mesh.addr["web"], mesh.addr["api"], mesh.addr["db"]
    web_config, web_admin = mesh.sidecar("web")
    api_config, api_admin = mesh.sidecar("api")
    db_config, db_admin = mesh.sidecar("db")
    with Upstream(api, 19090, "api") as app, running(api_config, api_admin), running(web_config, web_admin), \
            running(db_config, db_admin), _echo(db, 15432):
        assert request(web, 15001, "GET", "/items/7", {"host": "api:9090"}, source=web)[0] == 200
        assert request(web, 15001, "GET", "/other", {"host": "api:9090"}, source=web)[0] == 403
        assert _tcp_tls(db, 5432, mesh.client(mesh.ca.issue(API)), api) == b"pong"
        assert _tcp_tls(db, 5432, mesh.client(mesh.ca.issue(WEB)), api) is None
    assert [p for _, p, _ in app.seen] == ["/items/7"]


class _echo:
    """A TCP server answering every connection's first bytes with b"pong"."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        import threading

        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(100):
                        conn.sendall(b"pong")
                except OSError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _tcp_tls(host: str, port: int, ctx: ssl.SSLContext, source: str) -> bytes | None:
    """Bytes back for b"ping" over mutual TLS, or None when the sidecar closes the connection."""
    try:
        with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"ping")
                return s.recv(100) or None
    except (ssl.SSLError, ConnectionError, OSError):
        return None


def _signed(ca: Authority, dir_: Path, name: str, sans: list) -> tuple[str, str]:
    """A certificate with the given SANs that the CA signs (for the xDS channel), as files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=True).sign(ca.key, hashes.SHA256()))
    (dir_ / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dir_ / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(dir_ / f"{name}.pem"), str(dir_ / f"{name}.key")


def _serve(tmp_path: Path, mesh: Mesh, client_ca: bool, **kw):
    """`anyplane serve` (in-process) of the strict mesh policy for api's sidecar, with the mesh's CA, on TLS
    with a server certificate the CA signed (clients checked by it too with `client_ca`); the trust
    bundle in tmp/ca.pem. (serving, api's deployment, its admin port, the xDS port)."""
    from cryptography import x509

    from anyplane.compiler import api as facade

    api_addr = mesh.addr["api"]
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "mesh.ap").write_text(policy("strict"))
    admin = free_port()
    deployment = Deployment({"api": Sidecar(inbound=api_addr, app=api_addr, outbound=(api_addr, 15001),
                                            admin=("127.0.0.1", admin))})
    (tmp_path / "deploy.yaml").write_text(f"sidecars:\n  api: {{inbound: {api_addr}, app: {api_addr}, "
                                          f"outbound: '{api_addr}:15001', admin: '127.0.0.1:{admin}'}}\n")
    cert, key = mesh.ca.pem()
    serving = facade.Serving([str(tmp_path / "policy")], str(tmp_path / "deploy.yaml"),
                             bind=[str(tmp_path / "pods.yaml")], ca=(cert, key, b""), **kw)
    assert serving.check()
    server_cert, server_key = _signed(mesh.ca, tmp_path, "xds-server",
                                      [x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/ns/anyplane/sa/xds")])
    (tmp_path / "ca.pem").write_bytes(mesh.ca.bundle)
    xds_port = free_port()
    serving.start(f"127.0.0.1:{xds_port}", (Path(server_cert).read_bytes(), Path(server_key).read_bytes(),
                                            mesh.ca.bundle if client_ca else None))
    return serving, deployment, admin, xds_port


def test_serve_hands_each_sidecar_its_own_key_and_rotates_it_without_a_failed_request(tmp_path, capsys):
    """`anyplane serve` with a CA: api's sidecar, whose xDS client certificate carries api's SPIFFE ID,
    gets api's SVID over SDS and serves mutual TLS with it; the SVID is re-issued at half its life while
    web keeps sending requests, none of which fails, and the sidecar moves to the new certificate. A
    sidecar whose xDS certificate names service api by DNS name only gets api's listeners but never api's
    key."""
    import threading
    import time

    from anyplane.backends.envoy.config import ads_bootstrap
    from cryptography import x509

    mesh = Mesh(tmp_path, "strict")
    api_addr, web = mesh.addr["api"], mesh.addr["web"]
    serving, deployment, admin, xds_port = _serve(tmp_path, mesh, client_ca=True, svid_ttl_s=6)
    own_cert, own_key = _signed(mesh.ca, tmp_path, "api-xds", [x509.UniformResourceIdentifier(API)])
    boot = ads_bootstrap("api", deployment, [("127.0.0.1", xds_port)],
                         tls={"cert": own_cert, "key": own_key, "ca": str(tmp_path / "ca.pem")})
    served, failures, serials = [], [], set()
    stop = threading.Event()

    def client():
        ctx = mesh.client(mesh.ca.issue(WEB))
        while not stop.is_set():
            conn = http.client.HTTPSConnection(api_addr, 9090, context=ctx, source_address=(web, 0), timeout=10)
            try:
                conn.connect()
                serials.add(x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True)).serial_number)
                conn.request("GET", "/items/1")
                status = conn.getresponse().status
                (served if status == 200 else failures).append(status)
            except (OSError, ssl.SSLError) as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    try:
        with Upstream(api_addr, 19090, "api"), running(boot, f"127.0.0.1:{admin}"):
            deadline = time.time() + 60
            while https(api_addr, 9090, mesh.client(mesh.ca.issue(WEB)), web) != 200:
                assert time.time() < deadline, serving.status()
                time.sleep(0.2)
            worker = threading.Thread(target=client)
            worker.start()
            try:
                deadline = time.time() + 60
                while serving.status()["certificates"]["rotations"] < 2 or len(serials) < 3:
                    assert time.time() < deadline, (serving.status()["certificates"], len(serials), failures[:3])
                    serving.rotate()
                    time.sleep(0.2)
            finally:
                stop.set()
                worker.join(30)
            assert failures == [] and len(served) > 10
            assert len(serials) >= 3  # the first certificate and two rotations, each served in turn

            # A sidecar of api that proves only the DNS name "api" gets listeners, never api's key.
            dns_cert, dns_key = _signed(mesh.ca, tmp_path, "api-dns", [x509.DNSName("api")])
            other = ads_bootstrap("api", deployment, [("127.0.0.1", xds_port)], node_id="api-by-dns",
                                  tls={"cert": dns_cert, "key": dns_key, "ca": str(tmp_path / "ca.pem")})
            other["admin"]["address"]["socket_address"]["port_value"] = free_port()
            path = tmp_path / "other.yaml"
            import yaml

            path.write_text(yaml.safe_dump(other))
            import subprocess

            from anyplane.backends.envoy.push import envoy_binary

            proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                                     "--log-level", "error", "--base-id", "9"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.time() + 60
                while True:
                    nodes = {x["id"]: x for x in serving.status()["nodes"]}
                    secrets = nodes.get("api-by-dns", {}).get("types", {}).get("secrets", {})
                    if secrets.get("error"):
                        break
                    assert time.time() < deadline, serving.status()
                    time.sleep(0.2)
                assert "no key for " + API in secrets["error"]
                assert serving.status()["streams"]["refused"].get("key asked without its identity", 0) >= 1
                from anyplane.compiler.commands.engines import _xds_status

                _xds_status(serving.status())  # what `anyplane status -t xds` prints
                shown = capsys.readouterr().out
                assert f"({secrets['error']})" in shown and "certificates of cluster.local: " in shown
                assert f"  {API}  expires " in shown
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        serving.stop()


def test_differential_random_clients_get_the_interpreters_verdict(tmp_path):
    """Random (source address, certificate or none, path) against a permissive sidecar: every outcome is
    the interpreter's verdict for the flow the sidecar sees."""
    import random

    mesh = Mesh(tmp_path, "permissive")
    api = mesh.addr["api"]
    rng = random.Random(29)
    sources = [mesh.addr["web"], mesh.addr["db"], f"127.{mesh.n}.9.9"]
    certificates = {None: None, WEB: mesh.client(mesh.ca.issue(WEB)), DB: mesh.client(mesh.ca.issue(DB)),
                    API: mesh.client(mesh.ca.issue(API))}
    config, admin = mesh.sidecar("api")
    seen = {"allow": 0, "deny": 0}
    with Upstream(api, 19090, "api"), running(config, admin):
        for _ in range(60):
            src, peer, path = rng.choice(sources), rng.choice(list(certificates)), rng.choice(["/items/1", "/other"])
            got = plain(api, 9090, src, path) if peer is None else https(api, 9090, certificates[peer], src, path)
            want = mesh.verdict(src, api, 9090, peer, path)
            seen[want] += 1
            assert agrees(got, want), (src, peer, path, got, want)
    assert min(seen.values()) >= 10


def test_a_bootstrap_token_proves_a_sidecars_identity_and_a_wrong_one_gets_nothing(tmp_path):
    """serve with TLS but no client CA, and bootstrap tokens: api's sidecar, whose bootstrap carries api's
    token, gets api's key and serves mutual TLS with it; a sidecar with an unknown token is refused."""
    import secrets as random_tokens
    import time

    from anyplane.backends.envoy.config import ads_bootstrap

    mesh = Mesh(tmp_path, "strict")
    api_addr, web = mesh.addr["api"], mesh.addr["web"]
    token = random_tokens.token_urlsafe(32)
    serving, deployment, admin, xds_port = _serve(tmp_path, mesh, client_ca=False, tokens={token: API})
    tls = {"ca": str(tmp_path / "ca.pem")}
    try:
        boot = ads_bootstrap("api", deployment, [("127.0.0.1", xds_port)], tls=tls, token=token)
        with Upstream(api_addr, 19090, "api"), running(boot, f"127.0.0.1:{admin}"):
            deadline = time.time() + 60
            while https(api_addr, 9090, mesh.client(mesh.ca.issue(WEB)), web) != 200:
                assert time.time() < deadline, serving.status()
                time.sleep(0.2)
            # A sidecar that ACKed its configuration and its secrets is current (its secrets' versions are its own).
            while not all(x["current"] for x in serving.status()["nodes"] if x["connected"]):
                assert time.time() < deadline, serving.status()
                time.sleep(0.2)
            wrong = ads_bootstrap("api", deployment, [("127.0.0.1", xds_port)], tls=tls, node_id="impostor",
                                  token=random_tokens.token_urlsafe(32))
            wrong["admin"]["address"]["socket_address"]["port_value"] = free_port()
            with _background(wrong, tmp_path):
                deadline = time.time() + 60
                while serving.status()["streams"]["refused"].get("unknown bootstrap token", 0) < 1:
                    assert time.time() < deadline, serving.status()
                    time.sleep(0.2)
            assert "impostor" not in {x["id"] for x in serving.status()["nodes"]}
    finally:
        serving.stop()


class _background:
    """An Envoy that may never become ready (its xDS server refuses it), stopped afterwards."""

    def __init__(self, config: dict, tmp: Path):
        import subprocess

        import yaml

        from anyplane.backends.envoy.push import envoy_binary

        path = tmp / f"background-{id(self)}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                                      "--log-level", "error", "--base-id", str(20 + id(self) % 1000)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


def test_each_workload_takes_connections_as_its_own_mode_says(tmp_path):
    """Under `mtls strict`, web says `mtls permissive` (browsers reach it) and db `mtls off` (no TLS): web's
    sidecar takes plaintext by address and certificates alike, api's only certificates, db's plaintext
    only; every outcome is the interpreter's verdict."""
    text = """\
workload web { namespace shop  labels app=web  account web  port 8080 http  mtls permissive }
workload api { namespace shop  labels app=api  account api  port 9090 http }
workload db  { namespace shop  labels app=db   account db   port 5432 tcp  mtls off }
external office { address 127.0.0.0/8 }
mtls strict
default deny
allow office -> web http GET /items/*
allow web -> api http GET /items/*
allow api -> db tcp 5432
"""
    mesh = Mesh(tmp_path, "strict", text)
    web, api, db, stranger = mesh.addr["web"], mesh.addr["api"], mesh.addr["db"], f"127.{mesh.n}.9.9"
    with Upstream(web, 18080, "web"), Upstream(api, 19090, "api"), _echo(db, 15432), \
            running(*mesh.sidecar("web")), running(*mesh.sidecar("api")), running(*mesh.sidecar("db")):
        plain_web = plain(web, 8080, stranger)
        tls_web = https_to(web, 8080, mesh.client(mesh.ca.issue(API)), stranger, WEB)
        plain_api = plain(api, 9090, web)
        plain_db = _tcp_plain(db, 5432, api)
        plain_db_other = _tcp_plain(db, 5432, web)
        tls_db = _tcp_tls(db, 5432, mesh.client(mesh.ca.issue(API)), api)
    assert (plain_web, tls_web, plain_api) == (200, 200, "refused")
    assert (plain_db, plain_db_other, tls_db) == (b"pong", None, None)
    assert mesh.verdict(stranger, web, 8080, None) == "allow" and mesh.verdict(stranger, web, 8080, API) == "allow"
    assert mesh.verdict(web, api, 9090, None) == "deny"
    assert mesh.verdict(api, db, 5432, None, None) == "allow" and mesh.verdict(web, db, 5432, None, None) == "deny"


def https_to(host: str, port: int, ctx: ssl.SSLContext, source: str, server: str, path: str = "/items/1"):
    """One request over TLS to a sidecar that must prove `server`'s SPIFFE ID: the status, or "refused"
    when the TLS connection fails."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, source_address=(source, 0), timeout=10)
    try:
        conn.connect()
        assert dict(conn.sock.getpeercert().get("subjectAltName", ())).get("URI") == server
        conn.request("GET", path)
        return conn.getresponse().status
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, socket.timeout, OSError):
        return "refused"
    finally:
        conn.close()


def _tcp_plain(host: str, port: int, source: str) -> bytes | None:
    """Bytes back for b"ping" without TLS, or None when the sidecar closes the connection."""
    try:
        with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as s:
            s.sendall(b"ping")
            return s.recv(100) or None
    except OSError:
        return None
