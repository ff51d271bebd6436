"""The sidecar engine's entry points: emit every service's Envoy configuration, and the report.

    emit(program, deployment, out_dir)
      <service>/envoy.yaml, envoy.json   a complete static configuration (envoy -c)
      <service>/bootstrap.yaml           the same sidecar driven by filesystem xDS:
      <service>/xds/lds.yaml, cds.yaml   listeners and clusters, replaced by `push`
      report.txt                         how every rule is enforced
"""

from __future__ import annotations

import json
import os

import yaml

from anyplane.ir import fields as F, yaml11
from anyplane.ir.actions import RateLimit
from anyplane.ir.nodes import Program

from .. import base
from .config import ads_bootstrap, bootstrap, sidecar_resources
from ..deployment import Deployment
from .inbound import Unsupported

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


CAPABILITY = base.Capability(
    engine="envoy", place="sidecar",
    fields=base.L4_FIELDS + ("src.peer", "http", "http.method", "http.path", "http.host", "http.header.*"),
    families=(4, 6), actions=("allow", "deny", "request-rate-limit", "routes", "retries", "timeouts",
                              "circuit-breaking", "outlier-ejection"),
    capacity=None, protocols="tcp", state="connections")


def covers(program: Program) -> dict[str, bool]:
    """Per rule id: whether every flow the rule matches reaches a sidecar (TCP to a port of a service
    that has one), so that the sidecars alone can enforce it. Placement reads this."""
    from anyplane.ir.match import InSet, exact_values, int_ranges, options

    ports: dict[str, frozenset[int]] = {}
    for svc in services(program):
        tcp = frozenset(p.number for p in program.identity(svc).ports if p.protocol != "udp")
        for ident in program.service_identities(svc):
            ports[ident] = tcp

    def in_scope(m) -> bool:
        proto, ids, dport = m.get(F.PROTO), m.get(F.DST_ID), m.get(F.DPORT)
        if proto is None or exact_values(proto) != {6} or ids is None or dport is None:
            return False
        if m.get(F.ICMP_TYPE) is not None or m.get(F.ICMP_CODE) is not None:
            return False
        owners = [v for o in options(ids) for v in (o.values if isinstance(o, InSet) else (None,))]
        ranges = int_ranges(dport)
        if not owners or ranges is None or any(v not in ports for v in owners):
            return False
        return all(hi - lo < len(ports[v]) and all(p in ports[v] for p in range(lo, hi + 1))
                   for v in owners for lo, hi in ranges)

    out: dict[str, bool] = {}
    for e in program.acl.entries:
        out[e.rule] = out.get(e.rule, True) and in_scope(e.match)
    return out


def reads_http(program: Program) -> dict[str, str | None]:
    """Per rule with HTTP conditions: None when every request it is about reaches a sidecar's HTTP
    listener (TCP to an http or grpc port of a service), else why not and how to fix it."""
    from anyplane.ir.match import InSet, exact_values, int_ranges, options

    out: dict[str, str | None] = {r.id: None for r in program.rules if r.layer == "L7"}
    for e in program.acl.entries:
        if e.rule in out and out[e.rule] is None and any(n.startswith(F.HTTP) for n, _ in e.match.fields):
            out[e.rule] = _http_gap(program, e.match, InSet, exact_values, int_ranges, options)
    return out


def _http_gap(program: Program, m, InSet, exact_values, int_ranges, options) -> str | None:
    proto, ids, dport = m.get(F.PROTO), m.get(F.DST_ID), m.get(F.DPORT)
    if proto is None or exact_values(proto) != {6}:
        return "HTTP runs over TCP"
    owners = [v for o in options(ids) for v in (o.values if isinstance(o, InSet) else (None,))] if ids else []
    if not owners or None in owners:
        return "its destination is addresses: a sidecar reads HTTP only on a service's http ports (name the service)"
    ranges = int_ranges(dport) if dport is not None else [(0, 65535)]
    for name in owners:
        ident = program.identity(name)
        if ident.kind != "service":
            return f"'{name}' is an external: no sidecar stands in front of it"
        declared = {p.number: p.protocol for p in ident.ports}
        for lo, hi in ranges or [(0, 65535)]:
            missing = [n for n in range(lo, min(hi, lo + 65535) + 1) if declared.get(n) not in ("http", "grpc")]
            if not missing:
                continue
            n = missing[0]
            if n in declared:
                return (f"'{ident.service}' declares port {n} as {declared[n]}, so its sidecar passes it through "
                        f"as bytes (declare 'port {n} http' in service {ident.service})")
            if hi - lo + 1 > 64:
                return (f"ports {lo}-{hi} are not all http ports of '{ident.service}': give the http port "
                        "('tcp PORT http ...'), or leave the L4 part out to mean the service's http ports")
            return (f"'{ident.service}' has no port {n}, so no sidecar reads requests there (declare "
                    f"'port {n} http' in service {ident.service})")
    return None


