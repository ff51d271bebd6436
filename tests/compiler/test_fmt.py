"""`fmt`: canonical text that parses back to the same IR, idempotently, keeping comments."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings

from anyplane.compiler.fmt import format_file
from anyplane.compiler.parser import parse_file
from anyplane.compiler.pipeline import compile_sources, read_sources
from anyplane.ir import printer
from anyplane.ir.source import DiagnosticError

from ..conftest import EXAMPLES
from ..strategies import policies

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


@pytest.mark.parametrize("path", EXAMPLE_FILES)
def test_every_shipped_example_is_already_formatted(path):
    text = open(path, encoding="utf-8").read()
    assert format_file(parse_file(text, path)) == text, f"{path}: run 'anyplane fmt {path}'"


def test_a_first_match_policy_keeps_one_priority_column_across_the_file():
    text = ("external x { address 10.0.0.0/8 }\n\n"
            "deny x -> any tcp 22 priority 3\n\n"
            "# pings\nallow any -> x icmp type echo-request rate 5/s priority 2\n"
            "allow x -> x priority 1\n")
    out = format_file(parse_file(text, "x.ap"))
    rules = [line for line in out.splitlines() if line.startswith(("allow", "deny"))]
    assert len({line.index("priority") for line in rules}) == 1
    assert len({line.index("->") for line in rules}) == 1
    assert format_file(parse_file(out, "x.ap")) == out


def test_new_syntax_round_trips():
    text = ("service web { address 10.1.0.0/24, fd00::/64 port 80 http port 5060-5061 tcp }\n"
            "external internet { address 0.0.0.0/0, ::/0 }\n"
            "group edge {\n  web,  # the front\n  internet.*,\n  10.9.0.0/16\n}\n"
            "allow internet except 10.0.0.0/8, web -> web tcp 5060-5061\n"
            "allow edge -> web icmp6 type echo-request\n"
            "assert only internet except 10.0.0.0/8 -> web tcp 5060\n")
    out = format_file(parse_file(text, "x.ap"))
    assert "group edge {\n  web,  # the front\n  internet.*,\n  10.9.0.0/16\n}\n" in out
    assert "port 5060-5061 tcp" in out and "icmp6 type echo-request" in out
    assert "assert only internet except 10.0.0.0/8 -> web tcp 5060" in out
    assert _ir_without_spans([("x.ap", out)]) == _ir_without_spans([("x.ap", text)])
    assert format_file(parse_file(out, "x.ap")) == out
