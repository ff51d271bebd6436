"""Envoy v3 configuration for one service's sidecar, as plain dicts (then YAML or JSON).

    inbound  one listener per service port: HTTP ports run the HTTP connection
             manager with RBAC (the policy's decisions), a local rate limit per
             rate-limited rule, and the router to the local application; TCP
             ports run network RBAC and a TCP proxy
    outbound one listener the application sends to: a virtual host per
             destination service and port, routes in Gateway API precedence with
             weighted version clusters, timeouts and retries; clusters carry the
             destination's circuit breakers and outlier detection
"""

from __future__ import annotations

from fractions import Fraction

from anyplane.ir.actions import RateLimit
from anyplane.ir.nodes import Program

from ..deployment import Deployment
from .ca import SDS_BUNDLE_FILE, SDS_CERT_FILE, bundle_name
from .inbound import TYPE, Listener, Unsupported, header_input, listener_plan, rbac_matcher, rule_names
from .normal import HCM, NORMALISE, NORMALISE_HOST, refused_routes
from .routes import outbound_clusters, outbound_listener

ACCESS_LOG_FORMAT = ("[%START_TIME%] %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% "
                     "\"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% "
                     "rule=%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_effective_policy_id)%\n")


def duration(ms: int | Fraction) -> str:
    """An Envoy duration string from milliseconds (nanosecond precision)."""
    ns = int(Fraction(ms) * 1_000_000)
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}s"


def token_bucket(rl: RateLimit) -> dict:
    """A token bucket for `count` tokens per `per_s` seconds, burst `burst`: `refill` tokens at a time, at
    least 50 ms apart, so the sustained rate is exact (check makes every burst hold one refill)."""
    if rl.burst < rl.refill:
        raise Unsupported(f"burst {rl.burst} is below one refill ({rl.refill} tokens every 50 ms or more)")
    interval_ms = Fraction(rl.per_s * 1000 * rl.refill, rl.count)
    return {"max_tokens": rl.burst, "tokens_per_fill": rl.refill, "fill_interval": duration(interval_ms)}


def _access_log() -> list[dict]:
    return [{"name": "envoy.access_loggers.stdout",
             "typed_config": {"@type": TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                              "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}]


def _rbac(program: Program, plan: Listener, service: str, dry_run: bool, http: bool) -> dict:
    kind = "http.rbac.v3.RBAC" if http else "network.rbac.v3.RBAC"
    matcher = rbac_matcher(program, plan, service)
    config = {"@type": TYPE + f"envoy.extensions.filters.{kind}"}
    if dry_run or (http and plan.rate_limited):
        # The shadow engine records the deciding rule: the rate limit's descriptor, and in a
        # dry run the only effect. Without either it would double the per-request cost.
        config["shadow_matcher"] = matcher
    if not dry_run:
        config["matcher"] = matcher
    if not http:
        config["stat_prefix"] = f"in_{plan.port}"
    return {"name": f"envoy.filters.{'http' if http else 'network'}.rbac", "typed_config": config}


def _rate_limit(plan: Listener, dry_run: bool) -> dict | None:
    limits = plan.rate_limited
    if not limits:
        return None
    full = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    none = {"default_value": {"numerator": 0, "denominator": "HUNDRED"}}
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": f"in_{plan.port}_rate",
        "filter_enabled": full,
        "filter_enforced": none if dry_run else full,
        # Requests whose deciding rule has no rate limit fall to this bucket: effectively unlimited.
        "token_bucket": {"max_tokens": 1 << 30, "tokens_per_fill": 1 << 30, "fill_interval": "1s"},
        "descriptors": [{"entries": [{"key": "rule", "value": name}], "token_bucket": token_bucket(rl)}
                        for name, rl in sorted(limits.items())],
        # The RBAC filter's shadow engine records which rule decided; the descriptor is that rule.
        "rate_limits": [{"actions": [{"metadata": {
            "descriptor_key": "rule", "source": "DYNAMIC",
            "metadata_key": {"key": "envoy.filters.http.rbac", "path": [{"key": "shadow_effective_policy_id"}]}}}]}],
    }}


def sds_config(sds: str | None, file: str) -> dict:
    """Where a sidecar's secrets come from: anyplane serve over ADS (None), or a directory of SDS files
    that Envoy watches (a rotated certificate is picked up as the file is replaced)."""
    if sds is None:
        return {"ads": {}, "resource_api_version": "V3"}
    return {"path_config_source": {"path": f"{sds}/{file}", "watched_directory": {"path": sds}},
            "resource_api_version": "V3"}


def downstream_tls(program: Program, service: str, sds: str | None) -> dict:
    """The inbound side of mutual TLS: the workload's own certificate, and a client certificate that the
    trust domain's CA signed and whose URI SAN is a SPIFFE ID of the trust domain."""
    domain = program.mtls.trust_domain
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificate_sds_secret_configs": [{"name": program.identity(service).principal,
                                                    "sds_config": sds_config(sds, SDS_CERT_FILE)}],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": f"spiffe://{domain}/"}}]},
                "validation_context_sds_secret_config": {"name": bundle_name(domain),
                                                         "sds_config": sds_config(sds, SDS_BUNDLE_FILE)}}}}}