class EnvoyError(base.EngineError):
    """The policy cannot be expressed for the sidecar, or a push failed (the message says why)."""


def services(program: Program) -> list[str]:
    """Services that get a sidecar: those with at least one TCP (http, grpc, tcp) port."""
    return [i.name for i in program.identities
            if i.version is None and i.kind == "service" and any(p.protocol != "udp" for p in i.ports)]


def dump(data) -> str:
    """YAML as Envoy reads it (safe, key order kept: the output is deterministic; a string that a YAML 1.1
    reader such as Envoy's would take for a boolean or a number is quoted)."""
    return yaml11.dump(data, sort_keys=False, width=120)


def xds_files(listeners: list[dict], clusters: list[dict], version: str) -> dict[str, str]:
    """lds.yaml and cds.yaml as filesystem xDS discovery responses."""
    return {"lds.yaml": dump({"version_info": version,
                              "resources": [dict({"@type": LISTENER_TYPE}, **l) for l in listeners]}),
            "cds.yaml": dump({"version_info": version,
                              "resources": [dict({"@type": CLUSTER_TYPE}, **c) for c in clusters]})}


def content_version(listeners, clusters) -> str:
    """A version name derived from the content (the same policy gives the same version)."""
    import hashlib

    digest = hashlib.sha256(json.dumps([listeners, clusters], sort_keys=True).encode()).hexdigest()
    return f"anyplane-{digest[:16]}"


def report(program: Program, placed: set[int]) -> list[base.RuleReport]:
    """How the sidecars treat each rule."""
    by_rule: dict[str, list] = {}
    for e in program.acl.entries:
        by_rule.setdefault(e.rule, []).append(e)

    def classify(rule):
        entries = by_rule.get(rule.id, [])
        n = sum(1 for e in entries if id(e) in placed)
        if n == 0:
            protos = [e.match.get(F.PROTO) for e in entries]
            if entries and all(p is not None and 6 not in getattr(p, "values", (getattr(p, "value", None),))
                               for p in protos):
                return base.NOT_ENFORCED, "the sidecar carries TCP only (UDP, ICMP and other protocols: kernel/switch)", 0
            return base.NOT_ENFORCED, "no sidecar receives this traffic (its destination has no service port)", 0
        detail = ""
        if any(isinstance(e.action, RateLimit) and e.match.layer != "L7" for e in entries):
            detail = "allow/deny enforced; a packet rate limit is left to the kernel/switch engines"
        elif n < len(entries):
            detail = "enforced where a sidecar receives the traffic"
        return base.ENFORCED, detail, n
    return base.rule_rows(program, classify)


def build(program: Program, deployment: Deployment, dry_run: bool = False, sds=None):
    """{service: (listeners, clusters)} and the set of placed entry ids. `sds`: a function of the service
    giving the directory of its SDS files, or None: secrets over ADS (anyplane serve)."""
    out, placed = {}, set()
    try:
        for svc in services(program):
            listeners, clusters, plans = sidecar_resources(program, svc, deployment, dry_run,
                                                           sds(svc) if sds is not None else None)
            out[svc] = (listeners, clusters)
            placed.update(id(e) for p in plans for e in p.entries)
    except Unsupported as exc:
        raise EnvoyError(f"the sidecar cannot express this policy: {exc}") from exc
    return out, placed


