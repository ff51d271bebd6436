"""The console entry point. Ctrl-C and SIGTERM are taken over before anything heavy is imported, so
an interrupted command exits 128+signal after undoing what it had half done (click would turn Ctrl-C
into exit 1, and Python into a traceback)."""

from __future__ import annotations

import gc
import signal
import sys

#: A run allocates millions of small objects that live until it ends (the manifests' YAML, the IR, the
#: bit sets of a cluster's identities): at Python's default thresholds the cyclic collector walks them
#: again and again, about a fifth of importing and mapping 5,000 pods. It still runs, less often.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """The collector's thresholds a run of the CLI uses (the benchmarks measure with them too)."""
    gc.set_threshold(*GC_THRESHOLDS)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised past every `except Exception`; `finally` blocks still run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main() -> None:
    """Run the CLI with the signal handlers in place."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    tune_gc()
    try:
        from .cli import run

        run()
    except Interrupted as stop:
        sys.stderr.write("anyplane: interrupted\n")
        _finished()
        # An object the signal caught half-built (a solver term, say) may fail in its finaliser as Python
        # shuts down: that is no news to the user, who asked to stop.
        sys.unraisablehook = lambda unraisable: None
        sys.exit(128 + stop.signum)
    except SystemExit:
        _finished()
        raise
    _finished()


def _finished() -> None:
    """The command is over: a late Ctrl-C has nothing left to interrupt (while Python shuts down it
    would otherwise kill the process by the signal and hide the command's exit status)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
