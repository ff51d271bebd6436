"""The secrets `anyplane serve` hands the sidecars over SDS: each workload's SVID and the trust bundle.

    secrets = Secrets(Authority.generate("cluster.local"), ttl_s=3600)
    secrets.update(program)           # which service holds which SPIFFE ID (the published policy)
    secrets.of("api")                 # (version, {name: Secret message bytes}) for api's sidecar
    secrets.rotate()                  # re-issue every SVID past half its life; True if any was

A sidecar asks for its secrets by name over ADS (backends/envoy/ads.py). It gets its own service's
SVID only when the client certificate of its xDS connection carries that SPIFFE ID: what the node
says about itself is never enough (docs/deploy.md, the trust model). A certificate is re-issued when
half of its lifetime has passed, so a sidecar always holds one with time to spare; connections open
under the old one are not touched.
"""

from __future__ import annotations

import hashlib
import threading
import time

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from anyplane.ir.nodes import Program

from .ca import DEFAULT_TTL_S, Authority, Svid, bundle_name, bundle_secret, secret
from .xds import fill

SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _message(resource: dict) -> bytes:
    """An SDS Secret (ca.py's form, as the SDS files hold it) as the serialized message."""
    msg = secret_pb2.Secret()
    fill(msg, {k: v for k, v in resource.items() if k != "@type"})
    return msg.SerializeToString(deterministic=True)


def _certificate(svid: Svid) -> bytes:
    return _message(secret(svid))


def _bundle(trust_domain: str, pem: bytes) -> bytes:
    return _message(bundle_secret(trust_domain, pem))


class Secrets:
    """SVIDs issued by one CA, per service of the published policy, rotated at half their life."""

    def __init__(self, authority: Authority, ttl_s: int = DEFAULT_TTL_S, clock=time.time):
        self.authority = authority
        self.ttl_s = ttl_s
        self.clock = clock
        self.principals: dict[str, str] = {}
        self._issued: dict[str, tuple[Svid, float, bytes]] = {}  # principal -> (svid, renew at, message)
        self._bundle = _bundle(authority.trust_domain, authority.bundle)
        self._lock = threading.Lock()
        self.rotations = 0

    def update(self, program: Program) -> None:
        """The services of a newly published policy and their SPIFFE IDs (workloads under mtls whose trust
        domain is this CA's)."""
        with self._lock:
            self.principals = {i.service: i.principal for i in program.identities
                               if i.principal is not None and program.mtls is not None
                               and program.mtls.trust_domain == self.authority.trust_domain}

    def principal(self, service: str) -> str | None:
        return self.principals.get(service)

    def _svid(self, principal: str) -> tuple[Svid, float, bytes]:
        hit = self._issued.get(principal)
        if hit is None or self.clock() >= hit[1]:
            svid = self.authority.issue(principal, self.ttl_s)
            now = self.clock()
            hit = self._issued[principal] = (svid, now + self.ttl_s / 2, _certificate(svid))
        return hit

    def of(self, service: str) -> tuple[str, dict[str, bytes]]:
        """(version, {secret name: message}) of one service's sidecar: its SVID and the trust bundle."""
        with self._lock:
            principal = self.principals.get(service)
            out = {bundle_name(self.authority.trust_domain): self._bundle}
            if principal is not None:
                out[principal] = self._svid(principal)[2]
        h = hashlib.sha256()
        for name in sorted(out):
            h.update(name.encode() + b"\0" + out[name])
        return "sds-" + h.hexdigest()[:16], out

    def rotate(self) -> bool:
        """Re-issue every SVID past half of its lifetime; whether any was."""
        now = self.clock()
        with self._lock:
            due = [p for p, (_, renew, _) in self._issued.items() if now >= renew]
            for p in due:
                del self._issued[p]
                self._svid(p)
            self.rotations += len(due)
        return bool(due)

    def status(self) -> dict:
        """Per SPIFFE ID: when its certificate expires."""
        with self._lock:
            return {"trust_domain": self.authority.trust_domain, "ttl_s": self.ttl_s, "rotations": self.rotations,
                    "issued": {p: s.not_after.isoformat() for p, (s, _, _) in sorted(self._issued.items())}}