def upstream_tls(program: Program, service: str | None, peers: list[str], sds: str | None) -> dict:
    """The outbound side: present the workload's certificate (when the client is a workload) and accept
    only a server whose SPIFFE ID is one of `peers`."""
    domain = program.mtls.trust_domain
    common: dict = {"combined_validation_context": {
        "default_validation_context": {"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": p}} for p in sorted(set(peers))]},
        "validation_context_sds_secret_config": {"name": bundle_name(domain),
                                                 "sds_config": sds_config(sds, SDS_BUNDLE_FILE)}}}
    own = program.identity(service).principal if service is not None else None
    if own is not None:
        common["tls_certificate_sds_secret_configs"] = [{"name": own, "sds_config": sds_config(sds, SDS_CERT_FILE)}]
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "common_tls_context": common}}


TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": TYPE + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}


def _mesh_chains(program: Program, service: str, sds: str | None, build) -> tuple[dict, list[dict]]:
    """A workload's listener under mutual TLS: the filter chain with TLS (`build(tls=True)`), and under
    `permissive` one without for clients that send plaintext (told apart by the TLS inspector)."""
    chains = [{"name": "mtls", "filter_chain_match": {"transport_protocol": "tls"},
               "transport_socket": downstream_tls(program, service, sds), "filters": build(True)}]
    if program.identity(service).mtls == "permissive":
        chains.append({"name": "plaintext", "filter_chain_match": {"transport_protocol": "raw_buffer"},
                       "filters": build(False)})
    return {"listener_filters": [TLS_INSPECTOR]}, chains


