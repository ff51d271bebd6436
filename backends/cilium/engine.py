"""CiliumNetworkPolicy as an engine: what Cilium enforces, written from the same decisions as `-t k8s`.

    emit(program) -> ciliumnetworkpolicies.yaml   a CiliumNetworkPolicy per NetworkPolicy -t k8s writes
                     identities.yaml              which pods each identity stands for (as -t k8s)
                     report.txt

The NetworkPolicy engine computes, for every pair of a workload and a region of addresses, what
passes, and which workloads to isolate in which direction (backends/kube/export.py); this engine says
the same in Cilium's words: the workload's selector as `endpointSelector`, peers as
`fromEndpoints`/`toEndpoints` (with `io.kubernetes.pod.namespace`, which `Exists` for every
namespace), `fromCIDR`/`toCIDR` or `fromCIDRSet`/`toCIDRSet` (outside addresses, which is what
Cilium's CIDR rules match), every peer as the entity `all`, ports as `toPorts`, ICMP and ICMPv6
types as `icmps` (the export says them apart, where NetworkPolicy cannot), and
`enableDefaultDeny` on the directions it isolates, so that a workload with nothing allowed in such a
direction is closed in it. Errors at rules are `-t k8s`'s, for the same
reasons. The driver reads the output back through the Cilium importer and proves it.
"""

from __future__ import annotations

from dataclasses import replace


from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.flow import Flow
from anyplane.ir.interp import match_holds, owner
from anyplane.ir.match import Absent, Present, StrExact, exact_values
from anyplane.ir.match import options as alternatives
from anyplane.ir.nodes import Program, Table, ordered
from anyplane.ir import yaml11
from anyplane.ir.source import DiagnosticError, error

from .. import base
from ..kube.export import CAPABILITY as K8S_CAPABILITY
from ..kube.export import KubernetesExporter, regions_of, export, split
from ..kube.selectors import NAMESPACE_LABEL, Placement, collapse, ip_blocks, k8s_name, pod_peer

CAPABILITY = base.Capability(**dict(vars(K8S_CAPABILITY), engine="cilium",
                                    fields=K8S_CAPABILITY.fields + ("icmp.type", "http", "http.method", "http.path",
                                                                    "http.host", "http.header.*")))
META = set(".^$*+?()[]{}|\\")
ICMP_FIELDS = 40
NS_LABEL = "io.kubernetes.pod.namespace"
TCP = 6


def _peer(item: dict, side: str) -> tuple[str, dict | str]:
    """A NetworkPolicy peer as a Cilium one: an ipBlock as a CIDR (with `except`, a CIDR set); pods as an
    endpoint selector that names their namespace (every namespace: the namespace label exists)."""
    if "ipBlock" in item:
        block = item["ipBlock"]
        if block.get("except"):
            return f"{side}CIDRSet", {"cidr": block["cidr"], "except": list(block["except"])}
        return f"{side}CIDR", block["cidr"]
    if "namespaceSelector" not in item:  # the policy's own namespace, as Cilium limits a selector too
        return f"{side}Endpoints", _endpoints(item.get("podSelector") or {}, None, anywhere=False)
    namespace = (item["namespaceSelector"].get("matchLabels") or {}).get(NAMESPACE_LABEL)
    return f"{side}Endpoints", _endpoints(item.get("podSelector") or {}, namespace)


def _endpoints(selector: dict, namespace: str | None, anywhere: bool = True) -> dict:
    """A pod LabelSelector in one namespace (None: in any; with `anywhere` false, the policy's own) as a
    Cilium endpoint selector."""
    labels = dict(selector.get("matchLabels") or {})
    expressions = [dict(e) for e in selector.get("matchExpressions") or []]
    if namespace:
        labels[NS_LABEL] = namespace
    elif anywhere:
        expressions.append({"key": NS_LABEL, "operator": "Exists"})
    out: dict = {}
    if labels:
        out["matchLabels"] = labels
    if expressions:
        out["matchExpressions"] = expressions
    return out


