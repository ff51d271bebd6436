"""Inputs built to hurt: nesting, aliases, long lines, links out of a policy directory, odd output paths,
and random damage to manifests. Every command ends in exit 0, 1 or 2 with a positioned message, never an
internal error (exit 70), a crash by signal or a quoted file from outside the input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from anyplane.compiler.importers.k8s import convert
from anyplane.ir.source import DiagnosticError

from ..conftest import ROOT, examples, run

COMMANDS = [("check",), ("verify",), ("map",), ("import",)]


def _cluster_text(extra: str = "") -> str:
    return ("apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: x, labels: {app: db}}\n"
            "status: {podIP: 10.200.0.1}\n---\n" + extra)


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000, "nested deeper than 100 levels"),
    ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 5000)), "nested deeper than 100 levels"),
    ("{a: " * 5000 + "1" + "}" * 5000, "nested deeper than 100 levels"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)),
     "aliases expand this document too far"),
])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_nesting_and_alias_bombs_are_errors_not_crashes(text, message, command, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(_cluster_text(text))
    done = run(*command, str(path), timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr[-500:])
    assert message in done.stderr and f"{path}:" in done.stderr
    assert max(len(line) for line in done.stderr.splitlines()) < 400  # the excerpt, not the 100 KB line


def test_a_shared_peer_list_reused_by_aliases_reads_as_written_out(tmp_path):
    """One 200-peer list reused in 400 rules: Kubernetes reads it (within go-yaml's alias budget), and so
    does anyplane, deciding exactly as the same policy written out in full."""
    peers = [{"ipBlock": {"cidr": f"10.{i // 256}.{i % 256}.0/24"}} for i in range(200)]
    head = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n"
            "spec:\n  podSelector: {}\n  ingress:\n  - from: &p\n")
    aliased = _cluster_text(head + "".join(f"    - {{ipBlock: {{cidr: {p['ipBlock']['cidr']}}}}}\n" for p in peers)
                            + "".join("  - from: *p\n" for _ in range(399)))
    written = _cluster_text(yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": peers} for _ in range(400)]}}))
    def rules(text):  # the policy without the comments that name lines of the input
        return [line for line in convert([("m.yaml", text)]).text.splitlines() if not line.startswith("#")]
    assert rules(aliased) == rules(written)


def test_a_chain_of_thousands_of_groups_is_an_error_at_its_use(tmp_path):
    path = tmp_path / "chain.ap"
    path.write_text("group g0 { 10.0.0.0/8 }\n" + "".join(f"group g{i} {{ g{i - 1} }}\n" for i in range(1, 3000))
                    + "default deny\nallow g2999 -> any tcp 80\n")
    for command in ("check", "verify", "fmt"):
        done = run(command, str(path), timeout=120)
        assert done.returncode in (0, 1) and "internal error" not in done.stderr, done.stderr[-500:]
    done = run("check", str(path))
    assert done.returncode == 1 and "groups nested more than 64 deep" in done.stderr


def test_a_link_out_of_a_policy_directory_is_refused_and_never_quoted(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("eyJhbGciOiJSUzI1NiJ9.secret-service-account-token\n")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.ap").write_text("default deny\n")
    (policy / "x.ap").symlink_to(secret)
    (policy / "m.yaml").symlink_to(secret)
    for command in ("check", "verify", "map"):
        done = run(command, str(policy))
        assert done.returncode == 2 and "outside" in done.stderr
        assert "secret-service-account-token" not in done.stdout + done.stderr
    (policy / "x.ap").unlink()
    (policy / "m.yaml").unlink()
    git = policy / ".git"
    git.mkdir()
    (git / "old.ap").write_text("this is not a policy\n")
    assert run("check", str(policy)).returncode == 0  # .git is not the policy


def test_output_onto_a_dangling_link_creates_nothing(tmp_path):
    policy = tmp_path / "p.ap"
    policy.write_text("default deny\n")
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "deeper" / "out")
    done = run("compile", str(policy), "-t", "ir", "-o", str(link))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "nowhere").exists()


SCALARS = st.sampled_from(["y", "n", "on", "~", "null", "1e3", "0o17", "0x1F", "1_000", ".inf", ".nan", "-",
                           "''", '""', "[]", "{}", "[~]", "{a: }", "!!binary aGk=", "!!int x", "&a x", "*nope",
                           "<<: {}", "? [a]", "'\\x00'", "\"\\u0000\"", "9" * 30, "-9" * 20, "a" * 300])
MARKS = st.sampled_from(["\n", ": ", "- ", "---\n", "...\n", "  ", "\t", "{", "}", "[", "]", ",", "#", "&x ", "*x ",
                         "|\n", ">\n", "%YAML 1.1\n", "!t ", "? "])


TIERS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.4.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
status: {podIP: 10.4.0.2}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guard}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {name: deny-db, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}],
     ports: [{portNumber: {protocol: TCP, port: 22}}]}
  egress:
  - {name: pass-dns, action: Pass, to: [{networks: [10.96.0.10/32]}], ports: [{portRange: {protocol: UDP, start: 53, end: 54}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress:
  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "/api/.*"}]}}]
  - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443"}]}]
"""


def _manifests(name: str) -> str:
    """A valid input of each reader: NetworkPolicies, Istio's kinds, the admin tiers with Cilium's."""
    if name == "tiers":
        return TIERS
    folder = ROOT / "examples" / name
    return "---\n".join(p.read_text() for p in sorted(folder.glob("*.yaml")))


@pytest.mark.parametrize("name", ["kubernetes", "istio", "tiers"])
@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_damage_to_a_manifest_is_an_error_at_a_position_or_imports(name, data):
    """A valid cluster's text with a few random edits (YAML 1.1 scalars, structure characters, tags,
    anchors and aliases): the importer either imports it or says at which file and line it cannot,
    never raises anything else. Every object is held to its kind's schema before a reader sees it, so
    nothing else is caught on the way: an exception here is a gap in the schema or a bug."""
    text = _manifests(name)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.one_of(SCALARS, MARKS))
        cut = data.draw(st.integers(0, 3))
        text = text[:at] + edit + text[at + cut:]
    try:
        convert([("m.yaml", text)])
        event("imported")
    except DiagnosticError as exc:
        event("refused")
        assert exc.diagnostics and all(d.span is not None and d.span.file == "m.yaml" for d in exc.diagnostics)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_deepest_accepted_document_does_not_exhaust_the_stack(tmp_path):
    """100 levels (the limit) of every kind of nesting go through every reader of the tree."""
    path = tmp_path / "m.yaml"
    path.write_text(_cluster_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: "
                                  + "[" * 95 + "]" * 95 + "\n"))
    done = subprocess.run([sys.executable, "-m", "anyplane.compiler", "check", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
