"""Where sidecars listen and where upstreams are: the deployment, not the policy.

A policy names services by address ranges; Envoy needs concrete sockets. The
optional deployment file (YAML) says, per service and per identity:

    sidecars:
      reviews:
        inbound: 127.0.2.1        # address the inbound listeners bind (default 0.0.0.0)
        app: 127.0.0.1            # where the local application listens (default 127.0.0.1)
        app_port_offset: 10000    # application port = service port + offset (default 10000)
        outbound: 127.0.0.1:15001 # the outbound listener the application sends to (default 127.0.0.1:15001)
        admin: 127.0.0.1:15000    # Envoy's admin listener (default 127.0.0.1:15000)
    endpoints:                    # upstream instances per identity (service or service.version)
      reviews.v1: [127.0.2.1]     # address, or address:port (default: the service port)
    paths:                        # which engines traffic to a destination crosses (compile -t all)
      mysql: fabric,kernel
    kubernetes:                   # compile -t k8s: where each identity's pods are and how to select them
      namespace: default          # the namespace of identities not named below (default: default)
      workloads:
        reviews: {namespace: shop, labels: {app: reviews}}   # default: labels {anyplane.io/identity: NAME}

Without endpoints, an identity whose every prefix is a single host uses those
hosts; otherwise its cluster resolves the DNS name `<version>.<service>` (or
`<service>`), the Kubernetes convention.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from anyplane.ir import yaml11
from anyplane.ir.source import DiagnosticError

from .base import EngineError


class DeploymentError(EngineError):
    """The deployment file is malformed (the message says where)."""


@dataclass(frozen=True)
class Sidecar:
    """Sockets of one service's sidecar."""

    inbound: str = "0.0.0.0"
    app: str = "127.0.0.1"
    app_port_offset: int = 10000
    outbound: tuple[str, int] = ("127.0.0.1", 15001)
    admin: tuple[str, int] = ("127.0.0.1", 15000)


@dataclass(frozen=True)
class Deployment:
    """Sidecar sockets per service and upstream endpoints per identity."""

    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    endpoints: dict[str, tuple[tuple[str, int | None], ...]] = field(default_factory=dict)
    paths: dict | None = None  # destination -> path, as written (placement reads it: compile -t all)
    #: compile -t k8s: {"namespace": default namespace, "workloads": {identity: {"namespace", "labels"}}}
    kubernetes: dict = field(default_factory=dict)

    def sidecar(self, service: str) -> Sidecar:
        """The sidecar sockets of a service (defaults when not given)."""
        return self.sidecars.get(service, Sidecar())


def _address(text, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        raise DeploymentError(f"{where}: '{text}' is not an IP address") from None


def _socket(text, where: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploymentError(f"{where}: '{text}' is not ADDRESS:PORT")
    return _address(host.strip("[]"), where), int(port)


def _endpoint(text, where: str) -> tuple[str, int | None]:
    text = str(text)
    if text.count(":") == 1 or text.startswith("["):
        return _socket(text, where)
    return _address(text, where), None


def load(path: str | None) -> Deployment:
    """Read a deployment file (None: every default); DeploymentError says what is wrong and where."""
    if path is None:
        return Deployment()
    try:
        with open(path, encoding="utf-8") as fh:
            docs, notes = yaml11.load(path, fh.read())
    except OSError as exc:
        raise DeploymentError(f"cannot read '{path}': {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DeploymentError(f"{path}: not UTF-8 text (a deployment file is YAML)") from None
    except DiagnosticError as exc:
        raise DeploymentError(f"{exc.diagnostics[0].span}: {exc.diagnostics[0].message}") from None
    # Its labels and namespaces are Kubernetes': read as Kubernetes reads YAML, and a plain scalar that
    # means something else than it looks (`y: db` is the label "true") is refused rather than guessed.
    if notes:
        raise DeploymentError(f"{notes[0].span}: {notes[0].message}")
    if len(docs) > 1:
        raise DeploymentError(f"{path}: one YAML document expected, found {len(docs)}")
    data = (docs[0] if docs else None) or {}
    try:
        return _parse(path, data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise DeploymentError(f"{path}: malformed ({exc})") from None


def _parse(path: str, data) -> Deployment:
    if not isinstance(data, dict) or set(data) - {"sidecars", "endpoints", "paths", "kubernetes"}:
        raise DeploymentError(f"{path}: expected the keys 'sidecars', 'endpoints', 'paths' and 'kubernetes'")
    sidecars = {}
    for name, spec in (data.get("sidecars") or {}).items():
        where = f"{path}: sidecars.{name}"
        spec = spec or {}
        unknown = set(spec) - {"inbound", "app", "app_port_offset", "outbound", "admin"}
        if unknown:
            raise DeploymentError(f"{where}: unknown keys {sorted(unknown)}")
        d = Sidecar()
        sidecars[str(name)] = Sidecar(
            inbound=_address(spec.get("inbound", d.inbound), where),
            app=_address(spec.get("app", d.app), where),
            app_port_offset=int(spec.get("app_port_offset", d.app_port_offset)),
            outbound=_socket(spec["outbound"], where) if "outbound" in spec else d.outbound,
            admin=_socket(spec["admin"], where) if "admin" in spec else d.admin)
    endpoints = {}
    for ident, items in (data.get("endpoints") or {}).items():
        where = f"{path}: endpoints.{ident}"
        if not isinstance(items, list) or not items:
            raise DeploymentError(f"{where}: give a non-empty list of addresses")
        endpoints[str(ident)] = tuple(_endpoint(i, where) for i in items)
    paths = data.get("paths")
    if paths is not None and not isinstance(paths, dict):
        raise DeploymentError(f"{path}: paths: expected a mapping of destination to path")
    return Deployment(sidecars, endpoints, paths, _kubernetes(path, data.get("kubernetes")))


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def _kubernetes(path: str, spec) -> dict:
    if spec is None:
        return {}
    if not isinstance(spec, dict) or set(spec) - {"namespace", "workloads"}:
        raise DeploymentError(f"{path}: kubernetes: expected the keys 'namespace' and 'workloads'")
    default = spec.get("namespace", "default")
    if not isinstance(default, str) or not _K8S_NAME.fullmatch(default):
        raise DeploymentError(f"{path}: kubernetes.namespace: '{default}' is not a Kubernetes namespace name")
    workloads = {}
    for name, w in (spec.get("workloads") or {}).items():
        where = f"{path}: kubernetes.workloads.{name}"
        if not isinstance(w, dict) or set(w) - {"namespace", "labels"}:
            raise DeploymentError(f"{where}: expected the keys 'namespace' and 'labels'")
        ns = w.get("namespace", default)
        if not isinstance(ns, str) or not _K8S_NAME.fullmatch(ns):
            raise DeploymentError(f"{where}: '{ns}' is not a Kubernetes namespace name")
        labels = w.get("labels")
        if labels is not None:
            if not isinstance(labels, dict) or not labels:
                raise DeploymentError(f"{where}: labels: give the labels that select its pods")
            for k, v in labels.items():
                if not isinstance(v, str) or not _LABEL_KEY.fullmatch(k) or not _LABEL_VALUE.fullmatch(v):
                    raise DeploymentError(f"{where}: labels: '{k}: {v}' is not a Kubernetes label (a label value "
                                          "is a string: quote a number)")
        workloads[str(name)] = {"namespace": ns, "labels": labels}
    return {"namespace": default, "workloads": workloads}