def emit(program: Program, deployment: Deployment | None = None, out_dir: str = ".",
         dry_run: bool = False, xds: tuple = (), xds_delta: bool = False, xds_tls: dict | None = None,
         ca: tuple | None = None) -> base.Output:
    """The artifacts `anyplane compile -t envoy` writes (`xds`: the xDS servers the bootstraps use; `ca`:
    the CA that signs the sidecars' certificates under mutual TLS, see `certificates`)."""
    deployment = deployment or Deployment()
    # Secrets: over ADS when the sidecars have an xDS server, else from SDS files beside each bootstrap.
    sds = None if xds else (lambda svc: os.path.abspath(os.path.join(out_dir, svc, "certs")))
    built, placed = build(program, deployment, dry_run, sds)
    out = base.Output(report=report(program, placed))
    for svc, (listeners, clusters) in built.items():
        static = bootstrap(svc, deployment, None, listeners, clusters)
        xds_dir = os.path.abspath(os.path.join(out_dir, svc, "xds"))
        token = (xds_tls or {}).get("token")
        boot = ads_bootstrap(svc, deployment, list(xds), xds_delta, tls=xds_tls, token=token) if xds else \
            bootstrap(svc, deployment, xds_dir)
        out.artifacts += [base.Artifact(f"{svc}/envoy.yaml", dump(static)),
                          base.Artifact(f"{svc}/envoy.json", json.dumps(static, separators=(",", ":")) + "\n"),
                          base.Artifact(f"{svc}/bootstrap.yaml", dump(boot))]
        for name, text in xds_files(listeners, clusters, content_version(listeners, clusters)).items():
            out.artifacts.append(base.Artifact(f"{svc}/xds/{name}", text))
    if program.mtls is not None and not xds:
        out.artifacts += certificates(program, list(built), ca)
    out.artifacts.append(base.Artifact("report.txt", out.report_text("envoy (sidecars)")))
    return out


FILE_SVID_TTL_S = 7 * 24 * 3600


def certificates(program: Program, sidecars: list[str], ca: tuple | None) -> list[base.Artifact]:
    """Under mutual TLS without a control plane: each workload's SDS files (its certificate, valid
    FILE_SVID_TTL_S, and the trust bundle), signed by `ca` (cert, key, chain, whether the output keeps
    it), or by a new CA that the output keeps in ca/ for the next compile."""
    from .ca import SDS_BUNDLE_FILE, SDS_CERT_FILE, Authority, CaError, bundle_secret, secret

    domain = program.mtls.trust_domain
    try:
        authority = Authority.of(domain, ca)
    except CaError as exc:
        raise EnvoyError(str(exc)) from None
    out = []
    if ca is None or ca[3]:
        cert, key = authority.pem()
        out += [base.Artifact("ca/ca.pem", cert), base.Artifact("ca/ca.key", key)]
    bundle = {"resources": [bundle_secret(domain, authority.bundle)]}
    for svc in sidecars:
        principal = program.identity(svc).principal
        if principal is None:
            continue
        svid = authority.issue(principal, FILE_SVID_TTL_S)
        out += [base.Artifact(f"{svc}/certs/{SDS_CERT_FILE}", json.dumps({"resources": [secret(svid)]}) + "\n"),
                base.Artifact(f"{svc}/certs/{SDS_BUNDLE_FILE}", json.dumps(bundle) + "\n")]
    return out


