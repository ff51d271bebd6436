"""`compile -t k8s`: NetworkPolicies that decide what the policy decides, for every flow to or from a pod.

Three views of the output, none of them the exporter's own:
- the NetworkPolicy semantics written out in tests/importers/test_import_k8s.py (`allowed`), over pods placed
  at addresses of each workload, against the reference interpreter on the original policy;
- the composition proof through the importer (read back, then Z3);
- Kubernetes' published JSON schema (kubernetes-validate) for every object.
"""

from __future__ import annotations

import ipaddress
import json

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings

from anyplane.compiler import api
from anyplane.compiler.pipeline import compile_sources, load
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate
from anyplane.ir.owners import owned_addresses, ownership
from anyplane.ir.source import DiagnosticError

from ...brute import _address_classes
from ...conftest import examples, run
from ...crd_schemas import violations
from ...strategies import policies
from ...importers.test_import_admin import allowed as admin_allowed

K8S_VERSION = "1.37"


def _l4_only(text: str) -> str:
    """A random policy without its HTTP rules (NetworkPolicy is L4)."""
    return "\n".join(line for line in text.splitlines()
                     if not (line.startswith(("allow", "deny")) and " http" in line)) + "\n"


def _export(program):
    out = api.compile_target(api.Compiled(None, None, program, None), "k8s")
    files = {a.path: a.data for a in out.artifacts}
    nps = [d for d in yaml.safe_load_all(files["networkpolicies.yaml"]) if d]
    anps = [d for d in yaml.safe_load_all(files.get("adminnetworkpolicies.yaml", "")) if d]
    identities = yaml.safe_load(files["identities.yaml"])["identities"] or {}
    return out, nps + anps, identities


def _schema_valid(nps: list[dict]) -> None:
    for np in nps:
        kubernetes_validate.validate(np, K8S_VERSION, strict=True)


def _pods(program, identities) -> list[dict]:
    """Pods at up to two addresses of each workload, labelled as the export's contract says."""
    owned = owned_addresses(program)
    pods = []
    for name, spec in sorted(identities.items()):
        for k, (family, address) in enumerate(owned.get(name, [])[:2]):
            ip = str(ipaddress.ip_address(address) if family == 4 else ipaddress.IPv6Address(address))
            pods.append({"metadata": {"name": f"{name}-{k}", "namespace": spec["namespace"], "labels": spec["labels"]},
                         "spec": {"containers": [{"name": "c", "ports": []}]}, "status": {"podIP": ip}})
    return pods


SETTINGS = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(policies(max_rules=5, small=True))
def test_exported_cilium_policies_decide_as_the_policy(text):
    """-t cilium: the same decisions in Cilium's words, judged by Cilium's semantics written out in
    tests/importers/test_import_cilium.py, and proved through the Cilium importer."""
    from ...importers.test_import_cilium import allowed as cilium_allowed

    try:
        program = compile_sources([("p.ap", _l4_only(text))]).program
    except DiagnosticError:
        assume(False)
    try:
        out = api.compile_target(api.Compiled(None, None, program, None), "cilium")
    except DiagnosticError:
        return  # refused at a rule, as -t k8s (tested there)
    files = {a.path: a.data for a in out.artifacts}
    cnps = [d for d in yaml.safe_load_all(files["ciliumnetworkpolicies.yaml"]) if d]
    assert violations(cnps) == []
    identities = yaml.safe_load(files["identities.yaml"])["identities"] or {}
    pods = _pods(program, identities)
    by_ip = {p["status"]["podIP"]: p for p in pods}
    v4 = [ip for ip in by_ip if ":" not in ip]
    bad = []
    for a in v4:
        for b in v4 + ["203.0.113.9"]:
            if a == b:
                continue
            for proto, number, port in (("TCP", 6, 80), ("TCP", 6, 83), ("UDP", 17, 80)):
                f = Flow(4, int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b)), number, 40000, port)
                want = evaluate(program, f).verdict == "allow"
                if cilium_allowed(pods, [], cnps, a, b, proto, port) != want:
                    bad.append((f.text, want))
    assert not bad, (bad[:5], text)
    proof = api.prove_export(api.Compiled(None, None, program, None), "cilium", out)
    assert proof.proved, proof.counterexample


