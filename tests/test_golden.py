"""Golden IR for every example, and determinism of the compiler's output."""

from __future__ import annotations

import pytest

from anyplane.ir import printer

from .conftest import EXAMPLES, load_example


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_ir_dump_matches_golden(name, golden):
    golden(f"{name}/ir.txt", printer.dump(load_example(name).program))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_compiling_twice_gives_byte_identical_ir_json(name):
    assert printer.to_json(load_example(name).program) == printer.to_json(load_example(name).program)


def test_every_example_entry_points_back_at_its_policy_line():
    for name in EXAMPLES:
        program = load_example(name).program
        for entry in program.acl.entries + program.routes.entries:
            assert entry.origin.file.startswith("examples/") and entry.origin.line > 0
