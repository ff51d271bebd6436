"""The `anyplane` command line: parse flags, call library functions, format output.

Subcommands live in `compiler/commands/` (policy files; verification); this
module assembles them and is the console entry point.
"""

from __future__ import annotations

import os
import sys

import click

from .commands import analysis, engines, policy  # noqa: F401  (registers the subcommands)
from .commands.common import EXIT_INTERNAL, cli

__all__ = ["cli", "run"]


def run() -> None:
    """Run the CLI: bugs print one line (set ANYPLANE_DEBUG=1 for the traceback). The console entry
    point is `launch.main`, which handles signals first."""
    try:
        cli(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("ANYPLANE_DEBUG"):
            raise
        click.echo(f"anyplane: internal error: {type(exc).__name__}: {exc} (set ANYPLANE_DEBUG=1 for details)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