@SETTINGS
@given(policies(max_rules=5, small=True))
def test_exported_networkpolicies_decide_as_the_policy(text):
    try:
        program = compile_sources([("p.ap", _l4_only(text))]).program
    except DiagnosticError:
        assume(False)
    try:
        out, nps, identities = _export(program)
    except DiagnosticError as exc:
        # What NetworkPolicy cannot say is an error at a rule of the policy (or its default / stateless).
        spans = {r.origin for r in program.rules} | {program.default_origin}
        assert all(d.span in spans for d in exc.diagnostics), [str(d.span) for d in exc.diagnostics]
        event("refused at a rule: " + exc.diagnostics[0].message.split(":")[0])
        return
    anps = [p for p in nps if p["kind"] == "AdminNetworkPolicy"]
    nps = [p for p in nps if p["kind"] == "NetworkPolicy"]
    event("exported" + (" with AdminNetworkPolicies" if anps else ""))
    _schema_valid(nps)
    pods = _pods(program, identities)
    by_ip = {p["status"]["podIP"]: p for p in pods}
    own = ownership(program)
    workloads = set(identities)
    outside = [(family, a) for family in (4, 6) for a in _address_classes([program], (), family)
               if own.owner(family, a) not in workloads][:12]
    addresses = [(4 if ":" not in ip else 6, int(ipaddress.ip_address(ip))) for ip in by_ip] + outside
    bad = []
    for fam_a, a in addresses:
        for fam_b, b in addresses:
            text_a, text_b = (str(ipaddress.ip_address(a) if fam_a == 4 else ipaddress.IPv6Address(a)),
                              str(ipaddress.ip_address(b) if fam_b == 4 else ipaddress.IPv6Address(b)))
            if fam_a != fam_b or a == b or (text_a not in by_ip and text_b not in by_ip):
                continue
            for proto, number, port in (("TCP", 6, 79), ("TCP", 6, 80), ("TCP", 6, 83), ("UDP", 17, 80),
                                        ("ICMP", 1 if fam_a == 4 else 58, None)):
                f = Flow(fam_a, a, b, number, 40000, port) if port else \
                    Flow(fam_a, a, b, number, icmp_type=8 if fam_a == 4 else 128, icmp_code=0)
                want = evaluate(program, f).verdict == "allow"
                got = admin_allowed(pods, nps, anps, None, text_a, text_b, proto, port)
                if got != want:
                    bad.append((f.text, want, got))
    assert not bad, (bad[:5], text)
    proof = api.prove_export(api.Compiled(None, None, program, None), "k8s", out)
    assert proof.proved, proof.counterexample


def test_the_kubernetes_example_round_trips_with_the_proof(tmp_path):
    done = run("compile", "examples/kubernetes", "-t", "k8s", "-o", str(tmp_path / "out"), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "proved: k8s (read back through the importer) decides exactly what the policy decides" in done.stderr
    proof = json.loads((tmp_path / "out" / "proof.json").read_text())
    assert proof["proved"] and proof["engines"] == ["k8s"]
    nps = [d for d in yaml.safe_load_all((tmp_path / "out" / "networkpolicies.yaml").read_text()) if d]
    _schema_valid(nps)
    # Read back by hand: the exported policies over the example's pods, relabelled as the contract says,
    # give the map the original policies give.
    identities = yaml.safe_load((tmp_path / "out" / "identities.yaml").read_text())["identities"]
    cluster = yaml.safe_load(open("examples/kubernetes/pods.yaml"))
    names = {}
    for pod in cluster["items"]:
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        ident = next(n for n, spec in identities.items() if any(ip in ipaddress.ip_network(a) for a in spec["addresses"]))
        names[ip] = pod["metadata"]["name"]
        pod["metadata"]["namespace"] = identities[ident]["namespace"]
        pod["metadata"]["labels"] = dict(identities[ident]["labels"])
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "pods.yaml").write_text(yaml.safe_dump(cluster))
    (tmp_path / "again" / "policies.yaml").write_text((tmp_path / "out" / "networkpolicies.yaml").read_text())

    def pod_edges(compiled):
        """Edges between two pods of different identities (an identity stands for the pods at its addresses;
        its edge to itself also carries each pod's traffic to itself), by pod name."""
        result = api.connectivity(compiled)
        prefixes = ownership(compiled.program).prefixes
        pods = {n: [names[ipaddress.ip_network(str(p)).network_address] for p in prefixes[n]
                    if ipaddress.ip_network(str(p)).network_address in names] for n in prefixes}
        return {(s, d): e["label"] for e in result["edges"] if e["src"] != e["dst"]
                for s in pods[e["src"]] for d in pods[e["dst"]]}
    assert pod_edges(load([str(tmp_path / "again")])) == pod_edges(load(["examples/kubernetes"]))


