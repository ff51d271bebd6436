"""The Z3 encoding agrees with the reference interpreter, flow by flow.

For each flow, the encoder's `pin` fixes the flow variables; the model's value
of every entry's term must equal the interpreter's `match_holds`, and a model
turned back into a flow must be the same flow class.
"""

from __future__ import annotations

import pytest
import z3
from hypothesis import HealthCheck, assume, given, settings

from anyplane.ir.flowgen import FlowGen
from anyplane.ir.interp import match_holds, owner
from anyplane.ir.source import DiagnosticError
from anyplane.compiler.pipeline import compile_sources
from anyplane.verify.context import Analysis

from ..conftest import EXAMPLES, load_example
from ..strategies import policies


def _agree(program, flows):
    a = Analysis(program)
    terms = [(e, a.term(e.match)) for e in a.ordered]
    solver = z3.Solver(ctx=a.enc.ctx)
    solver.add(a.enc.wellformed)
    for f in flows:
        solver.push()
        solver.add(a.enc.pin(f))
        assert solver.check() == z3.sat, f"flow {f.text} is outside the encoded flow space"
        model = solver.model()
        src, dst = owner(program, f.family, f.src), owner(program, f.family, f.dst)
        for e, term in terms:
            expected = match_holds(e.match, f, src, dst)
            got = z3.is_true(model.eval(term, model_completion=True))
            assert got == expected, f"{e.origin.loc} on {f.text}: z3 says {got}, interpreter {expected}"
        back = a.enc.flow(model)
        assert all(match_holds(e.match, back, src, dst) == match_holds(e.match, f, src, dst) for e, _ in terms)
        solver.pop()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_encoding_agrees_with_interpreter_on_examples(name):
    program = load_example(name).program
    _agree(program, FlowGen(program, seed=5).flows(400))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_encoding_agrees_with_interpreter_on_random_policies(text):
    try:
        program = compile_sources([("p.ap", text)]).program
    except DiagnosticError:
        assume(False)
    _agree(program, FlowGen(program, seed=2).flows(120))
