"""Running a real Envoy on loopback with upstream HTTP servers, for the sidecar tests.

Each test takes its own 127.N.0.0/16 (N from `subnet()`), so tests running in
parallel never share a socket: listeners bind addresses inside their
service's range, upstreams listen on the addresses the deployment names.
"""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from anyplane.backends.envoy import push as envoy_push

from .conftest import CI

_counter = itertools.count()


def missing() -> str | None:
    """Why the Envoy tests cannot run here (None when they can)."""
    try:
        binary = envoy_push.envoy_binary()
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"{binary} --version failed: {proc.stderr.strip()}"


def require_envoy() -> None:
    """Skip outside CI, fail in CI: the Envoy tests must run there."""
    why = missing()
    if why:
        (pytest.fail if CI else pytest.skip)(f"Envoy tests cannot run: {why}")


def subnet() -> int:
    """A second octet of 127.0.0.0/8 no other test in this run uses (per xdist worker and test)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    share = 230 // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))  # each worker its own range
    return 20 + index * share + next(_counter) % share


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Upstream:
    """An HTTP server that records what reaches it; `script(n, path)` -> (status, delay_s) per request."""

    def __init__(self, host: str, port: int, name: str, script=None):
        self.name, self.seen, self.script = name, [], script or (lambda n, path: (200, 0))
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                with upstream.lock:
                    n = len(upstream.seen)
                    upstream.seen.append((self.command, self.path, dict(self.headers)))
                status, delay = upstream.script(n, self.path)
                if delay:
                    time.sleep(delay)
                body = upstream.name.encode()
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(body)))
                    self.send_header("x-upstream", upstream.name)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

            def __getattr__(self, name):
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class Envoy:
    """A running Envoy: its admin address and what it printed (the access log)."""

    def __init__(self, proc: subprocess.Popen, admin: str, log_path: str):
        self.proc, self.admin, self.log_path = proc, admin, log_path

    def log(self) -> str:
        """Everything Envoy wrote so far (access log lines included)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def log_when(self, *needles: str, timeout: float = 10) -> str:
        """The log once it contains every needle (access logs are flushed in batches), else as it is."""
        deadline = time.time() + timeout
        while True:
            text = self.log()
            if all(n in text for n in needles) or time.time() > deadline:
                return text
            time.sleep(0.1)

    def stat(self, name: str) -> int:
        """One counter from the admin API (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.admin}/stats?filter=^{name}$", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0


@contextmanager
def running(config: dict, admin: str, workdir: str | None = None):
    """Start Envoy with a bootstrap, wait until it serves, stop it afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = workdir or tmp
        path = os.path.join(workdir, "envoy-under-test.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
        log_path = os.path.join(workdir, "envoy.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([envoy_push.envoy_binary(), "-c", path, "--disable-hot-restart",
                                     "--concurrency", "1", "--log-level", "warning", "--file-flush-interval-msec", "100"],
                                    stdout=log, stderr=subprocess.STDOUT)
        envoy = Envoy(proc, admin, log_path)
        try:
            deadline = time.time() + 30
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"Envoy exited with {proc.returncode}:\n{envoy.log()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise AssertionError(f"Envoy did not become ready:\n{envoy.log()[-3000:]}")
                time.sleep(0.05)
            yield envoy
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request(host: str, port: int, method: str = "GET", path: str = "/", headers: dict | None = None,
            source: str | None = None, timeout: float = 10) -> tuple[int, dict, str]:
    """One HTTP/1.1 request on a new connection from `source`: (status, headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, path, skip_host="host" in {k.lower() for k in (headers or {})},
                        skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def raw_request(host: str, port: int, data: bytes, source: str | None = None, timeout: float = 10) -> int:
    """Send raw bytes as one request on a new connection; the response status (0 if none)."""
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        out = b""
        try:
            while b"\r\n" not in out:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    parts = out.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


__all__ = ["raw_request", "require_envoy", "subnet", "free_port", "Upstream", "running", "request", "Envoy"]
