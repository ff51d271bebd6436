"""The importer's strict shapes (compiler/importers/schema.py) against Kubernetes' published schema
(kubernetes-validate, Kubernetes 1.37): every struct anyplane checks has exactly the API's fields, and
each field the API's type; and what the strict reader refuses, at its position."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from anyplane.compiler.importers import schema
from anyplane.compiler.importers.k8s import convert
from anyplane.ir.source import DiagnosticError

from ..conftest import examples, run

DEFS = json.loads((Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / "v1.37.0-local-strict"
                   / "_definitions.json").read_text())["$defs"]
GROUPS = {"": "core", "apps": "apps", "batch": "batch", "networking.k8s.io": "networking"}
CORE = sorted((group, kind) for group, kind in schema.KINDS if group in GROUPS)


def _ref(prop: dict) -> str | None:
    ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("allOf", []) if "$ref" in a), None)
    return ref.rsplit("/", 1)[-1] if ref else None


def _types(prop: dict) -> set:
    t = prop.get("type", [])
    return set(t if isinstance(t, list) else [t]) - {"null"}


def _compare(ours: schema.Type, theirs: dict, where: str, out: list, seen: set) -> None:
    if ours is schema.OPAQUE:
        return
    if isinstance(ours, schema.Struct):
        if (ours.name, id(theirs)) in seen:
            return
        seen.add((ours.name, id(theirs)))
        props = theirs.get("properties", {})
        if set(ours.fields) != set(props):
            out.append(f"{where} ({ours.name}): only ours {sorted(set(ours.fields) - set(props))}, "
                       f"only the API's {sorted(set(props) - set(ours.fields))}")
        for name, t in ours.fields.items():
            if name in props:
                _compare(t, _resolve(props[name]), f"{where}.{name}", out, seen)
        return
    if isinstance(ours, schema.ListOf):
        if "array" not in _types(theirs):
            out.append(f"{where}: a list for us, {theirs.get('type')} for the API")
            return
        _compare(ours.item, _resolve(theirs["items"]), f"{where}[]", out, seen)
        return
    if isinstance(ours, schema.MapOf):
        if "object" not in _types(theirs) or "additionalProperties" not in theirs:
            out.append(f"{where}: a map for us, not for the API")
            return
        _compare(ours.value, _resolve(theirs["additionalProperties"]), f"{where}{{}}", out, seen)
        return
    want = {"string": {"string"}, "integer": {"integer"}, "boolean": {"boolean"}, "number": {"number"},
            "int-or-string": {"IntOrString"}}[ours.kind]
    got = _types(theirs) or {theirs.get("_name", "")}
    if ours.kind == "int-or-string":
        got = {"IntOrString"} if theirs.get("_name", "").endswith("IntOrString") else got
    if not want & got:
        out.append(f"{where}: {ours.kind} for us, {sorted(got)} for the API")
    if ours.kind == "integer" and theirs.get("format") in ("int32", "int64") and \
            int(theirs["format"][3:]) != ours.bits:
        out.append(f"{where}: int{ours.bits} for us, {theirs['format']} for the API")


def _resolve(prop: dict) -> dict:
    ref = _ref(prop)
    if ref is None:
        return prop
    return dict(DEFS[ref], _name=ref)


@pytest.mark.parametrize("group,kind", CORE, ids=[f"{g or 'core'}/{k}" for g, k in CORE])
def test_every_checked_struct_has_exactly_the_apis_fields_and_types(group, kind):
    versions, shape = schema.KINDS[(group, kind)]
    name = f"io.k8s.api.{GROUPS[group]}.{versions[0]}.{kind}"
    problems: list[str] = []
    _compare(shape, DEFS[name], kind, problems, set())
    assert not problems, "\n".join(problems)


def _cluster(*extra) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
             "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
             "status": {"podIP": "10.0.0.1"}}, *extra]


def _np(spec: dict, name="np") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "shop"},
            "spec": spec}


CASES = [
    (_np({"podSelector": {"matchlabels": {"role": "api"}}}), "unknown field 'spec.podSelector.matchlabels' in "
                                                             "LabelSelector (did you mean 'matchLabels'?)"),
    (_np({"podSelector": {}, "ingres": []}), "unknown field 'spec.ingres' in NetworkPolicySpec (did you mean 'ingress'?)"),
    (_np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "exception": []}}]}]}),
     "unknown field 'spec.ingress[0].from[0].ipBlock.exception' in IPBlock"),
    (_np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {}}]}]}), "IPBlock requires the field 'cidr'"),
    (_np({"podSelector": {}, "ingress": [{"ports": [{"port": 80.5}]}]}),
     "spec.ingress[0].ports[0].port: expected an integer or a string, found the number 80.5"),
    (_np({"podSelector": {"matchLabels": {"app": True}}}), "spec.podSelector.matchLabels.app: expected a string"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
      "spec": {"containers": [{"name": "c", "ports": {}}]}, "status": {"podIP": "10.0.0.2"}},
     "spec.containers[0].ports: expected a list, found an object"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
      "spec": {"containers": [{"name": "c", "ports": [{"containerport": 80}]}]}, "status": {"podIP": "10.0.0.2"}},
     "unknown field 'spec.containers[0].ports[0].containerport' in ContainerPort"),
    (_np({"podSelector": {}}, name="base"),
     "a second object of this kind and name in namespace shop"),
    ({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"}},
     "a policy kind anyplane does not read"),
    ({"apiVersion": "networking.k8s.io/v1beta1", "kind": "NetworkPolicy", "metadata": {"name": "old"}},
     "anyplane reads NetworkPolicy as networking.k8s.io/v1"),
    ({"kind": "NetworkPolicy"}, "not a Kubernetes object"),
]


@pytest.mark.parametrize("obj,message", CASES, ids=[m[:40] for _, m in CASES])
def test_what_kubernetes_refuses_or_anyplane_would_misread_is_an_error_at_its_position(obj, message, tmp_path):
    docs = _cluster(_np({"podSelector": {}}, name="base"), obj)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = run("check", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert f"{path}:" in done.stderr.splitlines()[0]


def test_a_null_rule_is_an_empty_rule_and_80_0_is_80():
    """JSON (and so Kubernetes) makes no difference between them: `ingress: [~]` allows everything, as
    `ingress: [{}]` does, and port 80.0 is port 80."""
    text = yaml.safe_dump_all(_cluster(_np({"podSelector": {}, "ingress": [None]})), sort_keys=False)
    same = yaml.safe_dump_all(_cluster(_np({"podSelector": {}, "ingress": [{}]})), sort_keys=False)
    assert convert([("m.yaml", text)]).text == convert([("m.yaml", same)]).text
    float_port = _np({"podSelector": {}, "ingress": [{"ports": [{"port": 80.0}]}]})
    int_port = _np({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    assert convert([("m.yaml", yaml.safe_dump_all(_cluster(float_port)))]).text == \
        convert([("m.yaml", yaml.safe_dump_all(_cluster(int_port)))]).text


def _fields(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _fields(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _fields(v, prefix + (i,))


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_misspelt_field_anywhere_is_an_error_never_a_silent_default(data):
    """Any field of a valid cluster renamed to a near miss (a letter's case changed, one dropped or
    doubled): the import refuses it at that field's position, never reads the object without it."""
    docs = _cluster(_np({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                                "podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8",
                                                                                 "except": ["10.1.0.0/16"]}}],
                                      "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}],
                         "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}]}))
    paths = [p for p in _fields(docs) if isinstance(p[-1], str) and p[-1] not in ("app", "team")
             and not (len(p) > 2 and p[-2] in ("labels", "matchLabels")) and len(p) > 2]
    path = data.draw(st.sampled_from(paths))
    key = path[-1]
    how = data.draw(st.sampled_from(["case", "drop", "double"]))
    i = data.draw(st.integers(0, len(key) - 1))
    wrong = {"case": key[:i] + key[i].swapcase() + key[i + 1:], "drop": key[:i] + key[i + 1:],
             "double": key[:i] + key[i] + key[i:]}[how]
    event(how)
    target = docs
    for step in path[:-1]:
        target = target[step]
    target[wrong] = target.pop(key)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    with pytest.raises(DiagnosticError) as err:
        convert([("m.yaml", text)])
    messages = [d.message for d in err.value.diagnostics]
    assert any(f"'{wrong}'" in m or f".{wrong}'" in m for m in messages), messages


def test_names_as_long_as_kubernetes_allows_are_imported(tmp_path):
    """A pod's name runs to 253 characters: anyplane names its identity with a shortened, unique name, and
    the comment above it names the pod in full."""
    long_a, long_b = "a" * 240 + "-x", "a" * 240 + "-y"
    docs = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": "shop", "labels": {"app": "l" + n[-1]}},
             "status": {"podIP": f"10.0.0.{i + 1}"}} for i, n in enumerate((long_a, long_b))]
    docs.append(_np({"podSelector": {"matchLabels": {"app": "lx"}}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    done = run("import", str(path))
    assert done.returncode == 0, done.stderr
    services = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("service ")]
    assert len(services) == 2 and len(set(services)) == 2 and all(len(s) <= 63 for s in services)
    assert f"Pod shop/{long_a}" in done.stdout
    assert run("verify", str(path)).returncode == 0
