"""Fuzzing the front end: whatever the input, the result is a program or diagnostics.

No input may raise anything but `DiagnosticError`, and every diagnostic must
render (file:line:col, the line, a caret). In CI each test runs 2,000 examples.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyplane.compiler.flows import parse_flow
from anyplane.compiler.pipeline import compile_sources
from anyplane.ir.source import DiagnosticError, SourceMap, render

from ..conftest import ROOT, examples

EXAMPLES = examples(2000)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VOCABULARY = [
    "service", "external", "default", "allow", "deny", "route", "limits", "assert", "not", "reachable",
    "address", "port", "version", "any", "tcp", "udp", "icmp", "proto", "sport", "type", "code", "http", "grpc",
    "host", "header", "present", "absent", "rate", "burst", "priority", "to", "timeout", "retry", "on",
    "per-try", "eject", "consecutive", "for", "max-connections", "max-pending", "{", "}", ",", "->", ".", "-",
    "=", "%", "*", "a", "b", "web", "v1", "v2", "GET", "POST", "FETCH", "/", "/a", "/a/*", "/*", "//x",
    '"x-k"', '"v"', '"\\q"', '"', "10.0.0.0/8", "10.0.0.1", "10.0.0.1/24", "fd00::/64", "::", "1.2.3.4/40",
    "0", "80", "65535", "65536", "99999999999999999999", "100/s", "5/d", "2s", "0s", "250ms", "5xx", "#c\n",
    "\n", " ", "\t", "$", "\x00", "é",
    "workload", "namespace", "labels", "app=web", "!canary", "!", "!-x", "a=", "x.io/y=z", "A_b/c=d", "k=v-", "-k=v", "shop", "Shop",
    "240.0.1.0/24", "100::7", "0.0.0.0/0",
    "mtls", "strict", "permissive", "off", "trust-domain", '"cluster.local"', '"Bad Domain"', "account", "peer",
    "plaintext", '"spiffe://cluster.local/ns/a/sa/b"',
]

tokens = st.lists(st.sampled_from(VOCABULARY), max_size=40).map(" ".join)
SEEDS = [p.read_text() for p in sorted((ROOT / "examples").rglob("*.ap"))]


def _outcome(text: str, path: str = "f.ap") -> None:
    try:
        compile_sources([(path, text)])
    except DiagnosticError as exc:
        assert exc.diagnostics
        out = render(exc.diagnostics, SourceMap({path: text}))
        assert out.startswith(f"{path}:") or out.startswith("anyplane:")
        for d in exc.diagnostics:
            assert d.severity == "error" and d.code and d.message


@FUZZ
@given(tokens)
def test_token_soup_gives_diagnostics_not_tracebacks(text):
    _outcome(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_gives_diagnostics_not_tracebacks(text):
    _outcome(text)


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.randoms(use_true_random=False), st.integers(1, 6))
def test_mutated_examples_give_diagnostics_not_tracebacks(which, rng: random.Random, n):
    text = SEEDS[which]
    for _ in range(n):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randrange(12))
        op = rng.randrange(4)
        if op == 0:
            text = text[:i] + text[j:]
        elif op == 1:
            text = text[:i] + rng.choice(VOCABULARY) + text[i:]
        elif op == 2:
            text = text[:i] + text[i:j][::-1] + text[j:]
        else:
            text = text[:i] + str(rng.choice([0, 1, 255, 256, 65535, 65536, 10**12])) + text[j:]
    _outcome(text)


BOOKINFO = compile_sources([("b.ap", SEEDS[[i for i, s in enumerate(SEEDS) if "bookinfo" in s][0]])])


@FUZZ
@given(tokens)
def test_flow_parsing_gives_diagnostics_not_tracebacks(text):
    try:
        parse_flow(text, BOOKINFO.symbols, BOOKINFO.program)
    except DiagnosticError as exc:
        render(exc.diagnostics, SourceMap({"<flow>": text}))


def test_the_addresses_of_a_declaration_without_any_are_an_error_not_a_traceback():
    """Found by the mutation fuzzer: `name.*` of an external whose address clause is gone."""
    text = "external internet { }\nservice db { address 10.0.0.0/24 }\ndefault deny\nallow internet.* -> db\n"
    try:
        compile_sources([("f.ap", text)])
    except DiagnosticError as exc:
        messages = [d.message for d in exc.diagnostics]
    assert "the source 'internet.*' holds no address" in messages and "external 'internet' has no address" in messages