def lifted(program: Program) -> Program:
    """What the sidecars decide, as IR: per inbound listener, its entries restricted to the traffic the
    listener receives (TCP to that service and port), then its default; everything else passes (no
    sidecar sees it). For the composition proof."""
    from dataclasses import replace

    from anyplane.ir.actions import Allow, Deny
    from anyplane.ir.match import Exact, InSet, Match
    from anyplane.ir.nodes import Entry, Table, decision_key

    from .inbound import listener_plan, rule_names

    names = rule_names(program)
    out: list[Entry] = []
    for svc in services(program):
        identities = tuple(sorted(program.service_identities(svc)))
        for port in program.identity(svc).ports:
            if port.protocol == "udp":
                continue
            plan = listener_plan(program, svc, port.number, port.protocol in ("http", "grpc"), names)
            scope = {F.DST_ID: InSet(identities), F.PROTO: Exact(6), F.DPORT: Exact(port.number)}
            chain = sorted(plan.entries, key=decision_key)
            for e in chain:
                fields = dict(e.match.fields)
                ids = fields.get(F.DST_ID)
                fields[F.DST_ID] = InSet(tuple(i for i in identities if ids is None or i in ids.values)) \
                    if ids is not None else scope[F.DST_ID]
                if not fields[F.DST_ID].values:
                    continue
                fields[F.PROTO], fields[F.DPORT] = scope[F.PROTO], scope[F.DPORT]
                out.append(replace(e, match=Match.of(fields)))
            default = Allow() if plan.default_allow else Deny()
            origin = program.default_origin or (program.rules[0].origin if program.rules else None)
            out.append(Entry(0, Match.of(scope), default, origin, "default"))
    n = len(out)
    # One priority per entry, in the order the listeners decide (listeners never overlap).
    ordered = tuple(replace(e, priority=n - k) for k, e in enumerate(out))
    return replace(program, default="allow", acl=Table("sidecar", ordered), routes=Table("routes", ()))


class SidecarEngine(base.Engine):
    """Every service's Envoy sidecar: listeners with RBAC, rate limits, routes and clusters."""

    name, place, capability = "envoy", "sidecar", CAPABILITY
    options = frozenset({"deployment", "dry_run", "out_dir", "xds", "ca"})

    def emit(self, program: Program, options: base.Options) -> base.Output:
        """`compile -t envoy`."""
        return emit(program, options.deployment or Deployment(), options.out_dir, options.dry_run,
                    options.xds, options.xds_delta, options.xds_tls, options.ca)

    def services(self, program: Program) -> list[str]:
        """The services that get a sidecar."""
        return services(program)

    def control_plane_limits(self, **kw):
        """Limits for `control_plane` (backends/envoy/ads.py Limits), from keyword values."""
        from .ads import Limits

        return Limits(**kw)

    def control_plane(self, limits=None) -> "ControlPlane":
        """An xDS server for a fleet of sidecars (backends/envoy/ads.py); `limits`: ads.Limits."""
        return ControlPlane(limits)

    def read_back(self, program: Program, options: base.Options) -> Program:
        """Per listener, what it decides (see `lifted`)."""
        return lifted(program)

    def covers(self, program: Program) -> dict[str, bool]:
        """Rules all of whose flows reach a sidecar (TCP to a service port)."""
        return covers(program)

    def reads_http(self, program: Program) -> dict[str, str | None]:
        """Rules with HTTP conditions whose requests all reach an HTTP listener of a sidecar."""
        return reads_http(program)

    def judges(self, program: Program, flow) -> bool:
        """TCP to a TCP or HTTP port of a service: the traffic a sidecar's inbound listeners receive."""
        from anyplane.ir.interp import owner

        if flow.proto != 6 or flow.fragment:
            return False
        ident = owner(program, flow.family, flow.dst)
        if ident is None or program.identity(ident).service not in services(program):
            return False
        svc = program.identity(ident).service
        return any(p.number == flow.dport and p.protocol != "udp" for p in program.identity(svc).ports)

    def push(self, program: Program, **kw) -> dict:
        """Replace one running sidecar's listeners and clusters (backends/envoy/push.py)."""
        from .push import push

        return push(program, **kw)

    def push_files(self, out_dir: str, prefix: str, service: str, xds_dir: str, admin: str | None,
                   listed: dict[str, str]) -> dict:
        """Push one sidecar's xDS files from a compiled output (whose manifest the caller checked)."""
        from pathlib import Path

        from .push import push_files

        names = {kind: f"{prefix}{service}/xds/{kind}" for kind in ("lds.yaml", "cds.yaml")}
        if not all(n in listed for n in names.values()):
            raise EnvoyError(f"'{out_dir}' has no sidecar for service '{service}'")
        if admin is None:
            try:
                boot = yaml.safe_load((Path(out_dir) / f"{prefix}{service}/bootstrap.yaml").read_text())
                sock = boot["admin"]["address"]["socket_address"]
                admin = f"{sock['address']}:{sock['port_value']}"
            except (OSError, KeyError, TypeError, yaml.YAMLError):
                raise EnvoyError("give --admin HOST:PORT: the output has no bootstrap naming the admin address") \
                    from None
        files = {kind: (Path(out_dir) / name).read_text(encoding="utf-8") for kind, name in names.items()}
        return push_files(files, service, xds_dir, admin)