def _rule(rule: dict, side: str, peers_key: str) -> dict:
    out: dict = {}
    for item in rule.get(peers_key, ()):
        key, value = _peer(item, side)
        out.setdefault(key, []).append(value)
    if peers_key not in rule:
        out[f"{side}Entities"] = ["all"]
    if "ports" in rule:
        ports = []
        for p in rule["ports"]:
            item = {"port": str(p.get("port", 0)), "protocol": p["protocol"]}
            if "endPort" in p:
                item["endPort"] = p["endPort"]
            ports.append(item)
        out["toPorts"] = [{"ports": ports}]
    if rule.get("icmps"):
        out["icmps"] = _icmp_rules(rule["icmps"])
    return out


def _icmp_rules(fields: list[dict]) -> list[dict]:
    """ICMP fields ({type, family}) as Cilium's ICMP rules, which take at most 40 fields each."""
    return [{"fields": fields[k:k + ICMP_FIELDS]} for k in range(0, len(fields), ICMP_FIELDS)]


def cilium_policy(np: dict) -> dict:
    """One exported NetworkPolicy as the CiliumNetworkPolicy that decides the same."""
    spec = np["spec"]
    types = spec.get("policyTypes", [])
    out = {"endpointSelector": dict(spec["podSelector"]),
           "enableDefaultDeny": {"ingress": "Ingress" in types, "egress": "Egress" in types}}
    if spec.get("ingress"):
        out["ingress"] = [_rule(r, "from", "from") for r in spec["ingress"]]
    if spec.get("egress"):
        out["egress"] = [_rule(r, "to", "to") for r in spec["egress"]]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": dict(np["metadata"]), "spec": out}


def _escape(text: str) -> str:
    """A literal as a regex (Cilium's HTTP rules match regexes)."""
    return "".join("\\" + c if c in META else c for c in text)


def _http_rules(entry) -> list[dict] | str:
    """An L7 allow's conditions as Cilium HTTP rules (one per path), or why Cilium cannot say them."""
    rule: dict = {}
    paths = [None]
    headers = []
    for name, fm in entry.match.fields:
        opts = alternatives(fm)
        if name == F.HTTP_METHOD:
            rule["method"] = "|".join(sorted(exact_values(fm)))
        elif name == F.HTTP_PATH:
            paths = [_escape(o.value) if isinstance(o, StrExact) else _escape(o.value) + ".*" for o in opts]
        elif name == F.HTTP_HOST:
            # Cilium reads `host` as a regex but its schema wants a hostname, so a dot cannot be escaped:
            # "a.example" would also let "aXexample" through.
            if any(ch in META for ch in opts[0].value):
                return (f"Cilium matches the host {opts[0].value!r} as a regex whose dots match any character "
                        "(its schema takes no escapes): the export would let more hosts through")
            rule["host"] = opts[0].value
        elif name.startswith(F.HEADER_PREFIX):
            header = name[len(F.HEADER_PREFIX):]
            if isinstance(fm, Absent):
                return f"Cilium's HTTP rules cannot require a header to be absent ({header})"
            headers.append(header if isinstance(fm, Present) else f"{header}: {fm.value}")
    if headers:
        rule["headers"] = headers
    return [dict(rule, path=p) if p is not None else dict(rule) for p in paths]


def http_grants(program: Program) -> tuple[list, dict]:
    """([(source region, workload region, port, [Cilium HTTP rules])], errors by rule): the requests that
    L7 allows let through where L3/L4 rules alone would not. Cilium merges allows and has no HTTP deny,
    so an HTTP deny that decides something is an error at the deny."""
    regions, _ = regions_of(program)
    entries = list(ordered(program.acl))
    grants, errors = [], {}
    for w in (r for r in regions if r.workload):
        for port in sorted(set(program.identity(w.workload).http_ports)):
            for src in regions:
                answers = []
                for family in [f for f in w.ranges if src.probe(f) is not None]:
                    answers.append(_grant(program, entries, family, src, w, port, errors))
                if answers and any(a != answers[0] for a in answers):
                    culprit = next(e for a in answers for e in (a[1] if a else ()) )
                    errors.setdefault(culprit.rule, error(culprit.origin, "cilium", (
                        f"{src.workload}'s IPv4 and IPv6 addresses are decided apart here; a Cilium endpoint "
                        "selector names a workload's pods alike")))
                    continue
                if answers and answers[0] is not None:
                    grants.append((src, w, port, answers[0][0], answers[0][1]))
    return grants, errors


