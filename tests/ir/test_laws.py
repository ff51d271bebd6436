"""Algebraic laws of the language (after Frenetic's compiler tests).

Rule order carries no meaning: shuffling the statements of a policy leaves
every verdict (and rate limit and route) unchanged.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anyplane.compiler.pipeline import compile_sources, read_sources
from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import evaluate
from anyplane.ir.source import DiagnosticError

from ..conftest import EXAMPLES
from ..strategies import policies


def _statements(text: str) -> list[str]:
    """Split a policy into statements at lines that start one (blocks stay whole)."""
    chunks, current = [], []
    for line in text.splitlines():
        if line and not line[0].isspace() and line[0] not in "}#" and current:
            chunks.append("\n".join(current))
            current = []
        if line.strip() and not line.startswith("#"):
            current.append(line)
    if current:
        chunks.append("\n".join(current))
    return chunks


def _outcomes(program, flows):
    out = []
    for f in flows:
        d = evaluate(program, f)
        route = d.route.action if d.route else None
        out.append((d.verdict, d.rate and (d.rate.count, d.rate.per_s, d.rate.burst), route))
    return out


def _shuffled_equal(sources, seed):
    base = compile_sources(sources).program
    rng = random.Random(seed)
    shuffled = []
    for path, text in sources:
        stmts = _statements(text)
        rng.shuffle(stmts)
        shuffled.append((path, "\n".join(stmts) + "\n"))
    other = compile_sources(shuffled).program
    flows = FlowGen(base, seed=seed).flows(1500)
    assert _outcomes(base, flows) == _outcomes(other, flows)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shuffling_statements_changes_no_verdict(name):
    _shuffled_equal(read_sources(EXAMPLES[name]), seed=1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.integers(0, 1000))
def test_shuffling_random_policies_changes_no_verdict(text, seed):
    try:
        compile_sources([("p.ap", text)])
    except DiagnosticError:
        assume(False)
    _shuffled_equal([("p.ap", text)], seed)
