"""YAML as Kubernetes reads it (`ir/yaml11.py`), held against kubectl itself on every YAML 1.1
boolean, null, number, octal, sexagesimal and timestamp spelling; and every export read back by kubectl
says what the proof read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from anyplane.compiler import api
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir import yaml11
from anyplane.ir.source import DiagnosticError

from .. import kubectl
from ..conftest import examples

BOOLS = [s for w in ("y", "yes", "true", "on", "n", "no", "false", "off") for s in (w, w.capitalize(), w.upper())]
NULLS = ["~", "null", "Null", "NULL"]
NUMBERS = ["0", "00", "017", "08", "09", "0o17", "0O17", "0x1F", "0X1f", "0b101", "0B11", "-0b11", "+0x1F", "1_000",
           "1__0", "1_", "0x_1F", "0b1_0", "0o1_7", "0_17", "+12", "-0", "1e3", "1E3", "1e+3", "1e-3", "1.5e3", ".5",
           "-.5", "1.0", "+1.0", "1.", "0.", "-0.0", "08.5", "0.1_0", "1_0.5", "1e400", "99999999999999999999",
           "9223372036854775807", "18446744073709551616", "-9223372036854775809", "0xFFFFFFFFFFFFFFFFFF", "1234567", "0.00001",
           "123456789.125"]
UNSIGNED = ["9223372036854775808", "18446744073709551615"]  # keys Kubernetes refuses
SEXAGESIMAL = ["1:20", "190:20:30", "1:2:3.5", "-1:30", "1:20:30.5"]
TIMESTAMPS = ["2001-01-01", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10", "2001-1-2"]
SPECIAL_FLOATS = [".inf", "-.inf", "+.inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"]
TRAPS = ["_1", "1e", "0x", "0o", "0b", "x", "yy", "nO", "oN", "=", "+", "-", "1.2.3", "0x1G", "10.0.0.1", "1/2",
         "0.5.1", "+-1", "٣", "1 000", "y!", "~x"]
PLAIN = BOOLS + NUMBERS + SEXAGESIMAL + TIMESTAMPS + TRAPS


def _doc(body: str) -> str:
    return f"apiVersion: example.com/v1\nkind: Probe\nmetadata:\n  name: probe\nspec:\n{body}"


def _same(ours, theirs) -> bool:
    """Equal as JSON values are: numbers by value, but a boolean is not a number."""
    if isinstance(ours, bool) or isinstance(theirs, bool) or ours is None or theirs is None:
        return ours is theirs
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return float(ours) == float(theirs)
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(_same(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
    return ours == theirs and type(ours) is type(theirs)


def _ours(text: str) -> list:
    docs, _ = yaml11.load("t.yaml", text)
    return docs


def test_plain_keys_read_as_kubernetes_reads_them():
    body = "".join(f"  k{i}:\n    {s}: 1\n" for i, s in enumerate(PLAIN))
    theirs, why = kubectl.read(_doc(body))
    assert theirs is not None, why
    ours = _ours(_doc(body))[0]
    for i, s in enumerate(PLAIN):
        assert list(ours["spec"][f"k{i}"]) == list(theirs[0]["spec"][f"k{i}"]), f"key {s!r}"


def test_plain_values_read_as_kubernetes_reads_them():
    body = "  v:\n" + "".join(f"  - {s}\n" for s in PLAIN + NULLS + UNSIGNED)
    theirs, why = kubectl.read(_doc(body))
    assert theirs is not None, why
    ours = _ours(_doc(body))[0]["spec"]["v"]
    for s, a, b in zip(PLAIN + NULLS + UNSIGNED, ours, theirs[0]["spec"]["v"]):
        assert _same(a, b), f"{s!r}: anyplane reads {a!r}, Kubernetes {b!r}"


@pytest.mark.parametrize("spelling", NULLS + UNSIGNED + ["", "[a]", "{a: 1}"])
def test_keys_kubernetes_refuses_are_refused(spelling):
    text = _doc(f"  a:\n    {spelling}: 1\n" if spelling else "  a:\n    : 1\n")
    theirs, _ = kubectl.read(text)
    assert theirs is None
    with pytest.raises(DiagnosticError) as err:
        _ours(text)
    assert "key" in err.value.diagnostics[0].message


@pytest.mark.parametrize("spelling", SPECIAL_FLOATS)
def test_infinities_and_nan_have_no_json_form(spelling):
    text = _doc(f"  a: {spelling}\n")
    assert kubectl.read(text)[0] is None
    doc = _ours(text)[0]
    with pytest.raises(DiagnosticError):
        yaml11.check_json(doc, "t.yaml", doc.span)


def test_keys_that_become_equal_are_duplicates():
    for a, b in (("y", "true"), ("on", "'true'"), ("1e3", "1000"), ("0o17", "15")):
        with pytest.raises(DiagnosticError) as err:
            _ours(_doc(f"  a:\n    {a}: 1\n    {b}: 2\n"))
        assert "duplicate key" in err.value.diagnostics[0].message


def test_merges_and_tags_as_go_yaml_reads_them():
    body = ("  base: &b {x: 1, y2: 2}\n  a: {x: 0, <<: *b}\n  c: {<<: *b, x: 0}\n  d: {<<: [*b, {x: 5, z: 1}]}\n"
            "  e: !!str 12\n  f: ! yes\n  g: !local bar\n  h: {\"<<\": *b}\n  i: !!binary aGVsbG8=\n  j: !!int 017\n"
            "  k: !!float 1\n")
    theirs, why = kubectl.read(_doc(body))
    assert theirs is not None, why
    assert _same(json.loads(json.dumps(_ours(_doc(body))[0])), theirs[0])


@settings(max_examples=examples(25), deadline=None)
@given(st.lists(st.text(alphabet="0123456789yYnNoOfFtT_.+-:eExXbB~ ", min_size=1, max_size=7), min_size=20,
                max_size=40, unique=True))
def test_what_anyplane_writes_kubernetes_reads_as_written(texts):
    """Random scalars made of the characters that make YAML 1.1 read a number, a boolean or a null, written
    as label keys and values and as list items: kubectl reads back each string."""
    texts = [t for t in texts if t.strip() == t]  # labels have no edge spaces; YAML would keep them, quoted
    obj = {"apiVersion": "example.com/v1", "kind": "Probe", "metadata": {"name": "probe"},
           "spec": {"pairs": {t: t for t in texts}, "items": texts}}
    theirs, why = kubectl.read(yaml11.dump(obj, sort_keys=False))
    assert theirs is not None, why
    assert theirs[0]["spec"] == {"pairs": {t: t for t in texts}, "items": texts}


def test_every_spelling_written_reads_back_as_written():
    texts = PLAIN + NULLS + SPECIAL_FLOATS + ["<<", "", " y", "yes "]
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "labels": {"y": "n"}},
           "data": {t or "empty": t for t in texts}}
    theirs, why = kubectl.read(yaml11.dump(obj))
    assert theirs is not None, why
    assert theirs[0]["data"] == obj["data"] and theirs[0]["metadata"]["labels"] == {"y": "n"}
    assert _ours(yaml11.dump(obj))[0]["data"] == obj["data"]


def test_plain_scalars_that_change_meaning_are_warned_at_their_position():
    text = _doc("  labels: {y: a, app: web}\n  v: [yes, 017, 1_000, 12, true, 1e3]\n")
    _, notes = yaml11.load("t.yaml", text)
    where = sorted((n.span.line, n.span.col, n.message.split(",")[0]) for n in notes)
    assert where == [(6, 12, "Kubernetes reads the key 'y' as 'true'"),
                     (7, 7, "Kubernetes reads the plain 'yes' as the boolean true"),
                     (7, 12, "Kubernetes reads the plain '017' as the number 15"),
                     (7, 17, "Kubernetes reads the plain '1_000' as the number 1000")]


@pytest.mark.parametrize("target,resource", [("k8s", "networkpolicies.yaml"), ("cilium", "ciliumnetworkpolicies.yaml"),
                                             ("istio", "networkpolicies.yaml")])
def test_exports_select_the_labels_written_as_kubernetes_reads_them(target, resource, tmp_path):
    """The issue's case: `db` is pods labelled `y: postgres`. Every selector kubectl reads from the export
    names exactly the labels the deployment file gives, and the proof (which reads YAML the same way)
    passes."""
    policy = ("service web { address 10.0.1.0/24 port 8080 http }\nservice db { address 10.0.2.0/24 port 5432 tcp }\n"
              "default deny\nallow web -> db tcp 5432\n")
    (tmp_path / "p.ap").write_text(policy)
    (tmp_path / "d.yaml").write_text("kubernetes:\n  namespace: shop\n  workloads:\n"
                                     "    db: {namespace: data, labels: {\"y\": postgres}}\n"
                                     "    web: {labels: {\"1e3\": web}}\n")
    out = api.compile_target(api.load([str(tmp_path / "p.ap")]), target, api.Options(
        deployment=api.deployment(str(tmp_path / "d.yaml"))))
    files = {a.path: a.data for a in out.artifacts}
    theirs, why = kubectl.read(files[resource])
    assert theirs is not None, why
    selectors = []
    for doc in theirs:
        spec = doc["spec"]
        selectors.append((spec.get("podSelector") or spec.get("endpointSelector"))["matchLabels"])
    assert {"y": "postgres"} in selectors and {"1e3": "web"} in selectors
    for sel in selectors:
        assert not {"true", "1000", "15"} & set(sel)


def test_an_istio_route_header_is_read_as_written():
    policy = ("service web { address 10.0.1.0/24 port 8080 http\n version v1 address 10.0.1.0/25\n"
              " version v2 address 10.0.1.128/25 }\nservice c { address 10.0.2.0/24 }\ndefault allow\n"
              "route web http /api/* header \"y\" = \"on\" { to v2 100% }\n"
              "route web http /api/* { to v1 100% }\n")
    out = api.compile_target(compile_sources([("p.ap", policy)]), "istio")
    files = {a.path: a.data for a in out.artifacts}
    theirs, why = kubectl.read(files["virtualservices.yaml"])
    assert theirs is not None, why
    headers = [m["headers"] for d in theirs for r in d["spec"]["http"] for m in r.get("match", []) if "headers" in m]
    assert headers == [{"y": {"exact": "on"}}]


def test_a_document_nested_deeper_than_the_limit_is_refused_quickly():
    for text in ("[" * 100_000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 5000)),
                 "- " * 20_000 + "x"):
        with pytest.raises(DiagnosticError) as err:
            yaml11.load("t.yaml", text)
        assert "nested deeper" in err.value.diagnostics[0].message


def test_aliases_expand_by_reference_within_go_yamls_budget():
    peers = "".join(f"  - {{ipBlock: {{cidr: 10.0.{i // 256}.{i % 256}/32}}}}\n" for i in range(200))
    shared = "peers: &p\n" + peers + "rules:\n" + "".join("- from: *p\n" for _ in range(400))
    doc = _ours(shared)[0]
    assert all(r["from"] is doc["peers"] for r in doc["rules"])
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
    with pytest.raises(DiagnosticError) as err:
        _ours(laughs)
    assert "aliases" in err.value.diagnostics[0].message



def test_the_importer_reads_labels_as_kubernetes_does(tmp_path):
    """A pod labelled with a plain `y` carries the label "true" in the cluster: a policy selecting
    "true" selects it, one selecting "y" does not; and each plain scalar gets a warning at its place."""
    from anyplane.compiler.importers.k8s import convert

    pod = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  namespace: x\n  labels: {y: postgres}\n"
           "status: {podIP: 10.0.0.5}\n---\n")
    policy = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\n"
              "spec:\n  podSelector: {matchLabels: {%s: postgres}}\n  ingress: []\n")
    selected = convert([("m.yaml", pod + policy % '"true"')])
    missed = convert([("m.yaml", pod + policy % '"y"')])
    assert "deny any -> x_db" in selected.text and "deny any -> x_db" not in missed.text
    assert [(n.span.line, n.span.col) for n in selected.notes] == [(6, 12)]
    theirs, why = kubectl.read(pod + policy % '"true"')
    assert theirs is not None, why
    assert theirs[0]["metadata"]["labels"] == {"true": "postgres"}
