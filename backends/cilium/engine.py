"""CiliumNetworkPolicy as an engine: what Cilium enforces, written from the same decisions as `-t k8s`.

    emit(program) -> ciliumnetworkpolicies.yaml   one CiliumNetworkPolicy per workload
                     identities.yaml              which pods each identity stands for (as -t k8s)
                     report.txt

The NetworkPolicy engine computes, for every pair of a workload and a region of addresses, what
passes (backends/k8s/engine.py); this engine says the same in Cilium's words: the workload's labels
(and namespace) as `endpointSelector`, peers as `fromEndpoints`/`toEndpoints` (with
`io.kubernetes.pod.namespace`) or `fromCIDR`/`toCIDR` (outside addresses, which is what Cilium's
CIDR rules match), ports as `toPorts`, and `enableDefaultDeny` on both directions so that a workload
with nothing allowed in a direction is closed in it. Errors at rules are `-t k8s`'s, for the same
reasons. The driver reads the output back through the Cilium importer and proves it.
"""

from __future__ import annotations

import yaml

from anyplane.ir.nodes import Program

from .. import base
from ..k8s.engine import CAPABILITY as K8S_CAPABILITY
from ..k8s.engine import K8sEngine, export

CAPABILITY = base.Capability(**dict(vars(K8S_CAPABILITY), engine="cilium"))


def _peer(item: dict, side: str) -> tuple[str, dict | str]:
    if "ipBlock" in item:
        return f"{side}CIDR", item["ipBlock"]["cidr"]
    labels = dict(item["podSelector"]["matchLabels"])
    labels["io.kubernetes.pod.namespace"] = item["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    return f"{side}Endpoints", {"matchLabels": labels}


def _rule(rule: dict, side: str, peers_key: str) -> dict:
    out: dict = {}
    for item in rule[peers_key]:
        key, value = _peer(item, side)
        out.setdefault(key, []).append(value)
    if "ports" in rule:
        ports = []
        for p in rule["ports"]:
            item = {"port": str(p.get("port", 0)), "protocol": p["protocol"]}
            if "endPort" in p:
                item["endPort"] = p["endPort"]
            ports.append(item)
        out["toPorts"] = [{"ports": ports}]
    return out


def cilium_policy(np: dict) -> dict:
    """One exported NetworkPolicy as the CiliumNetworkPolicy that decides the same."""
    spec = np["spec"]
    out = {"endpointSelector": {"matchLabels": dict(spec["podSelector"]["matchLabels"])},
           "enableDefaultDeny": {"ingress": True, "egress": True}}
    if spec.get("ingress"):
        out["ingress"] = [_rule(r, "from", "from") for r in spec["ingress"]]
    if spec.get("egress"):
        out["egress"] = [_rule(r, "to", "to") for r in spec["egress"]]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": dict(np["metadata"]), "spec": out}


class CiliumEngine(K8sEngine):
    """`-t cilium`: CiliumNetworkPolicies, read back through the importer."""

    name = "cilium"
    capability = CAPABILITY
    reads_back_with = "cilium"

    def emit(self, program: Program, options: base.Options) -> base.Output:
        policies, identities = export(program, getattr(options.deployment, "kubernetes", None))
        text = "".join("---\n" + yaml.safe_dump(cilium_policy(p), sort_keys=False) for p in policies)
        rows = base.rule_rows(program, lambda r: (base.ENFORCED, "", 0))
        out = base.Output([base.Artifact("ciliumnetworkpolicies.yaml", text),
                           base.Artifact("identities.yaml", yaml.safe_dump({"identities": identities}, sort_keys=True))],
                          rows)
        out.artifacts.append(base.Artifact("report.txt", out.report_text(self.name)))
        return out


ENGINE = CiliumEngine()