def _grant(program: Program, entries, family: int, src, w, port: int, errors: dict):
    """(Cilium HTTP rules, the L7 allows they come from) for requests from `src` to `w` on `port` that
    L3/L4 rules alone would not let through (None: nothing to add)."""
    s, d = src.probe(family), w.probe(family)
    flow = Flow(family, s, d, TCP, 49152, port)
    ids = (owner(program, family, s), owner(program, family, d))
    matching = [e for e in entries if match_holds(e.match.without_layer("L7"), flow, *ids)]
    leading, l4 = [], None
    for k, e in enumerate(matching):
        if e.layer != "L7":
            l4 = e
            break
        if isinstance(e.action, Deny):
            below = [x for x in matching[k + 1:] if not isinstance(x.action, Deny)]
            if below or (program.default == "allow" and not any(x.layer != "L7" for x in matching[k:])):
                errors.setdefault(e.rule, error(e.origin, "cilium", (
                    "Cilium has no HTTP deny: its HTTP rules only add requests a port lets through "
                    "(write the requests that pass as allows)")))
            continue
        if not isinstance(e.action, Allow):
            errors.setdefault(e.rule, error(e.origin, "cilium", "Cilium's HTTP rules cannot limit rates"))
            continue
        leading.append(e)
    l4_allows = not isinstance(l4.action, Deny) if l4 is not None else program.default == "allow"
    if l4_allows or not leading:
        return None
    rules = []
    for e in leading:
        got = _http_rules(e)
        if isinstance(got, str):
            errors.setdefault(e.rule, error(e.origin, "cilium", got))
            continue
        rules += [r for r in got if r not in rules]
    return rules, tuple(leading)


def _peer_item(region, identities: dict) -> list[dict]:
    if region.workload:
        spec = identities[region.workload]
        return [pod_peer(Placement(spec["namespace"], spec["labels"], tuple(spec.get("unset", ()))))]
    return ip_blocks(region)


def add_http(policies: list[dict], grants: list, identities: dict) -> dict:
    """The grants as ingress rules with HTTP rules on the workload's policy, and as egress rules of the
    port on the source's (Cilium reads requests at the destination). Errors by rule: a grant to a
    workload whose requests the L3/L4 rules refuse only by a deny (no policy of its own isolates it),
    since a Cilium deny wins over every allow, HTTP ones included."""
    by_name = {p["metadata"]["name"]: p["spec"] for p in policies}
    errors: dict = {}
    grouped: dict = {}  # the same rules on the same port of a workload: one ingress rule for all its sources
    for src, w, port, rules, leading in grants:
        grouped.setdefault((w.key, port, repr(rules)), (w, port, rules, [], leading))[3].append(src)
    for w, port, rules, sources, leading in grouped.values():
        spec = by_name.get(f"anyplane-{k8s_name(w.workload)}")
        if spec is None:
            for e in leading:
                errors.setdefault(e.rule, error(e.origin, "cilium", (
                    f"the requests this rule lets through to {w.workload} on port {port} are refused below "
                    "HTTP by a deny, and a Cilium deny wins over every allow, HTTP ones included")))
            continue
        ports = [{"port": str(port), "protocol": "TCP"}]
        rule: dict = {}
        for item in collapse([i for src in sources for i in _peer_item(src, identities)]):
            key, value = _peer(item, "from")
            rule.setdefault(key, []).append(value)
        rule["toPorts"] = [{"ports": ports, "rules": {"http": rules}}]
        spec.setdefault("ingress", []).append(rule)
    for src, w, port, rules, _ in grants:
        if f"anyplane-{k8s_name(w.workload)}" not in by_name:
            continue
        ports = [{"port": str(port), "protocol": "TCP"}]
        if src.workload:
            out: dict = {}
            for item in _peer_item(w, identities):
                key, value = _peer(item, "to")
                out.setdefault(key, []).append(value)
            out["toPorts"] = [{"ports": ports}]
            source = by_name.get(f"anyplane-{k8s_name(src.workload)}")
            if source is not None and source["enableDefaultDeny"]["egress"]:  # else its egress is open
                source.setdefault("egress", []).append(out)
    return errors


