"""`fmt`: canonical text that parses back to the same IR, idempotently, keeping comments."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings

from anyplane.compiler.fmt import format_file
from anyplane.compiler.parser import parse_file
from anyplane.compiler.pipeline import compile_sources, read_sources
from anyplane.ir import printer
from anyplane.ir.source import DiagnosticError

from .conftest import EXAMPLES
from .strategies import policies

EXAMPLE_FILES = [path for paths in EXAMPLES.values() for path, _ in read_sources(paths)]


def _ir_without_spans(sources):
    return printer.dump(compile_sources(sources).program, src=False)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fmt_round_trips_every_example(name):
    sources = read_sources(EXAMPLES[name])
    formatted = [(path, format_file(parse_file(text, path))) for path, text in sources]
    assert _ir_without_spans(formatted) == _ir_without_spans(sources)


@pytest.mark.parametrize("path", EXAMPLE_FILES)
def test_fmt_is_idempotent_and_keeps_every_comment(path):
    text = open(path, encoding="utf-8").read()
    once = format_file(parse_file(text, path))
    assert format_file(parse_file(once, path)) == once
    comments = [line.strip() for line in text.splitlines() if line.strip().startswith("#")]
    for c in comments:
        assert c in once


def test_fmt_aligns_runs_of_rules_and_keeps_blank_lines():
    text = "service a { address 10.0.0.0/24 }\nservice bb { address 10.0.1.0/24 }\n\n" \
           "allow a -> bb tcp 80   # web\ndeny  bb ->   a  udp 53\n"
    out = format_file(parse_file(text, "x.ap"))
    assert out == ("service a  { address 10.0.0.0/24 }\nservice bb { address 10.0.1.0/24 }\n\n"
                   "allow a  -> bb tcp 80  # web\ndeny  bb -> a  udp 53\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_fmt_round_trips_random_policies(text):
    try:
        expected = _ir_without_spans([("p.ap", text)])
    except DiagnosticError:
        assume(False)
    formatted = format_file(parse_file(text, "p.ap"))
    assert _ir_without_spans([("p.ap", formatted)]) == expected