class ControlPlane:
    """The sidecars' xDS server: publish a program (its sidecar share), serve it over gRPC, report."""

    def __init__(self, limits=None):
        from .ads import Limits, XdsServer

        self.server = XdsServer(limits or Limits())
        self.running = None
        self.ca: tuple | None = None  # (cert, key, chain) PEM of the CA that signs the SVIDs (None: made here)
        self.ttl_s: int | None = None
        self.keep: str | None = None  # where a CA made here is written for the next start
        self._prepared: tuple = (None, None)

    def start(self, address: str, tls=None) -> int:
        """Listen on HOST:PORT (port 0: any); `tls` = (cert, key, client CA) as bytes. The bound port."""
        from .ads import Tls, start

        self.running = start(self.server, address, Tls(*tls) if tls else None)
        return self.running.bound_port

    def prepare(self, program: Program, deployment: Deployment | None, version: str):
        """Every sidecar's resources for `version` of the policy (EnvoyError when the sidecars cannot
        express it), ready to publish."""
        from .xds import snapshot

        built, _ = build(program, deployment or Deployment())
        snap = snapshot(built, version)
        self._prepared = (snap.version, program)
        return snap

    def certify(self, ca: tuple | None = None, ttl_s: int | None = None, tokens: dict | None = None,
                keep: str | None = None) -> None:
        """Serve certificates (SDS) for policies under mtls: signed by `ca` (cert, key, chain PEM), or by
        a CA made for the trust domain of the first such policy: written into `keep` (a directory) for the
        next start, else living as long as this server. `tokens`: bootstrap token -> the SPIFFE ID a stream
        that sends it proves (TLS only)."""
        self.ca, self.ttl_s, self.keep = ca, ttl_s, keep
        self.server.tokens = dict(tokens or {})

    def _secrets_for(self, program: Program):
        from .ca import Authority, CaError
        from .sds import Secrets

        if program.mtls is None:
            return None
        domain = program.mtls.trust_domain
        current = self.server.secrets
        if current is not None and current.authority.trust_domain == domain:
            return current
        try:
            authority = Authority.of(domain, self.ca)
        except CaError as exc:
            raise EnvoyError(str(exc)) from None
        if self.ca is None and self.keep is not None:
            from .ca import keep

            try:
                keep(self.keep, authority)
            except OSError as exc:
                raise EnvoyError(f"cannot keep the CA in '{self.keep}': {exc.strerror or exc}") from None
            self.ca = (*authority.pem(), b"")  # the one it keeps from now on
        return Secrets(authority, self.ttl_s or FILE_SVID_TTL_S)

    def publish(self, snap) -> dict:
        """Make a prepared snapshot the one every sidecar gets (with its workloads' certificates, when it
        is under mtls and certificates are served)."""
        version, program = self._prepared
        if version == snap.version:
            secrets = self._secrets_for(program)
            if secrets is not None:
                secrets.update(program)
            self.server.secrets = secrets
        self.server.publish(snap)
        return {"version": snap.version, "services": sorted(snap.resources)}

    def rotate(self) -> bool:
        """Re-issue the certificates past half their life and bring them to the sidecars."""
        secrets = self.server.secrets
        if secrets is None or not secrets.rotate():
            return False
        self.server.secrets_changed()
        return True

    def status(self) -> dict:
        """Every node the server remembers, its streams and limits, and the certificates served."""
        out = self.server.status()
        if self.server.secrets is not None:
            out["certificates"] = self.server.secrets.status()
        return out

    def stop(self, grace: float = 0) -> None:
        """Close the streams and the port."""
        if self.running is not None:
            self.running.stop(grace)
            self.running = None


ENGINE = SidecarEngine()