def add_denies(policies: list[dict], anps: list[dict]) -> None:
    """The AdminNetworkPolicies' Deny rules (ports a pair leaves out of everything else) as the subject's
    `ingressDeny`/`egressDeny`, which win over every allow in Cilium too (on a policy of its own where
    the subject has none: one that opens both directions, as the allows need nothing)."""
    by_selector = {(p["metadata"]["namespace"], repr(p["spec"]["endpointSelector"])): p["spec"] for p in policies}
    for anp in anps:
        subject = anp["spec"]["subject"]["pods"]
        namespace = subject["namespaceSelector"]["matchLabels"][NAMESPACE_LABEL]
        key = (namespace, repr(subject["podSelector"]))
        if key not in by_selector:
            policies.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                             "metadata": dict(anp["metadata"], namespace=namespace),
                             "spec": {"endpointSelector": dict(subject["podSelector"]),
                                      "enableDefaultDeny": {"ingress": False, "egress": False}}})
            by_selector[key] = policies[-1]["spec"]
        spec = by_selector[key]
        for direction, side in (("ingress", "from"), ("egress", "to")):
            for r in anp["spec"].get(direction, []):
                rule: dict = {}
                for peer in r[side]:
                    if "networks" in peer:
                        rule.setdefault(f"{side}CIDR", []).extend(peer["networks"])
                    else:
                        pods = peer["pods"]
                        rule.setdefault(f"{side}Endpoints", []).append(_endpoints(
                            pods["podSelector"], pods["namespaceSelector"]["matchLabels"][NAMESPACE_LABEL]))
                ports = []
                for p in r["ports"]:
                    item = p.get("portNumber") or p.get("portRange")
                    entry = {"port": str(item.get("port", item.get("start"))), "protocol": item["protocol"]}
                    if "end" in item:
                        entry["endPort"] = item["end"]
                    ports.append(entry)
                if ports:
                    rule["toPorts"] = [{"ports": ports}]
                if r.get("icmps"):
                    rule["icmps"] = _icmp_rules(r["icmps"])
                spec.setdefault(direction + "Deny", []).append(rule)


class CiliumEngine(KubernetesExporter):
    """`-t cilium`: CiliumNetworkPolicies, read back through the importer."""

    name = "cilium"
    capability = CAPABILITY
    reads_back_with = "cilium"

    def emit(self, program: Program, options: base.Options) -> base.Output:
        base.refuse_mtls(program, "cilium", "CiliumNetworkPolicy has no SPIFFE certificates to match")
        grants, errors = http_grants(program)
        if errors:
            raise DiagnosticError(list(errors.values()))
        # The L3/L4 rules as -t k8s computes them; the HTTP rules are added where they let requests through.
        l4 = replace(program, acl=Table(program.acl.name, tuple(e for e in program.acl.entries if e.layer != "L7")))
        policies, identities = export(l4, getattr(options.deployment, "kubernetes", None), exact=True, icmp=True,
                                      cidr_denies=True)
        nps, anps = split(policies)
        cilium = [cilium_policy(p) for p in nps]
        add_denies(cilium, anps)
        errors = add_http(cilium, grants, identities)
        if errors:
            raise DiagnosticError(list(errors.values()))
        for p in cilium:  # a direction that allows nothing: closed outright (the schema wants a section)
            for key, deny, side in (("ingress", "ingressDeny", "fromEntities"), ("egress", "egressDeny", "toEntities")):
                if p["spec"]["enableDefaultDeny"][key] and not p["spec"].get(key):
                    p["spec"][deny] = [{side: ["all"]}]
        text = yaml11.dump_all(cilium, sort_keys=False)
        rows = base.rule_rows(program, lambda r: (base.ENFORCED, "", 0))
        out = base.Output([base.Artifact("ciliumnetworkpolicies.yaml", text),
                           base.Artifact("identities.yaml", yaml11.dump({"identities": identities}, sort_keys=True))],
                          rows)
        out.artifacts.append(base.Artifact("report.txt", out.report_text(self.name)))
        return out


ENGINE = CiliumEngine()
