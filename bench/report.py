"""What every bench script shares: measure each case, print a line per case as it finishes (or JSON)."""

from __future__ import annotations

import json


def run(cases, measure, line, output_format: str) -> list[dict]:
    """`measure(*case)` for each case; text: `line(row)` per row as it comes; json: all rows at the end."""
    rows = []
    for case in cases:
        row = measure(*case)
        rows.append(row)
        if output_format == "text":
            print(line(row), flush=True)
    if output_format == "json":
        print(json.dumps(rows, indent=1))
    return rows
