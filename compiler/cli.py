"""The `anyplane` command line: parse flags, call library functions, format output.

Subcommands live in `compiler/commands/` (policy files; verification); this
module assembles them and is the console entry point.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from .commands import analysis, engines, policy  # noqa: F401  (registers the subcommands)
from .commands.common import EXIT_INTERNAL, cli

__all__ = ["cli", "main"]


class Interrupted(BaseException):
    """SIGINT or SIGTERM: raised past click (which would turn Ctrl-C into exit 1) to exit 128+signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main() -> None:
    """Console entry point: bugs print one line (set ANYPLANE_DEBUG=1 for the traceback); Ctrl-C exits
    130 after the command has undone what it had half done (an output directory stays as it was)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli(standalone_mode=True)
    except Interrupted as stop:
        click.echo("anyplane: interrupted", err=True)
        sys.exit(128 + stop.signum)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("ANYPLANE_DEBUG"):
            raise
        click.echo(f"anyplane: internal error: {type(exc).__name__}: {exc} (set ANYPLANE_DEBUG=1 for details)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