def test_what_networkpolicy_cannot_say_is_an_error_at_the_rule(tmp_path):
    p = tmp_path / "p.ap"
    p.write_text("service web { address 10.1.0.0/24 port 80 http }\nservice db { address 10.2.0.5/32 }\n"
                 "external office { address 192.168.0.0/16 }\ndefault deny\n"
                 "allow office -> web tcp 443\n"
                 "allow web -> db tcp 5432 sport 1024-65535\n"
                 "allow office -> db icmp type 8\n"
                 "allow office -> web http GET /x\n"
                 "allow 10.1.0.7/32 -> db tcp 6379\n")
    done = run("compile", str(p), "-t", "k8s", "-o", str(tmp_path / "out"))
    assert done.returncode == 1
    err = done.stderr
    assert f"{p}:6:1: error: NetworkPolicy cannot match sport" in err
    assert f"{p}:7:1: error: NetworkPolicy cannot match icmp.type" in err
    assert f"{p}:8:1: error: NetworkPolicy cannot match http" in err and "-t envoy" in err
    assert not (tmp_path / "out").exists()
    # Without those, a CIDR inside a workload decided apart from the rest of it is the error left.
    p.write_text("\n".join(p.read_text().splitlines()[:5] + p.read_text().splitlines()[-1:]) + "\n")
    done = run("compile", str(p), "-t", "k8s", "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and f"{p}:6:1: error: part of web's addresses is decided apart" in done.stderr


@pytest.mark.parametrize("text,fragment", [
    ("service a { address 10.0.0.1/32 }\nstateless\nallow any -> a\n", "cannot be stateless"),
    ("service a { address 10.0.0.1/32 }\nservice b { address 10.0.0.2/32 }\ndefault allow\ndeny a -> b icmp\n",
     "cannot tell ICMP or another protocol apart"),
    ("service a { address 10.0.0.1/32 }\ndefault allow\ndeny a -> a tcp 22\n", "a pod reach itself"),
    ("service a { address 10.0.0.1/32 }\nexternal x { address 192.0.2.0/24 }\ndefault deny\nallow x -> a\n"
     "deny x -> a tcp 22\n", "AdminNetworkPolicy has no ingress peer for outside addresses"),
])
def test_more_that_networkpolicy_cannot_say(tmp_path, text, fragment):
    p = tmp_path / "p.ap"
    p.write_text(text)
    done = run("compile", str(p), "-t", "k8s", "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and fragment in done.stderr, done.stderr


def test_the_deployment_file_places_workloads_and_names_their_labels(tmp_path):
    p = tmp_path / "p.ap"
    p.write_text("service web { address 10.1.0.5/32 }\nservice db { address 10.2.0.5/32 }\ndefault deny\n"
                 "allow web -> db tcp 5432\n")
    dep = tmp_path / "d.yaml"
    dep.write_text(yaml.safe_dump({"kubernetes": {"namespace": "shop", "workloads": {
        "db": {"namespace": "data", "labels": {"app": "postgres"}}}}}))
    done = run("compile", str(p), "-t", "k8s", "--deployment", str(dep), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    nps = {d["metadata"]["name"]: d for d in yaml.safe_load_all((tmp_path / "out" / "networkpolicies.yaml").read_text()) if d}
    db, web = nps["anyplane-db"], nps["anyplane-web"]
    assert db["metadata"]["namespace"] == "data" and db["spec"]["podSelector"] == {"matchLabels": {"app": "postgres"}}
    assert web["metadata"]["namespace"] == "shop"
    from_web = [r for r in db["spec"]["ingress"] if r["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
         "podSelector": {"matchLabels": {"anyplane.io/identity": "web"}}}]]
    assert len(from_web) == 1 and from_web[0]["ports"] == [{"protocol": "TCP", "port": 5432}], db["spec"]
    assert "proved" in done.stderr  # the default deny's "web -> web" is Kubernetes' to allow: left out of the proof
    _schema_valid(list(nps.values()))
    # Labels that do not select one identity's pods alone are refused.
    dep.write_text(yaml.safe_dump({"kubernetes": {"workloads": {"db": {"labels": {"tier": "x"}},
                                                                "web": {"labels": {"tier": "x", "app": "web"}}}}}))
    done = run("compile", str(p), "-t", "k8s", "--deployment", str(dep), "-o", str(tmp_path / "out2"))
    assert done.returncode == 1 and "select web's too" in done.stderr, done.stderr
    for bad, why in (({"kubernetes": {"workloads": {"nope": {}}}}, "names nope: no workload"),
                     ({"kubernetes": {"namespace": "Bad_NS"}}, "is not a Kubernetes namespace name"),
                     ({"kubernetes": {"workloads": {"db": {"labels": {"a b": "c"}}}}}, "is not a Kubernetes label")):
        dep.write_text(yaml.safe_dump(bad))
        done = run("compile", str(p), "-t", "k8s", "--deployment", str(dep), "-o", str(tmp_path / "out3"))
        assert done.returncode in (1, 2) and why in done.stderr, done.stderr


def test_every_protocol_but_some_ports_becomes_an_admin_network_policy_deny(tmp_path):
    """NetworkPolicy only adds allows: "everything but tcp 22" needs an AdminNetworkPolicy Deny, at the
    destination's ingress from a workload, or the source's egress to outside addresses."""
    p = tmp_path / "p.ap"
    p.write_text("service web { address 10.0.1.0/24 }\nservice api { address 10.0.2.0/24 }\n"
                 "external internet { address 0.0.0.0/0 }\ndefault deny\n"
                 "allow api -> web\ndeny api -> web tcp 22\nallow web -> internet\ndeny web -> internet udp 53\n")
    for target in ("k8s", "cilium"):
        done = run("compile", str(p), "-t", target, "-o", str(tmp_path / target))
        assert done.returncode == 0 and f"proved: {target}" in done.stderr, done.stderr
    (anp,) = [d for d in yaml.safe_load_all((tmp_path / "k8s" / "adminnetworkpolicies.yaml").read_text()) if d]
    assert anp["spec"]["subject"]["pods"]["podSelector"]["matchLabels"] == {"anyplane.io/identity": "web"}
    (ingress,) = anp["spec"]["ingress"]
    assert ingress["action"] == "Deny" and ingress["ports"] == [{"portNumber": {"protocol": "TCP", "port": 22}}]
    assert ingress["from"][0]["pods"]["podSelector"]["matchLabels"] == {"anyplane.io/identity": "api"}
    (egress,) = anp["spec"]["egress"]
    assert egress["ports"] == [{"portNumber": {"protocol": "UDP", "port": 53}}] and "networks" in egress["to"][0]
    cnps = {d["metadata"]["name"]: d["spec"] for d in
            yaml.safe_load_all((tmp_path / "cilium" / "ciliumnetworkpolicies.yaml").read_text()) if d}
    assert cnps["anyplane-web"]["ingressDeny"][0]["toPorts"] == [{"ports": [{"port": "22", "protocol": "TCP"}]}]
    assert violations(list(cnps and [d for d in yaml.safe_load_all(
        (tmp_path / "cilium" / "ciliumnetworkpolicies.yaml").read_text()) if d])) == []


def _namespaced_cluster(spaces: int) -> str:
    """Namespaces alike: web takes 8080 from outside the private ranges, api reaches 192.0.2.0/24 on 443."""
    docs = []
    for n in range(spaces):
        ns = f"team{n}"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for k, app in enumerate(("web", "api")):
            docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{app}-{n}", "namespace": ns,
                                                                        "labels": {"app": app}},
                         "status": {"podIP": f"10.1.{n}.{k + 1}"}})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "web", "namespace": ns},
                     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{
                         "from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                         "ports": [{"port": 8080}]}]}})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "api", "namespace": ns},
                     "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]}]}})
    return yaml.safe_dump_all(docs)


@pytest.mark.parametrize("which", ["one", "all"])
def test_the_proof_finds_an_export_changed_at_its_outside_peers(tmp_path, which):
    """The proof asks the flows with an end outside the identities both sides declare alike once per
    class of workloads decided alike (not over every entry at once): an exported ipBlock changed in one
    namespace, or in all of them alike, is found, and the counterexample is a flow between a changed
    workload and an address outside the cluster."""
    from anyplane.compiler.importers import read_back

    (tmp_path / "c.yaml").write_text(_namespaced_cluster(4))
    compiled = load([str(tmp_path / "c.yaml")])
    out = api.compile_target(compiled, "k8s")
    assert api.prove_export(compiled, "k8s", out).proved
    files = {a.path: a.data for a in out.artifacts}
    nps = [d for d in yaml.safe_load_all(files["networkpolicies.yaml"]) if d]
    changed = set()
    for np_ in nps:
        if which == "one" and np_["metadata"]["namespace"] != "team2":
            continue
        for direction in ("ingress", "egress"):
            for rule in np_["spec"].get(direction, ()):
                for peer in rule.get("from", rule.get("to", ())):
                    if "ipBlock" in peer:  # a block cut where the policy cuts none: no identity of its own
                        block = peer["ipBlock"]
                        if "except" in block:
                            block["except"] = block["except"] + ["203.0.113.0/24"]
                        else:
                            block["cidr"] = "192.0.2.0/25"
                        changed.add(np_["metadata"]["namespace"])
    assert changed == ({"team2"} if which == "one" else {f"team{n}" for n in range(4)})
    files["networkpolicies.yaml"] = yaml.safe_dump_all(nps)
    out.read_back = lambda: read_back(api._engine("k8s").reads_back_with, files)
    proof = api.prove_export(compiled, "k8s", out)
    assert not proof.proved and proof.counterexample
    src, _, dst, *_ = proof.counterexample["flow"].split()
    pod, outside = (dst, src) if dst.startswith("10.1.") else (src, dst)
    assert ipaddress.ip_address(outside) not in ipaddress.ip_network("10.0.0.0/8"), proof.counterexample
    assert pod.startswith("10.1.2." if which == "one" else "10.1."), proof.counterexample