def inbound_listener(program: Program, service: str, port: int, protocol: str, deployment: Deployment,
                     names: dict[int, str], dry_run: bool, sds: str | None = None) -> tuple[dict, dict, Listener]:
    """(listener, local application cluster, plan) for one service port; `sds`: where its secrets come
    from under mutual TLS (see `sds_config`)."""
    sidecar = deployment.sidecar(service)
    http = protocol in ("http", "grpc")
    plan = listener_plan(program, service, port, http, names)
    cluster_name = f"in|{service}|{port}"
    app = {"name": cluster_name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": [{"endpoint": {
               "address": {"socket_address": {"address": sidecar.app, "port_value": port + sidecar.app_port_offset}}}}]}]}}
    if protocol == "grpc":
        app["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    def http_chain(plan: Listener) -> list[dict]:
        filters = [_rbac(program, plan, service, dry_run, True)]
        rate = _rate_limit(plan, dry_run)
        if rate:
            filters.append(rate)
        filters.append({"name": "envoy.filters.http.router",
                        "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}})
        return [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": f"in_{port}", "codec_type": "AUTO",
            **NORMALISE, **NORMALISE_HOST,
            "access_log": _access_log(),
            "route_config": {"name": f"in|{service}|{port}", "virtual_hosts": [{
                "name": "local", "domains": ["*"],
                "routes": refused_routes() + [
                    {"name": "local", "match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]},
            "http_filters": filters}}]

    listener = {"name": f"in|{service}|{port}",
                "address": {"socket_address": {"address": sidecar.inbound, "port_value": port}}}
    if program.identity(service).mtls is not None:
        def build(tls: bool) -> list[dict]:
            part = plan.over(tls)
            if http:
                return http_chain(part)
            return [_rbac(program, part, service, dry_run, False), _tcp_proxy(port, cluster_name)]
        extra, chains = _mesh_chains(program, service, sds, build)
        listener.update(extra, filter_chains=chains)
        return listener, app, plan
    if not http:
        return _tcp_listener(program, service, port, sidecar, plan, dry_run, cluster_name), app, plan
    listener["filter_chains"] = [{"filters": http_chain(plan)}]
    return listener, app, plan


def _chain_selector(matcher):
    """The RBAC matcher with each decision replaced by the filter chain it selects ("allow" / "deny")."""
    if isinstance(matcher, list):
        return [_chain_selector(m) for m in matcher]
    if not isinstance(matcher, dict):
        return matcher
    action = matcher.get("action")
    if isinstance(action, dict) and action.get("name") == "rbac":
        chain = "allow" if action["typed_config"]["action"] == "ALLOW" else "deny"
        return {"action": {"name": chain, "typed_config": {"@type": TYPE + "google.protobuf.StringValue",
                                                           "value": chain}}}
    return {k: _chain_selector(v) for k, v in matcher.items()}


def _tcp_proxy(port: int, cluster_name: str) -> dict:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": f"in_{port}", "cluster": cluster_name}}


def _tcp_listener(program: Program, service: str, port: int, sidecar, plan: Listener, dry_run: bool,
                  cluster_name: str) -> dict:
    """A TCP port. The decision is taken when the connection is accepted (the listener's filter
    chain matcher runs the policy's matcher), so a denied client never causes an upstream
    connection; the "deny" chain's RBAC filter still names the rule on the client's first bytes."""
    rbac = _rbac(program, plan, service, dry_run, False)
    proxy = _tcp_proxy(port, cluster_name)
    listener = {"name": f"in|{service}|{port}",
                "address": {"socket_address": {"address": sidecar.inbound, "port_value": port}},
                "filter_chains": [{"name": "allow", "filters": [rbac, proxy]}]}
    if not dry_run:
        close = {"name": "envoy.filters.network.direct_response", "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.network.direct_response.v3.Config"}}
        listener["filter_chains"].append({"name": "deny", "filters": [rbac, close]})
        listener["filter_chain_matcher"] = _chain_selector(rbac_matcher(program, plan, service))
    return listener


def sidecar_resources(program: Program, service: str, deployment: Deployment, dry_run: bool = False,
                      sds: str | None = None) -> tuple[list[dict], list[dict], list[Listener]]:
    """Every listener and cluster of one service's sidecar, and the inbound plans; `sds`: where its
    secrets come from under mutual TLS (`sds_config`)."""
    names = rule_names(program)
    listeners, clusters, plans = [], [], []
    ident = program.identity(service)
    for p in ident.ports:
        if p.protocol == "udp":
            continue
        listener, app, plan = inbound_listener(program, service, p.number, p.protocol, deployment, names, dry_run, sds)
        listeners.append(listener)
        clusters.append(app)
        plans.append(plan)
    out_listener = outbound_listener(program, service, deployment)
    if out_listener is not None:
        listeners.append(out_listener)
        clusters += outbound_clusters(program, deployment, service, sds)
    return listeners, clusters, plans


def bootstrap(service: str, deployment: Deployment, xds_dir: str | None, listeners=None, clusters=None) -> dict:
    """A bootstrap: static resources, or filesystem xDS watching `xds_dir` (lds.yaml and cds.yaml)."""
    host, port = deployment.sidecar(service).admin
    out = {"node": {"id": f"sidecar~{service}", "cluster": service},
           "admin": {"address": {"socket_address": {"address": host, "port_value": port}}},
           "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]}}
    if xds_dir is None:
        out["static_resources"] = {"listeners": listeners or [], "clusters": clusters or []}
    else:
        out["dynamic_resources"] = {
            "lds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": f"{xds_dir}/lds.yaml", "watched_directory": {"path": xds_dir}}},
            "cds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": f"{xds_dir}/cds.yaml", "watched_directory": {"path": xds_dir}}}}
    return out


XDS_CLUSTER = "anyplane_xds"


# Keepalive on the xDS channel. The server takes a ping at most every PING_FLOOR_S seconds while it
# sends nothing and answers a faster peer with GOAWAY ("too many pings"): the sidecars ping at twice
# that (plus Envoy's jitter), and a server that stops answering is left after interval + timeout.
PING_FLOOR_S = 10
KEEPALIVE = {"interval": f"{2 * PING_FLOOR_S}s", "timeout": f"{PING_FLOOR_S}s"}


def ads_bootstrap(service: str, deployment: Deployment, servers: list[tuple[str, int]], delta: bool = False,
                  node_id: str | None = None, tls: dict | None = None, token: str | None = None) -> dict:
    """A bootstrap whose listeners and clusters come from anyplane's xDS server(s) over ADS: every
    replica an endpoint of one cluster (a sidecar whose server goes away reconnects to another).
    `tls` (paths: ca, and cert and key for a client certificate) makes the channel TLS; `token`, a
    bootstrap token the sidecar proves its identity with instead (the bootstrap is then a secret)."""
    import ipaddress

    host, port = deployment.sidecar(service).admin

    def is_ip(text):
        try:
            ipaddress.ip_address(text)
            return True
        except ValueError:
            return False
    kind = "STATIC" if all(is_ip(h) for h, _ in servers) else "STRICT_DNS"  # a Service name resolves by DNS
    cluster = {"name": XDS_CLUSTER, "type": kind, "connect_timeout": "1s",
               "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                   "explicit_http_config": {"http2_protocol_options": {
                       "connection_keepalive": KEEPALIVE}}}},
               "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                   for h, p in servers]}]}}
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                **({"tls_certificates": [{"certificate_chain": {"filename": tls["cert"]},
                                          "private_key": {"filename": tls["key"]}}]} if tls.get("cert") else {}),
                "validation_context": {"trusted_ca": {"filename": tls["ca"]}}}}}
    grpc_service: dict = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    if token is not None:
        grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    return {"node": {"id": node_id or f"sidecar~{service}", "cluster": service},
            "admin": {"address": {"socket_address": {"address": host, "port_value": port}}},
            "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
            "dynamic_resources": {
                "ads_config": {"api_type": "DELTA_GRPC" if delta else "GRPC", "transport_api_version": "V3",
                               "grpc_services": [grpc_service],
                               "set_node_on_first_message_only": True},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}},
            "static_resources": {"clusters": [cluster]}}


__all__ = ["sidecar_resources", "bootstrap", "ads_bootstrap", "token_bucket", "duration", "header_input"]
